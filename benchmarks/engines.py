"""The served paths against other inference engines on this CPU: batch 1, the page's attention maps included, all
timed in turns in one process, and each one's agreement with fp32 on a backbone carrying pretrained ViTs' LayerNorm
outlier channels (standins.inject_outliers). The engines need packages the app does not:

    pip install onnxruntime==1.32.0 onnx==1.23.2 onnxscript    # ONNX Runtime, and torch.onnx's exporter
    python benchmarks/engines.py                                # about 4 minutes on 2 cores
    python benchmarks/engines.py --repeats 20 --inputs 100 --outliers 30

"bare fp32 forward" is torchvision's vit_b_16 as published, logits only: the baseline the app's targets are ratios
of. Every other row returns the logits and every layer's attention maps, as the page needs them. An engine missing
here is reported and left out.
"""

import argparse
import copy
import tempfile
from pathlib import Path

from common import interleaved_ms, load_benchmark_classifier, median, print_machine, print_table, save_results

import torch
from latency import agreement_inputs
from torch import nn

from devices import available_cpus
from inference import (
    Predictor,
    calibration_images,
    int8_bits,
    int8_engine,
    int8_sums,
    probability_agreement,
    vit_from_torchvision,
)
from tests.standins import EXAMPLE_PHOTOS, inject_outliers
from train_vit import at_least

BASELINE = "bare fp32 forward (torchvision, no maps)"


class LogitsAndMaps(nn.Module):
    """model.py's ViT as one graph with plain outputs: the logits, then each layer's attention maps."""

    def __init__(self, vit: nn.Module):
        super().__init__()
        self.vit = vit

    def forward(self, images: torch.Tensor):
        maps = []
        logits = self.vit.forward_head(self.vit.forward_features(images, maps))
        return (logits, *maps)


def onnx_sessions(model: nn.Module, folder: Path, threads: int) -> dict:
    """ONNX Runtime sessions of model.py's ViT (with its maps) in fp32 and with its own int8 dynamic quantization;
    {} with a note when onnxruntime or the exporter is missing."""
    try:
        import onnxruntime
        from onnxruntime.quantization import QuantType, quantize_dynamic
    except ImportError as error:
        print(f"ONNX Runtime left out: {error} (pip install onnxruntime onnx onnxscript)\n")
        return {}
    folder.mkdir(exist_ok=True)
    fp32_file, int8_file = folder / "vit.onnx", folder / "vit-int8.onnx"
    graph = LogitsAndMaps(vit_from_torchvision(model)).eval()
    with torch.inference_mode():
        torch.onnx.export(graph, (torch.randn(1, 3, 224, 224),), str(fp32_file), dynamo=True, optimize=True)
    quantize_dynamic(str(fp32_file), str(int8_file), weight_type=QuantType.QInt8, per_channel=True)
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
    # ONNX Runtime's threads otherwise spin after each run, taking the cores from the path timed next
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    sessions = {}
    for name, file in (("ONNX Runtime fp32", fp32_file), ("ONNX Runtime int8 dynamic", int8_file)):
        session = onnxruntime.InferenceSession(str(file), options, providers=["CPUExecutionProvider"])
        input_name = session.get_inputs()[0].name

        def run(images: torch.Tensor, session=session, input_name=input_name):
            logits, *maps = session.run(None, {input_name: images.numpy()})
            return torch.from_numpy(logits), [torch.from_numpy(attention) for attention in maps]

        sessions[name] = run
    return sessions


def served_paths(model: nn.Module, calibration: torch.Tensor) -> dict:
    """name -> (images -> (logits, maps)) for the project's own paths."""

    def path(predictor: Predictor):
        def run(images: torch.Tensor):
            maps = []
            return predictor(images, maps), maps

        return run

    served = Predictor(model, "int8", calibration)
    paths = {
        "fp32 model.py ViT on torch": path(Predictor(model, "fp32")),
        f"served int8 ({served.engine} kernels)": path(served),
    }
    if served.engine != "x86":  # oneDNN serves: fbgemm's kernels, which serve on AVX2 CPUs, beside it
        paths["int8 on fbgemm's kernels (x86 engine)"] = path(Predictor(model, "int8", calibration, engine="x86"))
    return paths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=at_least(3), default=15, help="timed passes per path, in turns")
    parser.add_argument("--inputs", type=at_least(100), default=100, help="images for the agreement check")
    parser.add_argument("--outliers", type=float, default=30, help="outlier scale of the agreement backbone")
    args = parser.parse_args()
    print_machine()
    torch.set_num_threads(available_cpus())
    print(f"int8 engine {int8_engine()}: products add in {int8_sums()}, (activation, weight) bits {int8_bits()}\n")

    model, transforms, _ = load_benchmark_classifier()
    calibration = calibration_images(transforms)
    images = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    with tempfile.TemporaryDirectory() as folder, torch.inference_mode():
        paths = {**served_paths(model, calibration), **onnx_sessions(model, Path(folder), torch.get_num_threads())}
        variants = {
            BASELINE: lambda: model(images),
            **{name: (lambda run=run: run(images)) for name, run in paths.items()},
        }
        times = interleaved_ms(variants, args.repeats, warmup=2)
        baseline = median(times[BASELINE])
        print(f"Batch 1, median of {args.repeats} passes in turns, {torch.get_num_threads()} threads")
        print_table(
            ["path", "median ms", f"vs {BASELINE}"],
            [[name, median(t), f"{median(t) / baseline:.2f}x"] for name, t in times.items()],
        )

        injected = inject_outliers(copy.deepcopy(model), args.outliers)
        inputs = torch.cat(list(agreement_inputs(transforms, args.inputs, EXAMPLE_PHOTOS).values()))
        reference = torch.cat([injected(image[None]) for image in inputs]).softmax(dim=-1)
        rows, results = [], {}
        outlier_paths = {
            **served_paths(injected, calibration),
            **onnx_sessions(injected, Path(folder) / "outliers", torch.get_num_threads()),
        }
        for name, run in outlier_paths.items():
            probabilities = torch.cat([run(image[None])[0] for image in inputs]).softmax(dim=-1)
            results[name] = probability_agreement(probabilities, reference)
            rows.append(
                [name, f"{results[name]['top1']:.1%}", f"{results[name]['max_probability_difference']:.4f}",
                 f"{results[name]['mean_probability_difference']:.5f}"]
            )  # fmt: skip
    print(f"Agreement with fp32 over {len(inputs)} inputs, one at a time, outlier scale {args.outliers:g}")
    print_table(["path", "top-1", "max |dp|", "mean |dp|"], rows)
    print(f"results: {save_results('engines', {'latency_ms': times, 'agreement': results})}")


if __name__ == "__main__":
    main()
