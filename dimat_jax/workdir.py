"""A run's working directory: what it holds, who may write it, and stopping gracefully.

- :func:`check_workdir`: 'fresh', 'resume' or 'finished' for running a config there; a workdir
  holding a run with other settings is refused, never overwritten.
- :class:`WorkdirLock`: an exclusive ``flock`` on ``<workdir>/.lock`` for the run's lifetime, so a
  second run on the same workdir is refused (the kernel drops the lock when a process dies, so a
  crashed run never blocks the next one).
- :func:`check_writable`: the workdir and its checkpoint directory accept files, before any work.
- :func:`set_aside_metrics`: on resume, keep the records a checkpoint covers and move later ones
  aside.
- :class:`GracefulStop`: the first SIGINT / SIGTERM asks the run to stop after the round.
"""
from __future__ import annotations

import json
import os
import pathlib
import signal
import threading

from dimat_jax import report
from dimat_jax.config import flatten, get_default_config

RESULT_FILES = ("metrics.jsonl", "summary.json")
IGNORED_ON_RESUME = ("log.", "runtime.")  # settings that may change between a run and its resumption


class WorkdirError(RuntimeError):
    """The workdir cannot take this run (other settings, in use, unwritable); nothing was overwritten."""


def started(workdir) -> bool:
    """Whether a run in ``workdir`` produced anything beyond its config (records or checkpoints)."""
    workdir = pathlib.Path(workdir)
    ckpt = workdir / "checkpoints"
    return any((workdir / f).exists() for f in RESULT_FILES) or (ckpt.is_dir() and any(ckpt.iterdir()))


def check_workdir(workdir, config) -> str:
    """'fresh', 'resume' or 'finished' for running ``config`` in ``workdir``.

    A workdir holding a run with other settings is refused (nothing is overwritten). Settings the
    saved config lacks (added by a later version) match when they hold their default, which keeps
    the earlier behaviour. A config.json left by a start that failed before producing anything (bad
    data, say) does not count: the corrected rerun starts afresh."""
    workdir = pathlib.Path(workdir)
    if workdir.exists() and not workdir.is_dir():
        raise WorkdirError(f"workdir {workdir} exists and is not a directory")
    saved = workdir / "config.json"
    if not saved.exists() or not started(workdir):
        found = [f for f in RESULT_FILES if (workdir / f).exists()]
        if found:
            raise WorkdirError(f"workdir {workdir} holds results ({', '.join(found)}) but no config.json; nothing "
                               "was overwritten. Choose another --workdir or move these files away.")
        return "fresh"
    try:
        old = flatten(json.loads(saved.read_text()))
    except (OSError, json.JSONDecodeError) as e:
        raise WorkdirError(f"{saved} is unreadable ({e}); nothing was overwritten. Use another --workdir.") from e
    new, defaults = flatten(config.to_dict()), flatten(get_default_config().to_dict())
    for k in set(new) - set(old):
        if k in defaults and new[k] == defaults[k]:
            old[k] = new[k]
    diff = sorted(k for k in set(old) | set(new)
                  if old.get(k) != new.get(k) and not k.startswith(IGNORED_ON_RESUME))
    if diff:
        details = "; ".join(f"{k}: {old.get(k)!r} there, {new.get(k)!r} now" for k in diff[:8])
        raise WorkdirError(f"workdir {workdir} holds a run with other settings ({details}); nothing was "
                           "overwritten. Choose another --workdir, or rerun with the same settings to resume it.")
    return "finished" if (workdir / "summary.json").exists() else "resume"


def check_writable(workdir) -> None:
    """Create ``workdir`` and its ``checkpoints/`` and write a probe file in each; raise
    :class:`WorkdirError` naming the directory that refuses (before any work is done)."""
    workdir = pathlib.Path(workdir)
    for d in (workdir, workdir / "checkpoints"):
        try:
            d.mkdir(parents=True, exist_ok=True)
            probe = d / f".write-test-{os.getpid()}"
            probe.write_text("")
            probe.unlink()
        except OSError as e:
            raise WorkdirError(f"cannot write to {d} ({e.strerror or e}); make it writable or choose another "
                               "--workdir. Nothing was started.") from e


class WorkdirLock:
    """Exclusive lock on ``<workdir>/.lock`` (``fcntl.flock``), held until :meth:`release` (or process
    exit). The file records the holder's pid for the message a second run gets."""

    def __init__(self, workdir):
        import fcntl
        self.path = pathlib.Path(workdir) / ".lock"
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.read(self._fd, 64).decode(errors="replace").strip() or "unknown"
            os.close(self._fd)
            self._fd = None
            raise WorkdirError(f"workdir {self.path.parent} is in use by another run (pid {holder}); wait for it to "
                               "finish, or choose another --workdir. Nothing was changed.") from None
        os.ftruncate(self._fd, 0)
        os.write(self._fd, str(os.getpid()).encode())

    def release(self) -> None:
        if self._fd is not None:
            import fcntl
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.release()
        return False


def set_aside_metrics(workdir, keep: int, log, primary: bool = True, barrier=lambda name: None) -> list[dict]:
    """Keep the first ``keep`` records of metrics.jsonl; move any later ones (written after the
    checkpoint being resumed; they will be recomputed) to metrics.discarded.jsonl. A record the
    checkpoint covers that cannot be parsed is an error (nothing is changed)."""
    from dimat_jax.checkpoint import CheckpointError
    path = pathlib.Path(workdir) / report.METRICS_FILE
    if not path.exists():
        if keep:
            raise CheckpointError(f"{path} is missing but the checkpoint covers {keep} records; it was moved or "
                                  "deleted. Nothing was changed.")
        return []
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    if len(lines) < keep:
        raise CheckpointError(f"{path} has {len(lines)} records but the checkpoint expects {keep}; "
                              "it was edited or truncated. Nothing was changed.")
    records = []
    for i, line in enumerate(lines[:keep], start=1):
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as e:
            raise CheckpointError(f"{path} line {i} (covered by the checkpoint) is not valid JSON ({e.msg}); it was "
                                  "edited or half-written. Restore that line, or start afresh in another --workdir. "
                                  "Nothing was changed.") from e
    if len(lines) > keep and primary:
        with open(pathlib.Path(workdir) / "metrics.discarded.jsonl", "a") as f:
            f.write("\n".join(lines[keep:]) + "\n")
        path.write_text("".join(line + "\n" for line in lines[:keep]))
        log(f"{len(lines) - keep} metrics record(s) written after the last checkpoint were moved to "
            "metrics.discarded.jsonl (they are recomputed now)")
    barrier("dimat_jax:metrics-set-aside")
    return records


class GracefulStop:
    """First SIGINT / SIGTERM: finish the round, checkpoint, stop. Second SIGINT: abort at once."""

    def __init__(self, log):
        self.log, self.requested, self._old = log, False, {}

    def _handler(self, signum, frame):
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = True
        outer = getattr(self._old.get(signum), "__self__", None)
        if isinstance(outer, GracefulStop):  # a sweep around this run stops too, after this run
            outer.requested = True
        self.log(f"\n{signal.Signals(signum).name} received: stopping after this round and saving a checkpoint "
                 "(Ctrl-C again to abort without saving)")

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._handler)
        return self

    def __exit__(self, *exc):
        for sig, old in self._old.items():
            signal.signal(sig, old)
        return False
