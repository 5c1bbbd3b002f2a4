"""The inference paths and which one serves: logits, and attention maps when asked, in one pass.

    predictor = Predictor(model, "int8", calibration_images(transforms))  # model from classifier.load_classifier
    logits = predictor(images)                        # (B, classes), float32
    maps = []; logits = predictor(images, maps)       # maps: model.py's contract, one (B, heads, 1+N, 1+N) a layer

int8 runs model.py's ViT, holding the extractor's own tensors, with the encoder's Linears quantized dynamically
(int8 weights per output channel, activations per tensor on the fly), the bits set by how this CPU's kernels add
int8 products (int8_sums, int8_bits), and SmoothQuant (smooth_activations) against pretrained ViTs' LayerNorm
outlier channels. fp32 runs the torchvision extractor untouched, and model.py's ViT when attention maps are asked
(or, where it pays, that ViT on ONNX Runtime: onnx_engine.py, fastest_fp32). choose_predictor is the one place that
decides which path serves: with precision "auto", int8 only where it has proven itself against fp32 on the weights
being served (`agreement`), and on QNNPACK's kernels only where it also runs at least ENGINE_SPEED_UP times as fast
as the fp32 that would serve. README.md, "Which precision serves", explains why; BENCHMARKS.md has the figures.
"""

import contextlib
import functools
import hashlib
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn
from torch.ao.nn.quantized import dynamic as quantized_dynamic
from torch.ao.quantization import PerChannelMinMaxObserver, per_channel_dynamic_qconfig, quantize_dynamic

from images import example_photos, load_rgb
from model import ViT, ViTConfig, convert_torchvision_state_dict
from onnx_engine import ENGINE_SPEED_UP, FP32_TOLERANCE, OnnxRuntimePredictor, OnnxRuntimeUnavailable, speed_up

PRECISIONS = ("auto", "fp32", "int8", "bf16")
INT8_METHOD = (
    "int8 dynamic, 8-bit activations, weights 8-bit (7-bit where int8 products add in int16), SmoothQuant alpha 0.5 "
    "(0.3 with 7-bit weights) on qkv and fc1, ranges from a pass with the attention maps, "
    "blocks.0.attention.projection fp32"
)
# SmoothQuant's migration strength, by the weights' bits: at 0.5 each channel's range is split evenly between x and W;
# 7-bit weights, with half the resolution, take less of it (chosen with benchmarks/latency.py --outliers)
SMOOTHING_ALPHA = {8: 0.5, 7: 0.3}
# Kept fp32 by measurement: the Linear whose int8 error moved the probabilities most on outlier backbones
# (benchmarks/latency.py --outliers); it holds 1/144 of the blocks' Linear multiply-adds.
FP32_LINEARS = ("blocks.0.attention.projection",)
MAX_PROBABILITY_DIFFERENCE = 0.02  # the int8 path's promise: with it, fp32's top-1 class except at near ties
# torch's quantized engine names, by the library whose kernels they run ("fbgemm" is the older name of "x86")
KERNEL_LIBRARIES = {"onednn": "oneDNN", "x86": "fbgemm", "fbgemm": "fbgemm", "qnnpack": "QNNPACK"}
NO_INT8_ENGINE = "torch has no int8 kernels here: neither its x86 engines (fbgemm, oneDNN) nor ARM's (QNNPACK)"


def cpu_supports_bf16() -> bool:
    """Native bf16 dot products (x86 AVX512-BF16 or AMX). Without them bf16 is emulated (oneDNN on AVX-512, ATen's
    own GEMM on AVX2), slower than fp32."""
    return torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()


def int8_engine_available() -> bool:
    """Quantized kernels that int8 dynamic quantization runs on (int8_engine)."""
    return int8_engine() is not None


@contextlib.contextmanager
def quiet_torch_ao():
    """Without torch.ao's notices that torchao will take over its quantization (still there in 2.14)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "torch.ao.quantization is deprecated", DeprecationWarning)
        warnings.filterwarnings("ignore", "torch.quantize_per_tensor, torch.quantize_per_channel", UserWarning)
        yield


# A row of activations at the top of the 8-bit range times weights at the top of theirs: each pair of products is
# 2 x 255 x 127 = 64,770, past int16's 32,767, so kernels that add pairs in int16 saturate and return about half.
_OVERFLOW_WIDTH = 64


@contextlib.contextmanager
def packing_for(engine: str):
    """Quantized weights packed inside are packed for `engine`'s kernels, which then run them whatever the engine
    is set to later."""
    previous = torch.backends.quantized.engine
    torch.backends.quantized.engine = engine
    try:
        yield
    finally:
        torch.backends.quantized.engine = previous


@functools.cache  # the kernels are picked once a process: int8_engine, int8_sums and each Predictor ask
def sums_of(engine: str) -> str:
    """How `engine`'s int8 kernels add int8 products: "int32" (AVX-512 VNNI's vpdpbusd, AMX tiles) or "int16" (pairs
    of products added in int16 first, as AVX2's vpmaddubsw does). Measured with one product row that overflows
    int16, not read off the CPU flags: the kernels are picked by the library's own rules, and
    FBGEMM_ENABLE_INSTRUCTIONS=AVX2 and ONEDNN_MAX_CPU_ISA=AVX2 make fbgemm and oneDNN take the int16 ones on a VNNI
    CPU (how the tests cover both)."""
    with quiet_torch_ao(), packing_for(engine):
        weight = torch.quantize_per_channel(
            torch.ones(1, _OVERFLOW_WIDTH), torch.tensor([1 / 127]), torch.tensor([0]), 0, torch.qint8
        )
        packed = torch.ops.quantized.linear_prepack(weight, None)
    sums = torch.ops.quantized.linear_dynamic(torch.ones(1, _OVERFLOW_WIDTH), packed, reduce_range=False)
    return "int32" if sums.item() > 0.9 * _OVERFLOW_WIDTH else "int16"


def quantized_engines() -> list[str]:
    """The quantized engines this build of torch has here: fbgemm (as "x86" and "fbgemm") on x86 CPUs with AVX2 or
    more, with oneDNN and QNNPACK; QNNPACK on ARM (with oneDNN on some builds)."""
    return torch.backends.quantized.supported_engines


@functools.cache
def int8_engine() -> str | None:
    """The quantized engine the int8 Linears are packed for. On torch's x86 builds: oneDNN wherever its kernels add
    the products in int32 (AVX-512 VNNI, AMX tiles), where it served the pass faster than fbgemm's (BENCHMARKS.md,
    engines.py); fbgemm (torch's "x86" engine) elsewhere (AVX2, where oneDNN's kernels too add pairs in int16). On
    ARM builds, and x86 CPUs without AVX2 (where fbgemm does not run), QNNPACK, which BENCHMARKS.md has no figures for:
    int8 serves on it only where it also runs at least ENGINE_SPEED_UP times as fast as the fp32 that would serve
    (choose_predictor). None where torch has none of them."""
    engines = quantized_engines()
    if "fbgemm" in engines:  # x86 with AVX2 or more, the CPUs BENCHMARKS.md measures
        if "onednn" in engines and sums_of("onednn") == "int32":
            return "onednn"
        return "x86" if "x86" in engines else "fbgemm"
    # ARM builds may leave torch's engine at "none" (pytorch/pytorch#123507), so the list is read, not the engine: the
    # weights are packed for QNNPACK by name (packing_for), and packed weights run on their engine's kernels
    return "qnnpack" if "qnnpack" in engines else None


def int8_sums() -> str | None:
    """How the served int8 kernels (int8_engine's) add int8 products (sums_of), None without an int8 engine."""
    engine = int8_engine()
    return sums_of(engine) if engine is not None else None


def int8_bits() -> tuple[int, int]:
    """(activation bits, weight bits) that this process's int8 kernels add without overflow. Where products add in
    int32: 8 and 8. Where pairs add in int16, a pair must stay within 32,767: PyTorch's default gives up one bit of
    the activations (reduce_range), but those share one scale per tensor, stretched by outlier channels, while the
    weights have one per output channel; 2 x 255 x 64 fits as well, so here the weights give up the bit."""
    return bits_for(int8_sums())


def bits_for(sums: str) -> tuple[int, int]:
    return (8, 8) if sums == "int32" else (8, 7)


def auto_precision() -> str:
    """int8 wherever the int8 engine is, with the bits its kernels add without overflow (int8_bits); whether it serves
    is then decided by measurement on the weights (choose_predictor). Without it, bf16 with AMX tiles (with
    AVX512-BF16 alone, bf16 autocast ran slower than fp32 on the Xeon without AMX and faster on the AMD EPYC:
    BENCHMARKS.md, latency.py), else fp32."""
    if int8_engine_available():
        return "int8"
    return "bf16" if torch.cpu._is_amx_tile_supported() else "fp32"


def not_native(precision: str) -> str:
    """Why this CPU cannot run `precision` ("int8" or "bf16") natively."""
    return NO_INT8_ENGINE if precision == "int8" else "this CPU has no native bf16 (AVX512-BF16 or AMX)"


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
        warnings.warn(f"{not_native(precision)}; running in fp32 instead", stacklevel=3)
        return "fp32"
    return precision


class FullRangeInt8Linear(quantized_dynamic.Linear):
    """quantize_dynamic's Linear with activations on the full 8-bit range. PyTorch keeps them to 7 bits
    (reduce_range) because kernels that add pairs of int8 products in int16 can overflow with 8 bits; int8_bits
    keeps them whole everywhere (on such kernels the weights give up the bit), which halves their rounding step."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.quantized.linear_dynamic(x, self._packed_params._packed_params, reduce_range=False)


def smoothed_linears(vit: ViT) -> dict[str, tuple[nn.LayerNorm, nn.Linear]]:
    """The Linears that read a LayerNorm, each with its LayerNorm, by name: qkv (Eq. 2) and the MLP's first (Eq. 3)."""
    pairs = {}
    for index, block in enumerate(vit.blocks):
        pairs[f"blocks.{index}.attention.qkv"] = (block.attention.norm, block.attention.qkv)
        pairs[f"blocks.{index}.mlp.mlp.0"] = (block.mlp.norm, block.mlp.mlp[0])
    return pairs


@contextlib.contextmanager
def recording_input_ranges(vit: ViT):
    """Yields a dict that every pass of `vit` inside the block fills with max|X_j|, per input channel j over all
    tokens seen, of each of the smoothed_linears, by name: SmoothQuant's calibration, recorded from a pass run for
    its own outputs (serving.load's over the example photos) instead of a second one."""
    ranges = {}
    names = {linear: name for name, (_, linear) in smoothed_linears(vit).items()}

    def record(linear: nn.Module, inputs: tuple[torch.Tensor]) -> None:
        name, observed = names[linear], inputs[0].abs().flatten(0, -2).amax(dim=0)
        ranges[name] = torch.maximum(ranges[name], observed) if name in ranges else observed

    hooks = [linear.register_forward_pre_hook(record) for linear in names]
    try:
        yield ranges
    finally:
        for hook in hooks:
            hook.remove()


@torch.inference_mode()
def input_ranges(vit: ViT, images: torch.Tensor) -> dict[str, torch.Tensor]:
    """The smoothed_linears' input ranges (recording_input_ranges) over one pass of `images`, with the attention maps
    as serving.load's pass has them: the same ranges to the last bit, and so the same int8 model."""
    with recording_input_ranges(vit) as ranges:
        vit.forward_features(images, [])
    return ranges


@torch.no_grad()
def smooth_activations(vit: ViT, ranges: dict[str, torch.Tensor], alpha: float) -> None:
    """SmoothQuant (Xiao et al. 2023) for the smoothed_linears: with `ranges` their inputs' max|X_j| over the
    calibration images' tokens (input_ranges), input channel j gets s_j = max|X_j|^alpha / max|W_j|^(1-alpha); the
    LayerNorm's affine weight and bias are divided by s and the Linear's columns multiplied by it. The fp32 function
    stays as it was, while an outlier channel's range shrinks toward the others'. New Parameters replace the old: the
    ViT shares its tensors with the torchvision model."""
    for name, (norm, linear) in smoothed_linears(vit).items():
        weight_range = linear.weight.abs().amax(dim=0).clamp_min(1e-5)
        scale = (ranges[name].clamp_min(1e-5).pow(alpha) / weight_range.pow(1 - alpha)).clamp_min(1e-5)
        norm.weight = nn.Parameter(norm.weight / scale, requires_grad=False)
        norm.bias = nn.Parameter(norm.bias / scale, requires_grad=False)
        linear.weight = nn.Parameter(linear.weight * scale, requires_grad=False)


def calibration_images(transforms) -> torch.Tensor:
    """The bundled example photos as model inputs: real photos, which a stand-in cannot replace for calibration."""
    return torch.stack([transforms(load_rgb(path, min_size=transforms.resize_size[0])) for path in example_photos()])


def calibration_fingerprint() -> str:
    """SHA-256 of the calibration photos' bytes: a record made with other photos is not this setup's."""
    digest = hashlib.sha256()
    for path in example_photos():
        digest.update(path.read_bytes())
    return digest.hexdigest()


def int8_setup(weights_sha256: str) -> dict:
    """What an int8 agreement measurement depends on: the method, the exact weights, torch and its quantized
    kernels, how those add int8 products here (int8_sums, which sets the bits) and the calibration
    photos. A record holds only where all are the same: one made on a VNNI CPU does not vouch for an AVX2 one."""
    return {
        "method": INT8_METHOD,
        "weights_sha256": weights_sha256,
        "torch": torch.__version__,
        "quantized_engine": int8_engine(),
        "int8_sums": int8_sums(),  # the kernel path, and with it the bits
        "calibration_sha256": calibration_fingerprint(),
    }


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
    chosen at construction (see resolve_precision). int8 needs `calibration` for its SmoothQuant scales: images
    (calibration_images), or the input ranges a pass over them recorded (recording_input_ranges); it quantizes
    each activation tensor with one scale, so an image's logits move slightly with the other images of its batch:
    the app classifies one photo at a time, and `agreement` measures it so."""

    def __init__(
        self,
        model: nn.Module,
        precision: str = "auto",
        calibration: torch.Tensor | dict[str, torch.Tensor] | None = None,
        *,
        smooth: bool = True,
        fp32_linears: tuple[str, ...] = FP32_LINEARS,
        bits: tuple[int, int] | None = None,
        engine: str | None = None,
    ):
        """smooth, fp32_linears, bits ((activation, weight) bits, default: those the engine's kernels add without
        overflow) and engine (the quantized engine, default int8_engine()) change INT8_METHOD, for measuring what
        each part brings (benchmarks, tests)."""
        self.model = model.eval()
        self.precision = resolve_precision(precision, next(model.parameters()).device)
        self.vit = vit_from_torchvision(model)
        if self.precision == "int8":
            if smooth and calibration is None:
                raise ValueError(
                    "the int8 path needs calibration: pass calibration=calibration_images(...) or their input_ranges"
                )
            self.engine = engine or int8_engine()
            self.bits = activation_bits, weight_bits = bits or bits_for(sums_of(self.engine))
            if smooth:
                ranges = calibration if isinstance(calibration, dict) else input_ranges(self.vit, calibration)
                smooth_activations(self.vit, ranges, SMOOTHING_ALPHA[weight_bits])
            # The head stays fp32 (it is tiny and sets the probabilities directly), and so do fp32_linears.
            linear = FullRangeInt8Linear if activation_bits == 8 else quantized_dynamic.Linear
            kept = {name.removeprefix("blocks.") for name in fp32_linears}
            with quiet_torch_ao(), packing_for(self.engine):
                per_channel = per_channel_dynamic_qconfig._replace(
                    weight=PerChannelMinMaxObserver.with_args(
                        dtype=torch.qint8,
                        qscheme=torch.per_channel_symmetric,
                        quant_min=-(2 ** (weight_bits - 1)),
                        quant_max=2 ** (weight_bits - 1) - 1,
                    )
                )
                qconfig = {
                    name: per_channel
                    for name, module in self.vit.blocks.named_modules()
                    if isinstance(module, nn.Linear) and name not in kept
                }
                quantize_dynamic(self.vit.blocks, qconfig, mapping={nn.Linear: linear}, inplace=True)

    @torch.inference_mode()
    def __call__(
        self, images: torch.Tensor, attention_maps: list | None = None, features: list | None = None
    ) -> torch.Tensor:
        """Logits (B, classes) in float32 for images (B, 3, H, W) as the weights' transforms make them. A list
        passed as attention_maps receives every layer's attention weights in float32, as ViT.forward_features
        documents; one passed as features receives y = LN(z_L^0) (Eq. 4), (B, D) in float32, the head's input."""
        if self.precision == "fp32" and attention_maps is None and features is None:
            return self.model(images)
        recorded = [] if attention_maps is not None else None
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.precision == "bf16"):
            y = self.vit.forward_features(images, recorded)
            logits = self.vit.forward_head(y)
        if attention_maps is not None:
            attention_maps.extend(attention.float() for attention in recorded)
        if features is not None:
            features.append(y.float())
        return logits.float()

    @torch.inference_mode()
    def features(self, images: torch.Tensor) -> torch.Tensor:
        """y = LN(z_L^0) (Eq. 4) in float32, the head's input, in this predictor's precision."""
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.precision == "bf16"):
            return self.vit.forward_features(images).float()


@dataclass(frozen=True)
class Agreement:
    """A fast path against fp32 on the same images, each image alone as the app runs it."""

    inputs: int
    top1: float  # share of images with the same top class
    near_tie_margin: float  # the largest gap between fp32's top two probabilities where the top class changed
    max_probability_difference: float
    mean_probability_difference: float
    worst_feature_cosine: float  # of y (Eq. 4), the head's input

    @property
    def passed(self) -> bool:
        """Probabilities within MAX_PROBABILITY_DIFFERENCE of fp32's. The top class then changes only where fp32's
        top two are within twice that (a near tie, which any approximation can swap): the same top-1 elsewhere."""
        return self.max_probability_difference <= MAX_PROBABILITY_DIFFERENCE

    def describe(self) -> str:
        flips = round((1 - self.top1) * self.inputs)
        ties = f" (the {flips} other: fp32's top two within {self.near_tie_margin:.4f})" if flips else ""
        return (
            f"top-1 {self.top1:.1%} the same{ties}, probabilities within {self.max_probability_difference:.4f} "
            f"(mean {self.mean_probability_difference:.5f}), features' cosine >= {self.worst_feature_cosine:.4f}, "
            f"over {self.inputs} images"
        )

    def as_record(self) -> dict:
        return asdict(self) | {"passed": self.passed}


@torch.inference_mode()
def reference_features(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """fp32 y (Eq. 4) of a torchvision VisionTransformer, through model.py's ViT holding its tensors."""
    return vit_from_torchvision(model).forward_features(images)


@torch.inference_mode()
def agreement(
    fast: Predictor, images: torch.Tensor, reference: torch.Tensor, features: torch.Tensor | None = None
) -> Agreement:
    """`fast` against fp32 features `reference` (B, D) of the same images, one image at a time; both go through
    the same fp32 head, so the difference is the backbone's. `features`: fast's own y of the images, where the
    caller has them already (fast_features)."""
    features = fast_features(fast, images) if features is None else features
    head = fast.vit.forward_head
    probabilities, expected = head(features).softmax(dim=-1), head(reference.float()).softmax(dim=-1)
    return Agreement(
        inputs=len(images),
        **probability_agreement(probabilities, expected),
        worst_feature_cosine=nn.functional.cosine_similarity(features, reference.float(), dim=-1).min().item(),
    )


@torch.inference_mode()
def fast_features(fast: Predictor, images: torch.Tensor) -> torch.Tensor:
    """y (Eq. 4) of each image computed alone, as the app computes it (int8 scales depend on the batch)."""
    return torch.cat([fast.features(image[None]) for image in images])


def probability_agreement(probabilities: torch.Tensor, expected: torch.Tensor) -> dict[str, float]:
    """Agreement's figures from probabilities (B, classes) against fp32's `expected`: the share of images with the
    same top class, fp32's largest top-two gap where it changed (a near tie), and the probability differences."""
    difference = (probabilities - expected).abs()
    same = probabilities.argmax(dim=-1) == expected.argmax(dim=-1)
    top_two = expected.topk(2, dim=-1).values
    margins = (top_two[:, 0] - top_two[:, 1])[~same]
    return {
        "top1": same.float().mean().item(),
        "near_tie_margin": margins.max().item() if len(margins) else 0.0,
        "max_probability_difference": difference.max().item(),
        "mean_probability_difference": difference.mean().item(),
    }


def choose_predictor(
    model: nn.Module,
    examples: torch.Tensor,
    examples_features: torch.Tensor,
    examples_maps: list[torch.Tensor],
    examples_ranges: dict[str, torch.Tensor],
    precision: str,
    record: dict | None,
    weights_sha256: str,
    cache_folder: Path | None = None,
) -> tuple[Predictor | OnnxRuntimePredictor, str]:
    """(predictor, why), the served precision's one decision. With precision "auto", the int8 path serves only where
    it has proven itself on these weights: `record` (the checkpoint's int8 measurement on its test split) passed for
    exactly this setup (int8_setup), or, failing that, a self-check against fp32 on the bundled example photos
    passes, and, on QNNPACK's kernels (int8_engine), it runs at least ENGINE_SPEED_UP times as fast as the fp32
    that would serve, timed at start-up; otherwise fp32 serves, and the reason says why. `examples` are those photos
    as model inputs (calibration_images); `examples_features` their fp32 y (Eq. 4), `examples_maps` their fp32
    attention maps (model.py's contract) and `examples_ranges` int8's calibration (recording_input_ranges), all from
    the same pass.
    Where fp32 serves on the CPU, the engine that runs it is measured too (fastest_fp32), its export cached in
    `cache_folder` (None: torch serves)."""
    device = next(model.parameters()).device
    calibration = examples_ranges if device.type == "cpu" else None
    resolved = resolve_precision(precision, device)
    if device.type != "cpu":
        return Predictor(model, resolved), (
            f"{resolved} on {device}: for one photo at a time, autocast to bf16 or fp16 ran no faster than fp32 on "
            "the GPUs measured (BENCHMARKS.md); the int8 path is a CPU path."
        )

    @functools.cache  # measured once, where fp32 serves or int8 is timed against it
    def fastest() -> tuple[Predictor | OnnxRuntimePredictor, str]:
        return fastest_fp32(model, examples, examples_features, examples_maps, cache_folder, weights_sha256)

    def fp32(why: str) -> tuple[Predictor | OnnxRuntimePredictor, str]:
        predictor, engine = fastest()
        return predictor, f"{why} {engine}"

    if precision != "auto":
        if resolved != precision:  # resolve_precision's fallback: the CPU cannot run what was asked
            return fp32(f"fp32: {not_native(precision)} (--precision {precision}).")
        if resolved == "fp32":
            return fp32("fp32, as asked (--precision fp32).")
        unchecked = "not checked against fp32 on these weights"
        return Predictor(model, resolved, calibration), f"{resolved}, as asked (--precision {precision}); {unchecked}."
    if resolved != "int8":
        engines = ", ".join(quantized_engines())
        reason = f"{resolved}: {NO_INT8_ENGINE} (its quantized engines: {engines}), so the int8 path cannot be tried."
        return fp32(reason) if resolved == "fp32" else (Predictor(model, resolved, calibration), reason)
    fast = Predictor(model, "int8", calibration)
    record = record or {}
    if record.get("setup") == int8_setup(weights_sha256) and record["agreement"]["passed"]:
        measured = record["agreement"]
        proven = (
            f"train_head.py measured it against fp32 on the test split for exactly this setup: "
            f"top-1 {measured['top1']:.0%} the same, probabilities within {measured['max_probability_difference']:.4f}"
        )
    else:
        if record.get("setup"):
            why_no_record = "the checkpoint's int8 record is for another setup or did not pass"
        else:
            why_no_record = "the checkpoint has no int8 measurement"
        check = agreement(fast, examples, examples_features)
        if not check.passed:
            return fp32(
                f"fp32 serves, not int8: {why_no_record}, and int8 disagreed with fp32 on the bundled photos "
                f"({check.describe()}); the int8 path promises probabilities within {MAX_PROBABILITY_DIFFERENCE} of "
                "fp32's."
            )
        proven = f"{why_no_record}, and a self-check on the bundled photos passed ({check.describe()})"
    if fast.engine == "qnnpack":  # kernels without figures in BENCHMARKS.md (int8_engine): their speed is measured
        fp32_pass = fastest()[0]
        measured_speed_up = speed_up(fp32_pass, fast, examples[:1])
        kernels = f"on {KERNEL_LIBRARIES[fast.engine]}'s kernels, which BENCHMARKS.md has no figures for"
        against = "ONNX Runtime" if isinstance(fp32_pass, OnnxRuntimePredictor) else "torch"
        ran = f"it ran the pass {measured_speed_up:.2f}x as fast as fp32 on {against} at start-up"
        if measured_speed_up < ENGINE_SPEED_UP:
            return fp32(
                f"fp32 serves, not int8: {proven}, but {kernels}, {ran}, under the {ENGINE_SPEED_UP}x that pays for "
                "its rounding."
            )
        proven += f"; {kernels}, {ran}"
    return fast, f"int8 serves: {proven}."


def fastest_fp32(
    model: nn.Module,
    examples: torch.Tensor,
    examples_features: torch.Tensor,
    examples_maps: list[torch.Tensor],
    cache_folder: Path | None,
    weights_sha256: str,
) -> tuple[Predictor | OnnxRuntimePredictor, str]:
    """(fp32 predictor, which engine runs it and why): ONNX Runtime where, on this machine, its probabilities and
    attention maps match torch's on the bundled photos and it runs the served pass (with the maps) at least
    ENGINE_SPEED_UP times as fast; torch otherwise (BENCHMARKS.md, engines.py, has the figures by CPU)."""
    served = Predictor(model, "fp32")
    if cache_folder is None:
        return served, "On torch."
    try:
        onnx = OnnxRuntimePredictor(served.vit, cache_folder, weights_sha256, torch.get_num_threads())
    except OnnxRuntimeUnavailable as error:
        return served, f"On torch: ONNX Runtime cannot serve here ({error})."
    try:
        features, maps = [], []  # each photo alone, as the app runs it: y, and every layer's maps
        for image in examples:
            maps.append([])
            onnx(image[None], maps[-1], features)
        check = agreement(onnx, examples, examples_features, torch.cat(features))
        by_layer = (torch.cat(layer) for layer in zip(*maps))
        maps_difference = max((got - want).abs().max().item() for got, want in zip(by_layer, examples_maps))
        if check.max_probability_difference > FP32_TOLERANCE or maps_difference > FP32_TOLERANCE:
            return served, (
                f"On torch: ONNX Runtime disagreed with it on the bundled photos ({check.describe()}; attention "
                f"maps within {maps_difference:.1e}; an fp32 engine must match within {FP32_TOLERANCE:.0e})."
            )
        measured = speed_up(served, onnx, examples[:1])
    except Exception as error:  # onnxruntime's own error types, raised while running: torch serves and says why
        return served, f"On torch: ONNX Runtime failed running the model ({type(error).__name__}: {error})."
    if measured >= ENGINE_SPEED_UP:
        return onnx, (
            f"On ONNX Runtime: it ran the pass {measured:.2f}x as fast as torch at start-up (it serves from "
            f"{ENGINE_SPEED_UP}x), its probabilities within {check.max_probability_difference:.1e} of torch's."
        )
    return served, (
        f"On torch: ONNX Runtime ran the pass {measured:.2f}x as fast at start-up, under the {ENGINE_SPEED_UP}x "
        "that pays for a second engine."
    )
