"""Module structure: every module imports on its own (no import cycles), reading a config loads no
JAX, and no algorithm imports the runner."""
import json
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]

CHECK = r"""
import importlib, json, pkgutil, sys
import dimat_jax
names = sorted(m.name for m in pkgutil.walk_packages(dimat_jax.__path__, "dimat_jax."))
out = {}
for name in names:
    for loaded in [m for m in sys.modules if m == "dimat_jax" or m.startswith("dimat_jax.")]:
        del sys.modules[loaded]
    try:
        importlib.import_module(name)
        out[name] = sorted(m for m in sys.modules if m.startswith("dimat_jax."))
    except Exception as e:  # an import cycle shows up as a partially initialised module
        out[name] = f"{type(e).__name__}: {e}"
print(json.dumps(out))
"""


def test_every_module_imports_alone_and_algorithms_never_import_the_runner():
    r = subprocess.run([sys.executable, "-c", CHECK], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    result = json.loads(r.stdout.strip().splitlines()[-1])
    failed = {k: v for k, v in result.items() if isinstance(v, str)}
    assert not failed, failed
    assert len(result) > 30
    runner = {"dimat_jax.train", "dimat_jax.main", "dimat_jax.sweep"}
    for name, loaded in result.items():
        if name.startswith("dimat_jax.algorithms"):
            assert not runner & set(loaded), (name, runner & set(loaded))


def test_reading_a_config_loads_no_jax():
    code = ("import sys, dimat_jax.config as c; cfg = c.load_config_file('configs/quickstart.py'); "
            "assert 'jax' not in sys.modules and 'numpy' not in sys.modules, sorted(sys.modules)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
