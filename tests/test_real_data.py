"""The first-merge signature on real images (experiments/real_data_check.py), in the slow set."""
import os
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
FASHION = pathlib.Path("/usr/share/datasets/fashion-mnist")


@pytest.mark.slow
def test_real_data_check_passes_on_fashion_mnist(tmp_path):
    if not FASHION.is_dir():
        if os.environ.get("DIMAT_REQUIRE_REAL_DATA"):
            pytest.fail(f"{FASHION} is missing: apt-get install dataset-fashion-mnist")
        pytest.skip("Fashion-MNIST IDX files not installed (apt-get install dataset-fashion-mnist)")
    out = tmp_path / "check.json"
    r = subprocess.run([sys.executable, "experiments/real_data_check.py", "--data_path", str(FASHION),
                        "--train", "6000", "--test", "1000", "--out", str(out)], cwd=ROOT, capture_output=True,
                       text=True, timeout=3600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert r.stdout.count("PASS") == 3 and out.is_file()
