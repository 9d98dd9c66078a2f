"""Data layer: normalisation constants, embedded digits, augmentation, batching, sources."""
import numpy as np
import pytest

import jax
import jax.numpy as jnp

from dimat_jax.data import pipeline, sources
from dimat_jax.data.sources import DataError


def test_normalization_constants_match_spec():
    assert sources.normalization("cifar10") == ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616))
    assert sources.normalization("cifar100") == ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762))
    # the reference code's CIFAR-100 constants, for the paper preset
    assert sources.normalization("cifar100", "reference") == ((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010))
    assert sources.normalization("cifar10", "reference") == sources.normalization("cifar10")
    # Tiny ImageNet: ImageNet statistics in [0, 1] units (not divided by 255 a second time)
    mean, std = sources.normalization("tiny_imagenet", "reference")
    assert mean == (0.485, 0.456, 0.406) and std == (0.229, 0.224, 0.225)


def test_embedded_digits_is_real_and_constants_match_data():
    ds = sources.load("digits")
    assert ds.x_train.shape == (1433, 8, 8, 1) and ds.x_test.shape == (364, 8, 8, 1)
    assert ds.x_train.dtype == np.uint8 and ds.x_train.max() == 16 and ds.pixel_max == 16
    assert ds.num_classes == 10
    np.testing.assert_array_equal(np.bincount(ds.y_test), [36, 37, 36, 37, 37, 37, 37, 36, 35, 36])
    x = ds.x_train.astype(np.float64) / 16
    assert ds.mean[0] == pytest.approx(x.mean(), abs=1e-4)
    assert ds.std[0] == pytest.approx(x.std(), abs=1e-4)
    # train and test images are different examples
    tr = {a.tobytes() for a in ds.x_train}
    assert sum(a.tobytes() in tr for a in ds.x_test) < 5  # only accidental duplicates of 8x8 bitmaps


def test_normalize():
    x = jnp.asarray(np.array([[[[0, 128, 255]]]], np.uint8))
    out = pipeline.normalize(x, (0.5, 0.5, 0.5), (0.25, 0.5, 1.0), 255.0)
    np.testing.assert_allclose(np.asarray(out)[0, 0, 0], [(0 - .5) / .25, (128 / 255 - .5) / .5, (1 - .5) / 1.0],
                               rtol=1e-6, atol=1e-6)


def _is_shift_of_padded(out, img, p):
    padded = np.pad(img, ((p, p), (p, p), (0, 0)))
    h, w = img.shape[:2]
    return any(np.array_equal(out, padded[i:i + h, j:j + w]) for i in range(2 * p + 1) for j in range(2 * p + 1))


def test_random_crop_is_a_window_of_the_zero_padded_image():
    rng = np.random.default_rng(0)
    x = rng.integers(1, 256, (16, 8, 8, 3)).astype(np.uint8)
    out = np.asarray(pipeline.random_crop(jax.random.PRNGKey(0), jnp.asarray(x), 2))
    assert out.shape == x.shape and out.dtype == x.dtype
    for o, i in zip(out, x):
        assert _is_shift_of_padded(o, i, 2)
    assert not np.array_equal(out, x)  # 16 images: some offset is not (2, 2)


def test_flip_and_augment_shapes_and_resampling():
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.integers(0, 256, (32, 6, 6, 3)).astype(np.uint8))
    f = np.asarray(pipeline.random_flip(jax.random.PRNGKey(1), x))
    xs = np.asarray(x)
    flipped = [np.array_equal(a, b[:, ::-1]) for a, b in zip(f, xs)]
    same = [np.array_equal(a, b) for a, b in zip(f, xs)]
    assert all(fl or sa for fl, sa in zip(flipped, same)) and 0 < sum(flipped) < 32
    pre = pipeline.Preprocess((0.5,) * 3, (0.25,) * 3, 255.0, "crop_flip", 4)
    a = np.asarray(pre.train(jax.random.PRNGKey(0), x))
    b = np.asarray(pre.train(jax.random.PRNGKey(1), x))  # another epoch -> another key
    assert a.shape == (32, 6, 6, 3) and a.dtype == np.float32
    assert not np.allclose(a, b)
    np.testing.assert_array_equal(np.asarray(pipeline.augment(jax.random.PRNGKey(0), x, "none", 4)), xs)


def test_epoch_batches_cover_each_shard_once_per_pass_and_reshuffle():
    shards = [np.arange(0, 64), np.arange(100, 164)]
    b0 = pipeline.epoch_batches(shards, seed=0, epoch=0, steps=4, batch_size=16)
    assert b0.shape == (4, 2, 16) and b0.dtype == np.int32
    for a, s in enumerate(shards):
        np.testing.assert_array_equal(np.sort(b0[:, a].ravel()), s)  # one pass = one permutation
    b1 = pipeline.epoch_batches(shards, seed=0, epoch=1, steps=4, batch_size=16)
    assert not np.array_equal(b0, b1)
    np.testing.assert_array_equal(b0, pipeline.epoch_batches(shards, seed=0, epoch=0, steps=4, batch_size=16))
    assert not np.array_equal(b0, pipeline.epoch_batches(shards, seed=1, epoch=0, steps=4, batch_size=16))


def test_small_shard_wraps_around_with_full_batches():
    shards = [np.arange(10), np.arange(10, 50)]
    steps = pipeline.steps_per_epoch([10, 40], 8)
    assert steps == 4  # ceil(25 / 8)
    b = pipeline.epoch_batches(shards, seed=0, epoch=0, steps=steps, batch_size=8)
    small = b[:, 0].ravel()  # 32 items from a 10-example shard: 3 full passes + 2
    assert set(small.tolist()) <= set(range(10))
    for k in range(3):
        np.testing.assert_array_equal(np.sort(small[10 * k:10 * (k + 1)]), np.arange(10))
    # the stream continues across epochs: items 32..63 of the same stream
    nxt = pipeline.epoch_batches(shards, seed=0, epoch=1, steps=steps, batch_size=8)[:, 0].ravel()
    whole = pipeline.stream_positions(shards[0], 0, 0, 0, 64)
    np.testing.assert_array_equal(np.concatenate([small, nxt]), whole)


# ------------------------------------------------------------------------------ sources
def test_npz_grayscale_uint8(tmp_path):
    rng = np.random.default_rng(0)
    f = tmp_path / "d.npz"
    np.savez(f, x_train=rng.integers(0, 256, (20, 5, 5), dtype=np.uint8), y_train=np.arange(20) % 4,
             x_test=rng.integers(0, 256, (6, 5, 5), dtype=np.uint8), y_test=np.arange(6) % 4)
    ds = sources.load("npz", data_path=str(f))
    assert ds.x_train.shape == (20, 5, 5, 1) and ds.num_classes == 4 and ds.pixel_max == 255
    x = ds.x_train.astype(np.float64) / 255
    assert ds.mean[0] == pytest.approx(x.mean()) and ds.std[0] == pytest.approx(x.std())
    assert ds.augment == "none"


def test_npz_float_nhwc(tmp_path):
    f = tmp_path / "d.npz"
    np.savez(f, x_train=np.random.rand(8, 4, 4, 3).astype(np.float32), y_train=np.arange(8) % 2,
             x_test=np.random.rand(2, 4, 4, 3), y_test=np.array([0, 1]))
    ds = sources.load("npz", data_path=str(f))
    assert ds.x_train.dtype == np.float32 and ds.pixel_max == 1.0 and len(ds.mean) == 3


def test_npz_errors(tmp_path):
    with pytest.raises(DataError, match="data_path"):
        sources.load("npz")
    with pytest.raises(DataError, match="does not exist"):
        sources.load("npz", data_path=str(tmp_path / "missing.npz"))
    f = tmp_path / "bad.npz"
    np.savez(f, x_train=np.zeros((2, 3, 3)), y_train=np.zeros(2))
    with pytest.raises(DataError, match="lacks"):
        sources.load("npz", data_path=str(f))
    np.savez(f, x_train=np.zeros((2, 3, 3)), y_train=np.zeros(2), x_test=np.zeros((1, 3, 3)), y_test=np.zeros(1))
    with pytest.raises(DataError, match="integer labels"):
        sources.load("npz", data_path=str(f))
    (tmp_path / "junk.npz").write_text("not a zip")
    with pytest.raises(DataError, match="not an .npz archive"):
        sources.load("npz", data_path=str(tmp_path / "junk.npz"))


def _fake_tiny_imagenet(root, wnids=("n01", "n02", "n03"), per_class=3, val=4):
    from PIL import Image
    rng = np.random.default_rng(0)
    (root / "val" / "images").mkdir(parents=True)
    (root / "wnids.txt").write_text("\n".join(wnids) + "\n")
    colours = {}
    for c, w in enumerate(wnids):
        d = root / "train" / w / "images"
        d.mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray(np.full((64, 64, 3), 40 * c + i, np.uint8)).save(d / f"{w}_{i}.JPEG", quality=100)
    lines = []
    for i in range(val):
        w = wnids[i % len(wnids)]
        colours[i] = wnids.index(w)
        img = rng.integers(0, 256, (64, 64), dtype=np.uint8)  # grayscale file: expanded to RGB
        Image.fromarray(img).save(root / "val" / "images" / f"val_{i}.JPEG")
        lines.append(f"val_{i}.JPEG\t{w}\t0\t0\t10\t10")
    (root / "val" / "val_annotations.txt").write_text("\n".join(lines) + "\n")
    return colours


def test_tiny_imagenet_fake_tree(tmp_path):
    root = tmp_path / "tiny-imagenet-200"
    val_labels = _fake_tiny_imagenet(root)
    ds = sources.load("tiny_imagenet", data_path=str(root))
    assert ds.x_train.shape == (9, 64, 64, 3) and ds.x_test.shape == (4, 64, 64, 3)
    assert ds.num_classes == 3 and ds.y_train.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert ds.y_test.tolist() == [val_labels[i] for i in range(4)]
    assert abs(int(ds.x_train[4].mean()) - 41) <= 2  # class 1, image 1: grey level 41 (JPEG rounding)
    assert ds.mean == (0.485, 0.456, 0.406)
    assert (root / "dimat_jax_cache.npz").is_file()
    again = sources.load("tiny_imagenet", data_path=str(root))  # from the cache
    np.testing.assert_array_equal(again.x_train, ds.x_train)


def test_tiny_imagenet_errors(tmp_path):
    with pytest.raises(DataError, match="data_path"):
        sources.load("tiny_imagenet")
    with pytest.raises(DataError, match="wnids.txt"):
        sources.load("tiny_imagenet", data_path=str(tmp_path))
    root = tmp_path / "t"
    _fake_tiny_imagenet(root)
    (root / "val" / "val_annotations.txt").write_text("val_0.JPEG\tn99\t0\t0\t1\t1\n")
    with pytest.raises(DataError, match="n99"):
        sources.load("tiny_imagenet", data_path=str(root))


@pytest.mark.parametrize("name,shape,classes", [("cifar10", (32, 32, 3), 10), ("cifar100", (32, 32, 3), 100),
                                                ("mnist", (28, 28, 1), 10), ("fashion_mnist", (28, 28, 1), 10)])
def test_tfds_loaders_under_mock_data(name, shape, classes, tmp_path):
    import tensorflow_datasets as tfds
    with tfds.testing.mock_data(num_examples=12):
        ds = sources.load(name, data_dir=str(tmp_path))
    assert ds.x_train.shape == (12,) + shape and ds.x_train.dtype == np.uint8
    assert ds.x_test.shape == (12,) + shape
    assert ds.y_train.dtype == np.int32 and ds.y_train.max() < classes
    assert ds.num_classes == classes and ds.pixel_max == 255
    assert ds.mean == sources.normalization(name)[0]


def test_tfds_not_prepared_gives_instructions(tmp_path):
    with pytest.raises(DataError, match="tfds build cifar10"):
        sources.load("cifar10", data_dir=str(tmp_path))


def test_unknown_dataset():
    with pytest.raises(DataError, match="unknown dataset"):
        sources.load("imagenet")


def test_tfrecord_prepared_data_without_tensorflow_says_what_to_do(monkeypatch, tmp_path):
    import builtins

    import tensorflow_datasets as tfds

    def no_random_access(*a, **k):
        raise NotImplementedError("Random access data source for file format FileFormat.TFRECORD is not supported")

    monkeypatch.setattr(tfds, "data_source", no_random_access)
    monkeypatch.setattr(tfds.core.DatasetBuilder, "is_prepared", lambda self: True)
    real_import = builtins.__import__

    def fake_import(name, *a, **k):
        if name == "tensorflow":
            raise ImportError("No module named 'tensorflow'")
        return real_import(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", fake_import)
    with pytest.raises(DataError, match="TFRecord format.*tensorflow-cpu.*array_record"):
        sources.load("cifar10", data_dir=str(tmp_path))


# ------------------------------------------------------------------------------ IDX folders (MNIST family)
def _write_idx_folder(folder, rng, n_train=30, n_test=12, size=(7, 5), gz=True):
    from dimat_jax.data.idx import FILES, write_idx
    folder.mkdir(parents=True, exist_ok=True)
    arrays = {"x_train": rng.integers(0, 256, (n_train,) + size, dtype=np.uint8),
              "y_train": (np.arange(n_train) % 10).astype(np.uint8),
              "x_test": rng.integers(0, 256, (n_test,) + size, dtype=np.uint8),
              "y_test": (np.arange(n_test) % 10).astype(np.uint8)}
    for k, stem in FILES.items():
        write_idx(folder / (stem + (".gz" if gz else "")), arrays[k])
    return arrays


def _idx_bytes(magic, shape, data):
    import struct
    return struct.pack(">I", magic) + struct.pack(f">{len(shape)}I", *shape) + bytes(data)


@pytest.mark.parametrize("gz", [True, False])
def test_idx_folder_reads_back_what_numpy_wrote(tmp_path, gz):
    import gzip
    rng = np.random.default_rng(0)
    want = _write_idx_folder(tmp_path / "d", rng, gz=gz)
    # the oracle: the IDX layout written by hand, independently of dimat_jax's writer
    raw = _idx_bytes(0x803, want["x_test"].shape, want["x_test"].tobytes())
    stored = (tmp_path / "d" / ("t10k-images-idx3-ubyte" + (".gz" if gz else ""))).read_bytes()
    assert (gzip.decompress(stored) if gz else stored) == raw
    ds = sources.load("fashion_mnist", data_path=str(tmp_path / "d"))
    np.testing.assert_array_equal(ds.x_train[..., 0], want["x_train"])
    np.testing.assert_array_equal(ds.y_test, want["y_test"])
    assert ds.x_train.shape == (30, 7, 5, 1) and ds.y_train.dtype == np.int32 and ds.num_classes == 10
    assert ds.mean == (0.2860,) and ds.pixel_max == 255 and "IDX files" in ds.source


def test_idx_header_errors_name_the_file_and_problem(tmp_path):
    from dimat_jax.data.idx import FILES
    rng = np.random.default_rng(0)
    d = tmp_path / "d"
    _write_idx_folder(d, rng, gz=False)
    img = d / FILES["x_train"]
    good = img.read_bytes()
    img.write_bytes(_idx_bytes(0x801, (30,), bytes(30)))  # a labels file under the images name
    with pytest.raises(DataError, match=r"train-images-idx3-ubyte has magic number 0x00000801"):
        sources.load("mnist", data_path=str(d))
    img.write_bytes(good[:-7])  # truncated
    with pytest.raises(DataError, match="truncated or corrupt"):
        sources.load("mnist", data_path=str(d))
    img.write_bytes(good)
    (d / FILES["y_train"]).write_bytes(_idx_bytes(0x801, (29,), bytes(29)))  # one label short
    with pytest.raises(DataError, match="30 images .* but 29 labels"):
        sources.load("mnist", data_path=str(d))
    _write_idx_folder(d, rng, gz=False)
    (d / FILES["x_test"]).write_bytes(_idx_bytes(0x803, (2, 6, 6), bytes(72)))
    (d / FILES["y_test"]).write_bytes(_idx_bytes(0x801, (2,), bytes(2)))
    with pytest.raises(DataError, match=r"train images are \(7, 5\) but test images \(6, 6\)"):
        sources.load("mnist", data_path=str(d))
    (d / FILES["y_test"]).unlink()
    with pytest.raises(DataError, match="lacks t10k-labels-idx1-ubyte"):
        sources.load("mnist", data_path=str(d))
    with pytest.raises(DataError, match="is not a folder"):
        sources.load("mnist", data_path=str(tmp_path / "nowhere"))
    (tmp_path / "e").mkdir()
    for stem in FILES.values():
        (tmp_path / "e" / (stem + ".gz")).write_bytes(b"not gzip at all")
    with pytest.raises(DataError, match="cannot read"):
        sources.load("mnist", data_path=str(tmp_path / "e"))


def test_unprepared_tfds_names_both_offline_routes(tmp_path):
    with pytest.raises(DataError, match="(?s)tfds build fashion_mnist.*dataset-fashion-mnist.*data_path"):
        sources.load("fashion_mnist", data_dir=str(tmp_path))


def test_pad_channels_and_stratified_subsets():
    from dimat_jax.data import prepare
    from dimat_jax.data.partition import class_quotas
    from tiny_config import override
    from dimat_jax.config import get_default_config
    # quotas: stratified keeps proportions, balanced evens out, neither takes more than a class holds
    assert class_quotas([10, 30, 60], 10).tolist() == [1, 3, 6]
    assert class_quotas([2, 30, 60], 12, balanced=True).tolist() == [2, 5, 5]
    assert class_quotas([2, 3], 100, balanced=True).tolist() == [2, 3]
    c = override(get_default_config(), data__pad_to=12, data__channels=3, data__train_subset=100, data__test_subset=50)
    d = prepare(c)
    ds = d.dataset
    full = sources.load("digits")
    assert ds.x_train.shape == (100, 12, 12, 3) and ds.x_test.shape == (50, 12, 12, 3)
    assert ds.mean == full.mean * 3 and ds.std == full.std * 3
    # 2-pixel zero border, grey repeated, the 8x8 centre one of the original images
    assert not ds.x_train[:, :2].any() and not ds.x_train[:, :, -2:].any()
    np.testing.assert_array_equal(ds.x_train[..., 0], ds.x_train[..., 2])
    originals = {a.tobytes() for a in full.x_train}
    assert all(np.ascontiguousarray(a[2:10, 2:10, :1]).tobytes() in originals for a in ds.x_train)
    np.testing.assert_array_equal(np.bincount(ds.y_train, minlength=10), [10] * 10)  # digits are balanced
    again = prepare(c).dataset  # seeded
    np.testing.assert_array_equal(again.x_train, ds.x_train)
    with pytest.raises(DataError, match="smaller than the images"):
        prepare(override(get_default_config(), data__pad_to=6))
