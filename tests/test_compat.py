"""Pins each private-API behaviour that tfcompress relies on (Keras 3, LiteRT).

Every private name is reached only through ``tfcompress._compat`` (TensorFlow / Keras)
or ``tfcompress._compat_litert`` (LiteRT). When a release changes one of these
behaviours, a test here fails and names the helper to fix, instead of a transform
failing somewhere downstream.
"""

import ast
from pathlib import Path

import keras
import numpy as np
import pytest

from tfcompress import _compat, _compat_litert, _graph

PACKAGE = Path(__file__).resolve().parents[1] / "tfcompress"
PRIVATE_KERAS = ("_nodes_by_depth", "_flatten_layers", "_keras_history", "_run_through_graph",
                 "_get_ops_details")


def _residual():
    inputs = keras.Input((4,), name="x")
    a = keras.layers.Dense(4, name="a")(inputs)
    b = keras.layers.Dense(4, name="b")(a)
    out = keras.layers.Add(name="add")([a, b])
    return keras.Model(inputs, out)


def test_private_apis_are_used_only_in_the_compat_modules():
    users = {}
    for path in PACKAGE.glob("*.py"):
        if path.stem in ("_compat", "_compat_litert"):
            continue
        names = {n.attr for n in ast.walk(ast.parse(path.read_text()))
                 if isinstance(n, ast.Attribute) and n.attr in PRIVATE_KERAS}
        if names:
            users[path.name] = sorted(names)
    assert not users, f"private Keras / LiteRT APIs outside _compat: {users}"


def test_graph_nodes_come_inputs_first_and_each_after_its_inputs():
    model = _residual()
    nodes = _compat.graph_nodes(model)
    order = [n.operation.name for n in nodes]
    assert order[0] == "x" and order.index("a") < order.index("b") < order.index("add")
    seen = set()
    for node in nodes:
        assert all(id(t) in seen for t in node.input_tensors), node.operation.name
        seen |= {id(t) for t in node.output_tensors}


def test_producer_is_the_layer_that_made_a_symbolic_tensor():
    inputs = keras.Input((3,))
    dense = keras.layers.Dense(2)
    out = dense(inputs)
    assert _compat.producer(out) is dense
    assert isinstance(_compat.producer(inputs), keras.layers.InputLayer)
    assert _compat.producer(np.zeros(2)) is None


def test_flatten_layers_reaches_nested_models_and_wrapped_layers():
    inner = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, name="inner_dense")],
                             name="inner")
    wrapped = keras.layers.TimeDistributed(keras.layers.Dense(2, name="td_dense"), name="td")
    inputs = keras.Input((5, 4))
    model = keras.Model(inputs, wrapped(keras.layers.TimeDistributed(inner)(inputs)))
    names = {layer.name for layer in _compat.flatten_layers(model)}
    assert {"inner", "inner_dense", "td", "td_dense"} <= names
    assert model.name not in names
    assert "inner_dense" not in {layer.name for layer in _compat.flatten_layers(model, recursive=False)}


def test_run_graph_calls_every_layer_through_the_operation_function():
    model = _residual()
    called = []

    def operation_fn(layer):
        called.append(layer.name)
        return layer

    x = np.ones((2, 4), "float32")
    out = _compat.run_graph(model, keras.ops.convert_to_tensor(x), operation_fn)
    np.testing.assert_allclose(np.asarray(out), model.predict(x, verbose=0), rtol=1e-6)
    assert set(called) == {"a", "b", "add"}


def test_is_graph_model_tells_functional_and_sequential_from_subclassed():
    class Sub(keras.Model):
        def __init__(self):
            super().__init__()
            self.d = keras.layers.Dense(1)

        def call(self, x):
            return self.d(x)

    assert _compat.is_graph_model(_residual())
    assert _compat.is_graph_model(keras.Sequential([keras.layers.Dense(1)]))
    assert not _compat.is_graph_model(Sub())


def test_uncompiled_hides_the_compile_state_from_clone_model_and_restores_it():
    model = _residual()
    model.compile("adam", lambda y, p: keras.ops.mean((y - p) ** 2))  # an unregistered loss
    with _compat.uncompiled(model):
        assert not model.compiled
    assert model.compiled
    clone = _graph.clone_model(model)
    assert not clone.compiled and model.compiled


def test_litert_ops_details_lists_the_xnnpack_delegate_node(models_dir):
    buf = (models_dir / "mlperf_tiny_resnet8_cifar10_int8.tflite").read_bytes()
    interpreter = _compat_litert.Interpreter(
        model_content=buf, experimental_op_resolver_type=_compat_litert.OpResolverType.AUTO)
    interpreter.allocate_tensors()
    nodes = _compat_litert.ops_details(interpreter)
    assert {"op_name", "inputs", "outputs"} <= set(nodes[0])
    assert "DELEGATE" in {n["op_name"] for n in nodes}


def test_the_litert_schema_reads_a_model_without_tensorflow(models_dir):
    buf = (models_dir / "mlperf_tiny_resnet8_cifar10_int8.tflite").read_bytes()
    model = _compat_litert.tflite_schema.ModelT.InitFromObj(
        _compat_litert.tflite_schema.Model.GetRootAs(buf, 0))
    assert model.version == 3 and len(model.subgraphs) == 1
    assert len(model.subgraphs[0].operators) == 16


def _tf2_style_h5(tmp_path):
    """An .h5 whose DepthwiseConv2D config carries `groups`, as TF 2.x Keras writes it."""
    import json

    import h5py

    inputs = keras.Input((8, 8, 3))
    x = keras.layers.DepthwiseConv2D(3, name="dw")(inputs)
    model = keras.Model(inputs, keras.layers.Dense(2)(keras.layers.Flatten()(x)))
    path = tmp_path / "tf2.h5"
    model.save(path)
    with h5py.File(path, "r+") as f:
        config = json.loads(f.attrs["model_config"])
        for layer in config["config"]["layers"]:
            if layer["class_name"] == "DepthwiseConv2D":
                layer["config"]["groups"] = 1
        f.attrs["model_config"] = json.dumps(config)
    return model, path


def test_tf2_h5_files_with_depthwise_groups_load_as_plain_keras_3_layers(tmp_path):
    model, path = _tf2_style_h5(tmp_path)
    with pytest.raises(TypeError):  # what Keras 3 alone does with such a file
        keras.models.load_model(path, compile=False)
    loaded = _compat.load_keras_model(path)
    assert type(loaded.get_layer("dw")) is keras.layers.DepthwiseConv2D
    x = np.random.default_rng(0).normal(size=(2, 8, 8, 3)).astype("float32")
    np.testing.assert_allclose(loaded.predict(x, verbose=0), model.predict(x, verbose=0))
    loaded.save(tmp_path / "again.keras")  # nothing of the shim is left in the model
    keras.models.load_model(tmp_path / "again.keras")


def test_convert_reads_a_tf2_h5_file(tmp_path):
    from tfcompress import convert

    _, path = _tf2_style_h5(tmp_path)
    result = convert(str(path), mode="float32", progress=False)
    assert "DEPTHWISE_CONV_2D" in result.report.op_histogram


def test_built_input_shapes_records_the_first_call_of_a_subclassed_model():
    class Sub(keras.Model):
        def __init__(self):
            super().__init__()
            self.d = keras.layers.Dense(2)

        def call(self, x):
            return self.d(x)

    model = Sub()
    assert _compat.built_input_shapes(model) == {}
    model(np.ones((3, 5), "float32"))
    assert _compat.built_input_shapes(model) == {"input_shape": (3, 5)}


def test_operator_nodes_are_operations_with_their_call_arguments():
    inputs = keras.Input((4, 3), name="x")
    h = keras.layers.Dense(3, name="d")(inputs)
    out = keras.ops.mean(h + 3.0, axis=1)[:, :2] * h[:, 0, :2]
    model = keras.Model(inputs, out)
    nodes = {type(n.operation).__name__: n for n in _compat.graph_nodes(model)
             if _compat.is_operation(n.operation)}
    assert set(nodes) == {"Add", "Mean", "GetItem", "Multiply"}
    assert not _compat.is_operation(model.get_layer("d"))
    assert _compat.builtin_operation_name(nodes["Mean"].operation) == "Mean"
    assert _compat.builtin_operation_name(model.get_layer("d")) is None
    assert nodes["Mean"].operation.get_config()["axis"] == 1
    args, kwargs = _compat.node_arguments(nodes["Add"])
    assert args[0] is nodes["Add"].input_tensors[0] and args[1] == 3.0 and kwargs == {}
    keys = [tuple(_compat.node_arguments(n)[0][1]) for n in _compat.graph_nodes(model)
            if type(n.operation).__name__ == "GetItem"]
    assert sorted(map(repr, keys)) == sorted(map(repr, [
        (slice(None), slice(None, 2)), (slice(None), 0, slice(None, 2))]))

    class Mine(keras.Operation):
        def call(self, x):
            return x

        def compute_output_spec(self, x):
            return keras.KerasTensor(x.shape, x.dtype)

    assert _compat.is_operation(Mine()) and _compat.builtin_operation_name(Mine()) is None


def test_clone_model_can_keep_operations_and_show_only_layers():
    inputs = keras.Input((4,))
    model = keras.Model(inputs, keras.layers.Dense(4, name="d")(inputs) * 2.0 + inputs)
    seen = []

    def clone_function(layer):
        seen.append(layer.name)
        return type(layer).from_config(layer.get_config())

    def call_function(layer, *args, **kwargs):
        seen.append(("call", layer.name))
        return layer(*args, **kwargs)

    clone = _graph.clone_model(model, clone_function=clone_function,
                               call_function=call_function, keep_operations=True)
    assert seen == ["d", ("call", "d")]
    ops = [n.operation for n in _compat.graph_nodes(clone) if _compat.is_operation(n.operation)]
    assert sorted(type(op).__name__ for op in ops) == ["Add", "Multiply"]
    clone.set_weights(model.get_weights())
    x = np.random.default_rng(0).normal(size=(3, 4)).astype("float32")
    np.testing.assert_allclose(clone.predict(x, verbose=0), model.predict(x, verbose=0))
    with pytest.raises(AttributeError):  # what Keras does with an op without keep_operations
        _graph.clone_model(model, clone_function=lambda layer: layer.weights and layer)


def test_producer_node_gives_the_node_and_what_it_read():
    inputs = keras.Input((4,), name="x")
    dense = keras.layers.Dense(3, name="d")
    first, second = dense(inputs), dense(inputs * 2.0)  # a shared layer: two nodes
    node = _compat.producer_node(second)
    assert node.operation is dense and node is not _compat.producer_node(first)
    assert type(_compat.producer(node.input_tensors[0])).__name__ == "Multiply"
    assert _compat.producer_node(np.zeros(2)) is None


def test_input_shape_argument_is_what_a_sequential_starts_from():
    layer = keras.layers.Dense(3, input_shape=(5,))
    assert _compat.input_shape_argument(layer) == (5,)
    assert _compat.input_shape_argument(keras.layers.Dense(3)) is None
    assert keras.Sequential([layer]).built  # Keras turns it into an Input


def test_substituted_variables_read_as_tensors_with_gradients_and_keep_assignments():
    import tensorflow as tf

    dense = keras.layers.Dense(2, use_bias=False)
    dense.build((None, 3))
    counter = keras.Variable(0.0, trainable=False)
    x = tf.ones((1, 3))
    with tf.GradientTape() as tape:
        doubled = dense.kernel * 2.0
        with _compat.substituted_variables([(dense.kernel, doubled)], [counter]):
            y = dense(x)
            counter.assign(counter + 1.0)  # collected by the scope, applied when it closes
        loss = tf.reduce_sum(y)
    np.testing.assert_allclose(y.numpy(), x.numpy() @ (2.0 * dense.kernel.numpy()), rtol=1e-6)
    np.testing.assert_allclose(tape.gradient(loss, dense.kernel).numpy(), np.full((3, 2), 2.0))
    assert float(counter.numpy()) == 1.0
