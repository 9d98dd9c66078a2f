"""Dataset sources: embedded digits, MNIST / Fashion-MNIST IDX files, TFDS (CIFAR-10/100, MNIST,
Fashion-MNIST), Tiny ImageNet, .npz.

Every source returns a :class:`Dataset` of host numpy arrays, images NHWC (uint8 or float32) and
int32 labels. Normalisation happens later, on device (see ``pipeline.py``), with the per-channel
``mean``/``std`` stored here in units of a white pixel (``x / pixel_max``).
"""
from __future__ import annotations

import dataclasses
import hashlib
import importlib.resources
import os
import pathlib

import numpy as np
from dimat_jax.choices import DATASETS, IDX_NAMES, TFDS_NAMES  # noqa: F401  (re-exported)


class DataError(ValueError):
    """A dataset cannot be found, read or understood; the message says how to fix it."""


@dataclasses.dataclass(frozen=True)
class Dataset:
    """Host-side dataset. ``x_*``: [n, H, W, C] uint8 or float32; ``y_*``: [n] int32."""
    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    num_classes: int
    mean: tuple[float, ...]   # per channel, of x / pixel_max
    std: tuple[float, ...]
    pixel_max: float          # value of a white pixel: 255 (uint8), 16 (digits), 1.0 (float)
    augment: str              # default augmentation: 'none' | 'crop' | 'flip' | 'crop_flip'
    crop_padding: int         # default padding of the random crop
    source: str               # where the arrays came from (logged)
    notes: tuple = ()         # warnings about the data, logged at the start of a run

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.x_train.shape[1:])


# Per-dataset channel statistics of x / pixel_max (docs/algorithm.md §5).
NORMALIZATION = {
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    "tiny_imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),  # ImageNet statistics
    "mnist": ((0.1307,), (0.3081,)),
    "fashion_mnist": ((0.2860,), (0.3530,)),
    # Training split of the embedded digits (tests recompute it from the data).
    "digits": ((0.30555,), (0.37612,)),
}
# What the reference code uses (`data.normalization='reference'`): only CIFAR-100 differs.
# Its Tiny ImageNet statistics are divided by 255 twice, a bug we do not reproduce (docs/algorithm.md §5).
REFERENCE_NORMALIZATION = {
    "cifar100": ((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)),
}

# Default augmentation per dataset: (kind, crop padding).
_AUGMENT = {
    "cifar10": ("crop_flip", 4), "cifar100": ("crop_flip", 4), "tiny_imagenet": ("crop_flip", 4),
    "mnist": ("crop", 2), "fashion_mnist": ("crop", 2), "digits": ("crop", 1),
    "npz": ("none", 0),
}



def normalization(name: str, flavour: str = "dataset") -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Channel (mean, std) for ``name``; ``flavour='reference'`` gives the reference code's."""
    if flavour == "reference" and name in REFERENCE_NORMALIZATION:
        return REFERENCE_NORMALIZATION[name]
    return NORMALIZATION[name]


def load(name: str, *, data_path: str = "", data_dir: str = "", normalization_flavour: str = "dataset",
         num_classes: int = 0) -> Dataset:
    """Load dataset ``name`` (one of :data:`DATASETS`); ``num_classes`` states K for ``npz`` (0: infer)."""
    if name == "digits":
        ds = load_digits()
    elif name in IDX_NAMES and data_path:
        ds = load_idx(name, data_path)
    elif name in TFDS_NAMES:
        ds = load_tfds(name, data_dir=data_dir)
    elif name == "tiny_imagenet":
        ds = load_tiny_imagenet(data_path)
    elif name == "npz":
        ds = load_npz(data_path, num_classes)
    else:
        raise DataError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
    if name in NORMALIZATION:
        mean, std = normalization(name, normalization_flavour)
        ds = dataclasses.replace(ds, mean=mean, std=std)
    return ds


def _make(name, x_train, y_train, x_test, y_test, *, num_classes, pixel_max, source, mean=None, std=None):
    aug, pad = _AUGMENT[name]
    x_train, x_test = _nhwc(x_train, "x_train"), _nhwc(x_test, "x_test")
    for what, x in (("training", x_train), ("test", x_test)):
        if len(x) == 0:
            raise DataError(f"{name} ({source}) has no {what} examples")
    if x_train.shape[1:] != x_test.shape[1:]:
        raise DataError(f"{name} ({source}): training images are {x_train.shape[1:]} but test images "
                        f"{x_test.shape[1:]}; both splits need the same image shape")
    if mean is None:
        mean, std = channel_stats(x_train, pixel_max)
    return Dataset(name=name, x_train=x_train, y_train=np.asarray(y_train, np.int32),
                   x_test=x_test, y_test=np.asarray(y_test, np.int32), num_classes=int(num_classes),
                   mean=tuple(mean), std=tuple(std), pixel_max=float(pixel_max), augment=aug,
                   crop_padding=pad, source=source)


def _nhwc(x: np.ndarray, what: str) -> np.ndarray:
    x = np.asarray(x)
    if x.ndim == 3:
        x = x[..., None]
    if x.ndim != 4:
        raise DataError(f"{what} must be NHWC or NHW (grayscale); got shape {x.shape}")
    if x.dtype != np.uint8:
        x = x.astype(np.float32)
    return x


def pad_images(x: np.ndarray, size: int) -> np.ndarray:
    """Zero-pad [n, H, W, C] images symmetrically to ``size`` x ``size`` (an odd margin puts the
    extra row / column at the bottom / right), e.g. 28x28 MNIST to the 32x32 CIFAR layout."""
    h, w = x.shape[1:3]
    if size < max(h, w):
        raise DataError(f"data.pad_to = {size} is smaller than the images ({h}x{w}); use 0 (no padding) or >= {max(h, w)}")
    top, left = (size - h) // 2, (size - w) // 2
    return np.pad(x, ((0, 0), (top, size - h - top), (left, size - w - left), (0, 0)))


def with_channels(ds: "Dataset", channels: int) -> "Dataset":
    """``ds`` with grey images repeated to ``channels`` (1 or 3) and its normalisation constants
    repeated alike; a no-op when the images already have that many channels."""
    c = ds.image_shape[-1]
    if channels == c:
        return ds
    if c != 1:
        raise DataError(f"data.channels = {channels}: only grey (1-channel) images can be repeated, but "
                        f"{ds.name} images have {c} channels; use data.channels = 0 (keep) or {c}")
    rep = lambda x: np.repeat(x, channels, axis=-1)  # noqa: E731
    return dataclasses.replace(ds, x_train=rep(ds.x_train), x_test=rep(ds.x_test),
                               mean=tuple(ds.mean) * channels, std=tuple(ds.std) * channels)


def channel_stats(x: np.ndarray, pixel_max: float) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and (population) std of ``x / pixel_max`` for x [n, H, W, C]."""
    c = x.shape[-1]
    flat = x.reshape(-1, c).astype(np.float64) / pixel_max
    std = flat.std(0)
    std = np.where(std > 0, std, 1.0)
    return tuple(float(v) for v in flat.mean(0)), tuple(float(v) for v in std)


# --------------------------------------------------------------------------- embedded digits
def load_digits() -> Dataset:
    """UCI handwritten digits (CC BY 4.0): 1,433 train / 364 test, 8x8x1, 10 classes, 0..16 pixels.

    Shipped inside the package (47 kB); see ``experiments/make_embedded_digits.py``.
    """
    ref = importlib.resources.files("dimat_jax.data") / "resources" / "digits.npz"
    with importlib.resources.as_file(ref) as path, np.load(path) as f:
        arrays = {k: f[k] for k in ("x_train", "y_train", "x_test", "y_test")}
        pixel_max = int(f["pixel_max"])
    return _make("digits", **arrays, num_classes=10, pixel_max=pixel_max, source="embedded UCI digits")


# --------------------------------------------------------------------------- local .npz files
def load_npz(path: str, num_classes: int = 0) -> Dataset:
    """A user's ``.npz`` with ``x_train, y_train, x_test, y_test``.

    Images NHWC or NHW (grayscale), uint8 (0..255) or float (already scaled, white = 1.0), the same
    dtype, scale and image shape in both splits, every pixel finite; integer labels 0..K-1 with K
    = ``num_classes`` (0: inferred as the largest label + 1, which must leave at most half the
    classes empty). Every test class must occur in training. Normalisation statistics are computed
    from ``x_train``. Anything else raises :class:`DataError` naming the array and the fix.
    """
    if not path:
        raise DataError("dataset 'npz' needs --config.data_path=/path/to/file.npz "
                        "(arrays x_train, y_train, x_test, y_test)")
    p = pathlib.Path(path).expanduser()
    if not p.is_file():
        raise DataError(f"data_path {str(p)!r} does not exist or is not a file")
    arrays = _read_npz(p)
    _check_npz(arrays, p)
    x_train = arrays["x_train"]
    pixel_max = 255.0 if x_train.dtype == np.uint8 else 1.0
    k = _npz_classes(arrays["y_train"], arrays["y_test"], num_classes, p)
    notes = ()
    empty = sorted(set(range(k)) - set(np.unique(arrays["y_train"]).tolist()))
    if empty:
        notes = (f"note: class(es) {_short(empty)} of 0..{k - 1} have no training example in {p}; the model has "
                 f"{k} outputs",)
    ds = _make("npz", **arrays, num_classes=k, pixel_max=pixel_max, source=f"npz file {p}")
    return dataclasses.replace(ds, notes=notes)


def _short(values, limit: int = 8) -> str:
    values = list(values)
    return ", ".join(map(str, values[:limit])) + (f", … ({len(values)} in all)" if len(values) > limit else "")


def _read_npz(p: pathlib.Path) -> dict:
    import zipfile
    import zlib
    head = p.read_bytes()[:6]
    if head.startswith(b"\x93NUMPY"):
        raise DataError(f"{p} is a single .npy array, not an .npz archive; save the four arrays together with "
                        "np.savez(path, x_train=..., y_train=..., x_test=..., y_test=...)")
    if not head.startswith(b"PK"):
        raise DataError(f"{p} is not an .npz archive (a zip file written by np.savez; it starts with {head!r}); "
                        "save the four arrays with np.savez(path, x_train=..., y_train=..., x_test=..., y_test=...)")
    try:
        with np.load(p, allow_pickle=False) as f:
            missing = [k for k in ("x_train", "y_train", "x_test", "y_test") if k not in f.files]
            if missing:
                raise DataError(f"{p} lacks array(s) {', '.join(missing)}; it has {', '.join(f.files)}")
            return {k: f[k] for k in ("x_train", "y_train", "x_test", "y_test")}
    except DataError:
        raise
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error, KeyError) as e:
        raise DataError(f"cannot read {p} as a .npz archive: it is truncated or corrupt "
                        f"({type(e).__name__}: {e}); write it again with np.savez") from e


def _check_npz(arrays: dict, p) -> None:
    """Shapes, dtypes, scales and finiteness of the four arrays (see :func:`load_npz`)."""
    for split in ("train", "test"):
        x, y = arrays[f"x_{split}"], arrays[f"y_{split}"]
        if not np.issubdtype(y.dtype, np.integer):
            raise DataError(f"y_{split} in {p} must hold integer labels, got dtype {y.dtype}")
        if y.ndim != 1 or len(y) != len(x):
            raise DataError(f"y_{split} in {p} must be 1-D with one label per image: "
                            f"x_{split} {x.shape}, y_{split} {y.shape}")
        if len(y) == 0:
            raise DataError(f"x_{split} in {p} holds no examples")
        if y.min() < 0:
            raise DataError(f"y_{split} in {p} has negative labels")
        if not (x.dtype == np.uint8 or np.issubdtype(x.dtype, np.floating)):
            raise DataError(f"x_{split} in {p} has dtype {x.dtype}; use uint8 (0..255) or float (white = 1.0)")
        if np.issubdtype(x.dtype, np.floating):
            bad = int(np.size(x) - np.count_nonzero(np.isfinite(x)))
            if bad:
                raise DataError(f"x_{split} in {p} has {bad} non-finite pixel value(s) (NaN or inf); fix or drop "
                                "those images")
    xtr, xte = arrays["x_train"], arrays["x_test"]
    if (xtr.dtype == np.uint8) != (xte.dtype == np.uint8):
        raise DataError(f"x_train in {p} is {xtr.dtype} but x_test is {xte.dtype}: both splits must be uint8 "
                        "(0..255) or both float (white = 1.0), else the test images are on another scale")
    if xtr.dtype != np.uint8:
        top_tr, top_te = float(np.max(xtr)), float(np.max(xte))
        if (top_tr <= 1.0) != (top_te <= 1.0) and max(top_tr, top_te) > 1.5:
            raise DataError(f"x_train in {p} has pixels up to {top_tr:g} but x_test up to {top_te:g}: the splits "
                            "are on different scales (0..1 vs 0..255?); scale both the same way")
    shape = lambda x: x.shape[1:] if x.ndim == 4 else x.shape[1:] + (1,)  # noqa: E731
    if shape(xtr) != shape(xte):
        raise DataError(f"x_train in {p} holds images of shape {shape(xtr)} but x_test {shape(xte)}; "
                        "both splits need the same image shape")


def _npz_classes(y_train, y_test, num_classes: int, p) -> int:
    """The class count K (``num_classes`` or inferred), after checking every label against it."""
    seen_train = set(np.unique(y_train).tolist())
    top = int(max(y_train.max(), y_test.max()))
    if num_classes:
        if top >= num_classes:
            where = "y_train" if y_train.max() >= num_classes else "y_test"
            raise DataError(f"{where} in {p} has label {top}, but data.num_classes = {num_classes} allows 0.."
                            f"{num_classes - 1}")
        k = num_classes
    else:
        k = top + 1
        distinct = len(seen_train | set(np.unique(y_test).tolist()))
        if distinct * 2 < k:
            raise DataError(f"labels in {p} take {distinct} distinct values but reach {top}: a {k}-class model would "
                            f"leave {k - distinct} classes empty. Relabel them 0..{distinct - 1}, or set "
                            "--config.data.num_classes to the true class count")
    unseen = sorted(set(np.unique(y_test).tolist()) - seen_train)
    if unseen:
        raise DataError(f"y_test in {p} holds class(es) {_short(unseen)} that no training example has; no agent can "
                        "learn them. Drop those test examples (or add training examples of them)")
    return k


# --------------------------------------------------------------------------- IDX folders
def load_idx(name: str, path: str) -> Dataset:
    """MNIST or Fashion-MNIST from a folder of the four standard IDX files (gzipped or not), e.g.
    Debian's ``dataset-fashion-mnist`` package (``/usr/share/datasets/fashion-mnist``)."""
    from dimat_jax.data.idx import IdxError, load_folder
    try:
        arrays = load_folder(path)
    except IdxError as e:
        raise DataError(f"dataset {name!r} from data_path: {e}") from e
    return _make(name, **arrays, num_classes=10, pixel_max=255, mean=(0,), std=(1,),
                 source=f"IDX files in {pathlib.Path(path).expanduser()}")


# --------------------------------------------------------------------------- TFDS
def _tfds_hint(name: str, data_dir: str) -> str:
    where = data_dir or os.environ.get("TFDS_DATA_DIR", "~/tensorflow_datasets")
    hint = (f"Prepare it once on a machine with internet access:\n"
            f"  pip install tensorflow tensorflow-datasets\n"
            f"  tfds build {name} --data_dir={where} --file_format=array_record\n"
            f"then copy that folder here and pass --config.data.data_dir=DIR (or set TFDS_DATA_DIR).")
    if name in IDX_NAMES:
        hint += "\n" + _idx_hint(name)
    return hint


def _idx_hint(name: str) -> str:
    if name == "fashion_mnist":
        return ("Or, with no TFDS at all, read the four standard IDX files: on Debian/Ubuntu "
                "`apt-get install dataset-fashion-mnist` puts them in /usr/share/datasets/fashion-mnist; pass "
                "--config.data_path=/usr/share/datasets/fashion-mnist (any folder holding "
                "train-images-idx3-ubyte[.gz], train-labels-idx1-ubyte[.gz], t10k-images-idx3-ubyte[.gz], "
                "t10k-labels-idx1-ubyte[.gz] works).")
    return ("Or, with no TFDS at all, pass --config.data_path=DIR, a folder holding the four standard IDX files "
            "train-images-idx3-ubyte[.gz], train-labels-idx1-ubyte[.gz], t10k-images-idx3-ubyte[.gz], "
            "t10k-labels-idx1-ubyte[.gz].")


def load_tfds(name: str, data_dir: str = "") -> Dataset:
    """CIFAR-10/100, MNIST, Fashion-MNIST from a *prepared* TFDS data dir (no download).

    Reads ArrayRecord-prepared data with ``tfds.data_source`` (no TensorFlow needed); data prepared
    in TFRecord format is read through ``tfds.load`` when TensorFlow is installed.
    """
    import tensorflow_datasets as tfds

    data_dir = data_dir or os.environ.get("TFDS_DATA_DIR") or None
    builder = tfds.builder(name, data_dir=data_dir)
    num_classes = builder.info.features["label"].num_classes
    splits = {}
    for split in ("train", "test"):
        try:
            source = tfds.data_source(name, split=split, data_dir=data_dir, download=False)
            splits[split] = _read_data_source(source)
        except NotImplementedError as e:  # prepared as TFRecord: needs TensorFlow
            if not builder.is_prepared():
                raise DataError(f"TFDS dataset {name!r} is not prepared in "
                                f"{builder.data_dir}. {_tfds_hint(name, data_dir or '')}") from e
            splits[split] = _read_with_tensorflow(name, split, data_dir)
        except (FileNotFoundError, AssertionError, KeyError) as e:  # KeyError: "splits is empty"
            raise DataError(f"TFDS dataset {name!r} is not prepared in {builder.data_dir}. "
                            f"{_tfds_hint(name, data_dir or '')}") from e
    (xtr, ytr), (xte, yte) = splits["train"], splits["test"]
    return _make(name, xtr, ytr, xte, yte, num_classes=num_classes, pixel_max=255, mean=(0,), std=(1,),
                 source=f"tfds {name} ({builder.data_dir})")


def _read_data_source(source) -> tuple[np.ndarray, np.ndarray]:
    n = len(source)
    if n == 0:
        raise DataError("empty TFDS split")
    try:  # fast path; tfds' mock source raises TypeError here
        items = source.__getitems__(list(range(n)))
    except TypeError:
        items = [source[i] for i in range(n)]
    x = np.stack([np.asarray(it["image"], np.uint8) for it in items])
    y = np.asarray([int(it["label"]) for it in items], np.int32)
    return x, y


def _read_with_tensorflow(name: str, split: str, data_dir) -> tuple[np.ndarray, np.ndarray]:
    try:
        import tensorflow  # noqa: F401
    except ImportError as e:
        raise DataError(
            f"TFDS dataset {name!r} is prepared in TFRecord format, which needs TensorFlow to read. "
            f"Either `pip install tensorflow-cpu`, or re-prepare it as ArrayRecord: "
            f"tfds build {name} --file_format=array_record") from e
    import tensorflow_datasets as tfds
    ds = tfds.load(name, split=split, data_dir=data_dir, download=False, as_supervised=True)
    xs, ys = [], []
    for x, y in tfds.as_numpy(ds.batch(1024)):
        xs.append(x)
        ys.append(y)
    return np.concatenate(xs).astype(np.uint8), np.concatenate(ys).astype(np.int32)


# --------------------------------------------------------------------------- Tiny ImageNet
def load_tiny_imagenet(path: str) -> Dataset:
    """Tiny ImageNet-200 from its standard extracted folder (``tiny-imagenet-200/``).

    Layout: ``wnids.txt``; ``train/<wnid>/images/*.JPEG``; ``val/images/*.JPEG`` with
    ``val/val_annotations.txt`` (file, wnid, box). The labelled ``val`` split is the test set
    (the official test split has no labels). Images are 64x64 RGB (grayscale ones are expanded).
    The decoded arrays are cached as ``<path>/dimat_jax_cache.npz`` on first use.
    """
    if not path:
        raise DataError("dataset 'tiny_imagenet' needs --config.data_path=/path/to/tiny-imagenet-200 "
                        "(the extracted folder of http://cs231n.stanford.edu/tiny-imagenet-200.zip)")
    root = pathlib.Path(path).expanduser()
    wnids_file = root / "wnids.txt"
    if not wnids_file.is_file():
        raise DataError(f"{root} is not a Tiny ImageNet folder: {wnids_file} not found "
                        "(expected wnids.txt, train/<wnid>/images/, val/images/, val/val_annotations.txt)")
    wnids = [w.strip() for w in wnids_file.read_text().split() if w.strip()]
    index = {w: i for i, w in enumerate(wnids)}

    train_files, train_labels = [], []
    for w in wnids:
        files = sorted((root / "train" / w / "images").glob("*.JPEG"))
        if not files:
            raise DataError(f"no training images for class {w} under {root / 'train' / w / 'images'}")
        train_files += files
        train_labels += [index[w]] * len(files)
    ann = root / "val" / "val_annotations.txt"
    if not ann.is_file():
        raise DataError(f"{ann} not found: the labelled val split is Tiny ImageNet's test set")
    test_files, test_labels = [], []
    for line in ann.read_text().splitlines():
        parts = line.split()
        if len(parts) < 2:
            continue
        if parts[1] not in index:
            raise DataError(f"{ann}: class {parts[1]} of {parts[0]} is not in wnids.txt")
        test_files.append(root / "val" / "images" / parts[0])
        test_labels.append(index[parts[1]])

    key = hashlib.sha1("\n".join(str(f.relative_to(root)) for f in train_files + test_files).encode()).hexdigest()
    cache = root / "dimat_jax_cache.npz"
    arrays = None
    if cache.is_file():
        try:
            with np.load(cache) as f:
                if str(f["key"]) == key:
                    arrays = {k: f[k] for k in ("x_train", "y_train", "x_test", "y_test")}
        except (OSError, ValueError, KeyError):
            arrays = None  # unreadable cache: rebuild it below
    if arrays is None:
        arrays = dict(x_train=_read_images(train_files), y_train=np.asarray(train_labels, np.int32),
                      x_test=_read_images(test_files), y_test=np.asarray(test_labels, np.int32))
        try:
            tmp = cache.with_suffix(".tmp.npz")
            np.savez(tmp, key=key, **arrays)
            os.replace(tmp, cache)
        except OSError:
            pass  # read-only dataset folder: no cache
    return _make("tiny_imagenet", **arrays, num_classes=len(wnids), pixel_max=255, mean=(0,), std=(1,),
                 source=f"tiny imagenet folder {root}")


def _read_images(files) -> np.ndarray:
    from PIL import Image
    out = None
    for i, f in enumerate(files):
        try:
            with Image.open(f) as im:
                a = np.asarray(im.convert("RGB"), np.uint8)
        except (OSError, FileNotFoundError) as e:
            raise DataError(f"cannot read image {f}: {e}") from e
        if out is None:
            out = np.empty((len(files),) + a.shape, np.uint8)
        if a.shape != out.shape[1:]:
            raise DataError(f"image {f} has shape {a.shape}, expected {out.shape[1:]}")
        out[i] = a
    return out
