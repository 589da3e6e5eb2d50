"""Dataset loaders: real Fashion-MNIST counts and ranges, npz and imagefolder layouts, and clear
errors on missing, corrupt or inconsistent files."""
from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from rsjax.data import (
    first_per_class,
    FASHION_MNIST_CLASSES,
    dataset_family,
    default_split_pair,
    load_dataset,
    resize_center_crop,
)
from rsjax.errors import DataError, InputError

# ----------------------------------------------------------------------------- real Fashion-MNIST


@pytest.mark.parametrize("split, count", [("train", 60_000), ("test", 10_000)])
def test_fashion_mnist_real_counts_and_ranges(fmnist_dir, split, count):
    data = load_dataset(f"fashion-mnist:{split}", data_dir=fmnist_dir)
    assert data.images.shape == (count, 28, 28, 1)
    assert data.images.dtype == np.float32 and data.labels.dtype == np.int64
    assert data.images.min() == 0.0 and data.images.max() == 1.0
    # balanced classes: 6,000 / 1,000 of each of the 10
    assert np.array_equal(np.bincount(data.labels, minlength=10), np.full(10, count // 10))
    assert data.class_names == FASHION_MNIST_CLASSES
    assert data.spec == f"fashion-mnist:{split}" and data.family == "fashion-mnist"
    # pixels are exactly k/255
    assert np.allclose(data.images[:50] * 255, np.round(data.images[:50] * 255), atol=1e-4)


def test_fashion_mnist_default_split_is_test_and_limit(fmnist_dir, monkeypatch):
    monkeypatch.setenv("RSJAX_DATA_DIR", str(fmnist_dir))
    data = load_dataset("fashion-mnist", limit=7)
    assert data.spec == "fashion-mnist:test" and len(data) == 7
    full = load_dataset("fashion-mnist:test", data_dir=fmnist_dir)
    assert np.array_equal(data.images, full.images[:7]) and np.array_equal(data.labels, full.labels[:7])


def test_fashion_mnist_missing_dir_names_the_fix(tmp_path, monkeypatch):
    monkeypatch.setenv("RSJAX_DATA_DIR", str(tmp_path / "nowhere"))
    with pytest.raises(DataError, match="apt-get install -y dataset-fashion-mnist") as e:
        load_dataset("fashion-mnist:train")
    assert "nowhere" in str(e.value)  # $RSJAX_DATA_DIR is used when no data_dir is given


def _write_idx(path: Path, magic: int, dims: tuple[int, ...], payload: bytes, compress=True) -> None:
    raw = struct.pack(">I", magic) + struct.pack(f">{len(dims)}I", *dims) + payload
    path.write_bytes(gzip.compress(raw) if compress else raw)


def _fake_fmnist(directory: Path, n_test: int = 10_000, image_magic: int = 0x803, label_payload=None):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, n_test, dtype=np.uint8)
    _write_idx(directory / "t10k-images-idx3-ubyte.gz", image_magic, (n_test, 28, 28), images.tobytes())
    _write_idx(directory / "t10k-labels-idx1-ubyte.gz", 0x801, (n_test,),
               labels.tobytes() if label_payload is None else label_payload)
    return images, labels


def test_fashion_mnist_from_data_dir_argument(tmp_path, monkeypatch):
    monkeypatch.setenv("RSJAX_DATA_DIR", str(tmp_path / "nowhere"))  # the argument wins
    images, labels = _fake_fmnist(tmp_path)
    data = load_dataset("fashion-mnist:test", data_dir=tmp_path)
    assert np.array_equal(data.images[..., 0], images / np.float32(255))
    assert np.array_equal(data.labels, labels)


def test_idx_bad_magic(tmp_path):
    _fake_fmnist(tmp_path, image_magic=0x0000_0807)
    with pytest.raises(DataError, match=r"t10k-images-idx3-ubyte.gz: bad IDX magic number 0x00000807"):
        load_dataset("fashion-mnist:test", data_dir=tmp_path)


def test_idx_truncated_payload(tmp_path):
    _fake_fmnist(tmp_path, label_payload=bytes(9_000))
    with pytest.raises(DataError, match=r"t10k-labels-idx1-ubyte.gz: IDX payload has 9000 bytes"):
        load_dataset("fashion-mnist:test", data_dir=tmp_path)


def test_idx_truncated_gzip_stream(tmp_path):
    _fake_fmnist(tmp_path)
    path = tmp_path / "t10k-images-idx3-ubyte.gz"
    path.write_bytes(path.read_bytes()[:5_000])
    with pytest.raises(DataError, match="t10k-images-idx3-ubyte.gz: cannot decompress"):
        load_dataset("fashion-mnist:test", data_dir=tmp_path)


def test_idx_wrong_count(tmp_path):
    _fake_fmnist(tmp_path, n_test=100)
    with pytest.raises(DataError, match="should hold 10000 images and labels, found 100"):
        load_dataset("fashion-mnist:test", data_dir=tmp_path)


def test_idx_label_out_of_range(tmp_path):
    payload = bytearray(10_000)
    payload[17] = 12
    _fake_fmnist(tmp_path, label_payload=bytes(payload))
    with pytest.raises(DataError, match=r"label 12 outside the class range \[0, 9\]"):
        load_dataset("fashion-mnist:test", data_dir=tmp_path)


# ----------------------------------------------------------------------------- specs


def test_unknown_prefix_and_split():
    with pytest.raises(InputError, match="'mnist'"):
        load_dataset("mnist:train")
    with pytest.raises(InputError, match="'validation'"):
        load_dataset("fashion-mnist:validation")
    with pytest.raises(InputError, match="limit"):
        load_dataset("fashion-mnist", limit=0)


def test_family_and_split_pair():
    assert dataset_family("npz:x.npz", (32, 32, 3)) == "cifar10"
    assert dataset_family("imagefolder:d", (224, 224, 3)) == "imagenet"
    assert dataset_family("npz:x.npz", (28, 28, 1)) == "fashion-mnist"
    assert dataset_family("npz:x.npz", (5, 5, 2)) is None
    assert default_split_pair("fashion-mnist:train") == "fashion-mnist:test"
    assert default_split_pair("npz:train.npz") is None


# ----------------------------------------------------------------------------- npz


def test_npz_nhw_and_nhwc(tmp_path):
    rng = np.random.default_rng(1)
    gray = rng.integers(0, 256, (5, 28, 28), dtype=np.uint8)
    np.savez(tmp_path / "g.npz", images=gray, labels=np.arange(5))
    data = load_dataset(f"npz:{tmp_path / 'g.npz'}")
    assert data.images.shape == (5, 28, 28, 1) and data.images.dtype == np.float32
    assert np.array_equal(data.images[..., 0], gray / np.float32(255))
    rgb = rng.integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
    np.savez(tmp_path / "c.npz", images=rgb, labels=np.array([0, 9, 3, 3]), classes=np.array(list("abcdefghij")))
    data = load_dataset(f"npz:{tmp_path / 'c.npz'}", limit=3)
    assert data.images.shape == (3, 32, 32, 3) and data.labels.tolist() == [0, 9, 3]
    assert data.class_names[9] == "j" and data.family == "cifar10"


@pytest.mark.parametrize("content, message", [
    (dict(images=np.zeros((3, 8, 8), np.uint8)), r"missing key\(s\) \['labels'\]"),
    (dict(images=np.zeros((3, 8, 8), np.uint8), labels=np.zeros(4, np.int64)), "3 images but 4 labels"),
    (dict(images=np.zeros((3, 8), np.uint8), labels=np.zeros(3, np.int64)), "NHW or NHWC"),
    (dict(images=np.zeros((2, 8, 8), np.uint8), labels=np.array([0.5, 1.0])), "1-D integer array"),
    (dict(images=np.full((2, 8, 8), 2.0, np.float32), labels=np.array([0, 1])), r"float images must be finite and in \[0, 1\]"),
    (dict(images=np.zeros((2, 8, 8), np.uint8), labels=np.array([0, 3]), classes=np.array(["a", "b"])),
     r"label 3 outside the class range \[0, 1\]"),
])
def test_npz_bad_content(tmp_path, content, message):
    path = tmp_path / "bad.npz"
    np.savez(path, **content)
    with pytest.raises(DataError, match=message) as e:
        load_dataset(f"npz:{path}")
    assert str(path) in str(e.value)


def test_npz_corrupt_truncated_and_missing(tmp_path):
    path = tmp_path / "t.npz"
    np.savez(path, images=np.zeros((50, 28, 28), np.uint8), labels=np.zeros(50, np.int64))
    path.write_bytes(path.read_bytes()[:3_000])
    with pytest.raises(DataError, match="t.npz: cannot read npz archive"):
        load_dataset(f"npz:{path}")
    junk = tmp_path / "junk.npz"
    junk.write_bytes(b"not a zip file at all")
    with pytest.raises(DataError, match="junk.npz"):
        load_dataset(f"npz:{junk}")
    with pytest.raises(DataError, match="absent.npz not found"):
        load_dataset(f"npz:{tmp_path / 'absent.npz'}")


# ----------------------------------------------------------------------------- imagefolder


def _folder(tmp_path: Path, sizes, labels=None) -> Path:
    root = tmp_path / "folder"
    (root / "images").mkdir(parents=True)
    rng = np.random.default_rng(2)
    lines = []
    for i, (w, h) in enumerate(sizes):
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(root / "images" / f"im{i}.png")
        lines.append(f"im{i}.png, {labels[i] if labels else i % 3}")
    (root / "labels.txt").write_text("\n".join(lines) + "\n")
    return root


def test_imagefolder_lossless_no_resize(tmp_path):
    root = _folder(tmp_path, [(8, 8)] * 4)
    data = load_dataset(f"imagefolder:{root}")
    assert data.images.shape == (4, 8, 8, 3) and data.labels.tolist() == [0, 1, 2, 0]
    original = np.asarray(Image.open(root / "images" / "im1.png"), np.float32) / 255
    assert np.array_equal(data.images[1], original)
    # image_size equal to the size: untouched
    assert np.array_equal(load_dataset(f"imagefolder:{root}", image_size=8).images, data.images)


def test_imagefolder_resize_short_side_center_crop(tmp_path):
    root = _folder(tmp_path, [(40, 20), (20, 30)])
    data = load_dataset(f"imagefolder:{root}", image_size=10)
    assert data.images.shape == (2, 10, 10, 3)
    # the crop is the center of the short-side resize
    im = Image.open(root / "images" / "im0.png").convert("RGB")
    expected = np.asarray(im.resize((20, 10), Image.BILINEAR), np.float32)[:, 5:15] / 255
    assert np.array_equal(data.images[0], expected)
    assert resize_center_crop(Image.new("RGB", (227, 227)), 224).size == (224, 224)


def test_imagefolder_errors(tmp_path):
    root = _folder(tmp_path, [(8, 8), (9, 8)])
    with pytest.raises(DataError, match=r"im1.png: image of shape \(8, 9, 3\) differs"):
        load_dataset(f"imagefolder:{root}")
    (root / "images" / "im1.png").write_bytes(b"\x89PNG garbage")
    with pytest.raises(DataError, match="im1.png: cannot decode image"):
        load_dataset(f"imagefolder:{root}", image_size=8)
    (root / "images" / "im1.png").unlink()
    with pytest.raises(DataError, match="im1.png listed in labels.txt not found"):
        load_dataset(f"imagefolder:{root}", image_size=8)
    (root / "labels.txt").write_text("im0.png 3\n")
    with pytest.raises(DataError, match=r"labels.txt:1: expected `FILE, LABEL`"):
        load_dataset(f"imagefolder:{root}")
    with pytest.raises(DataError, match="labels.txt not found"):
        load_dataset(f"imagefolder:{tmp_path}")


def test_imagefolder_label_range_with_class_file(tmp_path):
    root = _folder(tmp_path, [(8, 8)] * 3, labels=[0, 1, 2])
    (root / "classes.txt").write_text("cat\ndog\n")
    with pytest.raises(DataError, match=r"label 2 outside the class range \[0, 1\]"):
        load_dataset(f"imagefolder:{root}")


@pytest.mark.shared
def test_imagefolder_cifar_train_jpeg(shared_dir):
    root = shared_dir / "data" / "cifar10" / "train_jpeg"
    data = load_dataset(f"imagefolder:{root}", limit=6, image_size=32)
    assert data.images.shape == (6, 32, 32, 3) and data.images.dtype == np.float32
    assert 0.0 <= data.images.min() and data.images.max() <= 1.0 and data.images.std() > 0.05
    first = (root / "labels.txt").read_text().splitlines()[:6]
    assert data.labels.tolist() == [int(line.split(",")[1]) for line in first]
    assert data.class_names[0] == "airplane" and data.family == "cifar10"
    # 32x32 JPEGs at size 32 are not resized: pixels equal PIL's decode
    name = first[0].split(",")[0]
    decoded = np.asarray(Image.open(root / "images" / name).convert("RGB"), np.float32) / 255
    assert np.array_equal(data.images[0], decoded)


@pytest.mark.shared
def test_imagefolder_imagenet_val1300_at_224(shared_dir):
    root = shared_dir / "data" / "imagenet" / "val1300"
    data = load_dataset(f"imagefolder:{root}", limit=5, image_size=224)
    assert data.images.shape == (5, 224, 224, 3)
    assert 0.0 <= data.images.min() and data.images.max() <= 1.0
    first = (root / "labels.txt").read_text().splitlines()[:5]
    assert data.labels.tolist() == [int(line.split(",")[1]) for line in first]
    assert data.num_classes == 1000 and data.class_names[0] == "tench"
    assert data.family == "imagenet"


def test_per_class_keeps_the_first_k_of_each_class_with_their_indices(tmp_path):
    """A class-sorted file (like the CIFAR-10 npz exports): --limit would give one class;
    per_class gives the first K of every class, in dataset order, with their positions."""
    labels = np.repeat(np.arange(3), 4)  # 0 0 0 0 1 1 1 1 2 2 2 2
    images = np.arange(12 * 4, dtype=np.uint8).reshape(12, 2, 2)
    np.savez(tmp_path / "sorted.npz", images=images, labels=labels)
    spec = f"npz:{tmp_path / 'sorted.npz'}"
    np.testing.assert_array_equal(first_per_class(labels, 2), [0, 1, 4, 5, 8, 9])
    np.testing.assert_array_equal(first_per_class(np.array([2, 0, 2, 2, 0]), 2), [0, 1, 2, 4])
    data = load_dataset(spec, per_class=2)
    np.testing.assert_array_equal(data.ids, [0, 1, 4, 5, 8, 9])
    np.testing.assert_array_equal(data.labels, [0, 0, 1, 1, 2, 2])
    np.testing.assert_array_equal(data.images[2, ..., 0], (images[4] / np.float32(255)).astype(np.float32))
    limited = load_dataset(spec, limit=6, per_class=1)  # limit first, then per class
    np.testing.assert_array_equal(limited.ids, [0, 4])
    np.testing.assert_array_equal(load_dataset(spec).ids, np.arange(12))
    with pytest.raises(InputError, match="per_class"):
        load_dataset(spec, per_class=0)
