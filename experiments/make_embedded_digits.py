"""Rebuild ``dimat_jax/data/resources/digits.npz`` from scikit-learn's copy of UCI digits.

The package ships the result, so users never need scikit-learn; this script documents exactly
how the file was made (run once by maintainers: ``pip install scikit-learn`` first).

Source: "Optical Recognition of Handwritten Digits", E. Alpaydin & C. Kaynak (1998), UCI Machine
Learning Repository, CC BY 4.0, doi:10.24432/C50P49 — scikit-learn's ``load_digits`` copy
(1,797 images, 8x8, integer pixels 0..16, 10 classes).

Split: stratified, fixed seed 0: 20 % of every class (rounded up) is held out as the test set.
Pixels are stored unchanged (uint8 in 0..16, ``pixel_max`` = 16).
"""
import pathlib

import numpy as np
from sklearn.datasets import load_digits

OUT = pathlib.Path(__file__).resolve().parents[1] / "dimat_jax" / "data" / "resources" / "digits.npz"


def main():
    d = load_digits()
    x = d.images.astype(np.uint8)[..., None]  # [1797, 8, 8, 1]
    y = d.target.astype(np.int32)
    rng = np.random.default_rng(0)
    test = []
    for c in range(10):
        idx = np.flatnonzero(y == c)
        test.extend(rng.permutation(idx)[: int(np.ceil(0.2 * len(idx)))])
    test = np.sort(np.asarray(test))
    train = np.setdiff1d(np.arange(len(y)), test)
    np.savez_compressed(OUT, x_train=x[train], y_train=y[train], x_test=x[test], y_test=y[test],
                        pixel_max=np.int32(16))
    print(f"wrote {OUT}: train {len(train)}, test {len(test)}, {OUT.stat().st_size} bytes")


if __name__ == "__main__":
    main()
