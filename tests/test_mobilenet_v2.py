"""MobileNetV2 (Flax) and its TFLite import: padding, dequantization, the real file in ../shared
(mapping, quantization checks, agreement with an independent interpreter of the file, accuracy
on a subset, the ``rsjax convert`` CLI) and RandTrain fine-tuning from a folder of images."""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rsjax.errors import CheckpointError
from rsjax.models import get_model_spec
from rsjax.models.mobilenet_v2 import TFConv, block_plan, layer_plan, make_divisible, tf_same_padding
from rsjax.models.tflite_import import dequantize, quantize

# Keras' MobileNetV2(alpha=1.0, 1000 classes) has 3,504,872 trainable parameters including
# 2 x 17,056 BatchNorm gamma/beta; folding BN into the convs leaves one bias per channel:
# 3,504,872 - 34,112 + 17,056 = 3,487,816.
FOLDED_PARAM_COUNT = 3_487_816
TFLITE = ("data", "imagenet", "mobilenet_v2_1.0_224_quant.tflite")
VAL1300 = ("data", "imagenet", "val1300")


def _n_params(tree) -> int:
    return int(sum(np.size(a) for a in jax.tree_util.tree_leaves(tree)))


# ----------------------------------------------------------------------------- no shared data needed


def test_tf_same_padding_is_asymmetric_for_stride_2_on_even_sizes():
    assert tf_same_padding(224, 3, 2) == (0, 1)
    assert tf_same_padding(112, 3, 2) == (0, 1)
    assert tf_same_padding(227, 3, 2) == (1, 1)
    assert tf_same_padding(56, 3, 1) == (1, 1)
    assert tf_same_padding(7, 1, 1) == (0, 0)


@pytest.mark.parametrize("size,stride,depthwise", [(8, 2, False), (8, 2, True), (7, 2, True), (6, 1, False)])
def test_tfconv_matches_lax_same_padding(size, stride, depthwise):
    """TFConv's explicit padding gives what TF/XLA 'SAME' gives, not the symmetric padding."""
    x = jax.random.normal(jax.random.PRNGKey(0), (2, size, size, 4))
    conv = TFConv(4, 3, stride, depthwise=depthwise)
    variables = conv.init(jax.random.PRNGKey(1), x)
    kernel = variables["params"]["kernel"]
    variables = {"params": {"kernel": kernel, "bias": jnp.zeros(4)}}
    got = conv.apply(variables, x)
    groups = 4 if depthwise else 1
    same = jax.lax.conv_general_dilated(x, kernel, (stride, stride), "SAME",
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=groups)
    np.testing.assert_allclose(got, same, atol=1e-5)
    if stride == 2 and size % 2 == 0:
        sym = jax.lax.conv_general_dilated(x, kernel, (stride, stride), ((1, 1), (1, 1)),
                                           dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=groups)
        assert not np.allclose(got, sym, atol=1e-3)


def test_relu6_clips_at_six():
    x = jnp.full((1, 3, 3, 1), 10.0)
    conv = TFConv(1, 1, relu6=True)
    out = conv.apply({"params": {"kernel": jnp.ones((1, 1, 1, 1)), "bias": jnp.zeros(1)}}, x)
    assert float(out.max()) == 6.0
    out = conv.apply({"params": {"kernel": -jnp.ones((1, 1, 1, 1)), "bias": jnp.zeros(1)}}, x)
    assert float(out.min()) == 0.0


def test_architecture_parameters_names_and_output():
    spec = get_model_spec("mobilenet_v2")
    assert spec.input_shape == (224, 224, 3) and spec.num_classes == 1000 and not spec.has_batch_stats
    shapes = jax.eval_shape(spec.init, jax.random.PRNGKey(0))
    assert set(shapes) == {"params"}
    assert _n_params(shapes["params"]) == FOLDED_PARAM_COUNT
    p = shapes["params"]
    assert p["Conv"]["kernel"].shape == (3, 3, 3, 32)
    assert p["expanded_conv"]["depthwise"]["kernel"].shape == (3, 3, 1, 32)
    assert "expand" not in p["expanded_conv"]
    assert p["expanded_conv_16"]["project"]["kernel"].shape == (1, 1, 960, 320)
    assert p["Conv_1"]["kernel"].shape == (1, 1, 320, 1280)
    assert p["Logits"]["kernel"].shape == (1280, 1000)
    plan = layer_plan()
    assert len(plan) == 52 and sum(c.depthwise for c in plan) == 17
    assert [b.residual for b in block_plan()].count(True) == 10  # the file's 10 ADD ops
    assert make_divisible(32 * 0.75) == 24 and make_divisible(1280) == 1280


def test_forward_shape_and_bfloat16_path():
    """Random weights, jitted init (eager init dispatches ~200 ops one by one: minutes on a busy
    CPU), a small image since the model takes any size. The bfloat16 path (what the GPU benchmark
    uses: weights and input cast to bf16) is checked on single layers: whole-network bf16 convs
    compile and run very slowly on CPU."""
    module = get_model_spec("mobilenet_v2").build()
    x = jax.random.uniform(jax.random.PRNGKey(1), (1, 32, 32, 3))
    variables = jax.jit(module.init)(jax.random.PRNGKey(0), x)
    out = jax.jit(module.apply)(variables, x)
    assert out.shape == (1, 1000) and out.dtype == jnp.float32 and bool(jnp.all(jnp.isfinite(out)))
    h = jax.random.uniform(jax.random.PRNGKey(2), (1, 8, 8, 16))
    for conv in (TFConv(16, 3, 2, depthwise=True, relu6=True), TFConv(8, 1)):
        v = conv.init(jax.random.PRNGKey(3), h)
        ref = conv.apply(v, h)
        v16 = jax.tree_util.tree_map(lambda a: a.astype(jnp.bfloat16), v)
        got = conv.apply(v16, h.astype(jnp.bfloat16))
        assert got.dtype == jnp.bfloat16
        np.testing.assert_allclose(np.asarray(got, np.float32), ref, atol=0.1, rtol=0.05)


def test_dequantize_per_tensor_and_per_axis_round_trip():
    q = np.array([[0, 128, 255], [10, 20, 30]], np.uint8)
    np.testing.assert_allclose(dequantize(q, [0.5], [128]), 0.5 * (q.astype(np.float64) - 128))
    scale, zp = np.array([0.1, 2.0]), np.array([3, 7])
    real = dequantize(q, scale, zp, axis=0)
    np.testing.assert_allclose(real[0], 0.1 * (q[0] - 3.0), rtol=1e-6)
    np.testing.assert_allclose(real[1], 2.0 * (q[1] - 7.0), rtol=1e-6)
    np.testing.assert_array_equal(quantize(real, scale, zp, 0, np.uint8), q)
    per_col = dequantize(q, [1.0, 2.0, 3.0], [0, 0, 0], axis=1)
    np.testing.assert_allclose(per_col[:, 2], 3.0 * q[:, 2])
    with pytest.raises(CheckpointError, match="per-axis quantization with 2 scales along dimension 1"):
        dequantize(q, [1.0, 2.0], [0, 0], axis=1, name="w")


def test_read_rejects_missing_and_non_tflite_files(tmp_path):
    pytest.importorskip("tflite")
    from rsjax.models.tflite_import import read_tflite

    with pytest.raises(CheckpointError, match="not found"):
        read_tflite(tmp_path / "nope.tflite")
    bad = tmp_path / "bad.tflite"
    bad.write_bytes(b"\x00" * 64)
    with pytest.raises(CheckpointError, match="not a TFLite flatbuffer"):
        read_tflite(bad)


# ----------------------------------------------------------------------------- the real file


@pytest.fixture(scope="module")
def graph(shared_dir):
    pytest.importorskip("tflite", reason="pip install 'rsjax[tflite]'")
    from rsjax.models.tflite_import import read_tflite

    return read_tflite(shared_dir.joinpath(*TFLITE))


@pytest.fixture(scope="module")
def converted(graph):
    from rsjax.models.tflite_import import convert_mobilenet_v2

    return convert_mobilenet_v2(graph)


def test_file_structure_and_input_quantization(graph):
    assert graph.op_counts() == {"CONV_2D": 36, "DEPTHWISE_CONV_2D": 17, "ADD": 10, "AVERAGE_POOL_2D": 1,
                                 "RESHAPE": 1, "SOFTMAX": 1}
    t = graph.input
    assert t.dtype == "UINT8" and t.shape == (1, 224, 224, 3)
    assert float(t.scale[0]) == 1 / 128 and int(t.zero_point[0]) == 128
    assert graph.output.shape == (1, 1001)
    module = get_model_spec("mobilenet_v2").build()
    # (q - 128) / 128 with q = 255 x  ==  (x - 128/255) / (128/255)
    assert module.mean == (128 / 255,) * 3 and module.std == (128 / 255,) * 3
    for op in graph.ops:
        if op.opcode in ("CONV_2D", "DEPTHWISE_CONV_2D"):
            assert op.options["padding"] == "SAME"


def test_quantization_checks(graph):
    from rsjax.models.tflite_import import quantization_checks

    report = quantization_checks(graph)
    assert report.n_tensors == 106  # 53 kernels + 53 biases
    assert report.n_per_axis == 0  # this file is per-tensor; per-axis is covered above
    assert report.max_requantization_error == 0
    assert report.max_bias_scale_rel_error < 1e-6
    assert 0 < report.max_abs_weight < 100 and 0 < report.max_abs_bias < 100


def test_labels_files_agree(shared_dir):
    """imagenet_labels.txt line i + 1 (line 0 = background) is synset_words.txt line i."""
    imagenet = shared_dir / "data" / "imagenet"
    names = imagenet.joinpath("imagenet_labels.txt").read_text().splitlines()
    synsets = imagenet.joinpath("val1300", "synset_words.txt").read_text().splitlines()
    assert names[0] == "background" and len(names) == 1001 and len(synsets) == 1000
    assert all(names[i + 1] == line.split(" ", 1)[1] for i, line in enumerate(synsets))


def test_converted_variables_match_the_model(converted):
    spec = get_model_spec("mobilenet_v2")
    shapes = jax.eval_shape(spec.init, jax.random.PRNGKey(0))
    assert jax.tree_util.tree_structure(converted) == jax.tree_util.tree_structure(shapes)
    assert _n_params(converted) == FOLDED_PARAM_COUNT
    for a in jax.tree_util.tree_leaves(converted):
        assert a.dtype == np.float32 and np.all(np.isfinite(a))


def test_mapping_errors_name_the_tensors(graph):
    from rsjax.models.tflite_import import convert_mobilenet_v2

    # drop the last expanded_conv_16 project op: its kernel and bias become missing
    ops = tuple(op for op in graph.ops if not (op.opcode == "CONV_2D" and "expanded_conv_16/project/weights_quant"
                                               in graph.tensor(op.inputs[1]).name))
    with pytest.raises(CheckpointError, match=r"2 missing: expanded_conv_16/project/bias, expanded_conv_16/project/kernel"):
        convert_mobilenet_v2(dataclasses.replace(graph, ops=ops))
    # a kernel of the wrong shape
    tensors = list(graph.tensors)
    idx = next(op.inputs[1] for op in graph.ops if "Conv_1/weights_quant" in graph.tensor(op.inputs[1]).name)
    t = tensors[idx]
    tensors[idx] = dataclasses.replace(t, shape=(640, 1, 1, 320), data=t.data[:640])
    with pytest.raises(CheckpointError, match=r"1 mis-shaped: Conv_1/kernel from \(640, 1, 1, 320\)"):
        convert_mobilenet_v2(dataclasses.replace(graph, tensors=tuple(tensors)))
    # a stride the Flax model does not use
    ops = tuple(dataclasses.replace(op, options={**op.options, "strides": (1, 1)})
                if op.index == 4 else op for op in graph.ops)
    with pytest.raises(CheckpointError, match=r"expanded_conv_1/depthwise: file"):
        convert_mobilenet_v2(dataclasses.replace(graph, ops=ops))
    # another input quantization
    tensors = list(graph.tensors)
    tensors[graph.inputs[0]] = dataclasses.replace(graph.input, zero_point=np.array([0]))
    with pytest.raises(CheckpointError, match="input quantization"):
        convert_mobilenet_v2(dataclasses.replace(graph, tensors=tuple(tensors)))


@pytest.fixture(scope="module")
def val_images(shared_dir):
    from rsjax.data import load_dataset

    return load_dataset(f"imagefolder:{shared_dir.joinpath(*VAL1300)}", limit=48, image_size=224)


def test_flax_port_equals_independent_interpreter_of_the_file(graph, converted, val_images):
    """The hand-written Flax graph and a generic op-by-op interpreter of the file (its own weight
    layouts and 'SAME' strings) agree on real images, block by block and on the 1001 logits."""
    from rsjax.models.features import stage_features
    from rsjax.models.tflite_import import input_to_real, run_reference

    x = val_images.images[:2]
    adds = [op.outputs[0] for op in graph.ops if op.opcode == "ADD"]
    ref_logits, kept = run_reference(graph, input_to_real(graph, x), keep=adds)
    logits, feats = stage_features(get_model_spec("mobilenet_v2").build(), converted, jnp.asarray(x))
    np.testing.assert_allclose(np.asarray(logits), np.asarray(ref_logits)[:, 1:], atol=1e-3, rtol=1e-4)
    # the 10 residual ADDs are the outputs of the blocks with residual connections
    residual_blocks = [b.name for b in block_plan() if b.residual]
    for name, index in zip(residual_blocks, adds):
        np.testing.assert_allclose(np.asarray(feats[f"{name}_out"]), np.asarray(kept[index]), atol=1e-3, rtol=1e-4)


def test_accuracy_on_a_subset(converted, val_images):
    """48 images: 38/48 correct (79.2 %) measured with the data spec's 224 resize; the full 1,300
    are in experiments/imagenet_eval.py (benchmarks/RESULTS.md, ## ImageNet)."""
    from rsjax.classifier import Classifier

    clf = Classifier.from_arch("mobilenet_v2", converted)
    pred = np.asarray(jax.jit(clf.logits_fn)(jnp.asarray(val_images.images))).argmax(-1)
    assert np.mean(pred == val_images.labels) >= 0.7


def test_cli_convert_round_trip(shared_dir, converted, tmp_path, capsys):
    import json

    from rsjax.checkpoints import load_checkpoint
    from rsjax.cli import main

    out = tmp_path / "mnv2.ckpt"
    rc = main(["convert", "--arch", "mobilenet_v2", "--weights", str(shared_dir.joinpath(*TFLITE)),
               "--out", str(out), "--json"])
    assert rc == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["source_format"] == "tflite" and summary["n_params"] == FOLDED_PARAM_COUNT
    assert summary["quantization_checks"]["max_requantization_error"] == 0
    variables, meta = load_checkpoint(out, arch="mobilenet_v2")
    assert meta["recipe"] == "converted" and meta["tflite_output_classes"] == 1001
    for a, b in zip(jax.tree_util.tree_leaves(variables), jax.tree_util.tree_leaves(converted)):
        np.testing.assert_array_equal(a, b)
    bad = tmp_path / "labels.tflite"
    bad.write_text("background\n")
    assert main(["convert", "--arch", "mobilenet_v2", "--weights", str(bad), "--out", str(tmp_path / "x.ckpt")]) == 2
    assert "not a TFLite flatbuffer" in capsys.readouterr().err


def test_randtrain_finetunes_from_the_converted_checkpoint_on_an_imagefolder(shared_dir, converted, tmp_path):
    """RandTrain (`gaussian` recipe, sigma 0.25) 3 Adam steps on 4 ImageNet images from imagefolder:,
    starting from the converted weights: the noisy training loss falls (measured 5.73 -> 3.44 ->
    2.01), the clean predictions stay, the checkpoint reloads. (SGD at lr 1e-3 wrecks this model:
    with BatchNorm folded away, gradients of the small expand kernels reach norms ~100.)"""
    from rsjax.checkpoints import load_checkpoint
    from rsjax.data import load_dataset
    from rsjax.train import TrainConfig, train

    data = load_dataset(f"imagefolder:{shared_dir.joinpath(*VAL1300)}", limit=4, image_size=224)
    config = TrainConfig(arch="mobilenet_v2", recipe="gaussian", sigma=0.25, epochs=3, batch_size=4,
                         optimizer="adam", learning_rate=1e-4, seed=0)
    out = tmp_path / "rt.ckpt"
    result = train(config, data, out=out, init_variables=converted, progress=False, log=lambda m: None)
    meta = result.metadata
    assert meta["recipe"] == "gaussian" and meta["recipe_settings"] == {"sigma": 0.25}
    assert meta["init"] == "checkpoint" and meta["n_train"] == 4 and meta["epochs_done"] == 3
    losses = [h["train_loss"] for h in meta["history"]]
    assert np.all(np.isfinite(losses)) and losses[-1] < 0.6 * losses[0]
    module = get_model_spec("mobilenet_v2").build()
    apply = jax.jit(module.apply)
    before = np.asarray(apply(converted, data.images)).argmax(-1)
    after = np.asarray(apply(result.variables, data.images)).argmax(-1)
    np.testing.assert_array_equal(after, before)
    variables, saved = load_checkpoint(out, arch="mobilenet_v2")
    np.testing.assert_array_equal(variables["params"]["Logits"]["kernel"], result.variables["params"]["Logits"]["kernel"])
    assert saved["recipe"] == "gaussian"
