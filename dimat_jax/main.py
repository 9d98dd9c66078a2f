r"""dimat_jax command line.

  python -m dimat_jax.main --config configs/quickstart.py [--workdir DIR] [--config.<key>=<value> ...]

--config names an ml_collections config file (a Python file with get_config()); any key can be
overridden with --config.<key>=<value>, nested ones with dots (--config.data.alpha=0.1). Unknown
keys, wrong types and invalid combinations stop the run before any work, naming the key and the
allowed values. --dry_run validates and prints the resolved config. Outputs go to --workdir
(default runs/<config name>-<timestamp>): config.json, partition.json, topology.json,
metrics.jsonl (one JSON object per evaluation), summary.json, accuracy.png, checkpoints/.

Rerunning the same command with the same --workdir resumes an interrupted run from its latest
checkpoint (exactly), or reports that it has finished (exit 0); a workdir holding a run with other
settings is refused and never overwritten. Ctrl-C (or SIGTERM) once: finish the round, save a
checkpoint, exit 130; twice: abort at once.
"""
from __future__ import annotations

import datetime
import pathlib
import sys

from absl import app, flags, logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Path to a config file (Python, defines get_config()); override keys with --config.<key>=<value>.",
    lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Output directory (default: runs/<config name>-<timestamp>).")
_DRY_RUN = flags.DEFINE_bool("dry_run", False, "Validate the config, print it, and exit without training.")


def _fail(msg: str) -> None:
    print(f"error: {msg}", file=sys.stderr)
    sys.exit(2)


def _config_file_problem(e: BaseException) -> str | None:
    """A one-line description of an error raised while loading the --config file, or None."""
    if isinstance(e, SyntaxError):
        return (f"cannot load --config: syntax error in {e.filename} line {e.lineno}: {e.msg}"
                + (f" ({e.text.strip()})" if e.text else ""))
    if isinstance(e, AttributeError) and "get_config" in str(e):
        return "the --config file defines no get_config() (it must return a ConfigDict, see configs/quickstart.py)"
    if type(e).__name__ == "ConfigError":
        return f"invalid config: {e}"
    return None


def _suggest(key: str) -> str:
    """' (did you mean "data.data_dir"?)' for an unknown override key, from the schema's keys."""
    import difflib

    from dimat_jax.config import dotted_keys
    known = dotted_keys()
    same_leaf = [k for k in known if k.rsplit(".", 1)[-1] == key.rsplit(".", 1)[-1]]
    hint = same_leaf or difflib.get_close_matches(key, known, n=1)
    return f' (did you mean "{hint[0]}"?)' if hint else ""


def _parse_flags(argv):
    """absl flag parsing that turns config mistakes into one-line errors instead of tracebacks."""
    import re
    try:
        return flags.FLAGS(argv)
    except SystemExit as e:  # absl exits 1 after printing --help; asking for help is not an error
        if e.code == 1 and any(a in ("--help", "-h", "--helpshort", "--helpfull", "-?") for a in argv[1:]):
            sys.exit(0)
        raise
    except flags.Error as e:
        problem, cause = None, e.__context__  # the config file's own exception, wrapped by ml_collections
        while cause is not None:  # the innermost one says what went wrong
            problem = _config_file_problem(cause) or problem
            cause = cause.__context__
        if problem:
            _fail(problem)
        unknown = re.search(r"flag '--?config\.([\w.]+)'", str(e))
        if unknown:
            _fail(f"unknown config key {unknown.group(1)!r}{_suggest(unknown.group(1))}")
        _fail(f"{e}\nRun with --help for usage.")
    except Exception as e:  # noqa: BLE001 — config files run arbitrary code; ml_collections: unknown key, bad type
        problem = _config_file_problem(e)
        if problem:
            _fail(problem)
        if not isinstance(e, (AttributeError, KeyError, TypeError, ValueError)):
            raise
        msg = str(e).strip("'\"").replace("\\n", " ").replace("\\'", "'").replace('\\"', '"')
        key = re.fullmatch(r"[\w.]+", msg)
        _fail(f"bad --config override: {msg}" + (_suggest(msg) if key and "Did you mean" not in msg else ""))


def default_workdir(config_path: str) -> pathlib.Path:
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    return pathlib.Path("runs") / f"{pathlib.Path(config_path or 'config').stem}-{stamp}"


def main(argv):
    if len(argv) > 1:
        _fail(f"unexpected arguments {argv[1:]}; settings are passed as --config.<key>=<value>")
    if not flags.FLAGS["verbosity"].present:  # absl INFO chatter (XLA backend probing) off by default
        logging.set_verbosity(logging.WARNING)
    try:
        config = _CONFIG.value
        if config is not None:
            config.keys()  # ml_collections defers config-file errors to first access
    except OSError as e:
        _fail("cannot load --config: " + " ".join(str(e).split("\n", 1)[-1].split()))
    except Exception as e:  # noqa: BLE001 — the config file's own code failed
        _fail(_config_file_problem(e) or f"cannot load --config: {type(e).__name__}: {e}")
    if config is None:
        _fail("--config is required, e.g. --config configs/quickstart.py")
    from dimat_jax.config import ConfigError  # heavy imports after flag parsing (fast --help)
    from dimat_jax.train import preflight
    try:
        preflight(config)  # the schema, then the graph for this algorithm: before any work
    except ConfigError as e:
        _fail(f"invalid config: {e}")
    if _DRY_RUN.value:
        print(config)
        return
    if config.distributed.enabled:  # before any other JAX call
        from dimat_jax import distributed
        distributed.initialize(config.distributed.coordinator, config.distributed.num_processes,
                               config.distributed.process_id)
    from dimat_jax import train
    from dimat_jax.checkpoint import CheckpointError
    from dimat_jax.data import DataError, PartitionError
    from dimat_jax.models import ModelError
    from dimat_jax.topology import TopologyError
    workdir = _WORKDIR.value or default_workdir(flags.FLAGS["config"].config_filename)
    try:
        train.run(config, workdir)
    except (ConfigError, DataError, PartitionError, ModelError, TopologyError, train.WorkdirError) as e:
        _fail(str(e))
    except train.NonFiniteError as e:
        _fail(f"{e}. Results up to the last good evaluation are in {workdir}/metrics.jsonl; the last good "
              "checkpoint is kept")
    except train.RunInterrupted as e:
        print(str(e), file=sys.stderr)
        sys.exit(130)
    except CheckpointError as e:
        _fail(str(e))


def run_cli():
    app.run(main, flags_parser=_parse_flags)


if __name__ == "__main__":
    run_cli()
