"""inference.Predictor: the int8 path keeps its promise against fp32 (same top-1, probabilities within 0.02) on the
random backbone and on backbones with real ViTs' outlier channels, the fp32 flag is plain eager, and CPUs without
native bf16 or int8 kernels fall back to fp32. Speed lives in benchmarks/latency.py."""

import copy
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn
from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

import inference
from classifier import load_classifier
from images import load_rgb
from inference import Predictor
from marks import SMALL_HEAD, needs_int8_engine, needs_x86_int8
from model import build_vit, convert_torchvision_state_dict
from standins import EXAMPLE_PHOTOS as EXAMPLES
from standins import GENERATED_CLASSES as GENERATED
from standins import TINY_CALIBRATION, TINY_VIT, draw_food_image, inject_outliers, tiny_extractor

# Each library's switch to its AVX2 code: int8 products then add in int16 pairs as on an AVX2-only CPU
AVX2_ONLY = {
    "FBGEMM_ENABLE_INSTRUCTIONS": "AVX2",
    "ATEN_CPU_CAPABILITY": "avx2",
    "ONEDNN_MAX_CPU_ISA": "AVX2",
    "MKL_ENABLE_INSTRUCTIONS": "AVX2",
}


def agreement_images(transforms) -> torch.Tensor:
    """100 inputs, one at a time as the app runs them: the 4 real photos, flipped and cropped variants of them,
    and generated pictures at random sizes (not the fixture's seed: images the head has not seen)."""
    rng = np.random.default_rng(123)
    photos = [load_rgb(path, min_size=transforms.resize_size[0]) for path in EXAMPLES]
    variants = [
        photo.transpose(Image.Transpose.FLIP_LEFT_RIGHT).crop((0, 0, int(photo.width * f), int(photo.height * f)))
        for photo in photos
        for f in (0.6, 0.75, 0.9)
    ]
    generated = [draw_food_image(name, rng, size=int(rng.integers(48, 320))) for _ in range(28) for name in GENERATED]
    return torch.stack([transforms(image) for image in photos + variants + generated])


@pytest.fixture(scope="module")
def agreement_set(trained_head_checkpoint):
    """(model, calibration images, 100 inputs, their fp32 features), the reference every int8 variant is held to."""
    model, transforms, _ = load_classifier(trained_head_checkpoint)
    images = agreement_images(transforms)
    return model, inference.calibration_images(transforms), images, inference.reference_features(model, images)


@pytest.mark.parametrize("outlier_scale", [1, 30])
@needs_int8_engine
def test_int8_keeps_its_promise_on_backbones_with_outlier_channels(agreement_set, outlier_scale):
    """The same top-1 and probabilities within 0.02 of fp32 over 100 inputs, on the random backbone and on the
    function-preserving outlier injection of real pretrained ViTs' LayerNorm channels (standins.inject_outliers) at
    their scale, 30x; benchmarks/latency.py measures s = 1 to 100 beside the other int8 paths."""
    model, calibration, images, reference = agreement_set
    injected = inject_outliers(copy.deepcopy(model), outlier_scale)
    torch.testing.assert_close(inference.reference_features(injected, images[:4]), reference[:4], rtol=0, atol=1e-4)
    fast = Predictor(injected, "int8", calibration)
    measured = inference.agreement(fast, images, reference)
    assert measured.inputs == 100
    assert measured.passed, measured.describe()
    # the top class changes only on near ties, fp32's top two within twice the bound (inference.Agreement)
    assert measured.top1 >= 0.98 and measured.near_tie_margin <= 2 * inference.MAX_PROBABILITY_DIFFERENCE
    assert measured.worst_feature_cosine > 0.99
    print(f"outlier scale {outlier_scale}: {measured.describe()}")


@pytest.mark.skipif(
    inference.int8_engine() != "onednn", reason="oneDNN does not serve here: the tests above run the kernels that do"
)
@pytest.mark.parametrize("outlier_scale", [1, 30])
def test_fbgemm_keeps_the_promise_too_where_onednn_serves(agreement_set, outlier_scale):
    """Where oneDNN serves (its kernels add in int32) the tests above run its kernels; fbgemm's, which serve on AVX2
    CPUs, are held to the same promise here."""
    model, calibration, images, reference = agreement_set
    fast = Predictor(inject_outliers(copy.deepcopy(model), outlier_scale), "int8", calibration, engine="x86")
    assert fast.engine == "x86" and fast.bits == inference.bits_for(inference.sums_of("x86"))
    measured = inference.agreement(fast, images, reference)
    assert measured.passed and measured.top1 >= 0.98, measured.describe()


@needs_x86_int8
def test_the_int8_engine_is_onednn_wherever_its_kernels_add_in_int32(monkeypatch, torch_build):
    """oneDNN where its kernels add the products in int32 (AVX-512 VNNI, AMX), fbgemm where they add pairs in int16
    (AVX2: test_int8_sums_are_measured_from_the_kernels_the_libraries_take), QNNPACK on ARM builds of torch, none
    where torch has no int8 kernels."""
    for onednn_sums, expected in (("int32", "onednn"), ("int16", "x86")):
        monkeypatch.setattr(inference, "sums_of", lambda engine, sums=onednn_sums: sums)
        inference.int8_engine.cache_clear()
        assert inference.int8_engine() == expected
    monkeypatch.undo()
    inference.int8_engine.cache_clear()
    if torch.cpu._is_vnni_supported() and "ONEDNN_MAX_CPU_ISA" not in os.environ:  # vpdpbusd adds in int32
        assert inference.int8_engine() == "onednn"
    torch_build(["qnnpack", "none"])  # torch for ARM, which may leave its engine at "none" (pytorch#123507)
    assert inference.int8_engine() == "qnnpack" and inference.int8_sums() == "int32"
    torch_build(["none"])
    assert inference.int8_engine() is None and inference.int8_sums() is None


@needs_int8_engine
def test_without_smoothing_int8_breaks_on_outlier_channels(agreement_set):
    """Why SmoothQuant: plain per-tensor int8 misses the promise once the outliers are there."""
    model, _, images, reference = agreement_set
    fast = Predictor(inject_outliers(copy.deepcopy(model), 100), "int8", smooth=False, fp32_linears=())
    measured = inference.agreement(fast, images[:40], reference[:40])
    assert not measured.passed and measured.max_probability_difference > 0.02


@needs_int8_engine
def test_the_pages_attention_from_the_int8_path_is_fp32s(agreement_set):
    """What the app draws, the class token's last-layer attention, is fp32's within rounding on the int8 path."""
    model, calibration, images, _ = agreement_set
    fast = Predictor(model, "int8", calibration)
    attention, reference_maps = [], []
    for image in images[:20]:
        maps = []
        fast(image[None], maps)
        attention.append(maps[-1][:, :, 0, 1:].mean(dim=1))
    Predictor(model, precision="fp32")(images[:20], reference_maps)
    expected = reference_maps[-1][:, :, 0, 1:].mean(dim=1)
    torch.testing.assert_close(torch.cat(attention), expected, atol=2e-4, rtol=0.05)  # values ~5e-3


def test_int8_without_calibration_is_refused():
    with pytest.raises(ValueError, match="the int8 path needs calibration: pass calibration=calibration_images"):
        Predictor(tiny_extractor(), "int8")


def test_fp32_flag_is_bitwise_plain_eager_and_its_maps_come_from_model_py():
    model = tiny_extractor()
    images = torch.randn(5, 3, 32, 32)
    with torch.inference_mode():
        eager = model(images)
    predictor = Predictor(model, precision="fp32")
    assert torch.equal(predictor(images), eager)
    maps = []
    logits = predictor(images, maps)
    torch.testing.assert_close(logits, eager, rtol=0, atol=1e-5)  # model.py's ViT, same weights
    assert [tuple(attention.shape) for attention in maps] == [(5, 2, 17, 17)] * 2


def test_the_fast_path_shares_the_extractors_tensors():
    """vit_from_torchvision renames, it does not copy: the fp32 ViT costs no memory beside the extractor."""
    model = tiny_extractor()
    vit = inference.vit_from_torchvision(model)
    assert (
        vit.blocks[0].attention.qkv.weight.data_ptr()
        == model.encoder.layers[0].self_attention.in_proj_weight.data_ptr()
    )
    assert vit.head.weight.data_ptr() == model.heads.weight.data_ptr()


@pytest.mark.parametrize("precision", ["int8", "bf16"])
def test_cpu_paths_match_fp32_on_a_tiny_vit(precision, monkeypatch):
    # without native bf16 it is emulated (oneDNN on AVX-512, ATen's own GEMM on AVX2): slower than fp32, so never
    # chosen, but the same autocast and rounding
    monkeypatch.setattr(inference, "cpu_supports_bf16", lambda: True)
    if precision == "int8" and inference.int8_sums() is None:
        pytest.skip(inference.NO_INT8_ENGINE)
    model = tiny_extractor()
    images = torch.randn(8, 3, 32, 32)
    with torch.inference_mode():
        eager = model(images)
    predictor = Predictor(model, precision=precision, calibration=TINY_CALIBRATION)
    assert predictor.precision == precision
    maps, reference_maps = [], []
    logits = predictor(images, maps)
    assert logits.dtype == torch.float32 and all(attention.dtype == torch.float32 for attention in maps)
    torch.testing.assert_close(logits, eager, atol=0.05, rtol=0.05)
    fp32 = Predictor(model, precision="fp32")
    assert not torch.equal(logits, fp32(images, []))  # the path ran, not fp32 under another name
    if precision == "int8":  # every Linear of the blocks in int8 but FP32_LINEARS; the head stays fp32
        int8_linear = inference.FullRangeInt8Linear if predictor.bits[0] == 8 else inference.quantized_dynamic.Linear
        linears = [name for name, module in fp32.vit.named_modules() if isinstance(module, torch.nn.Linear)]
        served = dict(predictor.vit.named_modules())
        kept = {*inference.FP32_LINEARS, "head"}
        assert {name for name in linears if type(served[name]) is torch.nn.Linear} == kept
        assert all(type(served[name]) is int8_linear for name in linears if name not in kept)
    fp32(images, reference_maps)
    # values ~0.06; a 16-wide model's attention moves with each weight's rounding, twice as coarse at 7 bits
    tolerance = 5e-3 * (2 ** (8 - min(inference.int8_bits())) if precision == "int8" else 1)
    for attention, reference in zip(maps, reference_maps, strict=True):
        torch.testing.assert_close(attention, reference, atol=tolerance, rtol=0)


@pytest.mark.parametrize("alpha", sorted(set(inference.SMOOTHING_ALPHA.values())))
def test_smoothquant_leaves_the_fp32_function_as_it_was(alpha):
    """Dividing each LayerNorm's weight and bias by s and multiplying the next Linear's columns by s is exact in
    fp32. The LayerNorms get random affine parameters: torchvision initialises the bias to 0, where forgetting to
    divide it would go unseen, and pretrained weights' biases are not 0."""
    model = tiny_extractor()
    with torch.no_grad():
        for layer in model.encoder.layers:
            for norm in (layer.ln_1, layer.ln_2):
                norm.weight.uniform_(0.5, 2.0)
                norm.bias.normal_(0, 0.5)
    images = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    vit = inference.vit_from_torchvision(model)
    smoothed = copy.deepcopy(vit)
    inference.smooth_activations(smoothed, inference.input_ranges(vit, images), alpha)
    before, after = inference.smoothed_linears(vit), inference.smoothed_linears(smoothed)
    assert all(not torch.allclose(after[name][0].bias, before[name][0].bias) for name in before)  # s is not 1
    with torch.inference_mode():
        torch.testing.assert_close(
            smoothed.forward_features(images), vit.forward_features(images), atol=1e-5, rtol=1e-5
        )


def test_smoothquant_ranges_are_recorded_from_any_pass_and_only_inside_the_block():
    """recording_input_ranges records, per smoothed Linear (qkv, the MLP's first), its inputs' largest magnitude per
    channel over every pass in the block, what input_ranges measures in a pass of its own; then it stops."""
    vit = inference.vit_from_torchvision(tiny_extractor())
    with torch.inference_mode(), inference.recording_input_ranges(vit) as recorded:
        vit.forward_features(TINY_CALIBRATION[:2], [])
        vit.forward_features(TINY_CALIBRATION[2:], [])
    expected = inference.input_ranges(vit, TINY_CALIBRATION)
    assert (
        set(recorded)
        == set(expected)
        == {
            f"blocks.{layer}.{linear}"
            for layer in range(TINY_VIT["num_layers"])
            for linear in ("attention.qkv", "mlp.mlp.0")
        }
    )
    for name, ranges in recorded.items():
        assert ranges.shape == (TINY_VIT["hidden_dim"],) and ranges.min() > 0
        torch.testing.assert_close(ranges, expected[name], rtol=1e-6, atol=0)
    before = {name: ranges.clone() for name, ranges in recorded.items()}
    louder = inference.input_ranges(vit, TINY_CALIBRATION * 10)  # a pass that would raise what was recorded above
    assert any((louder[name] > before[name]).any() for name in before)
    assert all(torch.equal(ranges, before[name]) for name, ranges in recorded.items())  # no hook left behind


def test_without_native_bf16_the_bf16_flag_runs_plain_fp32(monkeypatch):
    monkeypatch.setattr(inference, "cpu_supports_bf16", lambda: False)
    model = tiny_extractor()
    images = torch.randn(3, 3, 32, 32)
    with pytest.warns(UserWarning, match="no native bf16"):
        predictor = Predictor(model, precision="bf16")
    assert predictor.precision == "fp32"
    with torch.inference_mode():
        assert torch.equal(predictor(images), model(images))


def test_auto_picks_int8_wherever_the_int8_engine_is_and_bf16_only_with_amx_without_it(monkeypatch, torch_build):
    """Whatever the CPU adds int8 products in (the bits follow the kernels), x86 or ARM: inference.choose_predictor
    then decides by measurement whether int8 serves."""
    cpu = torch.device("cpu")
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: True)
    for engines in (["qnnpack", "onednn", "x86", "fbgemm"], ["qnnpack", "none"]):
        torch_build(engines)
        assert inference.resolve_precision("auto", cpu) == "int8"
    torch_build(["none"])
    assert not inference.int8_engine_available()
    assert inference.resolve_precision("auto", cpu) == "bf16"
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    assert inference.resolve_precision("auto", cpu) == "fp32"
    with pytest.warns(UserWarning, match=f"{re.escape(inference.NO_INT8_ENGINE)}; running in fp32 instead"):
        assert inference.resolve_precision("int8", cpu) == "fp32"


@pytest.mark.parametrize(("measured", "served"), [(2.0, "int8"), (1.2, "fp32")])
def test_on_arm_int8_serves_on_qnnpack_only_after_the_self_check_and_where_it_pays(
    tiny_examples, torch_build, monkeypatch, measured, served
):
    """An ARM build of torch, simulated, QNNPACK's kernels really running (x86's here): no record from another engine
    vouches for them and BENCHMARKS.md has no figures for their speed, so int8 serves only where the self-check
    passes and it ran at least ENGINE_SPEED_UP times as fast as fp32 at start-up."""
    torch_build(["qnnpack", "none"])
    timed = []

    def speed_up(baseline, candidate, images):  # the rule, whatever QNNPACK's x86 kernels measure here
        timed.append((baseline.precision, candidate.engine, len(images)))
        return measured

    monkeypatch.setattr(inference, "speed_up", speed_up)
    model, images, features, maps = tiny_examples
    ranges = inference.input_ranges(inference.vit_from_torchvision(model), images)
    sha = "ab" * 32
    x86_record = {"setup": inference.int8_setup(sha) | {"quantized_engine": "x86"}, "agreement": {"passed": True}}
    predictor, why = inference.choose_predictor(model, images, features, maps, ranges, "auto", x86_record, sha)
    assert timed == [("fp32", "qnnpack", 1)]
    assert predictor.precision == served
    assert why.startswith(f"{served} serves") and "record is for another setup" in why
    assert "and a self-check on the bundled photos passed" in why
    kernels = "on QNNPACK's kernels, which BENCHMARKS.md has no figures for, it ran the pass"
    if served == "int8":
        assert predictor.engine == "qnnpack" and predictor.bits == (8, 8)
        assert why.endswith(f"; {kernels} 2.00x as fast as fp32 on torch at start-up.")
        torch.testing.assert_close(predictor(images), model(images), atol=0.05, rtol=0)
    else:
        assert f"but {kernels} 1.20x as fast as fp32 on torch at start-up, under the 1.25x that pays for its" in why


@needs_int8_engine
def test_a_forced_int8_serves_unchecked_and_says_so(tiny_examples, monkeypatch):
    """--precision int8 skips the record and the self-check that auto relies on: the status line must not read as
    if int8 had proven itself."""
    monkeypatch.setattr(inference, "agreement", lambda *args: pytest.fail("a forced int8 ran the self-check"))
    model, images, features, maps = tiny_examples
    ranges = inference.input_ranges(inference.vit_from_torchvision(model), images)
    predictor, why = inference.choose_predictor(model, images, features, maps, ranges, "int8", None, "ab" * 32)
    assert predictor.precision == "int8"
    assert why == "int8, as asked (--precision int8); not checked against fp32 on these weights."


@needs_x86_int8
def test_int8_sums_are_measured_from_the_kernels_the_libraries_take():
    """The probe reads the kernels, not the CPU flags: fbgemm and oneDNN told to use their AVX2 kernels add in int16
    on any x86 CPU, VNNI ones included, and then fbgemm serves. Left to choose, fbgemm adds in int32 exactly where
    the CPU has AVX-512 VNNI."""
    if "FBGEMM_ENABLE_INSTRUCTIONS" not in os.environ:
        assert inference.sums_of("x86") == ("int32" if torch.cpu._is_vnni_supported() else "int16")
    forced = subprocess.run(
        [sys.executable, "-c", "import inference; print(inference.int8_sums(), inference.int8_engine())"],
        env=os.environ | AVX2_ONLY,
        capture_output=True,
        text=True,
        check=True,
    )
    assert forced.stdout.split() == ["int16", "x86"], forced.stderr


@needs_int8_engine
def test_the_bits_taken_are_the_closest_to_fp32_on_this_cpus_kernels(agreement_set):
    """int8_bits against the other splits of (activation, weight) bits, each image alone as the app runs it: full
    8 bits where products add in int32; where pairs add in int16, 8-bit weights overflow with 8-bit activations, and
    7-bit weights are closer to fp32 than PyTorch's 7-bit activations (the reason: inference.int8_bits)."""
    model, calibration, images, reference = agreement_set
    ranges = inference.input_ranges(inference.vit_from_torchvision(model), calibration)  # the same for every split
    errors = {}
    for bits in ((8, 8), (8, 7), (7, 8)):
        features = inference.fast_features(Predictor(model, "int8", ranges, bits=bits), images[:40])
        errors[bits] = ((features - reference[:40]).square().sum() / reference[:40].square().sum()).item()
    chosen = inference.int8_bits()
    print(f"int8 products add in {inference.int8_sums()}; relative squared feature error by bits: {errors}")
    assert errors[chosen] == min(errors.values()), errors


@needs_x86_int8
@pytest.mark.skipif(
    inference.int8_sums() != "int32", reason="the int8 kernels here add in int16 already: the tests above run them"
)
def test_the_int8_tests_pass_on_the_kernels_that_add_in_int16_as_well():
    """Both kernel paths on a VNNI machine: the int8 tests again, in a process where fbgemm, ATen, oneDNN and MKL
    take their AVX2 code, as on an AVX2-only CPU (whose cores and caches still differ)."""
    tests = [  # the promise on the random backbone and at the outlier scale of real ViTs, and what depends on the sums
        "tests/test_inference.py::test_int8_keeps_its_promise_on_backbones_with_outlier_channels[1]",
        "tests/test_inference.py::test_int8_keeps_its_promise_on_backbones_with_outlier_channels[30]",
        "tests/test_inference.py::test_the_bits_taken_are_the_closest_to_fp32_on_this_cpus_kernels",
        "tests/test_inference.py::test_cpu_paths_match_fp32_on_a_tiny_vit[int8]",
        "tests/test_inference.py::test_attention_maps_are_model_pys_on_every_path",
        "tests/test_inference.py::test_the_pages_attention_from_the_int8_path_is_fp32s",
        "tests/test_inference.py::test_without_smoothing_int8_breaks_on_outlier_channels",
        "tests/test_serving.py::test_a_passing_record_for_this_setup_serves_int8",
        "tests/test_serving.py::test_a_record_for_other_weights_falls_back_to_the_self_check",
    ]
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *tests],
        env=os.environ | AVX2_ONLY | {SMALL_HEAD: "1"},
        cwd=Path(__file__).resolve().parent.parent,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    summary = result.stdout.strip().splitlines()[-1]
    assert re.match(rf"{len(tests)} passed\b", summary) and not re.search("skipped|deselected|failed", summary), summary


def test_unknown_precision_is_refused():
    with pytest.raises(ValueError, match="precision must be one of auto, fp32, int8, bf16"):
        Predictor(tiny_extractor(), precision="fp16")


def test_attention_maps_are_model_pys_on_every_path():
    """The maps each path returns are model.py's ViT's for the same weights (the int8 path's within rounding)."""
    model = tiny_extractor()
    paper_vit = build_vit("vit_b_16", num_classes=3, **TINY_VIT).eval()
    paper_vit.load_state_dict(convert_torchvision_state_dict(model.state_dict()))
    images = torch.randn(2, 3, 32, 32)
    expected = []
    with torch.inference_mode():
        paper_vit.forward_features(images, expected)
    for precision, tolerance in [("fp32", 1e-6)] + ([("int8", 0.02)] if inference.int8_sums() else []):
        maps = []
        Predictor(model, precision=precision, calibration=TINY_CALIBRATION)(images, maps)
        for attention, reference in zip(maps, expected, strict=True):
            torch.testing.assert_close(attention, reference, atol=tolerance, rtol=0)


@needs_x86_int8
@pytest.mark.parametrize("engine", ["fbgemm", "onednn"])
def test_the_full_range_linear_keeps_activations_on_all_256_levels(engine):
    """FullRangeInt8Linear quantizes its input to 8 bits (reduce_range=False), where torch's dynamic Linear takes 7:
    activations on the 8-bit grid (multiples of max/255) go through exactly, and on the 7-bit grid they round.
    Only even inputs are non-zero, so no pair of products reaches int16's limit on AVX2's kernels."""
    if engine not in inference.quantized_engines():
        pytest.skip(f"no {engine} in this build of torch")
    torch.manual_seed(0)
    float_linear = nn.Sequential(nn.Linear(64, 16))
    x = torch.zeros(4, 64)
    x[:, ::2] = torch.randint(0, 256, (4, 32)) / 255
    x[:, 0] = 1.0  # each row's maximum: the scale is 1/255 at 8 bits
    outputs = {}
    with inference.quiet_torch_ao(), inference.packing_for(engine):
        for name, linear in (("8-bit", inference.FullRangeInt8Linear), ("7-bit", inference.quantized_dynamic.Linear)):
            quantized = quantize_dynamic(
                copy.deepcopy(float_linear), {"0": per_channel_dynamic_qconfig}, mapping={nn.Linear: linear}
            )
            reference = torch.nn.functional.linear(x, quantized[0].weight().dequantize(), quantized[0].bias())
            outputs[name] = (quantized(x) - reference).abs().max().item()
    assert outputs["8-bit"] < 1e-5 < 1e-3 < outputs["7-bit"], outputs
