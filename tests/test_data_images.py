"""Image data layer: every local format against synthetic fixtures with known content, the
error messages, the cache, and (with DSB_DATA_DIR) the real Fashion-MNIST and CIFAR-10 copies,
checked against their published statistics."""

from __future__ import annotations

import gzip
import io
import os
import pickle
import struct
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from dsb_widgets.data import DataNotFoundError, MalformedDataError, formats, images, load_images


# ------------------------------------------------------------------------------- helpers
def write_idx(path: Path, arr: np.ndarray, magic: bytes | None = None, cut: int = 0) -> Path:
    head = magic if magic is not None else bytes([0, 0, 8, arr.ndim])
    raw = head + struct.pack(f">{arr.ndim}i", *arr.shape) + arr.astype(np.uint8).tobytes()
    raw = raw[: len(raw) - cut]
    path.write_bytes(gzip.compress(raw) if path.name.endswith(".gz") else raw)
    return path


def write_mnist_folder(folder: Path, n_train: int = 30, n_test: int = 20, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    for prefix, split, n in (("train", "train", n_train), ("t10k", "test", n_test)):
        x, y = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8), rng.integers(0, 10, n).astype(
            np.uint8
        )
        write_idx(folder / f"{prefix}-images-idx3-ubyte.gz", x)
        write_idx(folder / f"{prefix}-labels-idx1-ubyte.gz", y)
        out[split] = (x, y)
    return out


def write_image_folder(
    root: Path, classes: list[str], per_class: int = 3, size=(6, 5), mode="RGB"
) -> dict:
    """PNG (lossless) images root/<split>/<class>/<k>.png; returns the expected uint8 arrays."""
    rng = np.random.default_rng(1)
    expected = {}
    for split in ("train", "test"):
        xs, ys = [], []
        for label, cls in enumerate(sorted(classes)):
            (root / split / cls).mkdir(parents=True, exist_ok=True)
            for k in range(per_class):
                shape = (size[1], size[0], 3) if mode == "RGB" else (size[1], size[0])
                arr = rng.integers(0, 256, shape, dtype=np.uint8)
                Image.fromarray(arr, mode).save(root / split / cls / f"{k:04d}.png")
                xs.append(arr.reshape(size[1], size[0], -1).transpose(2, 0, 1))
                ys.append(label)
        expected[split] = (np.stack(xs), np.array(ys))
    return expected


def make_tar(src: Path, dest: Path, prefix: str = "toy") -> Path:
    with tarfile.open(dest, "w:gz") as archive:
        archive.add(src, arcname=prefix)
    return dest


@pytest.fixture
def tmp_cache(tmp_path, monkeypatch) -> Path:
    cache = tmp_path / "cache"
    monkeypatch.setenv("DSB_CACHE_DIR", str(cache))
    return cache


# ----------------------------------------------------------------------------------- digits
def test_digits_split_is_stratified_deterministic_and_complete():
    from sklearn.datasets import load_digits

    train, test = load_images("digits", "train"), load_images("digits", "test")
    assert train.x.shape == (1438, 1, 8, 8) and test.x.shape == (359, 1, 8, 8)
    assert train.x.dtype == torch.float32 and train.y.dtype == torch.int64
    assert float(train.x.min()) == 0.0 and float(train.x.max()) == 1.0
    assert torch.equal(train.x * 16, torch.round(train.x * 16))  # values k/16
    assert train.classes == [str(k) for k in range(10)]
    # the two splits together are exactly sklearn's 1,797 images (as a multiset of rows)
    full = load_digits()
    both = torch.cat([train.x, test.x]).reshape(-1, 64).numpy() * 16
    assert np.array_equal(np.unique(both, axis=0, return_counts=True)[1].sum(), 1797)
    key = lambda a: a[np.lexsort(a.T[::-1])]  # noqa: E731
    assert np.array_equal(key(both), key(full.data.astype(np.float32)))
    # stratified: each class has round(20%) of its images in test
    counts = np.bincount(full.target, minlength=10)
    assert np.array_equal(test.y.bincount(minlength=10).numpy(), np.round(0.2 * counts).astype(int))
    again = load_images("digits", "train")
    assert torch.equal(again.x, train.x) and torch.equal(again.y, train.y)


def test_unknown_name_and_split_raise_value_error():
    with pytest.raises(ValueError, match="known: digits, mnist, fashion_mnist, cifar10, svhn"):
        load_images("imagenet")
    with pytest.raises(ValueError, match="'train' or 'test'"):
        load_images("digits", "validation")


# -------------------------------------------------------------------------------------- IDX
@settings(max_examples=25, deadline=None)
@given(
    dims=st.lists(st.integers(1, 5), min_size=1, max_size=4),
    gz=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_idx_round_trip(dims, gz, seed):
    arr = np.random.default_rng(seed).integers(0, 256, dims, dtype=np.uint8)
    with tempfile.TemporaryDirectory() as tmp:
        path = write_idx(Path(tmp) / ("a.idx.gz" if gz else "a.idx"), arr)
        assert np.array_equal(formats.read_idx(path), arr)


@pytest.mark.parametrize("sub", ["", "fashion-mnist", "fashion_mnist", "FashionMNIST/raw"])
def test_idx_folder_found_directly_and_under_parent(tmp_path, tmp_cache, sub):
    expected = write_mnist_folder(tmp_path / "data" / sub if sub else tmp_path / "anything")
    data_dir = tmp_path / "data" if sub else tmp_path / "anything"
    for split in ("train", "test"):
        data = load_images("fashion_mnist", split, data_dir=data_dir)
        x, y = expected[split]
        assert data.x.shape == (len(x), 1, 28, 28)
        assert torch.equal(data.x, torch.from_numpy(x[:, None].astype(np.float32) / 255))
        assert torch.equal(data.y, torch.from_numpy(y.astype(np.int64)))
        assert data.classes[0] == "T-shirt/top" and data.classes[9] == "Ankle boot"


def test_idx_folder_serves_mnist_too_whatever_it_is_called(tmp_path, tmp_cache, monkeypatch):
    expected = write_mnist_folder(tmp_path / "mine")
    monkeypatch.setenv("DSB_DATA_DIR", str(tmp_path / "mine"))
    data = load_images("mnist", "test")
    assert torch.equal(data.y, torch.from_numpy(expected["test"][1].astype(np.int64)))
    assert data.classes == [str(k) for k in range(10)]


@pytest.mark.parametrize(
    "damage, message",
    [
        (dict(magic=b"\x12\x34\x08\x03"), "bad IDX magic"),
        (dict(magic=b"\x00\x00\x0b\x03"), "unsupported IDX data type"),
        (dict(cut=10), "truncated"),
    ],
)
def test_malformed_idx_names_file_and_problem(tmp_path, tmp_cache, damage, message):
    write_mnist_folder(tmp_path)
    bad = write_idx(
        tmp_path / "train-images-idx3-ubyte.gz", np.zeros((30, 28, 28), np.uint8), **damage
    )
    with pytest.raises(MalformedDataError, match=message) as info:
        load_images("mnist", data_dir=tmp_path)
    assert str(bad) in str(info.value)


def test_idx_count_mismatch_bad_labels_and_corrupt_gzip(tmp_path, tmp_cache):
    write_mnist_folder(tmp_path)
    write_idx(tmp_path / "train-labels-idx1-ubyte.gz", np.zeros(29, np.uint8))
    with pytest.raises(MalformedDataError, match="count mismatch.*30 images.*29 labels"):
        load_images("mnist", data_dir=tmp_path)
    write_idx(tmp_path / "train-labels-idx1-ubyte.gz", np.full(30, 10, np.uint8))
    with pytest.raises(MalformedDataError, match="labels span 10..10, expected 0..9"):
        load_images("mnist", data_dir=tmp_path)
    (tmp_path / "train-labels-idx1-ubyte.gz").write_bytes(b"not gzip at all")
    with pytest.raises(MalformedDataError, match="train-labels-idx1-ubyte.gz: cannot read"):
        load_images("mnist", data_dir=tmp_path)


# ---------------------------------------------------------------------------- image folders
def test_image_folder_dir_and_tar_give_the_same_exact_pixels(tmp_path, tmp_cache):
    classes = ["zebra", "ant", "moth"]
    expected = write_image_folder(tmp_path / "toy", classes)
    (tmp_path / "cifar10").mkdir()
    tar = make_tar(tmp_path / "toy", tmp_path / "cifar10" / "toy.tar.gz")
    for data_dir in (
        tmp_path / "toy",
        tar,
        tmp_path,
    ):  # folder, the tar itself, parent/cifar10/*.tar.gz
        for split in ("train", "test"):
            data = load_images("cifar10", split, data_dir=data_dir)
            x, y = expected[split]
            assert data.classes == ["ant", "moth", "zebra"]  # sorted folder names
            assert torch.equal(data.x, torch.from_numpy(x.astype(np.float32) / 255)), data_dir
            assert torch.equal(data.y, torch.from_numpy(y))
    assert sorted(p.name for p in (tmp_path / "cifar10").iterdir()) == [
        "toy.tar.gz"
    ]  # nothing unpacked


def test_image_folder_uses_standard_cifar_order_and_grey_mode(tmp_path, tmp_cache):
    write_image_folder(tmp_path / "c", images.CIFAR10, per_class=1)
    assert load_images("cifar10", data_dir=tmp_path / "c").classes == images.CIFAR10
    expected = write_image_folder(tmp_path / "g", ["0", "1"], per_class=2, size=(4, 4), mode="L")
    data = load_images("svhn", "test", data_dir=tmp_path / "g")
    assert data.x.shape == (4, 1, 4, 4)
    assert torch.equal(data.x, torch.from_numpy(expected["test"][0].astype(np.float32) / 255))


def test_image_folder_errors_name_the_file(tmp_path, tmp_cache):
    (tmp_path / "empty" / "train" / "cat").mkdir(parents=True)
    with pytest.raises(MalformedDataError, match="no images found"):
        load_images("cifar10", data_dir=tmp_path / "empty")
    write_image_folder(tmp_path / "mixed", ["a"], per_class=1)
    Image.new("RGB", (9, 9)).save(tmp_path / "mixed" / "train" / "a" / "odd.png")
    with pytest.raises(MalformedDataError, match="odd.png.*all images must share one size"):
        load_images("cifar10", data_dir=tmp_path / "mixed")
    write_image_folder(tmp_path / "broken", ["a"], per_class=1)
    (tmp_path / "broken" / "train" / "a" / "bad.jpg").write_bytes(b"\xff\xd8garbage")
    with pytest.raises(MalformedDataError, match="bad.jpg: cannot decode image"):
        load_images("cifar10", data_dir=tmp_path / "broken")


@pytest.mark.parametrize("mode, progressive", [("RGB", False), ("L", False), ("RGB", True)])
def test_jpeg_fast_path_matches_pillow_open(mode, progressive):
    rng = np.random.default_rng(2)
    shape = (32, 32, 3) if mode == "RGB" else (32, 32)
    for _ in range(5):
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode).save(
            buf, "JPEG", quality=75, progressive=progressive
        )
        blob = buf.getvalue()
        assert (formats._jpeg_header(blob) is None) == progressive
        reference = np.asarray(Image.open(io.BytesIO(blob)).convert(mode)).reshape(32, 32, -1)
        assert np.array_equal(formats.decode_image(blob, mode, "x"), reference)
        assert np.array_equal(formats.decode_image(blob, None, "x"), reference)


# -------------------------------------------------------------------------------- npz and co.
def test_npz_per_split_files_and_single_file(tmp_path, tmp_cache):
    rng = np.random.default_rng(3)
    x_nhwc = rng.integers(0, 256, (7, 5, 6, 3), dtype=np.uint8)
    y = rng.integers(0, 4, 7)
    (tmp_path / "a").mkdir()
    np.savez(tmp_path / "a" / "train.npz", x=x_nhwc, y=y, classes=np.array(["w", "x", "y", "z"]))
    data = load_images("cifar10", data_dir=tmp_path / "a")
    assert data.x.shape == (7, 3, 5, 6) and data.classes == ["w", "x", "y", "z"]
    assert torch.equal(data.x, torch.from_numpy(x_nhwc.transpose(0, 3, 1, 2) / np.float32(255)))
    x_float = rng.random((4, 1, 3, 3)).astype(np.float32)
    np.savez(
        tmp_path / "svhn.npz",
        x_train=x_float,
        y_train=np.arange(4),
        x_test=x_float[:2],
        y_test=np.arange(2),
    )
    data = load_images("svhn", "test", data_dir=tmp_path)
    assert torch.equal(data.x, torch.from_numpy(x_float[:2])) and data.classes == images.DIGITS
    np.savez(tmp_path / "a" / "test.npz", images=x_nhwc)
    with pytest.raises(MalformedDataError, match="needs arrays x, y"):
        load_images("cifar10", "test", data_dir=tmp_path / "a")
    (tmp_path / "a" / "test.npz").write_bytes(b"PK not really a zip")
    with pytest.raises(MalformedDataError, match="test.npz: cannot read npz"):
        load_images("cifar10", "test", data_dir=tmp_path / "a")


def test_cifar_python_pickles_and_svhn_mat(tmp_path, tmp_cache):
    from scipy.io import savemat

    rng = np.random.default_rng(4)
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    batches = []
    for name in [f"data_batch_{k}" for k in range(1, 6)] + ["test_batch"]:
        batch = {b"data": rng.integers(0, 256, (3, 3072), dtype=np.uint8), b"labels": [1, 2, 9]}
        (folder / name).write_bytes(pickle.dumps(batch))
        batches.append(batch)
    data = load_images("cifar10", data_dir=tmp_path)
    assert data.x.shape == (15, 3, 32, 32) and data.y.tolist() == [1, 2, 9] * 5
    assert torch.equal(
        data.x[3], torch.from_numpy(batches[1][b"data"][0].reshape(3, 32, 32) / np.float32(255))
    )

    x = rng.integers(0, 256, (32, 32, 3, 4), dtype=np.uint8)
    (tmp_path / "svhn").mkdir()
    savemat(tmp_path / "svhn" / "test_32x32.mat", {"X": x, "y": np.array([[10], [1], [9], [10]])})
    data = load_images("svhn", "test", data_dir=tmp_path)
    assert data.y.tolist() == [0, 1, 9, 0]  # digit 0 is stored as 10
    assert torch.equal(data.x[1], torch.from_numpy(x[..., 1].transpose(2, 0, 1) / np.float32(255)))


# ------------------------------------------------------------------------ missing data, hub
def test_missing_dataset_names_both_fixes(tmp_path, tmp_cache):
    for data_dir in (tmp_path, tmp_path / "nope"):
        with pytest.raises(DataNotFoundError) as info:
            load_images("svhn", data_dir=data_dir)
        message = str(info.value)
        assert "DSB_DATA_DIR" in message and "--data-dir" in message and "internet" in message
        assert "ufldl-stanford/svhn" in message


def test_hub_failure_names_both_fixes(tmp_cache, monkeypatch):
    import datasets

    def offline(*args, **kwargs):
        raise ConnectionError("Couldn't reach 'uoft-cs/cifar10' on the Hub")

    monkeypatch.delenv("DSB_DATA_DIR", raising=False)
    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(DataNotFoundError, match="internet.*DSB_DATA_DIR.*train/<class>") as info:
        load_images("cifar10")
    assert "ConnectionError" in str(info.value)


def test_hub_path_converts_and_caches(tmp_cache, monkeypatch):
    """The online branch, fed a tiny in-memory dataset shaped like uoft-cs/cifar10."""
    import datasets

    rng = np.random.default_rng(5)
    arrays = [rng.integers(0, 256, (4, 3, 3), dtype=np.uint8) for _ in range(6)]
    features = datasets.Features(
        {"img": datasets.Image(), "label": datasets.ClassLabel(names=images.CIFAR10)}
    )
    fake = datasets.Dataset.from_dict(
        {"img": [Image.fromarray(a) for a in arrays], "label": [0, 1, 2, 3, 4, 9]},
        features=features,
    )
    calls = []
    monkeypatch.delenv("DSB_DATA_DIR", raising=False)
    monkeypatch.setattr(datasets, "load_dataset", lambda *a, **k: calls.append((a, k)) or fake)
    data = load_images("cifar10", "test")
    assert calls[0] == (("uoft-cs/cifar10", None), {"split": "test"})
    assert data.x.shape == (6, 3, 4, 3) and data.classes == images.CIFAR10
    assert torch.equal(data.x[2], torch.from_numpy(arrays[2].transpose(2, 0, 1) / np.float32(255)))
    assert data.y.tolist() == [0, 1, 2, 3, 4, 9]
    assert len(list((tmp_cache / "images").glob("cifar10-test-*.npz"))) == 1


def test_hub_grey_dataset_keeps_our_class_names(tmp_cache, monkeypatch):
    """Shaped like zalando-datasets/fashion_mnist: grey PIL images, the hub's own class spelling."""
    import datasets

    hub_names = ["T - shirt / top"] + images.FASHION[1:]
    arrays = [np.full((28, 28), 10 * k, np.uint8) for k in range(3)]
    features = datasets.Features(
        {"image": datasets.Image(), "label": datasets.ClassLabel(names=hub_names)}
    )
    fake = datasets.Dataset.from_dict(
        {"image": [Image.fromarray(a) for a in arrays], "label": [9, 0, 5]}, features=features
    )
    monkeypatch.delenv("DSB_DATA_DIR", raising=False)
    monkeypatch.setattr(datasets, "load_dataset", lambda *a, **k: fake)
    data = load_images("fashion_mnist")
    assert data.x.shape == (3, 1, 28, 28) and data.classes == images.FASHION
    assert data.x[:, 0, 0, 0].tolist() == pytest.approx([0.0, 10 / 255, 20 / 255])
    assert data.y.tolist() == [9, 0, 5]


# ------------------------------------------------------------------------------------ cache
def test_cache_is_used_and_invalidated_when_the_file_changes(tmp_path, tmp_cache, monkeypatch):
    write_mnist_folder(tmp_path)
    first = load_images("mnist", data_dir=tmp_path)
    assert len(list((tmp_cache / "images").glob("mnist-train-*.npz"))) == 1

    def boom(*args, **kwargs):
        raise AssertionError("decoded again instead of using the cache")

    monkeypatch.setattr(formats, "read_idx_pair", boom)
    assert torch.equal(load_images("mnist", data_dir=tmp_path).x, first.x)  # served from cache
    monkeypatch.undo()
    monkeypatch.setenv("DSB_CACHE_DIR", str(tmp_cache))
    new = np.full((30, 28, 28), 7, np.uint8)
    path = write_idx(tmp_path / "train-images-idx3-ubyte.gz", new)
    os.utime(path, ns=(time.time_ns() + 10**9, time.time_ns() + 10**9))
    changed = load_images("mnist", data_dir=tmp_path)  # new fingerprint: decoded again
    assert torch.equal(changed.x, torch.full((30, 1, 28, 28), 7 / 255.0))


# -------------------------------------------------------------------------------- real data
def real_dir(sub: str) -> Path:
    root = os.environ.get("DSB_DATA_DIR")
    if not root or not (Path(root) / sub).is_dir():
        pytest.skip(f"real data: set DSB_DATA_DIR to a folder holding {sub}/ (e.g. ../shared/data)")
    return Path(root)


def test_fashion_mnist_real_shapes_balance_and_pixel_statistics():
    root = real_dir("fashion-mnist")
    train = load_images("fashion_mnist", "train", data_dir=root)
    test = load_images("fashion_mnist", "test", data_dir=root / "fashion-mnist")
    assert train.x.shape == (60000, 1, 28, 28) and test.x.shape == (10000, 1, 28, 28)
    assert train.y.bincount().tolist() == [6000] * 10 and test.y.bincount().tolist() == [1000] * 10
    # published Fashion-MNIST train statistics: mean 0.2860, std 0.3530
    assert abs(float(train.x.mean()) - 0.2860) < 5e-4 and abs(float(train.x.std()) - 0.3530) < 5e-4
    assert train.classes[0] == "T-shirt/top" and train.classes[9] == "Ankle boot"


def test_fashion_mnist_second_load_comes_from_the_cache(tmp_cache, monkeypatch):
    """The cache is *used*: the second load decodes nothing and returns identical arrays (its speed
    is a benchmark's business, not a test's: timed assertions fail on loaded CI machines)."""
    root = real_dir("fashion-mnist")
    calls = []
    decode = images._decode

    def counting(*args, **kwargs):
        calls.append(args[0].kind)
        return decode(*args, **kwargs)

    monkeypatch.setattr(images, "_decode", counting)
    cold = images._load_local("fashion_mnist", "train", root)
    assert len(calls) == 1 and any(tmp_cache.rglob("*")), "the first load must decode and fill the cache"
    warm = images._load_local("fashion_mnist", "train", root)
    assert len(calls) == 1, "the second load decoded the files again instead of reading the cache"
    assert np.array_equal(cold.x, warm.x) and np.array_equal(cold.y, warm.y) and cold.classes == warm.classes


@pytest.fixture(scope="module")
def cifar() -> dict:
    """Both splits via the project's real cache: the ~15 s cold decode happens once per machine."""
    root = real_dir("cifar10")
    return {split: load_images("cifar10", split, data_dir=root) for split in ("train", "test")}


@pytest.mark.slow  # the first run on a machine decodes 60,000 JPEGs (~17 s CPU); CI runs it
def test_cifar10_real_shapes_balance_and_channel_statistics(cifar):
    train, test = cifar["train"], cifar["test"]
    assert train.x.shape == (50000, 3, 32, 32) and test.x.shape == (10000, 3, 32, 32)
    assert train.classes == images.CIFAR10
    assert train.y.bincount().tolist() == [5000] * 10 and test.y.bincount().tolist() == [1000] * 10
    means = train.x.mean(dim=(0, 2, 3))
    assert torch.allclose(means, torch.tensor([0.4913, 0.4821, 0.4465]), atol=3e-3), means
    # JPEG q75 copy: std 0.5-1% below the original's (0.2470, 0.2435, 0.2616), see data/README.md
    stds = train.x.std(dim=(0, 2, 3))
    assert torch.allclose(stds, torch.tensor([0.2452, 0.2428, 0.2606]), atol=1e-3), stds


@pytest.mark.slow
def test_cifar10_reload_is_served_from_cache(cifar, monkeypatch):
    def boom(*args, **kwargs):
        raise AssertionError("decoded the tar again instead of using the cache")

    monkeypatch.setattr(formats, "read_image_tar", boom)
    again = load_images("cifar10", "test", data_dir=real_dir("cifar10"))
    assert torch.equal(again.x, cifar["test"].x)
