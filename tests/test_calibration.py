import numpy as np
import pytest

from tfcompress.calibration import InputSpec, prepare_samples, representative_dataset

SPEC = [InputSpec("x", (None, 4), np.dtype("float32"))]
IMG = [InputSpec("image", (1, 32, 32, 3), np.dtype("float32"))]


def test_array_generator_callable_dataset_give_the_same_samples():
    import tensorflow as tf

    x = np.arange(40, dtype=np.float32).reshape(10, 4)
    y = np.zeros(10)
    forms = [
        x,
        (row for row in x),
        lambda: iter(x),
        tf.data.Dataset.from_tensor_slices((x, y)).batch(3),
        tf.data.Dataset.from_tensor_slices(x),
        [x[:5], x[5:]] if False else iter([x[:5], x[5:]]),
    ]
    for form in forms:
        samples = prepare_samples(form, SPEC, num_samples=7)
        assert len(samples) == 7
        np.testing.assert_array_equal(np.concatenate([s[0] for s in samples]), x[:7])


def test_npz_npy_and_preprocess(tmp_path):
    x = np.ones((5, 4), np.uint8) * 255
    np.save(tmp_path / "x.npy", x)
    np.savez(tmp_path / "d.npz", x_train=x, y_train=np.zeros(5))
    for path in (tmp_path / "x.npy", tmp_path / "d.npz"):
        samples = prepare_samples(str(path), SPEC, num_samples=10, preprocess=lambda a: a / 255.0)
        assert len(samples) == 5 and samples[0][0].dtype == np.float32
        assert float(samples[0][0].max()) == 1.0


def test_image_folder_is_resized_to_the_model_input(data_dir):
    samples = prepare_samples(data_dir / "samples" / "imagenet_foolbox", IMG, num_samples=4)
    assert len(samples) == 4 and samples[0][0].shape == (1, 32, 32, 3)
    assert 0 <= samples[0][0].min() and samples[0][0].max() <= 255


def test_multi_input_by_dict_and_by_list():
    specs = [InputSpec("a", (None, 2), np.dtype("float32")), InputSpec("b", (None, 3), np.dtype("int32"))]
    a, b = np.zeros((4, 2)), np.ones((4, 3), np.int64)
    for form in ({"a": a, "b": b}, [a, b]):
        samples = prepare_samples(form, specs, num_samples=10)
        assert len(samples) == 4 and samples[0][1].dtype == np.int32
    with pytest.raises(ValueError, match="Missing: \\['b'\\]"):
        prepare_samples({"a": a}, specs)
    with pytest.raises(TypeError, match="input 'b' has dtype float64"):
        prepare_samples({"a": a, "b": b.astype(float)}, specs)


@pytest.mark.parametrize("bad,error", [(0, ValueError), (-3, ValueError), (2.5, ValueError)])
def test_num_samples_must_be_positive(bad, error):
    with pytest.raises(error, match="num_samples"):
        prepare_samples(np.zeros((3, 4)), SPEC, num_samples=bad)


def test_unsupported_and_missing_data(tmp_path):
    with pytest.raises(TypeError, match="Unsupported representative data"):
        prepare_samples(3.0, SPEC)
    with pytest.raises(FileNotFoundError):
        prepare_samples(str(tmp_path / "nope.npz"), SPEC)
    (tmp_path / "a.csv").write_text("1,2")
    with pytest.raises(ValueError, match=".npz or .npy"):
        prepare_samples(str(tmp_path / "a.csv"), SPEC)
    with pytest.raises(ValueError, match="No images"):
        prepare_samples(str(tmp_path), IMG)


def test_representative_dataset_yields_by_name_and_shows_progress(capsys):
    samples = prepare_samples(np.zeros((3, 4)), SPEC, num_samples=3)
    gen = representative_dataset(samples, input_names=["x"], progress=True)
    out = list(gen())
    assert len(out) == 3 and set(out[0]) == {"x"}
    assert "Calibrating on 3 samples" in capsys.readouterr().out


@pytest.mark.parametrize("bad", [np.inf, -np.inf, np.nan])
def test_calibration_data_with_nan_or_infinity_is_refused_before_the_quantizer(bad):
    spec = InputSpec("x", (None, 4), np.dtype("float32"))
    data = np.ones((10, 4), "float32")
    data[7, 2] = bad
    with pytest.raises(ValueError, match=r"input 'x' holds 1 NaN or infinite value\(s\), the "
                                         r"first in sample 7"):
        prepare_samples(data, [spec])
