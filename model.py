"""The Vision Transformer of Dosovitskiy et al. 2020 ("An Image is Worth 16x16 Words", arXiv:2010.11929),
one module per equation of Section 3.1, its Table 1 variants, and the renaming to and from torchvision's weights.

    Eq. 1  z_0  = [x_class; x_p^1 E; ...; x_p^N E] + E_pos       PatchEmbedding
    Eq. 2  z'_l = MSA(LN(z_{l-1})) + z_{l-1}                      MultiHeadSelfAttentionBlock
    Eq. 3  z_l  = MLP(LN(z'_l)) + z'_l                            MLPBlock
    Eq. 4  y    = LN(z_L^0)                                       ViT.forward_features

Given the same weights (`convert_torchvision_state_dict`) the logits equal torchvision.models.VisionTransformer's.
As there and in the paper's own JAX code: LayerNorm eps 1e-6, class token initialised to zeros, position embedding to
normal(std 0.02), classifier head to zeros. Where torchvision differs from the JAX code, we follow torchvision: the
exact erf GELU (the JAX code uses the tanh approximation) and bicubic position-embedding interpolation (the JAX code
resizes linearly).
"""

import math
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import nn

ENCODER_BLOCKS = ("paper", "torch")


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
    # Section 3.1: "a MLP with one hidden layer at pre-training time and a single linear layer at fine-tuning
    # time": the hidden layer's width (tanh, as torchvision's representation_size), or None for the linear head
    representation_size: int | None = None
    encoder_block: str = "paper"  # "paper": Eqs. 2-3 below; "torch": nn.TransformerEncoderLayer
    fused_attention: bool = True  # F.scaled_dot_product_attention; False: the readable maths of Eqs. 5-8

    def __post_init__(self):
        sizes = ["image_size", "patch_size", "in_channels", "num_layers", "hidden_dim", "mlp_dim", "num_heads"]
        sizes += ["num_classes"] + (["representation_size"] if self.representation_size is not None else [])
        for name in sizes:
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
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


# Table 1, under torchvision's names; Huge uses 14x14 patches (Table 2).
VIT_CONFIGS = {
    "vit_b_16": ViTConfig(patch_size=16, num_layers=12, hidden_dim=768, mlp_dim=3072, num_heads=12),
    "vit_b_32": ViTConfig(patch_size=32, num_layers=12, hidden_dim=768, mlp_dim=3072, num_heads=12),
    "vit_l_16": ViTConfig(patch_size=16, num_layers=24, hidden_dim=1024, mlp_dim=4096, num_heads=16),
    "vit_l_32": ViTConfig(patch_size=32, num_layers=24, hidden_dim=1024, mlp_dim=4096, num_heads=16),
    "vit_h_14": ViTConfig(patch_size=14, num_layers=32, hidden_dim=1280, mlp_dim=5120, num_heads=16),
}


def lecun_normal_(linear: nn.Module) -> None:
    """Weights drawn with variance 1/fan_in (truncated), biases zero: torchvision's init of E and the pre-logits."""
    fan_in = linear.weight[0].numel()
    nn.init.trunc_normal_(linear.weight, std=math.sqrt(1 / fan_in))
    nn.init.zeros_(linear.bias)


class PatchEmbedding(nn.Module):
    """Eq. 1. A convolution with kernel = stride = P is exactly the linear projection E applied to every
    flattened P*P*C patch, computed in one call, as torchvision and the paper's JAX code compute it."""

    def __init__(self, config: ViTConfig):
        super().__init__()
        self.config = config
        self.projection = nn.Conv2d(config.in_channels, config.hidden_dim, config.patch_size, stride=config.patch_size)
        self.class_token = nn.Parameter(torch.zeros(1, 1, config.hidden_dim))
        self.position_embedding = nn.Parameter(
            torch.empty(1, config.num_patches + 1, config.hidden_dim).normal_(std=0.02)
        )
        # Appendix B.1: dropout "directly after adding positional- to patch embeddings"
        self.dropout = nn.Dropout(config.dropout)
        lecun_normal_(self.projection)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        c = self.config
        if images.ndim != 4 or images.shape[1:] != (c.in_channels, c.image_size, c.image_size):
            raise ValueError(
                f"expected images of shape (batch, {c.in_channels}, {c.image_size}, {c.image_size}), "
                f"got {tuple(images.shape)}; resize/crop to {c.image_size} px (the weights' transforms do) "
                f"or call set_image_size({images.shape[-1]}) to interpolate the position embedding"
            )
        patches = self.projection(images).flatten(2).transpose(1, 2)  # (B, N, D), patches row by row
        class_token = self.class_token.expand(images.shape[0], -1, -1)  # (B, 1, D)
        return self.dropout(torch.cat([class_token, patches], dim=1) + self.position_embedding)  # (B, 1+N, D)


class MultiHeadSelfAttentionBlock(nn.Module):
    """Eq. 2: z' = MSA(LN(z)) + z, with MSA from Appendix A (Eqs. 5-8).

    With class_token_only, every token is still a key and a value but only the class token's output is computed,
    so z' holds the class token alone. A list passed as attention_maps receives this layer's attention weights A
    (Eq. 6), (B, heads, 1+N, 1+N), computed by the readable path; otherwise the fused kernel computes the same."""

    def __init__(self, config: ViTConfig):
        super().__init__()
        self.num_heads = config.num_heads
        self.fused_attention = config.fused_attention
        self.norm = nn.LayerNorm(config.hidden_dim, eps=1e-6)
        self.qkv = nn.Linear(config.hidden_dim, 3 * config.hidden_dim)  # U_qkv of Eq. 5, all heads at once
        self.projection = nn.Linear(config.hidden_dim, config.hidden_dim)  # U_msa of Eq. 8
        self.attention_dropout = nn.Dropout(config.attention_dropout)
        self.dropout = nn.Dropout(config.dropout)
        # torchvision's nn.MultiheadAttention init; the output projection keeps nn.Linear's default weights
        nn.init.xavier_uniform_(self.qkv.weight)
        nn.init.zeros_(self.qkv.bias)
        nn.init.zeros_(self.projection.bias)

    def forward(self, z: torch.Tensor, attention_maps: list | None = None, class_token_only: bool = False):
        qkv = self.qkv(self.norm(z)).unflatten(-1, (3, self.num_heads, -1))  # (B, 1+N, 3, heads, D_h)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)  # each (B, heads, 1+N, D_h)
        if attention_maps is None and self.fused_attention:
            if class_token_only:
                q, z = q[:, :, :1], z[:, :1]
            heads = F.scaled_dot_product_attention(q, k, v, dropout_p=self.attention_dropout.p if self.training else 0)
        else:
            # Eq. 6: A = softmax(q k^T / sqrt(D_h)), the scale applied to q as nn.MultiheadAttention does when it
            # returns A: fewer numbers than the product's wherever 1+N > D_h (197 against 64 for ViT-B/16)
            attention = torch.softmax((q / math.sqrt(q.shape[-1])) @ k.transpose(-2, -1), dim=-1)
            if attention_maps is not None:
                attention_maps.append(attention)  # every query's row, so the recorded map is whole
            if class_token_only:
                attention, z = attention[:, :, :1], z[:, :1]
            heads = self.attention_dropout(attention) @ v  # Eq. 7: SA(z) = A v
        return z + self.dropout(self.projection(heads.transpose(1, 2).flatten(2)))  # Eq. 8: concatenate, project


class MLPBlock(nn.Module):
    """Eq. 3: z = MLP(LN(z')) + z', the MLP being Linear-GELU-Linear with dropout after each dense
    layer (Appendix B.1)."""

    def __init__(self, config: ViTConfig):
        super().__init__()
        self.norm = nn.LayerNorm(config.hidden_dim, eps=1e-6)
        self.mlp = nn.Sequential(
            nn.Linear(config.hidden_dim, config.mlp_dim),
            nn.GELU(),  # exact erf GELU, as torchvision
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
    """One of the L Transformer encoder layers: Eq. 2 then Eq. 3 (arguments as MultiHeadSelfAttentionBlock's)."""

    def __init__(self, config: ViTConfig):
        super().__init__()
        self.attention = MultiHeadSelfAttentionBlock(config)
        self.mlp = MLPBlock(config)

    def forward(self, z: torch.Tensor, attention_maps: list | None = None, class_token_only: bool = False):
        return self.mlp(self.attention(z, attention_maps, class_token_only))


class TorchEncoderBlock(nn.TransformerEncoderLayer):
    """The same layer from PyTorch's nn.TransformerEncoderLayer (the course's exercise 1): pre-norm (norm_first),
    GELU, identical parameter count; arguments as EncoderBlock's."""

    def __init__(self, config: ViTConfig):
        super().__init__(
            config.hidden_dim,
            config.num_heads,
            config.mlp_dim,
            config.dropout,
            activation="gelu",
            layer_norm_eps=1e-6,
            batch_first=True,
            norm_first=True,
        )
        self.self_attn.dropout = config.attention_dropout  # the layer ties it to `dropout` otherwise
        for linear in (self.linear1, self.linear2):  # the MLP as MLPBlock (and torchvision) initialise it
            nn.init.xavier_uniform_(linear.weight)
            nn.init.normal_(linear.bias, std=1e-6)

    def forward(self, z: torch.Tensor, attention_maps: list | None = None, class_token_only: bool = False):
        if attention_maps is None and not class_token_only:
            return super().forward(z)
        h = self.norm1(z)
        wanted = attention_maps is not None
        query = h[:, :1] if class_token_only and not wanted else h  # a recorded map keeps every query's row
        msa, attention = self.self_attn(query, h, h, need_weights=wanted, average_attn_weights=False)
        if wanted:
            attention_maps.append(attention)
        if class_token_only:
            msa, z = msa[:, :1], z[:, :1]
        z = z + self.dropout1(msa)
        return z + self._ff_block(self.norm2(z))


class ViT(nn.Module):
    def __init__(self, config: ViTConfig):
        super().__init__()
        self.config = config
        self.patch_embedding = PatchEmbedding(config)
        block = EncoderBlock if config.encoder_block == "paper" else TorchEncoderBlock
        self.blocks = nn.ModuleList(block(config) for _ in range(config.num_layers))
        self.norm = nn.LayerNorm(config.hidden_dim, eps=1e-6)
        head_input = config.representation_size or config.hidden_dim
        self.pre_logits = nn.Identity()
        if config.representation_size is not None:
            self.pre_logits = nn.Sequential(nn.Linear(config.hidden_dim, config.representation_size), nn.Tanh())
            lecun_normal_(self.pre_logits[0])
        self.head = nn.Linear(head_input, config.num_classes)
        nn.init.zeros_(self.head.weight)  # Section 3.2: a zero-initialised head for fine-tuning
        nn.init.zeros_(self.head.bias)

    def forward_features(self, images: torch.Tensor, attention_maps: list | None = None) -> torch.Tensor:
        """Eqs. 1-4: the image representation y = LN(z_L^0), shape (B, D).

        attention_maps: a list that receives every layer's attention weights, first layer first, each
        (B, heads, 1+N, 1+N) with the class token first (row: query, column: key); y is the same with or without
        it. The last block computes the class token's output only: Eq. 4 reads nothing else."""
        z = self.patch_embedding(images)
        for block in self.blocks[:-1]:
            z = block(z, attention_maps)
        z = self.blocks[-1](z, attention_maps, class_token_only=True)
        return self.norm(z[:, 0])  # Eq. 4: LN acts per token, so on the class token only

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        return self.head(self.pre_logits(features))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(images))

    def set_image_size(self, image_size: int) -> None:
        """Fine-tune or evaluate at another resolution (Section 3.2): keep the patch size, so the sequence grows,
        and interpolate the pre-trained position embeddings in 2D. The embedding becomes a new Parameter (with the
        old one's requires_grad): an optimizer built before this call still holds the old one, so build it after."""
        config = replace(self.config, image_size=image_size)  # validates divisibility
        embedding = self.patch_embedding
        old = embedding.position_embedding
        resized = interpolate_position_embedding(old.detach(), config.grid_size)
        embedding.position_embedding = nn.Parameter(resized, requires_grad=old.requires_grad)
        embedding.config = self.config = config


def interpolate_position_embedding(position_embedding: torch.Tensor, grid_size: int) -> torch.Tensor:
    """Resize (1, 1+N, D) position embeddings to a grid_size x grid_size patch grid, bicubic with aligned corners
    as torchvision's interpolate_embeddings; the class token's entry is kept."""
    class_position, patch_positions = position_embedding[:, :1], position_embedding[:, 1:]
    old_grid = math.isqrt(patch_positions.shape[1])
    if old_grid**2 != patch_positions.shape[1]:
        raise ValueError(
            f"the position embedding holds {patch_positions.shape[1]} patch positions after the class token, "
            "not a square grid; only embeddings of square patch grids can be interpolated"
        )
    grid = patch_positions.reshape(1, old_grid, old_grid, -1).permute(0, 3, 1, 2)  # (1, D, g, g)
    grid = F.interpolate(grid, size=grid_size, mode="bicubic", align_corners=True)
    return torch.cat([class_position, grid.permute(0, 2, 3, 1).reshape(1, grid_size**2, -1)], dim=1)


def build_vit(name: str, num_classes: int = 1000, **overrides) -> ViT:
    """A Table 1 variant by torchvision's name; overrides replace any ViTConfig field."""
    if name not in VIT_CONFIGS:
        raise ValueError(f"unknown ViT variant {name!r}; choose one of {', '.join(VIT_CONFIGS)}")
    unknown = set(overrides) - set(ViTConfig.__dataclass_fields__)
    if unknown:
        valid = ", ".join(ViTConfig.__dataclass_fields__)
        raise ValueError(f"unknown ViTConfig fields {sorted(unknown)}; valid: {valid}")
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
    "pre_logits.0": "heads.pre_logits",
}


def _rename(state_dict: dict, names: dict) -> dict:
    renamed = {}
    for key, value in state_dict.items():
        for old, new in names.items():
            if key == old or key.startswith(old + "."):
                key = new + key[len(old) :]
                break
        renamed[key] = value
    return renamed


def _full_names(num_layers: int, encoder_block: str, head: str) -> dict:
    names = {**_TORCHVISION_NAMES, "head": head}
    for i in range(num_layers):
        for ours, theirs in _TORCHVISION_LAYER_NAMES[encoder_block].items():
            names[f"blocks.{i}.{ours}"] = f"encoder.layers.encoder_layer_{i}.{theirs}"
    return names


def convert_torchvision_state_dict(state_dict: dict, encoder_block: str = "paper") -> dict:
    """torchvision VisionTransformer state dict -> ViT state dict, a pure renaming (the tensors are shared).
    The head may be torchvision's `heads.head` (with `heads.pre_logits` for a representation_size) or a bare
    Linear `heads`, as the FoodVision Mini feature extractor has."""
    num_layers = len({key.split(".")[2] for key in state_dict if key.startswith("encoder.layers.")})
    head = "heads" if "heads.weight" in state_dict else "heads.head"
    inverse = {theirs: ours for ours, theirs in _full_names(num_layers, encoder_block, head).items()}
    return _rename(state_dict, inverse)


def convert_to_torchvision_state_dict(state_dict: dict, encoder_block: str = "paper", bare_head: bool = False) -> dict:
    """ViT state dict -> torchvision VisionTransformer state dict, the inverse renaming; bare_head names the head
    `heads` (a Linear in place of torchvision's Sequential, as the feature extractor) instead of `heads.head`."""
    num_layers = len({key.split(".")[1] for key in state_dict if key.startswith("blocks.")})
    return _rename(state_dict, _full_names(num_layers, encoder_block, "heads" if bare_head else "heads.head"))
