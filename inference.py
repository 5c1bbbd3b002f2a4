"""Fast CPU inference for the FoodVision Mini classifier (torchvision vit_b_16 + trained head).

    predictor = Predictor(model)            # model from checkpoint.load_classifier
    logits = predictor(images)              # (B, classes), float32
    logits, attention = predictor(images, return_attention=True)

precision="auto" runs the backbone as model.py's ViT, loaded with the extractor's own weights,
with every encoder Linear in int8 (dynamic quantization: int8 weights per output channel,
activations quantized on the fly). On the 2-core Xeon of BENCHMARKS.md the encoder's Linear layers
run at about 800 GFLOPS in int8 against 250 in fp32 (AVX-512 VNNI), and at about 160 in bf16
(AVX512-BF16, no AMX), slower than fp32: bf16 stays an explicit choice (benchmarks/matmul.py). torchvision's module cannot take the
same path: nn.MultiheadAttention keeps its qkv and output projections, a third of the encoder's
multiply-adds, out of reach of quantize_dynamic; model.py's blocks are plain nn.Linear layers.
precision="fp32" runs the extractor itself, untouched (bitwise the same logits as calling it).
Speed and agreement with fp32 are measured in benchmarks/latency.py (figures in BENCHMARKS.md).
"""

import threading
import warnings

import torch
from torch import nn
from torch.ao.nn.quantized import dynamic as quantized_dynamic
from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

from model import build_vit, convert_torchvision_state_dict

PRECISIONS = ("auto", "fp32", "int8", "bf16")


def cpu_supports_bf16() -> bool:
    """Native bf16 dot products (x86 AVX512-BF16 or AMX). Without them oneDNN emulates bf16,
    which is slower than fp32."""
    return torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()


def int8_engine_available() -> bool:
    """The x86 quantized kernels (fbgemm) that int8 dynamic quantization runs on."""
    return torch.backends.quantized.engine in ("x86", "fbgemm")


def auto_precision() -> str:
    """int8 where the CPU adds int8 products in int32 (AVX-512 VNNI): the full 8-bit range keeps
    the probabilities within the app's 0.02 of fp32's, while the 7-bit range that other CPUs need
    drifted up to 0.021 (tests/test_inference.py). bf16 only with AMX tiles: AVX512-BF16 alone ran
    slower than fp32 (benchmarks/matmul.py). Otherwise fp32."""
    if int8_engine_available() and torch.cpu._is_vnni_supported():
        return "int8"
    return "bf16" if torch.cpu._is_amx_tile_supported() else "fp32"


def resolve_precision(precision: str, device: torch.device) -> str:
    """The precision Predictor will really run ("auto": see auto_precision); a precision the CPU
    cannot run falls back to fp32 with a warning."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if device.type != "cpu":
        if precision in ("int8", "bf16"):
            raise ValueError(f"precision {precision!r} is a CPU path; the model is on {device}. Use 'fp32' or 'auto'.")
        return "fp32"
    if precision == "auto":
        return auto_precision()
    supported = {"int8": int8_engine_available, "bf16": cpu_supports_bf16}.get(precision)
    if supported is not None and not supported():
        warnings.warn(f"this CPU has no native {precision} support; running in fp32 instead", stacklevel=3)
        return "fp32"
    return precision


class FullRangeInt8Linear(quantized_dynamic.Linear):
    """quantize_dynamic's Linear with activations on the full 8-bit range. PyTorch keeps them to
    7 bits (reduce_range) because CPUs without VNNI add int8 products in int16, which 8 bits can
    overflow; VNNI adds in int32. The full range halves the rounding step: the features' largest
    relative error fell from 7.3% to 4.2% (random vit_b_16 backbone, 16 images, measured once
    while choosing this path)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.quantized.linear_dynamic(x, self._packed_params._packed_params, reduce_range=False)


def vit_from_torchvision(model: nn.Module) -> nn.Module:
    """model.py's ViT holding the weights of a torchvision VisionTransformer (any head size)."""
    vit = build_vit(
        "vit_b_16",
        num_classes=model.heads.out_features,
        image_size=model.image_size,
        patch_size=model.patch_size,
        num_layers=len(model.encoder.layers),
        hidden_dim=model.hidden_dim,
        mlp_dim=model.mlp_dim,
        num_heads=model.encoder.layers[0].num_heads,
    )
    vit.load_state_dict(convert_torchvision_state_dict(model.state_dict()))
    return vit.eval()


class Predictor:
    """Logits (and optionally the last layer's class-token attention) for a batch of
    preprocessed images, in the precision chosen at construction (see resolve_precision).
    int8 quantizes each activation tensor with one scale, so an image's logits move slightly with
    the other images of its batch; the app classifies one photo at a time."""

    def __init__(self, model: nn.Module, precision: str = "auto"):
        self.model = model.eval()
        self.precision = resolve_precision(precision, next(model.parameters()).device)
        if self.precision == "fp32":
            self.fast = None
            return
        self.fast = vit_from_torchvision(model)
        if self.precision == "int8":
            # The head stays fp32: it is 2,307 parameters and sets the probabilities directly.
            linear = FullRangeInt8Linear if torch.cpu._is_vnni_supported() else quantized_dynamic.Linear
            with warnings.catch_warnings():  # torch.ao's notice that torchao will take over (still there in 2.14)
                warnings.filterwarnings("ignore", "torch.ao.quantization is deprecated", DeprecationWarning)
                warnings.filterwarnings("ignore", "torch.quantize_per_tensor, torch.quantize_per_channel", UserWarning)
                quantize_dynamic(self.fast.blocks, {nn.Linear: per_channel_dynamic_qconfig}, mapping={nn.Linear: linear}, inplace=True)

    @torch.inference_mode()
    def __call__(self, images: torch.Tensor, return_attention: bool = False):
        """images: (B, 3, H, W) as the weights' transforms make them. With return_attention, also
        the class token's attention over the patches in the last layer, mean over heads (B, N)."""
        if self.fast is None:
            return self._torchvision(images) if return_attention else self.model(images)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.precision == "bf16"):
            z = self.fast.patch_embedding(images)
            for block in self.fast.blocks[:-1]:
                z = block(z)
            # Eq. 4 reads the class token alone: the last block computes only its output (model.py)
            last = self.fast.blocks[-1]
            if return_attention:
                z, attention = last(z, return_attention=True, class_token_only=True)
            else:
                z, attention = last(z, class_token_only=True), None
            logits = self.fast.forward_head(self.fast.norm(z[:, 0])).float()
        return (logits, attention[:, :, 0, 1:].float().mean(dim=1)) if return_attention else logits

    def _torchvision(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The untouched extractor's logits; a pre-hook on its last encoder block recomputes that
        block's attention weights from the block's input (nn.MultiheadAttention, need_weights)."""
        recorded, caller = [], threading.get_ident()

        def record(block: nn.Module, inputs: tuple[torch.Tensor]) -> None:
            if threading.get_ident() != caller:  # another request's forward pass on the same model
                return
            tokens = block.ln_1(inputs[0])
            _, weights = block.self_attention(tokens, tokens, tokens, need_weights=True, average_attn_weights=True)
            recorded.append(weights[:, 0, 1:])

        handle = self.model.encoder.layers[-1].register_forward_pre_hook(record)
        try:
            logits = self.model(images)
        finally:
            handle.remove()
        return logits, recorded[0]
