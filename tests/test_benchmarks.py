"""Benchmark scripts stay runnable: the GPU benchmark's --smoke mode runs the same code path on CPU."""
import json
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.mark.slow  # a subprocess compiling a full ResNet-20 step (~65 s)
def test_gpu_benchmark_smoke(tmp_path):
    out = tmp_path / "gpu.json"
    r = subprocess.run([sys.executable, str(ROOT / "experiments" / "benchmarks" / "gpu.py"), "--smoke",
                        "--out", str(out)], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    res = json.loads(out.read_text())
    assert res["images_per_s"] > 0 and res["flops_per_step"] > 0 and res["merge_round_s"]["data_passes"] == 3
