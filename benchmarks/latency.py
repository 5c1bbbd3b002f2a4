"""Latency of the FoodVision Mini classifier per inference path (batch 1 and 32), how closely each fast path agrees
with fp32 eager torchvision over >= 100 inputs (real photos, crops of them, generated images), and how the int8
paths agree on backbones given real pretrained ViTs' LayerNorm outlier channels (standins.inject_outliers).

    python benchmarks/latency.py                      # about 6 minutes on 2 cores
    python benchmarks/latency.py --repeats 30 --batch32-repeats 3 --inputs 200 --outliers 1 10 30 100 300

The backbone is a seeded random vit_b_16 (the pretrained weights cannot be downloaded here) and
the head is trained by train_head.py on generated images (benchmarks/common.py), so the
probabilities are confident and non-uniform, like a real head's.
"""

import argparse
import copy
import time
import warnings
from pathlib import Path

from common import interleaved_ms, load_benchmark_classifier, median, print_machine, print_table, save_results

import numpy as np
import torch
from torch import nn
from torch.ao.quantization import quantize_dynamic
from torchvision.transforms import v2

from images import load_rgb
from inference import (
    Predictor,
    agreement,
    calibration_images,
    int8_bits,
    int8_sums,
    reference_features,
    vit_from_torchvision,
)
from tests.standins import EXAMPLE_PHOTOS, draw_food_image, inject_outliers
from train_vit import at_least

REFERENCE = "fp32 eager torchvision"
PLAIN_INT8 = "int8 model.py ViT, every Linear, no smoothing"


def int8_paths(model: nn.Module, calibration: torch.Tensor) -> dict:
    """The served int8 path (inference.INT8_METHOD), the plain one it replaced, and, where int8 products add in
    int16, the same with PyTorch's 7-bit activations instead of the served 7-bit weights (inference.int8_bits)."""
    paths = {
        f"Predictor auto (int8 {int8_bits()}: SmoothQuant, model.py ViT)": Predictor(model, "int8", calibration),
        PLAIN_INT8: Predictor(model, "int8", smooth=False, fp32_linears=()),
    }
    if int8_sums() == "int16":
        paths["the same with 7-bit activations, 8-bit weights"] = Predictor(model, "int8", calibration, bits=(7, 8))
    return paths


def inference_paths(model: nn.Module, calibration: torch.Tensor) -> dict:
    """name -> (batch -> logits): fp32 and the fast paths, each built once."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao's deprecation notices
        torchvision_int8 = quantize_dynamic(copy.deepcopy(model), {nn.Linear}, dtype=torch.qint8)
    custom_fp32 = vit_from_torchvision(model)

    def bf16_autocast(images):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return model(images).float()

    return {
        REFERENCE: model,
        "fp32 model.py ViT": custom_fp32,
        "bf16 autocast torchvision": bf16_autocast,
        "int8 dynamic torchvision": torchvision_int8,
        **int8_paths(model, calibration),
    }


def agreement_inputs(transforms, count: int, photo_paths: list[Path], seed: int = 0) -> dict[str, torch.Tensor]:
    """About a third real photos (each whole, then random crops, flips and colour changes of it),
    the rest generated pizza/steak/sushi pictures at random sizes plus noise and flat colours."""
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    photos = [load_rgb(path, min_size=transforms.resize_size[0]) for path in photo_paths]
    augment = v2.Compose(
        [v2.RandomResizedCrop(256, scale=(0.2, 1.0)), v2.RandomHorizontalFlip(), v2.ColorJitter(0.4, 0.4, 0.4, 0.05)]
    )
    real = list(photos)
    while len(real) < count // 3:
        real.append(augment(photos[len(real) % len(photos)]))
    generated = []
    while len(real) + len(generated) < count:
        kind = len(generated) % 5
        if kind < 3:
            generated.append(draw_food_image(("pizza", "steak", "sushi")[kind], rng, size=int(rng.integers(48, 400))))
        elif kind == 3:
            generated.append(v2.functional.to_pil_image(torch.randint(0, 256, (3, 96, 96), dtype=torch.uint8)))
        else:
            generated.append(
                v2.functional.to_pil_image(torch.full((3, 64, 64), int(rng.integers(0, 256)), dtype=torch.uint8))
            )
    return {
        "real photos and crops": torch.stack([transforms(image) for image in real]),
        "generated": torch.stack([transforms(image) for image in generated]),
    }


def probabilities(path, images: torch.Tensor) -> torch.Tensor:
    """One image at a time, as the app runs them: int8 dynamic quantization takes one activation
    scale per tensor, so in a batch each image's rounding would depend on the others."""
    with torch.inference_mode():
        return torch.cat([path(image.unsqueeze(0)).float().softmax(dim=-1) for image in images])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=15, help="timed passes per path at batch 1")
    parser.add_argument(
        "--batch32-repeats", type=int, default=2, help="timed passes per path at batch 32 (~5 s each in fp32)"
    )
    parser.add_argument(
        "--inputs", type=at_least(100), default=120, help="images for the agreement check, at least 100"
    )
    parser.add_argument(
        "--photos", type=Path, nargs="+", default=EXAMPLE_PHOTOS, help="real photos (default: examples/*.jpg)"
    )
    parser.add_argument(
        "--outliers", type=float, nargs="*", default=[1, 10, 30, 100], help="outlier scales s for the int8 paths"
    )
    args = parser.parse_args()
    print_machine()
    print(f"int8 kernels: products add in {int8_sums()}, (activation, weight) bits {int8_bits()}\n")

    model, transforms, _ = load_benchmark_classifier()
    started = time.perf_counter()  # the build as the app does it: decoding the photos included
    calibration = calibration_images(transforms)
    Predictor(model, "int8", calibration)
    build_s = time.perf_counter() - started
    paths = inference_paths(model, calibration)
    torch.manual_seed(0)
    results = {"predictor_build_s": build_s, "latency_ms": {}, "agreement": {}}
    for batch, repeats in ((1, args.repeats), (32, args.batch32_repeats)):
        images = torch.randn(batch, 3, 224, 224)
        with torch.inference_mode():
            times = interleaved_ms(
                {name: (lambda path=path: path(images)) for name, path in paths.items()},
                repeats,
                warmup=1,  # at batch 32 too: a new shape's first pass sets up its kernels and buffers
            )
        results["latency_ms"][batch] = times
        reference = median(times[REFERENCE])
        print(f"Batch {batch}: median of {repeats} interleaved passes")
        print_table(
            ["path", "median ms", "ms per image", f"speed-up vs {REFERENCE}"],
            [[name, median(t), median(t) / batch, f"{reference / median(t):.2f}x"] for name, t in times.items()],
        )
    print(f"int8 Predictor build time (decode the calibration photos, convert, smooth, quantize): {build_s:.1f} s\n")

    inputs = agreement_inputs(transforms, args.inputs, args.photos)
    reference = {subset: probabilities(paths[REFERENCE], images) for subset, images in inputs.items()}
    rows = []
    for name, path in paths.items():
        if name == REFERENCE:
            continue
        fast = {subset: probabilities(path, images) for subset, images in inputs.items()}
        both = torch.cat(list(reference.values())), torch.cat(list(fast.values()))
        top1 = (both[0].argmax(-1) == both[1].argmax(-1)).float().mean().item()
        worst = {subset: (fast[subset] - reference[subset]).abs().max().item() for subset in inputs}
        results["agreement"][name] = {"inputs": len(both[0]), "top1": top1, "max_probability_difference": worst}
        rows.append(
            [
                name,
                len(both[0]),
                f"{top1:.1%}",
                *(f"{worst[subset]:.4f}" for subset in inputs),
                f"{(both[1] - both[0]).abs().mean():.5f}",
            ]
        )
    confidence = torch.cat(list(reference.values())).max(dim=-1).values
    print(
        f"Agreement with {REFERENCE} over {args.inputs} inputs "
        f"({', '.join(f'{len(v)} {k}' for k, v in inputs.items())}); "
        f"fp32's top probability: median {confidence.median():.3f}, min {confidence.min():.3f}"
    )
    print_table(["path", "inputs", "top-1 agreement", *(f"max |dp| {subset}" for subset in inputs), "mean |dp|"], rows)

    everything = torch.cat(list(inputs.values()))
    features = reference_features(model, everything)
    results["outliers"], rows = {}, []
    for scale in args.outliers:
        injected = inject_outliers(copy.deepcopy(model), scale)
        drift = (reference_features(injected, everything[:8]) - features[:8]).abs().max().item()
        for name, path in int8_paths(injected, calibration).items():
            measured = agreement(path, everything, features)
            results["outliers"][f"{name} s={scale:g}"] = measured.as_record() | {"fp32_feature_drift": drift}
            rows.append(
                [f"{scale:g}", name, f"{measured.top1:.1%}", f"{measured.near_tie_margin:.4f}",
                 f"{measured.max_probability_difference:.4f}", f"{measured.mean_probability_difference:.5f}",
                 f"{measured.worst_feature_cosine:.4f}", "yes" if measured.passed else "NO"]
            )  # fmt: skip
    drift = max(record["fp32_feature_drift"] for record in results["outliers"].values())
    print(
        f"int8 paths against fp32 on outlier backbones (6 of 768 LayerNorm channels scaled by s, the next Linear's "
        f"columns by 1/s: fp32 features move by at most {drift:.1e}), one image at a time over the same "
        f"{len(everything)} inputs"
    )
    print_table(
        ["s", "path", "top-1", "flips' fp32 margin", "max |dp|", "mean |dp|", "worst cosine", "within 0.02"], rows
    )
    print(f"results: {save_results('latency', results)}")


if __name__ == "__main__":
    main()
