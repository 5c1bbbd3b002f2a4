"""The GPU path: the app's model call (batch 1 with every layer's attention maps) on CUDA in each precision a GPU
offers, at batch 1 and 32, and how far each reduced precision moves the probabilities from fp32's, over >= 100
inputs and on backbones given real pretrained ViTs' LayerNorm outlier channels (standins.inject_outliers). Its
figures decide which precision the app serves on a GPU (BENCHMARKS.md says on which card).

    python benchmarks/cuda_latency.py            # about a minute on one H100, once the head is trained
    python benchmarks/cuda_latency.py --device cpu --repeats 3 --batch32-repeats 1 --inputs 12   # a smoke run

The backbone is standins' seeded random vit_b_16 and the head is trained by train_head.py on generated images
(benchmarks/common.py), as in latency.py.
"""

import argparse
import contextlib
import copy

from common import interleaved_ms, load_benchmark_classifier, median, print_machine, print_table, save_results

import torch
from latency import agreement_inputs

from devices import resolve_device
from inference import MAX_PROBABILITY_DIFFERENCE, probability_agreement, vit_from_torchvision
from tests.standins import EXAMPLE_PHOTOS, inject_outliers
from train_vit import at_least

REFERENCE = "fp32 model.py ViT (served)"


@contextlib.contextmanager
def float32_matmuls(precision: str):
    """torch.set_float32_matmul_precision for the duration: "highest" is fp32, "high" lets CUDA run TF32."""
    before = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision(precision)
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(before)


def gpu_paths(model: torch.nn.Module, device: torch.device) -> dict:
    """name -> (images, maps -> logits). With maps=True a path records every layer's attention maps and copies
    them to the CPU in float32, as the app's call does (serving.FoodVision.classify); torchvision's own forward
    records none."""
    vit = vit_from_torchvision(model)

    def path(dtype: torch.dtype | None = None, matmuls: str = "highest", record: bool = True):
        @torch.inference_mode()
        def run(images: torch.Tensor, maps: bool = True) -> torch.Tensor:
            recorded = [] if maps and record else None
            with float32_matmuls(matmuls), torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
                logits = vit.forward_head(vit.forward_features(images, recorded)).float()
            for attention in recorded or ():
                attention.float().cpu()
            return logits

        return run

    @torch.inference_mode()
    def torchvision_forward(images: torch.Tensor, maps: bool = False) -> torch.Tensor:
        return model(images)

    return {
        REFERENCE: path(),
        "fp32 model.py ViT, no maps": path(record=False),
        "fp32 torchvision forward (no maps)": torchvision_forward,
        "TF32 matmuls": path(matmuls="high"),
        "bf16 autocast": path(torch.bfloat16),
        "fp16 autocast": path(torch.float16),
    }


def synchronized(run, images: torch.Tensor, maps: bool, device: torch.device):
    """A zero-argument callable that returns only once the device has finished, so wall-clock time is its time."""

    def call():
        run(images, maps)
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    return call


@torch.inference_mode()
def probabilities(run, images: torch.Tensor) -> torch.Tensor:
    """One image at a time with the attention maps recorded, as the app runs them."""
    return torch.cat([run(image[None], True).float().softmax(dim=-1).cpu() for image in images])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda", help="torch device (default: cuda)")
    parser.add_argument("--repeats", type=int, default=100, help="timed passes per path at batch 1")
    parser.add_argument("--batch32-repeats", type=int, default=20, help="timed passes per path at batch 32")
    parser.add_argument(
        "--inputs", type=at_least(len(EXAMPLE_PHOTOS) + 1), default=120, help="images for the agreement check"
    )
    parser.add_argument("--outliers", type=float, nargs="*", default=[10, 30, 100], help="outlier scales s")
    args = parser.parse_args()
    try:
        device = resolve_device(args.device)
    except ValueError as error:
        parser.error(f"{error}. This benchmark measures the GPU path: run it on a machine with a CUDA GPU.")
    info = print_machine()
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
        print(f"GPU: {info['gpu']}, CUDA {torch.version.cuda}\n")

    model, transforms, _ = load_benchmark_classifier()
    model = model.eval().to(device)
    paths = gpu_paths(model, device)
    results = {"device": str(device), "latency_ms": {}, "agreement": {}}
    for batch, repeats in ((1, args.repeats), (32, args.batch32_repeats)):
        images, maps = torch.randn(batch, 3, 224, 224, device=device), batch == 1
        times = interleaved_ms(
            {name: synchronized(run, images, maps, device) for name, run in paths.items()}, repeats, warmup=3
        )
        results["latency_ms"][batch] = times
        reference = median(times[REFERENCE])
        print(
            f"Batch {batch} on {device}, attention maps {'copied to the CPU' if maps else 'not recorded'}: "
            f"median of {repeats} interleaved passes, the device synchronized"
        )
        print_table(
            ["path", "median ms", "ms per image", f"speed-up vs {REFERENCE}"],
            [[name, median(t), median(t) / batch, f"{reference / median(t):.2f}x"] for name, t in times.items()],
        )

    inputs = torch.cat(list(agreement_inputs(transforms, args.inputs, EXAMPLE_PHOTOS).values())).to(device)
    backbones = {"as trained": model} | {
        f"outliers s={scale:g}": inject_outliers(copy.deepcopy(model), scale) for scale in args.outliers
    }
    rows = []
    for backbone, weights in backbones.items():
        paths = gpu_paths(weights, device)
        reference = probabilities(paths[REFERENCE], inputs)
        for name, run in paths.items():
            if name.startswith("fp32"):
                continue
            measured = probability_agreement(probabilities(run, inputs), reference)
            results["agreement"][f"{name}, {backbone}"] = measured
            rows.append(
                [backbone, name, f"{measured['top1']:.1%}", f"{measured['near_tie_margin']:.4f}",
                 f"{measured['max_probability_difference']:.4f}", f"{measured['mean_probability_difference']:.5f}",
                 "yes" if measured["max_probability_difference"] <= MAX_PROBABILITY_DIFFERENCE else "NO"]
            )  # fmt: skip
    print(f"Against {REFERENCE} on {device}, one image at a time with the attention maps, over {len(inputs)} inputs")
    within = f"within {MAX_PROBABILITY_DIFFERENCE}"
    print_table(["backbone", "path", "top-1", "flips' fp32 margin", "max |dp|", "mean |dp|", within], rows)
    print(f"results: {save_results('cuda_latency', {'machine_extra': info, **results})}")


if __name__ == "__main__":
    main()
