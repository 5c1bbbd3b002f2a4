"""Where the served pass's time goes on this CPU: torch's profiler over the pass the app serves (batch 1, every
layer's attention maps, in inference.auto_precision's precision: int8 wherever torch has int8 kernels, which the app
serves where it also passes its check against fp32), summed by kind of work, beside that pass and a bare fp32
forward timed in turns without the profiler.

    python benchmarks/served_profile.py                # about 1 minute on 2 cores
    python benchmarks/served_profile.py --passes 40

The shares say what a faster pass would have to shrink: the int8 Linears' row is the floor that their kernels set.
Figures under the profiler run a little slower than without it; the shares are what to read."""

import argparse
from collections import defaultdict

from common import interleaved_ms, load_benchmark_classifier, median, print_machine, print_table, save_results

import torch
from torch.profiler import ProfilerActivity, profile

from devices import available_cpus
from inference import Predictor, calibration_images
from train_vit import at_least

# The parts of the ViT, each with torch's operators that compute it (self time, so nested calls are not counted twice)
WORK = {
    "int8 Linears (qkv, projection, MLP: Eqs. 2-3, 5, 8)": ("quantized::linear_dynamic",),
    "fp32 Linears (those kept fp32, the head)": ("aten::addmm", "aten::mm"),
    "attention's products q k^T and A v (Eqs. 6-7)": ("aten::bmm",),
    "softmax (Eq. 6)": ("aten::_softmax",),
    "GELU (Eq. 3)": ("aten::gelu",),
    "LayerNorm (Eqs. 2-4)": ("aten::native_layer_norm",),
    "patch embedding E (Eq. 1)": ("aten::mkldnn_convolution", "aten::convolution", "aten::_convolution"),
    "residual adds, scaling, copies": ("aten::add", "aten::div", "aten::mul", "aten::copy_", "aten::cat"),
}
KINDS = {operator: kind for kind, operators in WORK.items() for operator in operators}
OTHER = "views, allocation, dispatch"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--passes", type=at_least(5), default=20, help="profiled passes, and timed passes per path")
    args = parser.parse_args()
    print_machine()
    torch.set_num_threads(available_cpus())
    model, transforms, _ = load_benchmark_classifier()
    served = Predictor(model, "auto", calibration_images(transforms))
    images = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    served_name = f"served {served.precision} pass with the maps"
    with torch.inference_mode():
        times = interleaved_ms(
            {"bare fp32 forward": lambda: model(images), served_name: lambda: served(images, [])},
            args.passes,
            warmup=2,
        )
        with profile(activities=[ProfilerActivity.CPU]) as profiled:
            for _ in range(args.passes):
                served(images, [])
    by_kind = defaultdict(float)
    for event in profiled.key_averages():
        by_kind[KINDS.get(event.key, OTHER)] += event.self_cpu_time_total / 1000 / args.passes
    bare, pass_ms, profiled_ms = median(times["bare fp32 forward"]), median(times[served_name]), sum(by_kind.values())
    print(f"Without the profiler, medians of {args.passes} in turns: bare fp32 forward {bare:.1f} ms, {served_name}")
    print(f"{pass_ms:.1f} ms ({pass_ms / bare:.2f}x the bare forward)\n")
    print(f"Under the profiler, ms a pass (mean of {args.passes}; {profiled_ms:.1f} ms in all):")
    ranked = sorted(by_kind.items(), key=lambda item: -item[1])
    print_table(
        ["work", "ms a pass", "share", "against the bare forward"],
        [[kind, ms, f"{ms / profiled_ms:.1%}", f"{ms / profiled_ms * pass_ms / bare:.2f}x"] for kind, ms in ranked],
    )
    print(f"results: {save_results('served_profile', {'latency_ms': times, 'profiled_ms_a_pass': by_kind})}")


if __name__ == "__main__":
    main()
