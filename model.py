"""The Vision Transformer (Dosovitskiy et al. 2020, "An Image is Worth 16x16 Words",
arXiv:2010.11929), one module per equation of Section 3.1, plus the builder of the
ImageNet-pretrained torchvision vit_b_16 that FoodVision Mini uses as a frozen feature extractor.

    Eq. 1  z_0  = [x_class; x_p^1 E; ...; x_p^N E] + E_pos       PatchEmbedding
    Eq. 2  z'_l = MSA(LN(z_{l-1})) + z_{l-1}                      MultiHeadSelfAttentionBlock
    Eq. 3  z_l  = MLP(LN(z'_l)) + z'_l                            MLPBlock
    Eq. 4  y    = LN(z_L^0)                                       ViT.forward_features

Given the same weights (see `convert_torchvision_state_dict`) the logits equal those of
torchvision.models.VisionTransformer, whose numerics we follow: LayerNorm eps 1e-6, exact GELU,
class token initialised to zeros, position embedding to normal(std 0.02), classifier head to zeros.
"""

import math
import pickle
from dataclasses import dataclass, replace
from pathlib import Path
from urllib.error import URLError

import torch
import torch.nn.functional as F
import torchvision
from torch import nn


@dataclass(frozen=True)
class ViTConfig:
    image_size: int = 224  # Table 3: pre-training resolution
    patch_size: int = 16  # P: an image becomes (H/P)*(W/P) "words" of P*P*C pixels
    in_channels: int = 3
    num_layers: int = 12  # L, Table 1
    hidden_dim: int = 768  # D, Table 1
    mlp_dim: int = 3072  # Table 1, 4*D throughout
    num_heads: int = 12  # Table 1
    dropout: float = 0.0  # Appendix B.1: after every dense layer except qkv, and after E_pos
    attention_dropout: float = 0.0  # on the attention weights, as torchvision does
    num_classes: int = 1000
    encoder_block: str = "paper"  # "paper": Eqs. 2-3 below; "torch": nn.TransformerEncoderLayer
    fused_attention: bool = True  # F.scaled_dot_product_attention; False: the readable maths

    def __post_init__(self):
        sizes = ("image_size", "patch_size", "in_channels", "num_layers", "hidden_dim", "mlp_dim", "num_heads", "num_classes")
        for name in sizes:
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ValueError(f"{name} must be a positive integer, got {getattr(self, name)!r}")
        if self.image_size % self.patch_size:
            raise ValueError(
                f"image_size {self.image_size} is not divisible by patch_size {self.patch_size}; "
                f"use a multiple of {self.patch_size}, e.g. {self.image_size // self.patch_size * self.patch_size}"
            )
        if self.hidden_dim % self.num_heads:
            raise ValueError(
                f"hidden_dim {self.hidden_dim} is not divisible by num_heads {self.num_heads}; "
                "each head gets hidden_dim / num_heads dimensions"
            )
        if self.encoder_block not in ENCODER_BLOCKS:
            raise ValueError(f"encoder_block {self.encoder_block!r} is not one of {ENCODER_BLOCKS}")
        for name in ("dropout", "attention_dropout"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {getattr(self, name)}")

    @property
    def grid_size(self) -> int:
        return self.image_size // self.patch_size

    @property
    def num_patches(self) -> int:
        return self.grid_size**2


ENCODER_BLOCKS = ("paper", "torch")

# Table 1, under torchvision's names; Huge uses 14x14 patches (Table 2).
VIT_CONFIGS = {
    "vit_b_16": ViTConfig(patch_size=16, num_layers=12, hidden_dim=768, mlp_dim=3072, num_heads=12),
    "vit_b_32": ViTConfig(patch_size=32, num_layers=12, hidden_dim=768, mlp_dim=3072, num_heads=12),
    "vit_l_16": ViTConfig(patch_size=16, num_layers=24, hidden_dim=1024, mlp_dim=4096, num_heads=16),
    "vit_l_32": ViTConfig(patch_size=32, num_layers=24, hidden_dim=1024, mlp_dim=4096, num_heads=16),
    "vit_h_14": ViTConfig(patch_size=14, num_layers=32, hidden_dim=1280, mlp_dim=5120, num_heads=16),
}


class PatchEmbedding(nn.Module):
    """Eq. 1. A convolution with kernel = stride = P is the linear projection E applied to every
    flattened P*P*C patch (the "hybrid" reading of Section 3.1 with a 1x1 feature map)."""

    def __init__(self, config: ViTConfig):
        super().__init__()
        self.config = config
        self.projection = nn.Conv2d(config.in_channels, config.hidden_dim, config.patch_size, stride=config.patch_size)
        self.class_token = nn.Parameter(torch.zeros(1, 1, config.hidden_dim))
        self.position_embedding = nn.Parameter(torch.empty(1, config.num_patches + 1, config.hidden_dim).normal_(std=0.02))
        self.dropout = nn.Dropout(config.dropout)  # Appendix B.1: "directly after adding positional- to patch embeddings"
        fan_in = config.in_channels * config.patch_size**2
        nn.init.trunc_normal_(self.projection.weight, std=math.sqrt(1 / fan_in))
        nn.init.zeros_(self.projection.bias)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        c = self.config
        if images.ndim != 4 or images.shape[1:] != (c.in_channels, c.image_size, c.image_size):
            raise ValueError(
                f"expected images of shape (batch, {c.in_channels}, {c.image_size}, {c.image_size}), "
                f"got {tuple(images.shape)}; resize/crop to {c.image_size} px (the weights' transforms do) "
                f"or call set_image_size({images.shape[-1]}) to interpolate the position embedding"
            )
        patches = self.projection(images).flatten(2).transpose(1, 2)  # (B, N, D)
        class_token = self.class_token.expand(images.shape[0], -1, -1)  # (B, 1, D)
        return self.dropout(torch.cat([class_token, patches], dim=1) + self.position_embedding)  # (B, 1+N, D)


class MultiHeadSelfAttentionBlock(nn.Module):
    """Eq. 2: z' = MSA(LN(z)) + z, with MSA from Appendix A (Eq. 5-8)."""

    def __init__(self, config: ViTConfig):
        super().__init__()
        self.num_heads = config.num_heads
        self.fused_attention = config.fused_attention
        self.norm = nn.LayerNorm(config.hidden_dim, eps=1e-6)
        self.qkv = nn.Linear(config.hidden_dim, 3 * config.hidden_dim)  # U_qkv of Eq. 5, all heads at once
        self.projection = nn.Linear(config.hidden_dim, config.hidden_dim)  # U_msa of Eq. 8
        self.attention_dropout = nn.Dropout(config.attention_dropout)
        self.dropout = nn.Dropout(config.dropout)
        # torchvision's nn.MultiheadAttention init; the output projection keeps nn.Linear's default
        nn.init.xavier_uniform_(self.qkv.weight)
        nn.init.zeros_(self.qkv.bias)
        nn.init.zeros_(self.projection.bias)

    def forward(self, z: torch.Tensor, return_attention: bool = False, class_token_only: bool = False):
        B, N, D = z.shape
        q, k, v = self.qkv(self.norm(z)).view(B, N, 3, self.num_heads, D // self.num_heads).permute(2, 0, 3, 1, 4)  # 3 x (B, heads, N, D_h)
        if class_token_only:  # every token is attended to, but only the class token attends
            q, z = q[:, :, :1], z[:, :1]
        attention = None
        if self.fused_attention and not return_attention:
            p = self.attention_dropout.p if self.training else 0.0
            heads = F.scaled_dot_product_attention(q, k, v, dropout_p=p)
        else:  # Eq. 6-7: A = softmax(q k^T / sqrt(D_h)), SA(z) = A v
            attention = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1]), dim=-1)  # (B, heads, queries, N)
            heads = self.attention_dropout(attention) @ v
        msa = self.projection(heads.transpose(1, 2).reshape(B, q.shape[2], D))  # Eq. 8: concatenate heads, project
        z = z + self.dropout(msa)
        return (z, attention) if return_attention else z


class MLPBlock(nn.Module):
    """Eq. 3: z = MLP(LN(z')) + z', the MLP being Linear-GELU-Linear with dropout after each dense
    layer (Appendix B.1)."""

    def __init__(self, config: ViTConfig):
        super().__init__()
        self.norm = nn.LayerNorm(config.hidden_dim, eps=1e-6)
        self.mlp = nn.Sequential(
            nn.Linear(config.hidden_dim, config.mlp_dim),
            nn.GELU(),  # exact erf GELU, as in the reference
            nn.Dropout(config.dropout),
            nn.Linear(config.mlp_dim, config.hidden_dim),
            nn.Dropout(config.dropout),
        )
        for linear in (self.mlp[0], self.mlp[3]):
            nn.init.xavier_uniform_(linear.weight)
            nn.init.normal_(linear.bias, std=1e-6)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return z + self.mlp(self.norm(z))


class EncoderBlock(nn.Module):
    """One of the L Transformer encoder layers: Eq. 2 then Eq. 3."""

    def __init__(self, config: ViTConfig):
        super().__init__()
        self.attention = MultiHeadSelfAttentionBlock(config)
        self.mlp = MLPBlock(config)

    def forward(self, z: torch.Tensor, return_attention: bool = False, class_token_only: bool = False):
        if not return_attention:
            return self.mlp(self.attention(z, class_token_only=class_token_only))
        z, attention = self.attention(z, return_attention=True, class_token_only=class_token_only)
        return self.mlp(z), attention


class TorchEncoderBlock(nn.TransformerEncoderLayer):
    """The same layer from PyTorch's nn.TransformerEncoderLayer (the course's exercise 1):
    pre-norm (norm_first), GELU, identical parameter count."""

    def __init__(self, config: ViTConfig):
        super().__init__(
            config.hidden_dim, config.num_heads, config.mlp_dim, config.dropout,
            activation="gelu", layer_norm_eps=1e-6, batch_first=True, norm_first=True,
        )
        self.self_attn.dropout = config.attention_dropout  # the layer ties it to `dropout` otherwise

    def forward(self, z: torch.Tensor, return_attention: bool = False, class_token_only: bool = False):
        if not (return_attention or class_token_only):
            return super().forward(z)
        h = self.norm1(z)
        query = h[:, :1] if class_token_only else h
        msa, attention = self.self_attn(query, h, h, need_weights=return_attention, average_attn_weights=False)
        z = (z[:, :1] if class_token_only else z) + self.dropout1(msa)
        z = z + self._ff_block(self.norm2(z))
        return (z, attention) if return_attention else z


class ViT(nn.Module):
    def __init__(self, config: ViTConfig):
        super().__init__()
        self.config = config
        self.patch_embedding = PatchEmbedding(config)
        block = EncoderBlock if config.encoder_block == "paper" else TorchEncoderBlock
        self.blocks = nn.ModuleList(block(config) for _ in range(config.num_layers))
        self.norm = nn.LayerNorm(config.hidden_dim, eps=1e-6)
        self.head = nn.Linear(config.hidden_dim, config.num_classes)
        nn.init.zeros_(self.head.weight)  # Section 3.2: a zero-initialised head for fine-tuning
        nn.init.zeros_(self.head.bias)

    def forward_features(self, images: torch.Tensor, return_attention: bool = False):
        """Eqs. 1-4: the image representation y = LN(z_L^0), shape (B, D). With
        return_attention, also the attention weights of every layer, each (B, heads, 1+N, 1+N)."""
        z = self.patch_embedding(images)
        if return_attention:
            attentions = []
            for block in self.blocks:
                z, attention = block(z, return_attention=True)
                attentions.append(attention)
            return self.norm(z[:, 0]), attentions
        for block in self.blocks[:-1]:
            z = block(z)
        # Eq. 4 reads z_L^0 alone, so the last block computes the class token's output only:
        # the same y for less work (its queries, MLP and projection for 1 token, not 1+N;
        # benchmarks/vit_implementations.py).
        z = self.blocks[-1](z, class_token_only=True)
        return self.norm(z[:, 0])  # Eq. 4: LN acts per token, so on the class token only

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        return self.head(features)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(images))

    def set_image_size(self, image_size: int) -> None:
        """Fine-tune or evaluate at another resolution (Section 3.2): keep the patch size, so the
        sequence grows, and interpolate the pre-trained position embeddings in 2D."""
        config = replace(self.config, image_size=image_size)  # validates divisibility
        embedding = self.patch_embedding
        embedding.position_embedding = nn.Parameter(
            interpolate_position_embedding(embedding.position_embedding.data, config.grid_size)
        )
        embedding.config = self.config = config


def interpolate_position_embedding(position_embedding: torch.Tensor, grid_size: int) -> torch.Tensor:
    """Resize (1, 1+N, D) position embeddings to a grid_size x grid_size patch grid, bicubic with
    aligned corners as torchvision's interpolate_embeddings; the class token's entry is kept."""
    class_position, patch_positions = position_embedding[:, :1], position_embedding[:, 1:]
    old_grid = math.isqrt(patch_positions.shape[1])
    grid = patch_positions.reshape(1, old_grid, old_grid, -1).permute(0, 3, 1, 2)  # (1, D, g, g)
    grid = F.interpolate(grid, size=grid_size, mode="bicubic", align_corners=True)
    return torch.cat([class_position, grid.permute(0, 2, 3, 1).reshape(1, grid_size**2, -1)], dim=1)


def build_vit(name: str, num_classes: int = 1000, **overrides) -> ViT:
    """A Table 1 variant by torchvision's name; overrides replace any ViTConfig field."""
    if name not in VIT_CONFIGS:
        raise ValueError(f"unknown ViT variant {name!r}; choose one of {', '.join(VIT_CONFIGS)}")
    unknown = set(overrides) - set(ViTConfig.__dataclass_fields__)
    if unknown:
        raise ValueError(f"unknown ViTConfig fields {sorted(unknown)}; valid: {', '.join(ViTConfig.__dataclass_fields__)}")
    return ViT(replace(VIT_CONFIGS[name], num_classes=num_classes, **overrides))


# Our parameter names -> torchvision's, per encoder layer (torchvision/models/vision_transformer.py).
_TORCHVISION_LAYER_NAMES = {
    "paper": {
        "attention.norm": "ln_1",
        "attention.qkv.weight": "self_attention.in_proj_weight",
        "attention.qkv.bias": "self_attention.in_proj_bias",
        "attention.projection": "self_attention.out_proj",
        "mlp.norm": "ln_2",
        "mlp.mlp.0": "mlp.0",
        "mlp.mlp.3": "mlp.3",
    },
    "torch": {
        "norm1": "ln_1",
        "self_attn.in_proj_weight": "self_attention.in_proj_weight",
        "self_attn.in_proj_bias": "self_attention.in_proj_bias",
        "self_attn.out_proj": "self_attention.out_proj",
        "norm2": "ln_2",
        "linear1": "mlp.0",
        "linear2": "mlp.3",
    },
}
_TORCHVISION_NAMES = {
    "patch_embedding.projection": "conv_proj",
    "patch_embedding.class_token": "class_token",
    "patch_embedding.position_embedding": "encoder.pos_embedding",
    "norm": "encoder.ln",
    "head": "heads.head",
}


def _rename(state_dict: dict, names: dict) -> dict:
    renamed = {}
    for key, value in state_dict.items():
        for old, new in names.items():
            if key == old or key.startswith(old + "."):
                key = new + key[len(old):]
                break
        renamed[key] = value
    return renamed


def _full_names(num_layers: int, encoder_block: str) -> dict:
    names = dict(_TORCHVISION_NAMES)
    for i in range(num_layers):
        for ours, theirs in _TORCHVISION_LAYER_NAMES[encoder_block].items():
            names[f"blocks.{i}.{ours}"] = f"encoder.layers.encoder_layer_{i}.{theirs}"
    return names


def convert_torchvision_state_dict(state_dict: dict, encoder_block: str = "paper") -> dict:
    """torchvision VisionTransformer state dict -> ViT state dict (a pure renaming). Also accepts
    the feature extractor's `heads.weight` (a bare Linear head, as build_feature_extractor makes)."""
    num_layers = len({k.split(".")[2] for k in state_dict if k.startswith("encoder.layers.")})
    inverse = {theirs: ours for ours, theirs in _full_names(num_layers, encoder_block).items()}
    inverse["heads"] = "head"
    return _rename(state_dict, inverse)


def convert_to_torchvision_state_dict(state_dict: dict, encoder_block: str = "paper") -> dict:
    """ViT state dict -> torchvision VisionTransformer state dict, the reverse renaming."""
    num_layers = len({k.split(".")[1] for k in state_dict if k.startswith("blocks.")})
    return _rename(state_dict, _full_names(num_layers, encoder_block))


DEFAULT_WEIGHTS = "IMAGENET1K_V1"  # the course's: 224 px, ImageNet-1k acc@1 81.1


class WeightsUnavailableError(RuntimeError):
    """The pretrained weights file is neither in the torch hub cache nor downloadable."""


def build_feature_extractor(weights: str = DEFAULT_WEIGHTS, class_names=("pizza", "steak", "sushi")):
    """torchvision's ImageNet-pretrained vit_b_16 with every backbone parameter frozen and a new,
    trainable head Linear(D, len(class_names)). Returns (model, the weights' own transforms).

    weights: a name of torchvision.models.ViT_B_16_Weights: "IMAGENET1K_V1" (224 px, acc@1 81.1)
    or "IMAGENET1K_SWAG_E2E_V1" (384 px, bicubic, acc@1 85.3)."""
    valid = [w.name for w in torchvision.models.ViT_B_16_Weights]
    if weights not in valid:
        raise ValueError(f"unknown vit_b_16 weights {weights!r}; choose one of {', '.join(valid)}")
    class_names = tuple(class_names)
    if not class_names or len(set(class_names)) != len(class_names):
        raise ValueError(f"class_names must be non-empty and unique, got {class_names}")
    pretrained = torchvision.models.ViT_B_16_Weights[weights]
    cache_file = Path(torch.hub.get_dir()) / "checkpoints" / Path(pretrained.url).name
    try:
        model = torchvision.models.vit_b_16(weights=pretrained)
    except (URLError, OSError) as error:  # no network, DNS failure, refused connection
        raise WeightsUnavailableError(
            f"the pretrained weights {pretrained.name} could not be downloaded from {pretrained.url} "
            f"({error}). Download that file on a machine with internet and put it at {cache_file}: "
            f"torchvision loads it from there without the network (set TORCH_HOME to use another cache)."
        ) from error
    except (RuntimeError, EOFError, pickle.UnpicklingError) as error:  # a truncated or foreign file in the cache
        raise WeightsUnavailableError(
            f"the cached weights file {cache_file} could not be loaded ({error}); it is corrupt or "
            f"incomplete: delete it so it is downloaded again from {pretrained.url}."
        ) from error
    for parameter in model.parameters():
        parameter.requires_grad = False
    model.heads = nn.Linear(model.hidden_dim, len(class_names))  # replaces the 1000-class ImageNet head
    return model, pretrained.transforms()
