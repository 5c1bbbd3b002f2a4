"""The ViT replication against the paper's numbers and torchvision's reference implementation.
Most checks use a tiny config (image 32, patch 8, width 32) so they run in milliseconds; parity
and the feature extractor use the real vit_b_16 shapes."""

import math
import urllib.request
from pathlib import Path

import pytest
import torch
import torchvision
from torchvision.models.vision_transformer import VisionTransformer, interpolate_embeddings

from classifier import WeightsUnavailableError, build_feature_extractor
from model import (
    VIT_CONFIGS,
    ViT,
    ViTConfig,
    build_vit,
    convert_to_torchvision_state_dict,
    convert_torchvision_state_dict,
    interpolate_position_embedding,
)
from standins import free_port

TINY = dict(image_size=32, patch_size=8, num_layers=2, hidden_dim=32, mlp_dim=64, num_heads=4)


def tiny_vit(**overrides) -> ViT:
    torch.manual_seed(0)
    return ViT(ViTConfig(**{**TINY, "num_classes": 3, **overrides}))


def tiny_torchvision(num_classes=3, image_size=32) -> VisionTransformer:
    torch.manual_seed(0)
    model = VisionTransformer(
        image_size=image_size,
        patch_size=8,
        num_layers=2,
        num_heads=4,
        hidden_dim=32,
        mlp_dim=64,
        num_classes=num_classes,
    )
    torch.nn.init.normal_(model.heads.head.weight, std=0.02)  # the reference zero-inits it: logits would all be 0
    return model.eval()


def count(model) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize(
    "name, expected",
    [
        ("vit_b_16", 86_567_656),
        ("vit_b_32", 88_224_232),
        ("vit_l_16", 304_326_632),
        ("vit_l_32", 306_535_400),
        ("vit_h_14", 632_045_800),
    ],
)
def test_parameter_counts_match_the_paper_and_torchvision(name, expected):
    with torch.device("meta"):  # ViT-H would need 2.5 GB otherwise
        ours = build_vit(name)
        reference = getattr(torchvision.models, name)()
    assert count(ours) == count(reference) == expected


def test_table_1_hyperparameters():
    base, large, huge = VIT_CONFIGS["vit_b_16"], VIT_CONFIGS["vit_l_16"], VIT_CONFIGS["vit_h_14"]
    assert (base.num_layers, base.hidden_dim, base.mlp_dim, base.num_heads) == (12, 768, 3072, 12)
    assert (large.num_layers, large.hidden_dim, large.mlp_dim, large.num_heads) == (24, 1024, 4096, 16)
    assert (huge.num_layers, huge.hidden_dim, huge.mlp_dim, huge.num_heads, huge.patch_size) == (32, 1280, 5120, 16, 14)


def test_shapes_and_forward_split():
    model = tiny_vit().eval()
    images = torch.randn(5, 3, 32, 32)
    assert model.patch_embedding(images).shape == (5, 1 + 16, 32)  # class token + (32/8)^2 patches
    features = model.forward_features(images)
    assert features.shape == (5, 32)
    torch.testing.assert_close(model.forward_head(features), model(images), rtol=0, atol=0)
    assert model(images).shape == (5, 3)


def test_reference_initialisation():
    model = tiny_vit()
    assert torch.all(model.patch_embedding.class_token == 0)
    assert torch.all(model.head.weight == 0) and torch.all(model.head.bias == 0)
    torch.manual_seed(0)
    big = build_vit("vit_b_16")
    assert big.patch_embedding.position_embedding.std().item() == pytest.approx(0.02, rel=0.02)
    assert all(m.eps == 1e-6 for m in big.modules() if isinstance(m, torch.nn.LayerNorm))
    assert all(m.approximate == "none" for m in big.modules() if isinstance(m, torch.nn.GELU))


@pytest.mark.parametrize("encoder_block", ["paper", "torch"])
def test_every_parameter_starts_as_torchvisions_does(encoder_block):
    """Each tensor drawn from torchvision's distribution (lecun normal for E and the pre-logits, xavier uniform for
    U_qkv and the MLP, normal(1e-6) MLP biases, zeros where it has zeros): compared by spread, under torchvision's
    own names, on a model wide enough for a standard deviation to be measured within a few percent."""
    config = dict(image_size=64, patch_size=8, num_layers=2, hidden_dim=256, mlp_dim=1024, num_heads=4)
    torch.manual_seed(0)
    ours = ViT(ViTConfig(**config, num_classes=10, representation_size=128, encoder_block=encoder_block))
    converted = convert_to_torchvision_state_dict(ours.state_dict(), encoder_block)
    torch.manual_seed(1)
    reference = VisionTransformer(**config, num_classes=10, representation_size=128).state_dict()
    assert converted.keys() == reference.keys()
    for name, tensor in reference.items():
        if "ln" in name:
            continue  # LayerNorm: ones and zeros in both, and not random
        ours_std, reference_std = converted[name].float().std().item(), tensor.float().std().item()
        if reference_std == 0:
            assert torch.all(converted[name] == tensor), name
        else:
            # two samples' spreads differ by about 1/sqrt(n) of themselves: four of those, or 10% for big tensors
            assert ours_std == pytest.approx(reference_std, rel=max(0.1, 4 / math.sqrt(tensor.numel()))), name


@pytest.mark.parametrize("encoder_block", ["paper", "torch"])
def test_gradient_reaches_every_parameter(encoder_block):
    model = tiny_vit(encoder_block=encoder_block, dropout=0.1, attention_dropout=0.1).train()
    torch.nn.init.normal_(model.head.weight, std=0.02)  # a zero head blocks the gradient to the encoder
    model(torch.randn(4, 3, 32, 32)).logsumexp(-1).sum().backward()
    missing = [name for name, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert missing == []


def test_fused_and_manual_attention_agree():
    fused = tiny_vit(fused_attention=True).eval()
    manual = tiny_vit(fused_attention=False).eval()
    manual.load_state_dict(fused.state_dict())
    torch.nn.init.normal_(fused.head.weight, std=0.02)
    manual.head.weight.data.copy_(fused.head.weight)
    images = torch.randn(3, 3, 32, 32)
    torch.testing.assert_close(fused(images), manual(images), rtol=1e-5, atol=1e-5)
    images.requires_grad_(True)
    fused(images).sum().backward()
    fused_grad, images.grad = images.grad, None
    manual(images).sum().backward()
    torch.testing.assert_close(fused_grad, images.grad, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("encoder_block", ["paper", "torch"])
def test_attention_weights_of_every_layer(encoder_block):
    model = tiny_vit(encoder_block=encoder_block).eval()
    images = torch.randn(2, 3, 32, 32)
    attentions = []
    features = model.forward_features(images, attention_maps=attentions)
    torch.testing.assert_close(features, model.forward_features(images), rtol=1e-5, atol=1e-5)
    assert len(attentions) == 2
    for attention in attentions:
        assert attention.shape == (2, 4, 17, 17)  # (batch, heads, 1+N, 1+N)
        torch.testing.assert_close(attention.sum(-1), torch.ones(2, 4, 17))
    # the first layer's maps, recomputed by hand from its input (Eqs. 5-6): softmax(q k^T / sqrt(D_h)) per head
    z = model.patch_embedding(images)
    norm = model.blocks[0].attention.norm if encoder_block == "paper" else model.blocks[0].norm1
    qkv_weight = model.state_dict()[
        "blocks.0.attention.qkv.weight" if encoder_block == "paper" else "blocks.0.self_attn.in_proj_weight"
    ]
    qkv_bias = model.state_dict()[
        "blocks.0.attention.qkv.bias" if encoder_block == "paper" else "blocks.0.self_attn.in_proj_bias"
    ]
    q, k, _ = (norm(z) @ qkv_weight.T + qkv_bias).chunk(3, dim=-1)
    for head in range(4):
        columns = slice(head * 8, (head + 1) * 8)
        expected = torch.softmax(q[..., columns] @ k[..., columns].transpose(1, 2) / math.sqrt(8), dim=-1)
        torch.testing.assert_close(attentions[0][:, head], expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("encoder_block", ["paper", "torch"])
def test_last_block_for_the_class_token_only_changes_nothing(encoder_block):
    model = tiny_vit(encoder_block=encoder_block).train()  # dropout 0: training mode, same maths
    torch.nn.init.normal_(model.head.weight, std=0.02)
    images = torch.randn(3, 3, 32, 32)

    def every_token_to_the_end(images):
        z = model.patch_embedding(images)
        for block in model.blocks:
            z = block(z)
        return model.forward_head(model.norm(z[:, 0]))

    expected = every_token_to_the_end(images)
    logits = model(images)
    torch.testing.assert_close(logits, expected, rtol=1e-5, atol=1e-6)
    expected_grads = torch.autograd.grad(expected.sum(), list(model.parameters()))
    grads = torch.autograd.grad(logits.sum(), list(model.parameters()))
    for expected_grad, grad in zip(expected_grads, grads):
        torch.testing.assert_close(grad, expected_grad, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("field", ["dropout", "attention_dropout"])
@pytest.mark.parametrize("encoder_block, fused", [("paper", True), ("paper", False), ("torch", True)])
def test_every_dropout_is_used(field, encoder_block, fused):
    model = tiny_vit(**{field: 0.5}, encoder_block=encoder_block, fused_attention=fused)
    torch.nn.init.normal_(model.head.weight, std=0.5)
    images = torch.randn(2, 3, 32, 32)
    model.train()
    assert not torch.allclose(model(images), model(images))
    model.eval()
    torch.testing.assert_close(model(images), model(images), rtol=0, atol=0)


def test_dropout_placement_follows_appendix_b1():
    model = tiny_vit(dropout=0.1)
    dropouts = [name for name, m in model.named_modules() if isinstance(m, torch.nn.Dropout) and m.p == 0.1]
    # after adding E_pos, after the MSA output projection, after each of the two MLP dense layers
    assert dropouts[:4] == [
        "patch_embedding.dropout",
        "blocks.0.attention.dropout",
        "blocks.0.mlp.mlp.2",
        "blocks.0.mlp.mlp.4",
    ]
    assert len(dropouts) == 1 + 3 * model.config.num_layers


def test_torch_encoder_layer_variant_matches_the_paper_blocks():
    paper, torch_layers = tiny_vit(), tiny_vit(encoder_block="torch")
    assert count(paper) == count(torch_layers)
    with torch.device("meta"):
        assert count(build_vit("vit_b_16", encoder_block="torch")) == 86_567_656
    reference = tiny_torchvision()
    torch_layers.load_state_dict(convert_torchvision_state_dict(reference.state_dict(), encoder_block="torch"))
    images = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(torch_layers.eval()(images), reference(images), rtol=0, atol=1e-5)


@pytest.mark.parametrize("fused", [True, False])
def test_tiny_parity_and_round_trip_with_torchvision(fused):
    reference = tiny_torchvision()
    ours = tiny_vit(fused_attention=fused)
    ours.load_state_dict(convert_torchvision_state_dict(reference.state_dict()))
    images = torch.randn(4, 3, 32, 32)
    torch.testing.assert_close(ours.eval()(images), reference(images), rtol=0, atol=1e-5)
    back = convert_to_torchvision_state_dict(ours.state_dict())
    assert back.keys() == reference.state_dict().keys()
    assert all(torch.equal(back[k], v) for k, v in reference.state_dict().items())


@pytest.mark.parametrize("name", ["vit_b_16", "vit_b_32"])
def test_logits_equal_torchvision_with_the_same_weights(name):
    torch.manual_seed(0)
    reference = getattr(torchvision.models, name)().eval()
    torch.nn.init.normal_(reference.heads.head.weight, std=0.02)
    ours = build_vit(name).eval()
    ours.load_state_dict(convert_torchvision_state_dict(reference.state_dict()))
    images = torch.randn(2, 3, 224, 224)
    with torch.inference_mode():
        difference = (ours(images) - reference(images)).abs().max().item()
    assert difference <= 1e-4


def test_position_embedding_interpolation_matches_torchvision():
    reference = tiny_torchvision()
    resized = interpolate_embeddings(image_size=48, patch_size=8, model_state=reference.state_dict())
    ours = tiny_vit()
    ours.load_state_dict(convert_torchvision_state_dict(reference.state_dict()))
    ours.set_image_size(48)
    assert ours.config.image_size == 48 and ours.patch_embedding.position_embedding.shape == (1, 1 + 36, 32)
    torch.testing.assert_close(ours.patch_embedding.position_embedding.data, resized["encoder.pos_embedding"])
    reference_48 = tiny_torchvision(image_size=48)
    reference_48.load_state_dict(resized)
    images = torch.randn(2, 3, 48, 48)
    torch.testing.assert_close(ours.eval()(images), reference_48(images), rtol=0, atol=1e-5)


def test_interpolation_to_the_same_grid_is_identity():
    embedding = torch.randn(1, 1 + 16, 8)
    torch.testing.assert_close(interpolate_position_embedding(embedding, 4), embedding)


def test_vit_b_16_runs_at_384_px():
    with torch.device("meta"):
        model = build_vit("vit_b_16", num_classes=3)
        model.set_image_size(384)
        assert model(torch.empty(1, 3, 384, 384)).shape == (1, 3)
    assert model.patch_embedding.position_embedding.shape == (1, 1 + 24 * 24, 768)


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: ViTConfig(image_size=225, patch_size=16), r"image_size 225 is not divisible by patch_size 16"),
        (lambda: ViTConfig(hidden_dim=100, num_heads=12), r"hidden_dim 100 is not divisible by num_heads 12"),
        (lambda: ViTConfig(encoder_block="keras"), r"'keras' is not one of \('paper', 'torch'\)"),
        (lambda: ViTConfig(dropout=1.5), r"dropout must be in \[0, 1\), got 1.5"),
        (lambda: ViTConfig(patch_size=0), r"patch_size must be a positive integer, got 0"),
        (lambda: ViTConfig(num_heads=0), r"num_heads must be a positive integer, got 0"),
        (lambda: ViTConfig(num_layers=0), r"num_layers must be a positive integer, got 0"),
        (lambda: ViTConfig(image_size=-16), r"image_size must be a positive integer, got -16"),
        (lambda: ViTConfig(hidden_dim=76.8), r"hidden_dim must be a positive integer, got 76.8"),
        (lambda: ViTConfig(representation_size=0), r"representation_size must be a positive integer, got 0"),
        (lambda: build_vit("vit_s_16"), r"unknown ViT variant 'vit_s_16'; choose one of vit_b_16, vit_b_32"),
        (lambda: build_vit("vit_b_16", depth=3), r"unknown ViTConfig fields \['depth'\]; valid: image_size"),
        (lambda: tiny_vit().set_image_size(50), r"image_size 50 is not divisible by patch_size 8"),
        (
            lambda: tiny_vit()(torch.randn(1, 3, 64, 64)),
            r"expected images of shape \(batch, 3, 32, 32\), got \(1, 3, 64, 64\)",
        ),
        (
            lambda: tiny_vit()(torch.randn(1, 1, 32, 32)),
            r"expected images of shape \(batch, 3, 32, 32\), got \(1, 1, 32, 32\)",
        ),
        (lambda: tiny_vit()(torch.randn(3, 32, 32)), r"got \(3, 32, 32\)"),
        (
            lambda: build_feature_extractor(weights="IMAGENET21K"),
            r"unknown vit_b_16 weights 'IMAGENET21K'; choose one of IMAGENET1K_V1",
        ),
        (lambda: build_feature_extractor(class_names=("pizza", "pizza")), r"non-empty and unique"),
    ],
)
def test_user_errors_are_value_errors_that_name_the_values(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_feature_extractor_loads_cached_weights_and_freezes_the_backbone(torch_home):
    model, transforms = build_feature_extractor(class_names=("pizza", "steak", "sushi"))
    cached = torch.load(torch_home / "hub" / "checkpoints" / "vit_b_16-c867db91.pth", weights_only=True)
    assert torch.equal(model.conv_proj.weight, cached["conv_proj.weight"])  # the real loading path ran
    assert count(model) == 85_800_963
    trainable = {name: p.numel() for name, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"heads.weight": 768 * 3, "heads.bias": 3}
    assert sum(trainable.values()) == 2_307
    assert transforms.crop_size == [224] and transforms.resize_size == [256]
    with torch.inference_mode():
        assert model.eval()(torch.randn(1, 3, 224, 224)).shape == (1, 3)


def test_feature_extractor_backbone_equals_our_vit(torch_home):
    extractor, _ = build_feature_extractor()
    torch.nn.init.normal_(extractor.heads.weight, std=0.02)
    ours = build_vit("vit_b_16", num_classes=3).eval()
    ours.load_state_dict(convert_torchvision_state_dict(extractor.state_dict()))
    images = torch.randn(1, 3, 224, 224)
    with torch.inference_mode():
        assert (ours(images) - extractor.eval()(images)).abs().max().item() <= 1e-4


def test_swag_384_weights_load_from_the_cache(tmp_path, monkeypatch):
    weights = torchvision.models.ViT_B_16_Weights.IMAGENET1K_SWAG_E2E_V1
    cache_file = tmp_path / "hub" / "checkpoints" / Path(weights.url).name
    cache_file.parent.mkdir(parents=True)
    torch.save(torchvision.models.vit_b_16(image_size=384).state_dict(), cache_file)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    model, transforms = build_feature_extractor(weights="IMAGENET1K_SWAG_E2E_V1", class_names=("a", "b"))
    assert model.image_size == 384 and transforms.crop_size == [384]
    with torch.inference_mode():
        assert model.eval()(torch.randn(1, 3, 384, 384)).shape == (1, 2)


def test_missing_weights_error_names_file_url_and_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))  # an empty cache
    for proxy in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy"):  # and no network, even where there is one
        monkeypatch.setenv(proxy, f"http://127.0.0.1:{free_port()}")
    # urlopen keeps the opener, proxies included, that its first call builds: let this test's go with it
    monkeypatch.setattr(urllib.request, "_opener", None)
    url = torchvision.models.ViT_B_16_Weights.IMAGENET1K_V1.url
    with pytest.raises(WeightsUnavailableError) as error:
        build_feature_extractor()
    message = str(error.value)
    assert url in message
    assert str(tmp_path / "hub" / "checkpoints" / "vit_b_16-c867db91.pth") in message


def test_corrupt_cached_weights_error_says_delete_it(tmp_path, monkeypatch):
    cache_file = tmp_path / "hub" / "checkpoints" / "vit_b_16-c867db91.pth"
    cache_file.parent.mkdir(parents=True)
    cache_file.write_bytes(b"<html>not a checkpoint</html>")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(WeightsUnavailableError, match=rf"{cache_file}.*corrupt or incomplete: delete it"):
        build_feature_extractor()


def test_representation_size_is_torchvisions_pre_logits_both_ways():
    """Section 3.1's pre-training head (one tanh hidden layer) is torchvision's representation_size."""
    torch.manual_seed(0)
    reference = VisionTransformer(
        image_size=32,
        patch_size=8,
        num_layers=2,
        num_heads=4,
        hidden_dim=32,
        mlp_dim=64,
        num_classes=3,
        representation_size=16,
    ).eval()
    torch.nn.init.normal_(reference.heads.head.weight, std=0.1)
    ours = tiny_vit(representation_size=16).eval()
    assert count(ours) == count(reference)
    ours.load_state_dict(convert_torchvision_state_dict(reference.state_dict()))
    images = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(ours(images), reference(images), rtol=0, atol=1e-5)
    back = convert_to_torchvision_state_dict(ours.state_dict())
    assert back.keys() == reference.state_dict().keys()
    assert all(torch.equal(back[name], tensor) for name, tensor in reference.state_dict().items())


def test_feature_extractor_bare_head_converts_both_ways():
    """FoodVision Mini's extractor replaces torchvision's `heads` Sequential with a bare Linear."""
    extractor = tiny_torchvision()
    extractor.heads = torch.nn.Linear(32, 3)
    ours = tiny_vit()
    ours.load_state_dict(convert_torchvision_state_dict(extractor.state_dict()))
    images = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(ours.eval()(images), extractor.eval()(images), rtol=0, atol=1e-5)
    back = convert_to_torchvision_state_dict(ours.state_dict(), bare_head=True)
    assert back.keys() == extractor.state_dict().keys()
    assert all(torch.equal(back[name], tensor) for name, tensor in extractor.state_dict().items())


@pytest.mark.parametrize("trainable", [True, False])
def test_set_image_size_keeps_whether_the_position_embedding_trains(trainable):
    model = tiny_vit()
    model.patch_embedding.position_embedding.requires_grad_(trainable)
    model.set_image_size(48)
    assert model.patch_embedding.position_embedding.requires_grad is trainable


def test_interpolating_a_non_square_grid_is_a_clear_error():
    with pytest.raises(ValueError, match="holds 15 patch positions after the class token, not a square grid"):
        interpolate_position_embedding(torch.randn(1, 1 + 15, 8), 4)
