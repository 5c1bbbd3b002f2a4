"""The course's ViT (PyTorch for Deep Learning, chapter 08), rewritten as a benchmark baseline.

BASELINE ONLY, not the project's model: it keeps the course's structure (blocks built on
nn.MultiheadAttention, randn-initialised embeddings, LayerNorm + Linear classifier) so that
benchmarks/vit_implementations.py can compare model.py against it. With ViT-B/16 numbers it has
exactly as many parameters as torchvision's vit_b_16 with the same number of classes.
"""

import torch
from torch import nn


class PatchEmbedding(nn.Module):
    def __init__(self, in_channels: int, patch_size: int, embedding_dim: int):
        super().__init__()
        self.patcher = nn.Conv2d(in_channels, embedding_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.patcher(images).flatten(2).permute(0, 2, 1)  # (B, N, D)


class MultiheadSelfAttentionBlock(nn.Module):
    def __init__(self, embedding_dim: int, num_heads: int, attn_dropout: float):
        super().__init__()
        self.layer_norm = nn.LayerNorm(embedding_dim)
        self.multihead_attn = nn.MultiheadAttention(embedding_dim, num_heads, dropout=attn_dropout, batch_first=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layer_norm(x)
        attn_output, _ = self.multihead_attn(query=x, key=x, value=x, need_weights=False)
        return attn_output


class MLPBlock(nn.Module):
    def __init__(self, embedding_dim: int, mlp_size: int, dropout: float):
        super().__init__()
        self.layer_norm = nn.LayerNorm(embedding_dim)
        self.mlp = nn.Sequential(
            nn.Linear(embedding_dim, mlp_size),
            nn.GELU(),
            nn.Dropout(dropout),
            nn.Linear(mlp_size, embedding_dim),
            nn.Dropout(dropout),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mlp(self.layer_norm(x))


class TransformerEncoderBlock(nn.Module):
    def __init__(self, embedding_dim: int, num_heads: int, mlp_size: int, mlp_dropout: float, attn_dropout: float):
        super().__init__()
        self.msa_block = MultiheadSelfAttentionBlock(embedding_dim, num_heads, attn_dropout)
        self.mlp_block = MLPBlock(embedding_dim, mlp_size, mlp_dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.msa_block(x) + x
        return self.mlp_block(x) + x


class CourseViT(nn.Module):
    def __init__(
        self,
        img_size=224,
        in_channels=3,
        patch_size=16,
        num_transformer_layers=12,
        embedding_dim=768,
        mlp_size=3072,
        num_heads=12,
        attn_dropout=0.0,
        mlp_dropout=0.1,
        embedding_dropout=0.1,
        num_classes=1000,
    ):
        super().__init__()
        num_patches = (img_size // patch_size) ** 2
        self.class_embedding = nn.Parameter(torch.randn(1, 1, embedding_dim))
        self.position_embedding = nn.Parameter(torch.randn(1, num_patches + 1, embedding_dim))
        self.embedding_dropout = nn.Dropout(embedding_dropout)
        self.patch_embedding = PatchEmbedding(in_channels, patch_size, embedding_dim)
        self.transformer_encoder = nn.Sequential(
            *[
                TransformerEncoderBlock(embedding_dim, num_heads, mlp_size, mlp_dropout, attn_dropout)
                for _ in range(num_transformer_layers)
            ]
        )
        self.classifier = nn.Sequential(nn.LayerNorm(embedding_dim), nn.Linear(embedding_dim, num_classes))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = self.patch_embedding(images)
        class_token = self.class_embedding.expand(x.shape[0], -1, -1)
        x = self.embedding_dropout(torch.cat((class_token, x), dim=1) + self.position_embedding)
        x = self.transformer_encoder(x)
        return self.classifier(x[:, 0])
