"""Saving and restoring stacked agents with orbax-checkpoint, and the pre-trained-agents cache.

Pre-trained agents depend only on the data, partition, model, seed and pre-training settings, not
on the algorithm that follows; ``pretrain.cache_dir`` stores them under a fingerprint of exactly
those settings so DIMAT and every baseline start from the same agents and pre-training runs once.
"""
from __future__ import annotations

import hashlib
import json
import os
import pathlib
import shutil
import time

import jax

from dimat_jax.config import get_key
from dimat_jax.report import write_json


class CheckpointError(RuntimeError):
    """A checkpoint is missing, corrupt or does not fit this run; nothing was overwritten."""


class CheckpointLayoutError(CheckpointError):
    """A readable checkpoint whose arrays do not have the names / shapes this run builds (another
    dimat_jax version, model or number of agents): not corrupt, so it is left where it is."""


def layout_difference(saved: dict, want: dict) -> str:
    """'' when the two ``{leaf name: shape}`` maps agree, else a short account of the difference."""
    missing = sorted(set(want) - set(saved))
    extra = sorted(set(saved) - set(want))
    reshaped = sorted(k for k in set(want) & set(saved) if tuple(want[k]) != tuple(saved[k]))
    parts = [f"{label} ({len(keys)}): {', '.join(keys[:3])}{', ...' if len(keys) > 3 else ''}"
             for label, keys in (("arrays this run needs but the checkpoint lacks", missing),
                                 ("arrays only in the checkpoint", extra)) if keys]
    parts += [f"shape of {k}: saved {tuple(saved[k])}, now {tuple(want[k])}" for k in reshaped[:3]]
    return "; ".join(parts)


def _leaf_shapes(tree) -> dict:
    """``{dotted leaf path: shape}`` of a pytree of arrays or of orbax's array metadata (dict keys,
    attribute names and sequence indices alike become path parts, as orbax names them)."""
    def part(key):
        for attr in ("key", "name", "idx"):
            if hasattr(key, attr):
                return str(getattr(key, attr))
        return str(key)
    flat = jax.tree_util.tree_flatten_with_path(tree, is_leaf=lambda x: hasattr(x, "shape"))[0]
    return {".".join(part(k) for k in path): tuple(leaf.shape) for path, leaf in flat if hasattr(leaf, "shape")}


def _shapes_of(tree):
    """``tree`` as ``jax.ShapeDtypeStruct`` leaves: the restore target."""
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), tree)


def check_layout(state_dir, target, fix: str) -> None:
    """:class:`CheckpointLayoutError` (ending with ``fix``) when the orbax checkpoint in ``state_dir``
    holds other array names or shapes than ``target``; silent when its metadata cannot be read (the
    restore that follows then reports it as corrupt)."""
    import orbax.checkpoint as ocp
    from etils import epath
    try:  # the handler reads the tree metadata alone (the checkpointer also looks for step metadata)
        saved = _leaf_shapes(ocp.StandardCheckpointHandler().metadata(epath.Path(state_dir)))
    except Exception:  # missing or unreadable metadata: leave the verdict to the restore
        return
    diff = layout_difference(saved, _leaf_shapes(target))
    if diff:
        raise CheckpointLayoutError(
            f"checkpoint {pathlib.Path(state_dir).parent} is intact but holds other arrays than this run builds "
            f"({diff}): it was written by another dimat_jax version or for another model / number of agents. "
            f"It was left in place; {fix}")


def save_tree(path, tree, meta: dict) -> pathlib.Path:
    """Write ``tree`` (orbax) and ``meta`` (JSON) to the new directory ``path`` atomically (every
    process of a multi-process run calls this; orbax writes each process's shards, process 0 the rest)."""
    import orbax.checkpoint as ocp

    from dimat_jax.distributed import barrier, is_primary
    path = pathlib.Path(path).absolute()
    if path.exists():
        raise CheckpointError(f"checkpoint {path} already exists; not overwriting it")
    tmp = path.with_name(path.name + ".tmp")
    if is_primary():
        shutil.rmtree(tmp, ignore_errors=True)  # a previous attempt that died before the rename
        tmp.mkdir(parents=True)
    barrier("dimat_jax:save-tree-start")
    ckpt = ocp.StandardCheckpointer()
    ckpt.save(tmp / "state", tree)
    ckpt.wait_until_finished()
    barrier("dimat_jax:save-tree-written")
    if is_primary():
        write_json(tmp / "meta.json", meta)
        os.replace(tmp, path)
    barrier("dimat_jax:save-tree-done")
    return path


def restore_tree(path, abstract):
    """(tree, meta) from :func:`save_tree`'s directory, restored onto ``abstract``'s shapes."""
    import orbax.checkpoint as ocp
    path = pathlib.Path(path).absolute()
    if not (path / "meta.json").is_file() or not (path / "state").is_dir():
        raise CheckpointError(f"{path} is not a dimat_jax checkpoint (expected meta.json and state/)")
    target = _shapes_of(abstract)
    check_layout(path / "state", target, "delete it or point pretrain.cache_dir / pretrain.checkpoint elsewhere "
                                         "to pre-train afresh.")
    try:
        meta = json.loads((path / "meta.json").read_text())
        tree = ocp.StandardCheckpointer().restore(path / "state", target)
    except (ValueError, KeyError, OSError, json.JSONDecodeError) as e:
        raise CheckpointError(f"cannot restore {path}: it is corrupt or was saved for a different model / "
                              f"number of agents ({type(e).__name__}: {str(e)[:300]})") from e
    return tree, meta


# Settings that determine pre-trained agents (and nothing else).
_PRETRAIN_KEYS = ("dataset", "data_path", "model", "width", "num_agents", "partition", "seed", "pretrain_epochs",
                  "batch_size", "data.normalization", "data.augment", "data.crop_padding", "data.alpha",
                  "data.classes_per_agent", "data.shards_per_agent", "data.min_agent_examples",
                  "data.steps_per_epoch", "data.max_train_examples", "pretrain.optimizer", "pretrain.lr",
                  "pretrain.lr_decay", "optim.momentum", "optim.nesterov", "optim.weight_decay")


# Keys added later: part of the fingerprint only when they differ from these defaults, so agents
# cached before they existed keep their fingerprint (and cache path).
_PRETRAIN_KEYS_SINCE = {"data.train_subset": 0, "data.pad_to": 0, "data.channels": 0, "data.num_classes": 0}


def pretrain_fingerprint(config) -> dict:
    out = {key: get_key(config, key) for key in _PRETRAIN_KEYS}
    out.update({key: get_key(config, key) for key, default in _PRETRAIN_KEYS_SINCE.items()
                if get_key(config, key) != default})
    out["centralized"] = config.algorithm == "centralized"
    return out


def pretrain_cache_path(config) -> pathlib.Path:
    fp = pretrain_fingerprint(config)
    digest = hashlib.sha256(json.dumps(fp, sort_keys=True).encode()).hexdigest()[:16]
    n = 1 if fp["centralized"] else config.num_agents
    return pathlib.Path(config.pretrain.cache_dir).expanduser() / f"{config.dataset}-{config.model}-N{n}-{digest}"


def check_fingerprint(meta: dict, config, path) -> None:
    want, got = pretrain_fingerprint(config), meta.get("fingerprint", {})
    want = {**_PRETRAIN_KEYS_SINCE, **want}
    diff = sorted(k for k in want if got.get(k, _PRETRAIN_KEYS_SINCE.get(k)) != want[k])
    if diff:
        details = ", ".join(f"{k}: saved {got.get(k)!r} vs now {want[k]!r}" for k in diff[:6])
        raise CheckpointError(f"pre-trained agents in {path} were made with other settings ({details})")


def tree_checksums(tree) -> list[int]:
    """CRC-32 of every leaf's bytes (in ``jax.tree.leaves`` order), from host copies."""
    import zlib

    import numpy as np
    return [zlib.crc32(np.ascontiguousarray(np.asarray(x)).tobytes()) for x in jax.tree.leaves(tree)]


class RunCheckpointer:
    """Round-indexed checkpoints of a run in ``<workdir>/checkpoints/<round>/`` (orbax): the stacked
    agent state (params, BatchNorm statistics, optimizer state) plus JSON meta (round, epoch and
    step counters, communication counters, number of metrics records, wall time, algorithm extras,
    and a CRC-32 of every array). Batch order, augmentation and merge data are pure functions of
    (seed, epoch / round), so no RNG or data-iterator state needs saving.

    :meth:`restore_latest` resumes from the newest checkpoint whose arrays match their checksums;
    a corrupt one is moved to ``<workdir>/checkpoints-corrupt/`` (kept, never deleted) and the next
    older one is tried, so rotation never removes the last intact checkpoint."""

    def __init__(self, workdir, keep: int = 2, verify: bool = True):
        import orbax.checkpoint as ocp
        self.dir = (pathlib.Path(workdir) / "checkpoints").absolute()
        self.corrupt_dir = self.dir.with_name("checkpoints-corrupt")
        self.verify = verify  # checksums need every array on this host (off for multi-process runs)
        self._ocp = ocp
        self.manager = ocp.CheckpointManager(self.dir, options=ocp.CheckpointManagerOptions(
            max_to_keep=keep, create=True, enable_async_checkpointing=False))

    def latest(self) -> int | None:
        return self.manager.latest_step()

    def save(self, round_: int, tree, meta: dict) -> None:
        ocp = self._ocp
        if self.verify:
            meta = {**meta, "checksums": {"kind": "crc32", "leaves": tree_checksums(tree)}}
        self.manager.save(round_, args=ocp.args.Composite(state=ocp.args.StandardSave(tree),
                                                          meta=ocp.args.JsonSave(meta)), force=True)
        self.manager.wait_until_finished()

    def restore(self, round_: int, abstract):
        """(state, meta) of checkpoint ``round_``; :class:`CheckpointError` when it cannot be read or
        its arrays do not match the checksums saved with it."""
        ocp = self._ocp
        target = _shapes_of(abstract)
        check_layout(self.dir / str(round_) / "state", target,
                     "resume it with the version that wrote it, or start afresh in another --workdir.")
        try:
            out = self.manager.restore(round_, args=ocp.args.Composite(state=ocp.args.StandardRestore(target),
                                                                      meta=ocp.args.JsonRestore()))
        except Exception as e:  # orbax raises many types for truncated / foreign / mismatched data
            raise CheckpointError(
                f"cannot restore checkpoint {self.dir / str(round_)}: it is corrupt or was written by another "
                f"model / algorithm ({type(e).__name__}: {str(e)[:300]})") from e
        saved = (out["meta"] or {}).get("checksums")
        if self.verify and saved is not None:
            got = tree_checksums(out["state"])
            bad = [i for i, (a, b) in enumerate(zip(got, saved["leaves"])) if a != b]
            if bad or len(got) != len(saved["leaves"]):
                raise CheckpointError(f"checkpoint {self.dir / str(round_)} is corrupt: {len(bad)} of {len(got)} "
                                      "arrays do not match the checksums saved with them")
        return out["state"], out["meta"]

    def restore_latest(self, abstract, log=print):
        """(round, state, meta) of the newest intact checkpoint, or None when there is none at all.
        Corrupt ones are moved aside with a message; if every checkpoint is corrupt,
        :class:`CheckpointError` (nothing is deleted). A checkpoint with another layout (another
        version / model) stops with :class:`CheckpointLayoutError` and stays where it is."""
        steps = sorted(self.manager.all_steps(), reverse=True)
        if not steps:
            return None
        problems = []
        for step in steps:
            try:
                state, meta = self.restore(step, abstract)
            except CheckpointLayoutError:
                raise  # not corrupt: older checkpoints have the same layout, and nothing is moved
            except CheckpointError as e:
                problems.append(str(e))
                self.corrupt_dir.mkdir(exist_ok=True)
                dest = self.corrupt_dir / f"{step}-{int(time.time())}"
                shutil.move(str(self.dir / str(step)), dest)
                self.manager.reload()
                log(f"{e}; moved it to {dest} and trying the previous checkpoint")
                continue
            return step, state, meta
        raise CheckpointError("no intact checkpoint to resume from (" + "; ".join(problems)[:600] + "). They were "
                              f"moved to {self.corrupt_dir}; rerun in another --workdir to start afresh.")

    def close(self) -> None:
        self.manager.close()
