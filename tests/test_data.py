import numpy as np
import pytest

from tfcompress import data


def test_digits_is_the_embedded_default():
    ds = data.load_dataset("digits")
    assert ds.x_train.dtype == np.uint8 and ds.x_train.shape[1:] == (8, 8, 1)
    assert len(ds.x_train) + len(ds.x_test) == 1797
    assert ds.source == "scikit-learn load_digits()"


@pytest.mark.parametrize("name,shape,n_test", [("mnist", (28, 28, 1), 10000),
                                               ("fashion_mnist", (28, 28, 1), 10000),
                                               ("cifar10", (32, 32, 3), 1000)])
def test_real_datasets_load_from_the_data_dir(data_dir, name, shape, n_test):
    ds = data.load_dataset(name, data_dir=data_dir)
    assert ds.input_shape == shape and len(ds.x_test) == n_test and ds.num_classes == 10
    assert ds.source == str(data_dir)


def test_environment_variable_is_used(monkeypatch, data_dir):
    monkeypatch.setenv(data.ENV_VAR, str(data_dir))
    assert data.load_dataset("cifar10").source == str(data_dir)


def test_falls_back_to_digits_and_says_so(monkeypatch, tmp_path, caplog):
    monkeypatch.delenv(data.ENV_VAR, raising=False)
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    ds = data.load_dataset("mnist", data_dir=tmp_path)
    assert ds.name == "digits"
    assert "using scikit-learn's digits" in caplog.text
    with pytest.raises(FileNotFoundError, match="not found"):
        data.load_dataset("mnist", data_dir=tmp_path, fallback=False)


def test_unknown_dataset_name():
    with pytest.raises(ValueError, match="Received: name='imagenet'"):
        data.load_dataset("imagenet")


def test_image_folder_with_labels_from_file_names(data_dir):
    x, y, files = data.load_image_folder(data_dir / "samples" / "imagenet_foolbox", size=(32, 32),
                                         label_regex=r"_(\d+)\.\w+$")
    assert x.shape == (20, 32, 32, 3) and x.dtype == np.uint8
    assert len(y) == 20 and int(y[0]) == int(files[0].stem.split("_")[-1])
