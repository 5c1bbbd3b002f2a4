"""Fast CPU inference for the FoodVision Mini classifier: logits, and attention maps when asked, in one pass.

    predictor = Predictor(model)                      # model from classifier.load_classifier
    logits = predictor(images)                        # (B, classes), float32
    maps = []; logits = predictor(images, maps)       # maps: model.py's contract, one (B, heads, 1+N, 1+N) a layer

precision="auto" runs the backbone as model.py's ViT, holding the extractor's own tensors, with every encoder
Linear in int8 (dynamic quantization: int8 weights per output channel, activations quantized on the fly), on CPUs
whose int8 products add in int32 (AVX-512 VNNI); bf16 is chosen only with AMX tiles, as AVX512-BF16 alone runs
slower than fp32 (benchmarks/matmul.py). torchvision's module cannot take the same path: nn.MultiheadAttention keeps
its qkv and output projections, a third of the encoder's multiply-adds, out of reach of quantize_dynamic, while
model.py's blocks are plain nn.Linear layers. precision="fp32" runs the extractor itself, untouched (bitwise the
logits of calling it), and model.py's ViT in fp32 when attention maps are asked for. Speed and agreement with fp32
are measured by benchmarks/latency.py (figures in BENCHMARKS.md).
"""

import warnings

import torch
from torch import nn
from torch.ao.nn.quantized import dynamic as quantized_dynamic
from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

from model import ViT, ViTConfig, convert_torchvision_state_dict

PRECISIONS = ("auto", "fp32", "int8", "bf16")


def cpu_supports_bf16() -> bool:
    """Native bf16 dot products (x86 AVX512-BF16 or AMX). Without them oneDNN emulates bf16,
    which is slower than fp32."""
    return torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()


def int8_engine_available() -> bool:
    """The x86 quantized kernels (fbgemm) that int8 dynamic quantization runs on."""
    return torch.backends.quantized.engine in ("x86", "fbgemm")


def auto_precision() -> str:
    """int8 where the CPU adds int8 products in int32 (AVX-512 VNNI): the full 8-bit range keeps the
    probabilities within the app's 0.02 of fp32's, while the 7-bit range that other CPUs need drifted past it
    (tests/test_inference.py). bf16 only with AMX tiles: AVX512-BF16 alone ran slower than fp32
    (benchmarks/matmul.py). Otherwise fp32."""
    if int8_engine_available() and torch.cpu._is_vnni_supported():
        return "int8"
    return "bf16" if torch.cpu._is_amx_tile_supported() else "fp32"


def resolve_precision(precision: str, device: torch.device) -> str:
    """The precision Predictor will really run ("auto": see auto_precision); a precision the CPU cannot run
    falls back to fp32 with a warning."""
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
    """quantize_dynamic's Linear with activations on the full 8-bit range. PyTorch keeps them to 7 bits
    (reduce_range) because CPUs without VNNI add int8 products in int16, which 8 bits can overflow; VNNI adds in
    int32, and the full range halves the rounding step."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.quantized.linear_dynamic(x, self._packed_params._packed_params, reduce_range=False)


def vit_from_torchvision(model: nn.Module) -> ViT:
    """model.py's ViT holding the very tensors of a torchvision VisionTransformer (any head size): the renaming
    copies nothing, so it costs no memory beside the torchvision model."""
    config = ViTConfig(
        image_size=model.image_size,
        patch_size=model.patch_size,
        num_layers=len(model.encoder.layers),
        hidden_dim=model.hidden_dim,
        mlp_dim=model.mlp_dim,
        num_heads=model.encoder.layers[0].num_heads,
        num_classes=(model.heads if isinstance(model.heads, nn.Linear) else model.heads.head).out_features,
    )
    with torch.device("meta"):  # no memory for the initial weights that `assign` replaces at once
        vit = ViT(config)
    vit.load_state_dict(convert_torchvision_state_dict(model.state_dict()), assign=True)
    return vit.eval()


class Predictor:
    """Logits, and optionally every layer's attention maps, for a batch of preprocessed images, in the precision
    chosen at construction (see resolve_precision). int8 quantizes each activation tensor with one scale, so an
    image's logits move slightly with the other images of its batch; the app classifies one photo at a time."""

    def __init__(self, model: nn.Module, precision: str = "auto"):
        self.model = model.eval()
        self.precision = resolve_precision(precision, next(model.parameters()).device)
        self.vit = vit_from_torchvision(model)
        if self.precision == "int8":
            # The head stays fp32: it is tiny and sets the probabilities directly.
            linear = FullRangeInt8Linear if torch.cpu._is_vnni_supported() else quantized_dynamic.Linear
            with warnings.catch_warnings():  # torch.ao's notice that torchao will take over (still there in 2.14)
                warnings.filterwarnings("ignore", "torch.ao.quantization is deprecated", DeprecationWarning)
                warnings.filterwarnings("ignore", "torch.quantize_per_tensor, torch.quantize_per_channel", UserWarning)
                qconfig = {nn.Linear: per_channel_dynamic_qconfig}
                quantize_dynamic(self.vit.blocks, qconfig, mapping={nn.Linear: linear}, inplace=True)

    @torch.inference_mode()
    def __call__(self, images: torch.Tensor, attention_maps: list | None = None) -> torch.Tensor:
        """Logits (B, classes) in float32 for images (B, 3, H, W) as the weights' transforms make them. A list
        passed as attention_maps receives every layer's attention weights in float32, as ViT.forward_features
        documents."""
        if self.precision == "fp32" and attention_maps is None:
            return self.model(images)
        recorded = [] if attention_maps is not None else None
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.precision == "bf16"):
            logits = self.vit.forward_head(self.vit.forward_features(images, recorded))
        if attention_maps is not None:
            attention_maps.extend(attention.float() for attention in recorded)
        return logits.float()
