"""IDX files: the format of MNIST and Fashion-MNIST as distributed (gzipped or not).

An IDX file is a big-endian header — two zero bytes, a type code (0x08 = unsigned byte), the number
of dimensions d — then d uint32 sizes and the data. Images: magic 0x00000803, sizes (count, rows,
cols); labels: magic 0x00000801, size (count). A folder holds the four standard files
``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``, ``t10k-images-idx3-ubyte`` and
``t10k-labels-idx1-ubyte``, each optionally ending in ``.gz`` (Debian's ``dataset-fashion-mnist``
package installs them in ``/usr/share/datasets/fashion-mnist``).
"""
from __future__ import annotations

import gzip
import pathlib
import struct
import zlib

import numpy as np

IMAGES_MAGIC, LABELS_MAGIC = 0x00000803, 0x00000801
FILES = {"x_train": "train-images-idx3-ubyte", "y_train": "train-labels-idx1-ubyte",
         "x_test": "t10k-images-idx3-ubyte", "y_test": "t10k-labels-idx1-ubyte"}


class IdxError(ValueError):
    """An IDX file is missing, truncated or not what its name says."""


def read_idx(path, expect_magic: int) -> np.ndarray:
    """The uint8 array stored in IDX file ``path`` (gzipped when it ends in ``.gz``).

    Checks the magic number (``expect_magic``: images 0x803, labels 0x801) and that the data holds
    exactly the product of the header's sizes; raises :class:`IdxError` naming the file otherwise.
    """
    path = pathlib.Path(path)
    try:
        raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    except (OSError, EOFError, zlib.error, gzip.BadGzipFile) as e:
        raise IdxError(f"cannot read {path}: {e}") from e
    if len(raw) < 4:
        raise IdxError(f"{path} is too short ({len(raw)} bytes) to be an IDX file")
    magic = struct.unpack(">I", raw[:4])[0]
    if magic != expect_magic:
        kind = {IMAGES_MAGIC: "images", LABELS_MAGIC: "labels"}[expect_magic]
        raise IdxError(f"{path} has magic number 0x{magic:08x}, but IDX {kind} of unsigned bytes have "
                       f"0x{expect_magic:08x}; is it the right file (or a corrupt one)?")
    ndim = magic & 0xFF
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise IdxError(f"{path} is truncated inside its header")
    shape = struct.unpack(f">{ndim}I", raw[4:header])
    size = int(np.prod(shape, dtype=np.int64))
    if len(raw) - header != size:
        raise IdxError(f"{path}: the header announces shape {shape} ({size} bytes of data) but the file holds "
                       f"{len(raw) - header}; the file is truncated or corrupt")
    return np.frombuffer(raw, np.uint8, count=size, offset=header).reshape(shape)


def find_files(folder) -> dict[str, pathlib.Path]:
    """The four standard IDX files in ``folder`` (each plain or ``.gz``), keyed x_train … y_test."""
    folder = pathlib.Path(folder).expanduser()
    if not folder.is_dir():
        raise IdxError(f"{folder} is not a folder (expected one holding the four IDX files "
                       f"{', '.join(FILES.values())}, optionally gzipped)")
    out, missing = {}, []
    for key, stem in FILES.items():
        for name in (stem, stem + ".gz"):
            if (folder / name).is_file():
                out[key] = folder / name
                break
        else:
            missing.append(stem + "[.gz]")
    if missing:
        raise IdxError(f"{folder} lacks {', '.join(missing)} (a folder with the four standard IDX files of "
                       "MNIST / Fashion-MNIST is expected)")
    return out


def load_folder(folder) -> dict[str, np.ndarray]:
    """``x_train, y_train, x_test, y_test`` from the IDX files in ``folder``: images uint8 [n, H, W],
    labels uint8 [n]. Image and label counts must agree per split and image sizes across splits."""
    files = find_files(folder)
    arrays = {k: read_idx(p, IMAGES_MAGIC if k.startswith("x") else LABELS_MAGIC) for k, p in files.items()}
    for split in ("train", "test"):
        x, y = arrays[f"x_{split}"], arrays[f"y_{split}"]
        if x.ndim != 3:
            raise IdxError(f"{files[f'x_{split}']} holds shape {x.shape}; images need (count, rows, cols)")
        if y.ndim != 1:
            raise IdxError(f"{files[f'y_{split}']} holds shape {y.shape}; labels need (count,)")
        if len(x) != len(y):
            raise IdxError(f"{split} split: {len(x)} images in {files[f'x_{split}'].name} but {len(y)} labels in "
                           f"{files[f'y_{split}'].name}")
        if len(x) == 0:
            raise IdxError(f"{files[f'x_{split}']} holds no images")
    if arrays["x_train"].shape[1:] != arrays["x_test"].shape[1:]:
        raise IdxError(f"train images are {arrays['x_train'].shape[1:]} but test images "
                       f"{arrays['x_test'].shape[1:]}")
    return arrays


def write_idx(path, array: np.ndarray) -> None:
    """Write a uint8 array as an IDX file (gzipped when ``path`` ends in ``.gz``): for tests and for
    exporting subsets in the standard format."""
    array = np.ascontiguousarray(array, np.uint8)
    magic = 0x00000800 | array.ndim
    data = struct.pack(">I", magic) + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes()
    path = pathlib.Path(path)
    path.write_bytes(gzip.compress(data) if path.suffix == ".gz" else data)
