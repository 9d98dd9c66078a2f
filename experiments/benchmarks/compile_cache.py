"""What the on-disk compilation cache saves: the quick start twice in fresh processes sharing a new,
empty cache directory (runtime.compile_cache), then once with the cache off. Prints a table of
wall time and XLA compile time per run.

  python experiments/benchmarks/compile_cache.py [--config configs/quickstart.py]
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile

PROBE = r"""
import json, sys, time
from jax import monitoring
compile_s = [0.0]
def on_duration(event, duration, **kw):
    if event == "/jax/core/compile/backend_compile_duration":
        compile_s[0] += duration
monitoring.register_event_duration_secs_listener(on_duration)
from dimat_jax.main import run_cli
sys.argv = ["dimat_jax.main", "--config", sys.argv[1], "--workdir", sys.argv[2], "--config.log.progress=False",
            "--config.pretrain.cache_dir=", "--config.runtime.compile_cache=" + sys.argv[3]]
t = time.perf_counter()
try:
    run_cli()
except SystemExit:
    pass
print("RESULT " + json.dumps({"wall_s": time.perf_counter() - t, "compile_s": compile_s[0]}))
"""


def run(config: str, workdir: str, cache: str) -> dict:
    out = subprocess.run([sys.executable, "-c", PROBE, config, workdir, cache], capture_output=True, text=True,
                         check=True).stdout
    return json.loads(next(line for line in out.splitlines() if line.startswith("RESULT "))[7:])


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="configs/quickstart.py")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        rows = [("cache, cold", run(args.config, f"{tmp}/a", f"{tmp}/xla")),
                ("cache, warm", run(args.config, f"{tmp}/b", f"{tmp}/xla")),
                ("cache off", run(args.config, f"{tmp}/c", "off"))]
    print("| run | wall s | XLA compile s |\n|---|---|---|")
    for name, r in rows:
        print(f"| {name} | {r['wall_s']:.1f} | {r['compile_s']:.1f} |")


if __name__ == "__main__":
    main()
