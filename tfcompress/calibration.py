"""Representative data for calibration: many input forms, checked before use.

The converter needs a few hundred real input samples to measure activation
ranges. Users have them in many shapes; this module turns each into a list of
single samples matching the model's input signature, and refuses data of the
wrong shape, dtype or size *before* calibration starts, with a message that
says what was received and what the model expects.

Accepted forms (``data`` below):

* a NumPy array (all samples, or one sample without the batch axis);
* a dict ``{input_name: array}`` for multi-input models, or a list of arrays
  in input order;
* a ``tf.data.Dataset`` (elements may be ``x``, ``(x, y)``, ``(x, y, w)``,
  dicts, batched or not);
* a generator, iterable, or a zero-argument callable returning one (the
  ``representative_dataset`` convention of ``tf.lite.TFLiteConverter``);
* a path to an ``.npz`` or ``.npy`` file;
* a path to a directory of images (``.jpg``, ``.jpeg``, ``.png``, ``.bmp``,
  ``.gif``), decoded, resized to the model's input size (or ``image_size``)
  and passed as float32 pixels in 0-255 unless ``preprocess`` says otherwise.

Example:
    >>> import numpy as np
    >>> from tfcompress.calibration import InputSpec, prepare_samples
    >>> spec = [InputSpec("x", (None, 4), np.dtype("float32"))]
    >>> samples = prepare_samples(np.zeros((10, 4)), spec, num_samples=3)
    >>> len(samples), samples[0][0].shape, samples[0][0].dtype
    (3, (1, 4), dtype('float32'))
    >>> prepare_samples(np.zeros((10, 5)), spec, num_samples=3)
    Traceback (most recent call last):
    ...
    ValueError: Calibration data for input 'x' has shape (10, 5); the model expects (None, 4) (None = any size).
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Callable, Iterable, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import tensorflow as tf

from tfcompress._progress import Progress
from tfcompress.data import CALIBRATION_SAMPLES, load_image_folder

__all__ = [
    "InputSpec",
    "prepare_samples",
    "representative_dataset",
]


@dataclasses.dataclass(frozen=True)
class InputSpec:
    """One model input: its name, shape (batch axis first, None for any) and dtype."""

    name: str
    shape: Tuple[Optional[int], ...]
    dtype: np.dtype


Sample = List[np.ndarray]  # one array per model input, each with batch axis 1


def prepare_samples(
    data,
    specs: Sequence[InputSpec],
    *,
    num_samples: int = CALIBRATION_SAMPLES,
    preprocess: Optional[Callable[[np.ndarray], np.ndarray]] = None,
    image_size: Optional[Tuple[int, int]] = None,
) -> List[Sample]:
    """Turns representative data into checked single samples.

    Args:
        data: any of the forms in the module docstring.
        specs: the model's inputs, in the order the converter feeds them.
        num_samples: how many samples to keep (the first ones).
        preprocess: applied to every sample's array (single-input models) or to
            each input's array (multi-input models), after image decoding.
        image_size: ``(height, width)`` for image directories when the model's
            input has no fixed spatial size.

    Returns:
        A list of at most ``num_samples`` samples.

    Raises:
        ValueError: empty data, wrong shape, wrong number of inputs, unknown
            input names, ``num_samples < 1``.
        TypeError: a dtype that cannot feed the model's input, or an
            unsupported data type.
        FileNotFoundError: a path that does not exist.
    """
    if not isinstance(num_samples, int) or isinstance(num_samples, bool) or num_samples < 1:
        raise ValueError(f"`num_samples` must be a positive integer. Received: num_samples={num_samples!r}")
    if not specs:
        raise ValueError("The model has no inputs to calibrate.")
    samples: List[Sample] = []
    for element in _elements(data, specs, image_size):
        per_input = _split_inputs(element, specs)
        if preprocess is not None:
            per_input = [np.asarray(preprocess(a)) for a in per_input]
        per_input = [_as_batch(a, spec) for a, spec in zip(per_input, specs)]
        for a, spec in zip(per_input, specs):
            _check_finite(a, spec, len(samples))
        sizes = {len(a) for a in per_input}
        if len(sizes) != 1:
            raise ValueError(
                "Calibration data has a different number of samples per input: "
                + ", ".join(f"{s.name}={len(a)}" for s, a in zip(specs, per_input))
            )
        for i in range(sizes.pop()):
            samples.append([a[i:i + 1] for a in per_input])
            if len(samples) >= num_samples:
                return samples
    if not samples:
        raise ValueError(
            "Calibration data is empty: it yielded no samples. Pass at least one "
            "sample (a few hundred is typical)."
        )
    return samples


def representative_dataset(
    samples: Sequence[Sample],
    *,
    input_names: Optional[Sequence[str]] = None,
    progress: bool = True,
) -> Callable[[], Iterator]:
    """A ``representative_dataset`` callable for ``tf.lite.TFLiteConverter``.

    Yields lists in input order, or dicts keyed by ``input_names`` when given
    (signature-based conversion matches inputs by name). Shows a progress bar
    over the calibration samples when ``progress`` is True.
    """

    def generate():
        bar = None
        if progress:
            print(f"Calibrating on {len(samples)} samples")
            bar = Progress(len(samples), unit="sample")
        for i, sample in enumerate(samples):
            if input_names is not None:
                yield dict(zip(input_names, sample))
            else:
                yield list(sample)
            if bar is not None:
                bar.update(i + 1)

    return generate


def _elements(data, specs, image_size) -> Iterator:
    """Yields raw elements; each is a sample, a batch, or a per-input structure."""
    if data is None:
        raise ValueError(
            "Representative data is required for full-integer modes (int8, int16x8). "
            "Received: representative_data=None."
        )
    if isinstance(data, (str, os.PathLike)):
        yield from _from_path(Path(data), specs, image_size)
        return
    if isinstance(data, np.ndarray) or isinstance(data, dict):
        yield data
        return
    if isinstance(data, (list, tuple)) and len(data) == len(specs) and all(
        isinstance(a, np.ndarray) for a in data
    ):
        yield list(data)
        return
    tf_dataset = _tf_dataset_type()
    if tf_dataset is not None and isinstance(data, tf_dataset):
        for element in data.as_numpy_iterator():
            yield _drop_labels(element, specs)
        return
    if callable(data) and not hasattr(data, "__iter__"):
        data = data()
    if isinstance(data, (Iterable, Iterator)) and not isinstance(data, (bytes, str)):
        yield from (_to_numpy(e) for e in data)
        return
    raise TypeError(
        "Unsupported representative data. Expected a NumPy array, a dict or list of "
        "arrays, a tf.data.Dataset, a generator, a callable returning one, or a path "
        f"to an .npz/.npy file or image directory. Received: {type(data).__name__}."
    )


def _tf_dataset_type():

    return tf.data.Dataset


def _to_numpy(element):
    if isinstance(element, dict):
        return {k: np.asarray(v) for k, v in element.items()}
    if isinstance(element, (list, tuple)):
        return [np.asarray(v) for v in element]
    return np.asarray(element)


def _drop_labels(element, specs):
    # Datasets built for fit() yield (x, y) or (x, y, sample_weight).
    if isinstance(element, tuple) and len(element) in (2, 3) and len(specs) != len(element):
        element = element[0]
    return _to_numpy(element)


def _from_path(path: Path, specs, image_size) -> Iterator:
    if not path.exists():
        raise FileNotFoundError(f"Representative data path does not exist. Received: {str(path)!r}.")
    if path.is_dir():
        yield from _images(path, specs, image_size)
        return
    suffix = path.suffix.lower()
    if suffix == ".npy":
        yield np.load(path, allow_pickle=False)
        return
    if suffix == ".npz":
        with np.load(path, allow_pickle=False) as archive:
            keys = list(archive.keys())
            names = [s.name for s in specs]
            if len(specs) > 1 or (len(keys) > 1 and names[0] in keys):
                missing = [n for n in names if n not in keys]
                if missing:
                    raise ValueError(
                        f"The .npz file {str(path)!r} lacks arrays for inputs {missing}. "
                        f"It holds {keys}; name its arrays after the model's inputs {names}."
                    )
                yield {n: archive[n] for n in names}
            elif len(keys) == 1:
                yield archive[keys[0]]
            else:
                for key in ("x", "x_train", "images", "inputs"):
                    if key in keys:
                        yield archive[key]
                        return
                raise ValueError(
                    f"The .npz file {str(path)!r} holds several arrays {keys}; expected one, "
                    f"one named after the input {names[0]!r}, or one named 'x'."
                )
        return
    raise ValueError(
        "Representative data files must be .npz or .npy, or a directory of images. "
        f"Received: {str(path)!r}."
    )


def _images(directory: Path, specs, image_size) -> Iterator[np.ndarray]:
    if len(specs) != 1:
        raise ValueError(
            f"An image directory can calibrate single-input models only; this model has "
            f"{len(specs)} inputs ({[s.name for s in specs]})."
        )
    spec = specs[0]
    if len(spec.shape) != 4:
        raise ValueError(
            f"An image directory needs a model input of shape (batch, height, width, channels). "
            f"Received input {spec.name!r} with shape {spec.shape}."
        )
    size = tuple(image_size) if image_size is not None else tuple(spec.shape[1:3])
    if None in size:
        raise ValueError(
            f"The model input {spec.name!r} has no fixed height and width {spec.shape}; "
            "pass image_size=(height, width)."
        )
    images, _, _ = load_image_folder(directory, size=size, channels=spec.shape[3] or 3)
    yield images


def _split_inputs(element, specs) -> List[np.ndarray]:
    names = [s.name for s in specs]
    if isinstance(element, dict):
        unknown = [k for k in element if k not in names]
        missing = [n for n in names if n not in element]
        if unknown or missing:
            raise ValueError(
                f"Calibration data names inputs {sorted(element)}; the model's inputs are {names}."
                + (f" Unknown: {unknown}." if unknown else "")
                + (f" Missing: {missing}." if missing else "")
            )
        return [np.asarray(element[n]) for n in names]
    if isinstance(element, list):
        if len(element) != len(specs):
            raise ValueError(
                f"Calibration data gives {len(element)} arrays per sample; the model has "
                f"{len(specs)} input(s) {names}."
            )
        return [np.asarray(a) for a in element]
    if len(specs) != 1:
        raise ValueError(
            f"The model has {len(specs)} inputs {names}; pass a dict {{name: array}} or a "
            "list of arrays in that order."
        )
    return [np.asarray(element)]


def _as_batch(array: np.ndarray, spec: InputSpec) -> np.ndarray:
    """Checks dtype and shape against ``spec`` and returns a batch (sample axis first)."""
    array = np.asarray(array)
    _check_dtype(array, spec)
    rank = len(spec.shape)
    if array.ndim == rank - 1:
        array = array[None]
    if array.ndim != rank or not all(
        want is None or want == got for want, got in zip(spec.shape[1:], array.shape[1:])
    ):
        raise ValueError(
            f"Calibration data for input {spec.name!r} has shape {array.shape}; the model "
            f"expects {spec.shape} (None = any size)."
        )
    return array.astype(spec.dtype, copy=False)


def _check_finite(array: np.ndarray, spec: InputSpec, offset: int) -> None:
    """NaN or infinity in calibration data: TensorFlow's quantizer segfaults on +inf
    (measured) and takes NaN silently, so neither reaches it."""
    if array.dtype.kind != "f":
        return
    bad = ~np.isfinite(array)
    if bad.any():
        first = offset + int(np.argwhere(bad.reshape(len(array), -1).any(axis=1))[0][0])
        raise ValueError(
            f"Calibration data for input {spec.name!r} holds {int(bad.sum())} NaN or "
            f"infinite value(s), the first in sample {first}. Calibration needs finite "
            "values: clean or drop those samples.")


def _check_dtype(array: np.ndarray, spec: InputSpec) -> None:
    kind, want = array.dtype.kind, spec.dtype.kind
    if want == "f":
        ok = kind in "fiu"
    elif want in "iu":
        ok = kind in "iu"
    elif want == "b":
        ok = kind == "b"
    else:
        ok = kind == want
    if not ok:
        raise TypeError(
            f"Calibration data for input {spec.name!r} has dtype {array.dtype}; the model "
            f"expects {spec.dtype} (accepted: "
            + {"f": "integer or floating-point numbers", "i": "integers", "u": "integers",
               "b": "booleans"}.get(want, str(spec.dtype))
            + ")."
        )

