"""Datasets -> arrays: images float32 NHWC in [0, 1], labels int64, class names.

One spec string names a dataset everywhere (CLI, experiments, tests):

* ``fashion-mnist[:train|test]`` (default split ``test``): the IDX ``.gz`` files of
  Fashion-MNIST, looked up in the ``data_dir`` argument, then ``$RSJAX_DATA_DIR``, then
  ``/usr/share/datasets/fashion-mnist`` (Debian package ``dataset-fashion-mnist``).
* ``npz:PATH``: a NumPy archive with ``images`` (uint8 NHWC or NHW, or float in [0, 1]) and
  ``labels`` (integers); optional ``classes`` (names).
* ``imagefolder:DIR``: ``DIR/labels.txt`` of ``FILE, LABEL`` lines and the files in
  ``DIR/images/``. Every image is decoded to RGB; with ``image_size`` set, its short side is
  resized (bilinear, antialiased) to ``image_size`` and the center ``image_size`` x
  ``image_size`` square is kept (no resize when the image already has that size). Class names come
  from ``DIR/classes.txt`` (one per line) or ``DIR/synset_words.txt`` (``wnid name, ...``) when
  present.

Pixel values are ``uint8 / 255``. Everything read is validated (magic numbers, counts, shapes,
label range, undecodable files) and problems raise :class:`rsjax.errors.DataError` naming the file.
"""
from __future__ import annotations

import gzip
import os
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from rsjax.errors import DataError, InputError

DEFAULT_FMNIST_DIR = "/usr/share/datasets/fashion-mnist"
FMNIST_FIX = "apt-get install -y dataset-fashion-mnist"
FASHION_MNIST_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)
CIFAR10_CLASSES = (
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
)
_FMNIST_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz", 60_000),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz", 10_000),
}
_IDX_IMAGES_MAGIC = 0x00000803  # unsigned byte, 3 dimensions
_IDX_LABELS_MAGIC = 0x00000801  # unsigned byte, 1 dimension
SPEC_HELP = "fashion-mnist[:train|test], npz:PATH, imagefolder:DIR"


@dataclass(frozen=True)
class Dataset:
    """Images [N, H, W, C] float32 in [0, 1], labels [N] int64, names of the classes, and
    ``indices`` [N]: each image's position in the full dataset (``None`` = 0..N-1)."""

    images: np.ndarray
    labels: np.ndarray
    class_names: tuple[str, ...]
    spec: str
    indices: np.ndarray | None = None

    @property
    def ids(self) -> np.ndarray:
        """Positions in the full dataset [N] int64 (what records and logs call the image index)."""
        return np.arange(len(self.labels), dtype=np.int64) if self.indices is None else self.indices

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.images.shape[1:])  # type: ignore[return-value]

    @property
    def family(self) -> str | None:
        """The dataset family this spec is meant for (see :func:`dataset_family`)."""
        return dataset_family(self.spec, self.image_shape)


def dataset_family(spec: str, image_shape: Sequence[int] | None = None) -> str | None:
    """``"fashion-mnist"``, ``"cifar10"`` or ``"imagenet"``: the family whose default model
    (``rsjax.models.DEFAULT_ARCH``) fits this data. Fashion-MNIST specs are known by name; for
    ``npz:``/``imagefolder:`` the image shape decides (28x28x1 -> fashion-mnist, 32x32x3 ->
    cifar10, larger RGB -> imagenet); None when it cannot be told."""
    prefix = spec.split(":", 1)[0].strip().lower()
    if prefix == "fashion-mnist":
        return "fashion-mnist"
    if image_shape is None:
        return None
    shape = tuple(int(s) for s in image_shape)
    if shape == (28, 28, 1):
        return "fashion-mnist"
    if shape == (32, 32, 3):
        return "cifar10"
    if len(shape) == 3 and shape[2] == 3 and min(shape[:2]) >= 64:
        return "imagenet"
    return None


def first_per_class(labels: np.ndarray, k: int) -> np.ndarray:
    """Indices of the first ``k`` images of every class, in dataset order (a class with fewer
    images gives all it has). For files sorted by class (e.g. CIFAR-10 npz exports), where the
    first K images all belong to one class."""
    labels = np.asarray(labels)
    keep = np.zeros(len(labels), bool)
    for c in np.unique(labels):
        keep[np.flatnonzero(labels == c)[:k]] = True
    return np.flatnonzero(keep).astype(np.int64)


def load_dataset(
    spec: str,
    data_dir: str | os.PathLike | None = None,
    limit: int | None = None,
    image_size: int | None = None,
    per_class: int | None = None,
) -> Dataset:
    """Load the dataset named by ``spec`` (see module docstring); keep the first ``limit`` images,
    then (``per_class``) the first ``per_class`` images of each class among them (the result's
    ``indices`` say where they were).

    ``data_dir`` only applies to Fashion-MNIST; ``image_size`` only to ``imagefolder:``.
    """
    if per_class is not None and (isinstance(per_class, bool) or not isinstance(per_class, int) or per_class < 1):
        raise InputError(f"per_class must be an integer >= 1 or None, got {per_class!r}")
    data = _load_dataset(spec, data_dir, limit, image_size)
    if per_class is None:
        return data
    idx = first_per_class(data.labels, per_class)
    return Dataset(data.images[idx], data.labels[idx], data.class_names, data.spec, indices=idx)


def _load_dataset(spec, data_dir, limit, image_size) -> Dataset:
    if not isinstance(spec, str) or not spec.strip():
        raise InputError(f"dataset spec must be a non-empty string ({SPEC_HELP}), got {spec!r}")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise InputError(f"limit must be an integer >= 1 or None, got {limit!r}")
    if image_size is not None and (isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 1):
        raise InputError(f"image_size must be an integer >= 1 or None, got {image_size!r}")
    prefix, _, rest = spec.strip().partition(":")
    prefix = prefix.lower()
    if prefix == "fashion-mnist":
        split = rest or "test"
        if split not in _FMNIST_FILES:
            raise InputError(f"unknown Fashion-MNIST split {split!r} in spec {spec!r}; use train or test")
        images, labels = _load_fashion_mnist(split, data_dir, limit)
        return Dataset(images, labels, FASHION_MNIST_CLASSES, f"fashion-mnist:{split}")
    if prefix == "npz":
        if not rest:
            raise InputError(f"npz spec needs a path: npz:PATH, got {spec!r}")
        return _load_npz(Path(rest), limit, spec)
    if prefix == "imagefolder":
        if not rest:
            raise InputError(f"imagefolder spec needs a directory: imagefolder:DIR, got {spec!r}")
        return _load_imagefolder(Path(rest), limit, image_size, spec)
    raise InputError(f"unknown dataset spec prefix {prefix!r} in {spec!r}; known: {SPEC_HELP}")


def default_split_pair(spec: str) -> str | None:
    """The held-out spec matching a training spec (``fashion-mnist:train`` -> ``fashion-mnist:test``);
    None when there is no conventional pair."""
    prefix, _, rest = spec.strip().partition(":")
    if prefix.lower() == "fashion-mnist" and rest in ("train", ""):
        return "fashion-mnist:test"
    return None


# ----------------------------------------------------------------------------- Fashion-MNIST


def fashion_mnist_dir(data_dir: str | os.PathLike | None = None) -> Path:
    """Directory of the IDX files: ``data_dir``, else ``$RSJAX_DATA_DIR``, else the Debian path."""
    if data_dir is not None:
        return Path(data_dir)
    return Path(os.environ.get("RSJAX_DATA_DIR") or DEFAULT_FMNIST_DIR)


def _load_fashion_mnist(split: str, data_dir, limit: int | None) -> tuple[np.ndarray, np.ndarray]:
    directory = fashion_mnist_dir(data_dir)
    image_file, label_file, expected = _FMNIST_FILES[split]
    for name in (image_file, label_file):
        if not (directory / name).is_file():
            raise DataError(
                f"Fashion-MNIST file {directory / name} not found; install it with `{FMNIST_FIX}` "
                f"or point --data-dir / $RSJAX_DATA_DIR at a directory holding the IDX .gz files"
            )
    images = read_idx(directory / image_file, _IDX_IMAGES_MAGIC)
    labels = read_idx(directory / label_file, _IDX_LABELS_MAGIC)
    if images.shape[0] != expected or labels.shape[0] != expected:
        raise DataError(
            f"Fashion-MNIST {split} split should hold {expected} images and labels, found "
            f"{images.shape[0]} in {directory / image_file} and {labels.shape[0]} in {directory / label_file}"
        )
    if images.shape[1:] != (28, 28):
        raise DataError(f"{directory / image_file}: images should be 28x28, found {images.shape[1:]}")
    _check_labels(labels, len(FASHION_MNIST_CLASSES), directory / label_file)
    if limit is not None:
        images, labels = images[:limit], labels[:limit]
    return _to_float(images[..., None]), labels.astype(np.int64)


def read_idx(path: Path, magic: int) -> np.ndarray:
    """Read a gzip-compressed IDX file (big-endian magic ``0x0000 08 D``, D dimension sizes, then
    the unsigned bytes) and check its magic number and length."""
    try:
        with gzip.open(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError, zlib.error) as e:
        raise DataError(f"{path}: cannot decompress IDX file ({e}); the file is corrupt or truncated") from None
    if len(raw) < 4:
        raise DataError(f"{path}: IDX file too short ({len(raw)} bytes) to hold a header")
    (found,) = struct.unpack(">I", raw[:4])
    if found != magic:
        raise DataError(f"{path}: bad IDX magic number 0x{found:08x}, expected 0x{magic:08x}")
    ndim = magic & 0xFF
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{path}: IDX header truncated ({len(raw)} bytes, needs {header})")
    dims = struct.unpack(f">{ndim}I", raw[4:header])
    size = int(np.prod(dims))
    if len(raw) - header != size:
        raise DataError(
            f"{path}: IDX payload has {len(raw) - header} bytes, header dimensions {dims} need {size} "
            f"(truncated or corrupt file)"
        )
    return np.frombuffer(raw, np.uint8, offset=header).reshape(dims)


# ----------------------------------------------------------------------------- npz


def _load_npz(path: Path, limit: int | None, spec: str) -> Dataset:
    if not path.is_file():
        raise DataError(f"npz file {path} not found")
    try:
        with np.load(path, allow_pickle=False) as archive:
            keys = set(archive.files)
            missing = {"images", "labels"} - keys
            if missing:
                raise DataError(f"{path}: missing key(s) {sorted(missing)}; found {sorted(keys)} (need images, labels)")
            images = archive["images"]
            labels = archive["labels"]
            classes = tuple(str(c) for c in archive["classes"]) if "classes" in keys else None
    except DataError:
        raise
    except Exception as e:  # zipfile.BadZipFile, ValueError, OSError, EOFError...
        raise DataError(f"{path}: cannot read npz archive ({type(e).__name__}: {e}); corrupt or truncated?") from None
    if images.ndim == 3:
        images = images[..., None]
    if images.ndim != 4 or images.shape[-1] not in (1, 3):
        raise DataError(f"{path}: images must be NHW or NHWC with 1 or 3 channels, got shape {images.shape}")
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise DataError(f"{path}: labels must be a 1-D integer array, got {labels.dtype} of shape {labels.shape}")
    if len(labels) != len(images):
        raise DataError(f"{path}: {len(images)} images but {len(labels)} labels")
    if len(labels) == 0:
        raise DataError(f"{path}: holds no images")
    if classes is None:
        classes = _guess_classes(images.shape[1:], int(labels.max()) + 1)
    _check_labels(labels, len(classes), path)
    if limit is not None:
        images, labels = images[:limit], labels[:limit]
    if images.dtype == np.uint8:
        out = _to_float(images)
    elif np.issubdtype(images.dtype, np.floating):
        out = images.astype(np.float32)
        if not np.all(np.isfinite(out)) or out.min() < 0.0 or out.max() > 1.0:
            raise DataError(f"{path}: float images must be finite and in [0, 1]")
    else:
        raise DataError(f"{path}: images must be uint8 (or float in [0, 1]), got {images.dtype}")
    return Dataset(out, labels.astype(np.int64), classes, spec)


def _guess_classes(image_shape: tuple[int, ...], num_labels: int) -> tuple[str, ...]:
    if tuple(image_shape) == (32, 32, 3) and num_labels <= 10:
        return CIFAR10_CLASSES
    if tuple(image_shape) == (28, 28, 1) and num_labels <= 10:
        return FASHION_MNIST_CLASSES
    return tuple(str(i) for i in range(num_labels))


# ----------------------------------------------------------------------------- imagefolder


def _load_imagefolder(root: Path, limit: int | None, image_size: int | None, spec: str) -> Dataset:
    from PIL import Image, UnidentifiedImageError

    label_file = root / "labels.txt"
    image_dir = root / "images"
    if not label_file.is_file():
        raise DataError(f"imagefolder {root}: {label_file} not found (needs lines `FILE, LABEL`)")
    if not image_dir.is_dir():
        raise DataError(f"imagefolder {root}: image directory {image_dir} not found")
    entries = _read_label_lines(label_file, limit)
    if not entries:
        raise DataError(f"{label_file}: holds no `FILE, LABEL` lines")
    class_names = _read_class_names(root)
    images = []
    shape = None
    for name, _ in entries:
        path = image_dir / name
        try:
            with Image.open(path) as im:
                im = im.convert("RGB")
                if image_size is not None:
                    im = resize_center_crop(im, image_size)
                array = np.asarray(im, np.uint8)
        except FileNotFoundError:
            raise DataError(f"imagefolder {root}: image {path} listed in labels.txt not found") from None
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
            raise DataError(f"{path}: cannot decode image ({e}); corrupt or truncated?") from None
        if shape is None:
            shape = array.shape
        elif array.shape != shape:
            raise DataError(
                f"{path}: image of shape {array.shape} differs from the first image's {shape}; "
                f"pass image_size (--image-size) to resize and center-crop"
            )
        images.append(array)
    labels = np.array([lab for _, lab in entries], np.int64)
    if class_names is None:
        class_names = _guess_classes(shape, int(labels.max()) + 1)
    _check_labels(labels, len(class_names), label_file)
    return Dataset(_to_float(np.stack(images)), labels, class_names, spec)


def resize_center_crop(image, size: int):
    """Resize the short side of a PIL image to ``size`` (PIL bilinear, antialiased when shrinking;
    long side ``int(size * long / short)``), then keep the central ``size`` x ``size`` square
    (offsets ``int(round((side - size) / 2))``), as torchvision's ``Resize(size)`` then
    ``CenterCrop(size)`` on PIL images."""
    from PIL import Image

    width, height = image.size
    if (width, height) == (size, size):
        return image
    if min(width, height) != size:
        # long side int(size * long / short), as torchvision's Resize(int)
        new_w = size if width <= height else int(size * width / height)
        new_h = size if height <= width else int(size * height / width)
        image = image.resize((new_w, new_h), Image.BILINEAR)
        width, height = new_w, new_h
    left = int(round((width - size) / 2.0))
    top = int(round((height - size) / 2.0))
    return image.crop((left, top, left + size, top + size))


def _read_label_lines(label_file: Path, limit: int | None) -> list[tuple[str, int]]:
    entries: list[tuple[str, int]] = []
    with open(label_file, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            name, sep, label = line.rpartition(",")
            try:
                value = int(label.strip())
            except ValueError:
                value = None
            if not sep or not name.strip() or value is None:
                raise DataError(f"{label_file}:{number}: expected `FILE, LABEL`, got {line!r}")
            entries.append((name.strip(), value))
            if limit is not None and len(entries) >= limit:
                break
    return entries


def _read_class_names(root: Path) -> tuple[str, ...] | None:
    classes = root / "classes.txt"
    if classes.is_file():
        return tuple(line.strip() for line in classes.read_text(encoding="utf-8").splitlines() if line.strip())
    synsets = root / "synset_words.txt"
    if synsets.is_file():
        names = []
        for line in synsets.read_text(encoding="utf-8").splitlines():
            if line.strip():
                _, _, words = line.strip().partition(" ")
                names.append(words.split(",")[0].strip() or line.strip())
        return tuple(names)
    return None


# ----------------------------------------------------------------------------- shared checks


def _check_labels(labels: np.ndarray, num_classes: int, source: Path) -> None:
    if len(labels) and (labels.min() < 0 or labels.max() >= num_classes):
        bad = labels[(labels < 0) | (labels >= num_classes)][0]
        raise DataError(f"{source}: label {int(bad)} outside the class range [0, {num_classes - 1}]")


def _to_float(images_uint8: np.ndarray) -> np.ndarray:
    return images_uint8.astype(np.float32) / np.float32(255.0)
