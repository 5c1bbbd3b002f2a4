"""inference.Predictor: the fast path gives the fp32 answers, the fp32 flag is plain eager, and
CPUs without native bf16 or int8 kernels fall back to fp32. Speed lives in benchmarks/latency.py."""

import numpy as np
import pytest
import torch
import torchvision
from torch import nn

import inference
from classifier import load_classifier
from images import load_rgb
from inference import Predictor
from model import build_vit, convert_torchvision_state_dict
from standins import EXAMPLE_PHOTOS as EXAMPLES
from standins import draw_food_image

# The agreement thresholds (benchmarks/latency.py checks them over >= 100 inputs).
MIN_TOP1_AGREEMENT = 0.99
MAX_PROBABILITY_DIFFERENCE = 0.02


TINY = dict(image_size=32, patch_size=8, num_layers=2, num_heads=2, hidden_dim=16, mlp_dim=32)


def tiny_extractor(seed: int = 0) -> nn.Module:
    """A torchvision VisionTransformer small enough for structural checks in milliseconds."""
    torch.manual_seed(seed)
    model = torchvision.models.VisionTransformer(**TINY)
    model.heads = nn.Linear(16, 3)
    return model.eval()


def test_fast_path_agrees_with_fp32_on_real_and_generated_photos(trained_head_checkpoint):
    model, transforms, _ = load_classifier(trained_head_checkpoint)
    predictor = Predictor(model)
    if predictor.precision == "fp32":
        pytest.skip("this CPU has no int8 or bf16 fast path")
    rng = np.random.default_rng(123)  # not the fixture's seed: images the head has not seen
    photos = [load_rgb(path, min_size=transforms.resize_size[0]) for path in EXAMPLES]
    generated = [
        draw_food_image(name, rng, size=int(rng.integers(48, 320)))
        for _ in range(32)
        for name in ("pizza", "steak", "sushi")
    ]
    images = torch.stack([transforms(image) for image in photos + generated])
    assert len(photos) == 4 and len(images) == 100  # 100 inputs: one top-1 flip on a near tie is allowed

    reference_logits = Predictor(model, precision="fp32")(images)
    # one image at a time, as the app runs them (int8 activations share one scale per batch)
    logits, attention = [], []
    for image in images:
        maps = []
        logits.append(predictor(image[None], maps))
        attention.append(maps[-1][:, :, 0, 1:].mean(dim=1))  # what the app draws: the class token, last layer
    logits, attention = torch.cat(logits), torch.cat(attention)
    reference, fast = reference_logits.softmax(dim=-1), logits.softmax(dim=-1)

    assert reference.max(dim=-1).values.median() > 0.6  # a confident head (uniform: 1/3), or agreement means little
    assert (fast.argmax(dim=-1) == reference.argmax(dim=-1)).float().mean() >= MIN_TOP1_AGREEMENT
    assert (fast - reference).abs().max() <= MAX_PROBABILITY_DIFFERENCE
    reference_maps = []
    Predictor(model, precision="fp32")(images, reference_maps)
    reference_attention = reference_maps[-1][:, :, 0, 1:].mean(dim=1)
    assert attention.shape == reference_attention.shape == (len(images), 196)
    torch.testing.assert_close(attention, reference_attention, atol=1e-4, rtol=0.05)  # values ~5e-3


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
def test_cpu_paths_match_fp32_on_a_tiny_vit(precision):
    if precision == "bf16" and not inference.cpu_supports_bf16():
        pytest.skip("no native bf16 on this CPU")
    model = tiny_extractor()
    images = torch.randn(8, 3, 32, 32)
    with torch.inference_mode():
        eager = model(images)
    predictor = Predictor(model, precision=precision)
    assert predictor.precision == precision
    maps, reference_maps = [], []
    logits = predictor(images, maps)
    assert logits.dtype == torch.float32 and all(attention.dtype == torch.float32 for attention in maps)
    torch.testing.assert_close(logits, eager, atol=0.05, rtol=0.05)
    Predictor(model, precision="fp32")(images, reference_maps)
    for attention, reference in zip(maps, reference_maps, strict=True):
        torch.testing.assert_close(attention, reference, atol=5e-3, rtol=0)  # values ~0.06


def test_without_native_bf16_the_bf16_flag_runs_plain_fp32(monkeypatch):
    monkeypatch.setattr(inference, "cpu_supports_bf16", lambda: False)
    model = tiny_extractor()
    images = torch.randn(3, 3, 32, 32)
    with pytest.warns(UserWarning, match="no native bf16"):
        predictor = Predictor(model, precision="bf16")
    assert predictor.precision == "fp32"
    with torch.inference_mode():
        assert torch.equal(predictor(images), model(images))


def test_auto_picks_int8_only_with_vnni_and_bf16_only_with_amx(monkeypatch):
    monkeypatch.setattr(inference, "int8_engine_available", lambda: True)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    monkeypatch.setattr(torch.cpu, "_is_vnni_supported", lambda: True)
    assert Predictor(tiny_extractor()).precision == "int8"
    monkeypatch.setattr(torch.cpu, "_is_vnni_supported", lambda: False)  # 7-bit activations: too coarse
    assert Predictor(tiny_extractor()).precision == "fp32"
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: True)
    assert Predictor(tiny_extractor()).precision == "bf16"
    monkeypatch.setattr(inference, "int8_engine_available", lambda: False)
    monkeypatch.setattr(torch.cpu, "_is_vnni_supported", lambda: True)
    assert Predictor(tiny_extractor()).precision == "bf16"


def test_without_vnni_int8_would_miss_the_agreement_bound(trained_head_checkpoint, monkeypatch):
    """Why auto_precision wants VNNI: the 7-bit activations of quantize_dynamic's default Linear
    move the probabilities further from fp32's than the full-range path does."""
    model, transforms, _ = load_classifier(trained_head_checkpoint)
    images = torch.stack([transforms(load_rgb(path, min_size=transforms.resize_size[0])) for path in EXAMPLES])
    reference = Predictor(model, precision="fp32")(images).softmax(dim=-1)
    differences = {}
    for vnni in (True, False):
        monkeypatch.setattr(torch.cpu, "_is_vnni_supported", lambda: vnni)
        predictor = Predictor(model, precision="int8")
        fast = torch.cat([predictor(image[None]) for image in images]).softmax(dim=-1)
        differences[vnni] = (fast - reference).abs().max().item()
    assert differences[True] < differences[False]


def test_unknown_precision_is_refused():
    with pytest.raises(ValueError, match="precision must be one of auto, fp32, int8, bf16"):
        Predictor(tiny_extractor(), precision="fp16")


def test_attention_maps_are_model_pys_on_every_path():
    """The maps each path returns are model.py's ViT's for the same weights (the int8 path's within rounding)."""
    model = tiny_extractor()
    paper_vit = build_vit("vit_b_16", num_classes=3, **TINY).eval()
    paper_vit.load_state_dict(convert_torchvision_state_dict(model.state_dict()))
    images = torch.randn(2, 3, 32, 32)
    expected = []
    with torch.inference_mode():
        paper_vit.forward_features(images, expected)
    for precision, tolerance in (("fp32", 1e-6), ("int8", 0.02)):
        maps = []
        Predictor(model, precision=precision)(images, maps)
        for attention, reference in zip(maps, expected, strict=True):
            torch.testing.assert_close(attention, reference, atol=tolerance, rtol=0)
