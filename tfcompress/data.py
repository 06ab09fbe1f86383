"""Datasets for examples, tests and benchmarks, found without surprises.

:func:`load_dataset` looks for MNIST, Fashion-MNIST or CIFAR-10 in this order
and says which one it used (``Dataset.source``):

1. the ``data_dir`` argument;
2. the ``TFCOMPRESS_DATA_DIR`` environment variable;
3. the Keras cache (``$KERAS_HOME/datasets``, default ``~/.keras/datasets``),
   then a Keras download when ``download=True``;
4. scikit-learn's ``load_digits()`` (1,797 real 8x8 digits shipped inside the
   scikit-learn wheel), when ``fallback=True``.

``data_dir`` uses the layout of the project's shared data folder:
``mnist/mnist.npz``, ``fashion-mnist/*-idx?-ubyte.gz`` and
``cifar10/cifar10_lossless_subset_convnetjs.npz`` (4000 train / 1000 test).

Images come back as uint8 (N, H, W, C); labels as int64 (N,).

Example:
    >>> from tfcompress.data import load_dataset
    >>> ds = load_dataset("digits")
    >>> ds.x_train.shape[1:], ds.num_classes, ds.source
    ((8, 8, 1), 10, 'scikit-learn load_digits()')
"""

from __future__ import annotations

import dataclasses
import gzip
import logging
import os
import re
from pathlib import Path
from typing import List, Optional, Tuple, Union

import numpy as np

__all__ = [
    "AUGMENTATIONS",
    "CALIBRATION_SAMPLES",
    "Dataset",
    "ENV_VAR",
    "IMAGE_EXTENSIONS",
    "NAMES",
    "default_data_dir",
    "flip_and_shift",
    "load_dataset",
    "load_image_folder",
]

ENV_VAR = "TFCOMPRESS_DATA_DIR"
# Samples of representative data used to calibrate ranges or refit layers by default.
CALIBRATION_SAMPLES = 500
NAMES = ("mnist", "fashion_mnist", "cifar10", "digits")
_ALIASES = {"fashion-mnist": "fashion_mnist", "fmnist": "fashion_mnist", "cifar-10": "cifar10"}

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif")

logger = logging.getLogger("tfcompress")


@dataclasses.dataclass(frozen=True)
class Dataset:
    """Train and test splits of an image classification dataset."""

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    source: str

    @property
    def num_classes(self) -> int:
        return int(max(self.y_train.max(), self.y_test.max())) + 1

    @property
    def input_shape(self):
        return self.x_train.shape[1:]


def default_data_dir() -> Optional[Path]:
    """The directory named by ``TFCOMPRESS_DATA_DIR``, if set."""
    value = os.environ.get(ENV_VAR)
    return Path(value) if value else None


def load_dataset(
    name: str,
    *,
    data_dir: Union[str, os.PathLike, None] = None,
    download: bool = False,
    fallback: bool = True,
) -> Dataset:
    """Loads a dataset from the first place that has it.

    Args:
        name: ``"mnist"``, ``"fashion_mnist"``, ``"cifar10"`` or ``"digits"``.
        data_dir: a directory with the shared-data layout (see module doc).
        download: let Keras download the dataset when it is not cached.
        fallback: return scikit-learn's digits when nothing else is found
            (logged as a warning); with False, raise instead.

    Raises:
        ValueError: an unknown dataset name.
        FileNotFoundError: nothing found and ``fallback`` is False.
    """
    key = _ALIASES.get(name, name)
    if key not in NAMES:
        raise ValueError(f"Unknown dataset. Received: name={name!r}. Allowed: {list(NAMES)}.")
    if key == "digits":
        return _digits()
    tried = []
    for directory in (data_dir, default_data_dir()):
        if directory is None:
            continue
        directory = Path(directory)
        tried.append(str(directory))
        found = _LOADERS[key](directory)
        if found is not None:
            return Dataset(key, *found, source=str(directory))
    cached = _from_keras(key, download)
    if cached is not None:
        return cached
    tried.append("the Keras cache" + (" and download" if download else ""))
    if not fallback:
        raise FileNotFoundError(
            f"Dataset {key!r} not found in: {', '.join(tried)}. Set {ENV_VAR} to a data "
            "directory, pass data_dir=..., or allow download=True."
        )
    logger.warning("Dataset %r not found in %s; using scikit-learn's digits instead.",
                   key, ", ".join(tried))
    return _digits()


def _digits() -> Dataset:
    # Optional: scikit-learn comes with the tensorflow extra, not with the check tools.
    from sklearn.datasets import load_digits

    digits = load_digits()
    # The values are 0..16; scale to the 0..255 of the other image datasets.
    x = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)[..., None]
    y = digits.target.astype(np.int64)
    rng = np.random.default_rng(0)
    order = rng.permutation(len(x))
    x, y = x[order], y[order]
    split = int(0.8 * len(x))
    return Dataset("digits", x[:split], y[:split], x[split:], y[split:],
                   source="scikit-learn load_digits()")


def _mnist(directory: Path):
    path = directory / "mnist" / "mnist.npz"
    if not path.exists():
        return None
    with np.load(path) as f:
        return (f["x_train"][..., None], f["y_train"].astype(np.int64),
                f["x_test"][..., None], f["y_test"].astype(np.int64))


def _read_idx(path: Path, offset: int, shape) -> np.ndarray:
    with gzip.open(path, "rb") as f:
        return np.frombuffer(f.read(), np.uint8, offset=offset).reshape(shape)


def _fashion(directory: Path):
    folder = directory / "fashion-mnist"
    names = ["train-labels-idx1-ubyte.gz", "train-images-idx3-ubyte.gz",
             "t10k-labels-idx1-ubyte.gz", "t10k-images-idx3-ubyte.gz"]
    if not all((folder / n).exists() for n in names):
        return None
    y_train = _read_idx(folder / names[0], 8, (-1,)).astype(np.int64)
    x_train = _read_idx(folder / names[1], 16, (len(y_train), 28, 28, 1))
    y_test = _read_idx(folder / names[2], 8, (-1,)).astype(np.int64)
    x_test = _read_idx(folder / names[3], 16, (len(y_test), 28, 28, 1))
    return x_train, y_train, x_test, y_test


def _cifar(directory: Path):
    path = directory / "cifar10" / "cifar10_lossless_subset_convnetjs.npz"
    if not path.exists():
        return None
    with np.load(path) as f:
        return (f["x_train"], f["y_train"].reshape(-1).astype(np.int64),
                f["x_test"], f["y_test"].reshape(-1).astype(np.int64))


_LOADERS = {"mnist": _mnist, "fashion_mnist": _fashion, "cifar10": _cifar}


def _keras_cache_dir() -> Path:
    return Path(os.environ.get("KERAS_HOME", Path.home() / ".keras")) / "datasets"


def _from_keras(key: str, download: bool) -> Optional[Dataset]:
    cache = _keras_cache_dir()
    present = {
        "mnist": (cache / "mnist.npz").exists(),
        "fashion_mnist": (cache / "fashion-mnist" / "t10k-images-idx3-ubyte.gz").exists(),
        "cifar10": (cache / "cifar-10-batches-py" / "test_batch").exists(),
    }[key]
    if not (present or download):
        return None
    # TensorFlow boundary: data.py is imported by the TensorFlow-free CLI.
    import keras

    try:
        (x_train, y_train), (x_test, y_test) = getattr(keras.datasets, key).load_data()
    except (OSError, ValueError) as e:  # no network, or a broken cache
        logger.warning("Keras could not load %r: %s", key, e)
        return None
    if x_train.ndim == 3:
        x_train, x_test = x_train[..., None], x_test[..., None]
    return Dataset(key, x_train, y_train.reshape(-1).astype(np.int64), x_test,
                   y_test.reshape(-1).astype(np.int64), source=f"Keras ({cache})")


def load_image_folder(
    directory: Union[str, os.PathLike],
    *,
    size: Tuple[int, int],
    channels: int = 3,
    label_regex: Optional[str] = None,
) -> Tuple[np.ndarray, Optional[np.ndarray], List[Path]]:
    """Decodes every image in a folder (sorted by name) to uint8 pixels.

    Args:
        directory: folder with ``.jpg``, ``.jpeg``, ``.png``, ``.bmp`` or ``.gif`` files.
        size: ``(height, width)`` to resize to (bilinear).
        channels: 1 or 3.
        label_regex: a pattern whose first group is the integer label in the
            file name, e.g. ``r"_(\d+)\.\w+$"`` for ``imagenet_3_281.jpg``.

    Returns:
        ``(images, labels or None, files)``; images are uint8 (N, H, W, C).

    Raises:
        FileNotFoundError: the folder does not exist.
        ValueError: no images, or a file name without a label.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"No such image folder. Received: {str(directory)!r}.")
    files = sorted(p for p in directory.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)
    if not files:
        raise ValueError(f"No images ({', '.join(IMAGE_EXTENSIONS)}) found in {str(directory)!r}.")
    # TensorFlow boundary: data.py is imported by the TensorFlow-free CLI.
    import tensorflow as tf

    images = []
    for f in files:
        image = tf.io.decode_image(tf.io.read_file(str(f)), channels=channels, expand_animations=False)
        image = tf.image.resize(tf.cast(image, tf.float32), size)
        images.append(np.clip(np.round(image.numpy()), 0, 255).astype(np.uint8))
    labels = None
    if label_regex is not None:
        found = []
        for f in files:
            match = re.search(label_regex, f.name)
            if match is None:
                raise ValueError(f"No label in file name {f.name!r} (label_regex={label_regex!r}).")
            found.append(int(match.group(1)))
        labels = np.asarray(found, np.int64)
    return np.stack(images), labels, files


def flip_and_shift(x: np.ndarray, rng: np.random.Generator, *, pad: int = 4) -> np.ndarray:
    """Random horizontal flips and shifts of up to ``pad`` pixels (reflect padding), per image.

    The usual CIFAR augmentation; ``x`` is NHWC.

    >>> x = np.arange(2 * 4 * 4).reshape(2, 4, 4, 1).astype("float32")
    >>> flip_and_shift(x, np.random.default_rng(0), pad=1).shape
    (2, 4, 4, 1)
    """
    if x.ndim != 4:
        raise ValueError(f"flip_and_shift expects NHWC images. Received: shape {x.shape}")
    n, h, w = x.shape[:3]
    flip = rng.random(n) < 0.5
    x = np.where(flip[:, None, None, None], x[:, :, ::-1], x)
    padded = np.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)), mode="reflect")
    dy, dx = rng.integers(0, 2 * pad + 1, size=(2, n))
    rows = dy[:, None] + np.arange(h)[None, :]
    cols = dx[:, None] + np.arange(w)[None, :]
    return padded[np.arange(n)[:, None, None], rows[:, :, None], cols[:, None, :]]


AUGMENTATIONS = {"flip_and_shift": flip_and_shift}
