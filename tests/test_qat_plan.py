"""quantize_apply as data: the QuantizePlan, its rebuild, and reports that survive saving."""

import dataclasses
import json

import keras
import numpy as np
import pytest

from tfcompress import quantization
from tfcompress.quantization import (FakeQuant, QuantizePlan, QuantizeWrapper,
                                     plan_quantization, quantize_annotate_layer,
                                     quantize_annotate_model, quantize_apply, quantize_model,
                                     quantize_report, rebuild)

L = keras.layers


def _cnn():
    """Conv+BN+ReLU, DepthwiseConv+BN+ReLU6, residual Add, whole-input pooling, softmax."""
    keras.utils.set_random_seed(0)
    inputs = keras.Input((12, 12, 3), name="image")
    x = L.Conv2D(8, 3, padding="same", use_bias=False, name="conv")(inputs)
    x = L.ReLU(name="relu")(L.BatchNormalization(name="bn")(x))
    y = L.DepthwiseConv2D(3, padding="same", name="dw")(x)
    y = L.ReLU(6.0, name="relu6")(L.BatchNormalization(name="dw_bn")(y))
    y = L.Conv2D(8, 1, name="project")(y)
    x = L.ReLU(name="add_relu")(L.Add(name="add")([x, y]))
    x = L.MaxPooling2D(name="max_pool")(x)
    x = L.Flatten(name="flatten")(L.AveragePooling2D(6, name="avg_pool")(x))
    return keras.Model(inputs, L.Dense(5, activation="softmax", name="head")(x))


def _concat():
    """Three branches into a Concatenate (one with a folded BN), then a Softmax layer."""
    keras.utils.set_random_seed(0)
    inputs = keras.Input((8, 8, 3), name="image")
    a = L.Conv2D(4, 3, padding="same", activation="relu", name="a")(inputs)
    b = L.Conv2D(6, 3, padding="same", name="b")(inputs)
    c = L.Conv2D(6, 3, padding="same", use_bias=False, name="c")(inputs)
    c = L.BatchNormalization(name="c_bn")(c)
    x = L.Concatenate(name="cat")([a, b, c])
    x = L.Conv2D(5, 1, name="mix")(x)
    x = L.GlobalAveragePooling2D(name="gap")(x)
    x = L.Dense(3, name="logits")(x)
    return keras.Model(inputs, L.Softmax(name="probs")(x))


def _layers(model):
    return [(layer.name, type(layer).__name__) for layer in model.layers]


def test_plan_folds_batchnorms_and_puts_quantizers_after_fused_relus():
    plan = plan_quantization(quantize_annotate_model(_cnn()))
    conv, bn, relu = plan.layer("conv"), plan.layer("bn"), plan.layer("relu")
    assert (conv.action, conv.new_name, conv.batchnorm) == ("wrap", "quant_conv", "annotate_bn")
    assert (bn.action, bn.folded_into, bn.new_name) == ("fold", "annotate_conv", None)
    assert (conv.output, conv.quantizer) == ("fused_activation", None)
    assert (relu.action, relu.output, relu.quantizer) == ("copy", "learned", "quant_out_relu")
    assert plan.layer("dw").batchnorm == "annotate_dw_bn"
    assert plan.layer("relu6").quantizer == "quant_out_relu6"  # ReLU6 fuses too
    # A Conv feeding an Add: its own range (TFLite requantizes before the add).
    assert plan.layer("project").output == "learned"
    assert plan.layer("add").output == "fused_activation"  # the ReLU after the Add fuses
    assert plan.layer("image").quantizer == "quant_image"
    assert plan.report().folded_batchnorms == (("conv", "bn"), ("dw", "dw_bn"))


def test_plan_keeps_ranges_through_pooling_and_rewrites_whole_input_average_pool():
    plan = plan_quantization(quantize_annotate_model(_cnn()))
    assert plan.layer("max_pool").output == "input_range"
    assert plan.layer("flatten").output == "input_range"
    pool = plan.layer("avg_pool")
    assert (pool.action, pool.output, pool.quantizer) == (
        "global_pool", "learned", "quant_out_avg_pool")
    assert plan.rewrites == (
        "avg_pool: AveragePooling2D over the whole input -> GlobalAveragePooling2D("
        "keepdims=True) (XNNPACK runs int8 MEAN)",)
    assert pool.notes == plan.rewrites  # its quantizer records the rewrite


def test_plan_shares_the_concatenate_range_and_gives_softmax_its_fixed_range():
    plan = plan_quantization(quantize_annotate_model(_concat()))
    assert [plan.layer(n).output for n in ("a", "b", "c")] == ["concat_output"] * 3
    assert [plan.layer(n).quantizer for n in ("a", "b", "c")] == [None] * 3
    assert plan.layer("c").batchnorm == "annotate_c_bn"
    assert (plan.layer("cat").output, plan.layer("cat").quantizer) == ("learned", "quant_out_cat")
    assert plan.layer("gap").output == "learned"
    assert (plan.layer("probs").output, plan.layer("probs").quantizer) == (
        "softmax", "quant_out_probs")


def test_unannotated_layers_stay_in_float_in_the_plan():
    keras.utils.set_random_seed(0)
    inputs = keras.Input((8,), name="x")
    h = quantize_annotate_layer(L.Dense(4, activation="relu", name="q"))(inputs)
    h = L.Dropout(0.1, name="drop")(h)
    model = keras.Model(inputs, L.Dense(2, name="kept_float")(h))
    plan = plan_quantization(model)
    kept, drop = plan.layer("kept_float"), plan.layer("drop")
    assert (kept.action, kept.output, kept.quantizer, kept.has_weights) == (
        "float", "float", None, True)
    assert (drop.action, drop.has_weights) == ("float", False)
    assert plan.layer("q").action == "wrap" and plan.layer("q").quantizer == "quant_out_q"
    assert plan.report().left_in_float == ("kept_float",)  # only layers with weights


def test_plan_lists_separable_splits_and_int16_scheme():
    keras.utils.set_random_seed(0)
    inputs = keras.Input((12, 12, 3), name="image")
    h = L.SeparableConv2D(8, 3, padding="same", name="sep")(inputs)
    model = keras.Model(inputs, L.Dense(2, name="head")(L.Flatten(name="flat")(h)))
    plan = plan_quantization(quantize_annotate_model(model), scheme="int16x8")
    assert plan.scheme == "int16x8"
    assert [s.layer for s in plan.layers if s.action == "wrap"] == [
        "sep_depthwise", "sep_pointwise", "head"]
    assert plan.rewrites[0].startswith("sep: SeparableConv2D -> DepthwiseConv2D + 1x1 Conv2D")
    assert plan.layer("sep_depthwise").notes == plan.rewrites
    with pytest.raises(ValueError, match="scheme='int4'"):
        plan_quantization(model, scheme="int4")


def test_plan_is_frozen_printable_and_round_trips_through_json():
    plan = plan_quantization(quantize_annotate_model(_cnn()))
    text = plan.summary()
    assert text.splitlines()[0] == (
        "scheme default_8bit (8-bit weights, 8-bit activations): 4 layers quantized, "
        "2 BatchNorms folded, 0 weighted layers left in float")
    assert "  conv (Conv2D): -> QuantizeWrapper quant_conv (BatchNorm bn folded in); " \
           "no quantizer: the fused activation after it has it" in text
    assert "  bn (BatchNormalization): folded into conv" in text
    assert "  max_pool (MaxPooling2D): copied; no quantizer: keeps its input's range" in text
    assert ("  head (Dense): -> QuantizeWrapper quant_head; "
            "FakeQuant quant_out_head (softmax)") in text
    assert text.splitlines()[-1].startswith("rewrote avg_pool: AveragePooling2D")
    with pytest.raises(dataclasses.FrozenInstanceError):
        plan.scheme = "int16x8"
    again = QuantizePlan.from_dict(json.loads(json.dumps(plan.to_dict())))
    assert again == plan


@pytest.mark.parametrize("make, expected", [
    (_cnn, [("image", "InputLayer"), ("quant_image", "FakeQuant"),
            ("quant_conv", "QuantizeWrapper"), ("relu", "ReLU"), ("quant_out_relu", "FakeQuant"),
            ("quant_dw", "QuantizeWrapper"), ("relu6", "ReLU"), ("quant_out_relu6", "FakeQuant"),
            ("quant_project", "QuantizeWrapper"), ("quant_out_project", "FakeQuant"),
            ("add", "Add"), ("add_relu", "ReLU"), ("quant_out_add_relu", "FakeQuant"),
            ("max_pool", "MaxPooling2D"), ("avg_pool", "GlobalAveragePooling2D"),
            ("quant_out_avg_pool", "FakeQuant"), ("flatten", "Flatten"),
            ("quant_head", "QuantizeWrapper"), ("quant_out_head", "FakeQuant")]),
    (_concat, [("image", "InputLayer"), ("quant_image", "FakeQuant"),
               ("quant_a", "QuantizeWrapper"), ("quant_b", "QuantizeWrapper"),
               ("quant_c", "QuantizeWrapper"), ("cat", "Concatenate"),
               ("quant_out_cat", "FakeQuant"), ("quant_mix", "QuantizeWrapper"),
               ("quant_out_mix", "FakeQuant"), ("gap", "GlobalAveragePooling2D"),
               ("quant_out_gap", "FakeQuant"), ("quant_logits", "QuantizeWrapper"),
               ("quant_out_logits", "FakeQuant"), ("probs", "Softmax"),
               ("quant_out_probs", "FakeQuant")]),
])
def test_rebuild_of_the_plan_is_what_quantize_apply_built_before_the_split(make, expected):
    # `expected` is what the one-function quantize_apply built for these models.
    annotated = quantize_annotate_model(make())
    plan = plan_quantization(annotated)
    rebuilt, applied = rebuild(annotated, plan), quantize_apply(annotated)
    assert _layers(rebuilt) == _layers(applied) == expected
    assert rebuilt.quantize_report == applied.quantize_report == plan.report()
    shape = (6,) + tuple(make().input_shape[1:])
    x = np.random.RandomState(0).rand(*shape).astype("float32")
    np.testing.assert_array_equal(rebuilt.predict(x, verbose=0), applied.predict(x, verbose=0))
    for a, b in zip(rebuilt.layers, applied.layers):
        assert a.get_config() == b.get_config()


def test_an_edited_plan_is_carried_out():
    annotated = quantize_annotate_model(_concat())
    plan = plan_quantization(annotated)
    gap = plan.layer("gap")
    edited = dataclasses.replace(plan, layers=tuple(
        dataclasses.replace(s, output="input_range", quantizer=None) if s is gap else s
        for s in plan.layers))
    names = [layer.name for layer in rebuild(annotated, edited).layers]
    assert "quant_out_gap" not in names and "quant_out_mix" in names


def test_rebuild_refuses_a_plan_of_another_model():
    plan = plan_quantization(quantize_annotate_model(_concat()))
    with pytest.raises(ValueError, match="does not describe this model.*only in the plan"):
        rebuild(quantize_annotate_model(_cnn()), plan)


def test_quantize_report_is_read_back_from_a_reloaded_model(tmp_path):
    keras.utils.set_random_seed(0)
    annotate = quantize_annotate_layer
    inputs = keras.Input((12, 12, 3), name="image")
    h = annotate(L.SeparableConv2D(8, 3, padding="same", use_bias=False, name="sep"))(inputs)
    h = annotate(L.ReLU(name="relu"))(annotate(L.BatchNormalization(name="bn"))(h))
    h = L.Dense(4, name="kept_float")(h)  # not annotated
    h = annotate(L.Flatten(name="flat"))(annotate(L.AveragePooling2D(12, name="pool"))(h))
    annotated = keras.Model(inputs, annotate(L.Dense(3, name="head"))(h))
    qat = quantize_apply(annotated)
    report = qat.quantize_report
    assert report.left_in_float == ("kept_float",)
    assert [r.split(":")[0] for r in report.rewrites] == ["sep", "pool"]
    assert quantize_report(qat) == report
    qat.save(tmp_path / "qat.keras")
    loaded = keras.models.load_model(tmp_path / "qat.keras")
    assert not hasattr(loaded, "quantize_report")  # the attribute is gone ...
    assert quantize_report(loaded) == report  # ... the layers still know
    assert quantize_report(loaded).summary() == report.summary()


def test_quantize_report_lists_the_same_facts_in_the_qat_models_layer_order(tmp_path):
    qat = quantize_model(_concat())
    qat.save(tmp_path / "qat.keras")
    recomputed = quantize_report(keras.models.load_model(tmp_path / "qat.keras"))
    assert qat.quantize_report.quantized == ("c", "a", "b", "mix", "logits")  # plan order
    assert recomputed.quantized == ("a", "b", "c", "mix", "logits")  # layer order
    assert recomputed.folded_batchnorms == qat.quantize_report.folded_batchnorms
    assert recomputed.scheme == "default_8bit"
    assert quantize_report(quantize_model(_concat(), scheme="int16x8")).scheme == "int16x8"
    with pytest.raises(ValueError, match="no QuantizeWrapper or FakeQuant"):
        quantize_report(_concat())


def test_wrapper_and_quantizer_configs_carry_their_notes():
    qat = quantize_model(_cnn())
    quantizer = qat.get_layer("quant_out_avg_pool")
    assert quantizer.notes == qat.quantize_report.rewrites
    copy = FakeQuant.from_config(quantizer.get_config())
    assert copy.notes == quantizer.notes
    wrapper = qat.get_layer("quant_conv")
    assert QuantizeWrapper.from_config(wrapper.get_config()).notes == ()
    assert quantization.is_quantized(qat)


def test_plan_describes_operator_nodes_affine_layers_and_standalone_batchnorms(tmp_path):
    keras.utils.set_random_seed(0)
    inputs = keras.Input((8, 8, 3), name="image")
    x = L.Rescaling(1.0 / 127.5, offset=-1.0, name="rescale")(inputs)
    x = L.ReLU(name="relu")(L.Conv2D(4, 3, name="conv")(x))
    x = L.BatchNormalization(name="bn")(x)
    x = L.GlobalAveragePooling2D(name="gap")(x) * 0.5
    annotated = quantize_annotate_model(keras.Model(inputs, L.Dense(2, name="head")(x)))
    plan = plan_quantization(annotated)
    text = plan.summary()
    assert "  rescale (Rescaling): -> QuantizeWrapper quant_rescale (1x1 DepthwiseConv2D); " \
           "FakeQuant quant_out_rescale (input_image)" in text
    assert "  bn (BatchNormalization): -> QuantizeWrapper quant_bn (1x1 DepthwiseConv2D); " \
           "FakeQuant quant_out_bn (learned)" in text
    multiply = next(s for s in plan.layers if s.class_name == "Multiply")
    assert multiply.describe() == (f"{multiply.name} (Multiply): operator node, kept; "
                                   f"FakeQuant quant_out_{multiply.name} (learned)")
    assert plan.report().quantized == ("rescale", "conv", "bn", "head")
    assert QuantizePlan.from_dict(json.loads(json.dumps(plan.to_dict()))) == plan
    qat = rebuild(annotated, plan)
    qat.save(tmp_path / "qat.keras")
    reloaded = quantize_report(keras.models.load_model(tmp_path / "qat.keras"))
    assert reloaded.rewrites == qat.quantize_report.rewrites == plan.rewrites
    assert [r.split(":")[0] for r in reloaded.rewrites] == ["rescale", "bn"]
