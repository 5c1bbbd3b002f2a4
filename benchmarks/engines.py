"""The served paths against other inference engines on this CPU: batch 1, the page's attention maps included, all
timed in turns in one process, and each one's agreement with fp32 on a backbone carrying pretrained ViTs' LayerNorm
outlier channels (standins.inject_outliers). ONNX Runtime's rows are the app's own fp32 engine (onnx_engine.py, which
serves wherever fp32 serves and it pays), ONNX Runtime's int8 dynamic quantization of that same export, and ONNX
Runtime's int8 with the served method (inference.INT8_METHOD), the one fair match for the served int8. Where OpenVINO
is installed (`pip install openvino`; no requirement: it serves nowhere), it runs the same fp32 export, and int8 with
the served method as static quantization (QDQ nodes, the form OpenVINO runs int8 from), the activations' scales
calibrated on the bundled photos.

    python benchmarks/engines.py                                # about 6 minutes on 2 cores, 9 with OpenVINO
    python benchmarks/engines.py --repeats 20 --inputs 100 --outliers 30

"bare fp32 forward" is torchvision's vit_b_16 as published, logits only: the baseline the app's targets are ratios
of. Every other row returns the logits and every layer's attention maps, as the page needs them. An engine missing
here is reported and left out."""

import argparse
import contextlib
import copy
import logging
import tempfile
from collections.abc import Callable
from pathlib import Path

from common import interleaved_ms, load_benchmark_classifier, median, print_machine, print_table, save_results

import torch
from latency import agreement_inputs
from torch import nn

from devices import available_cpus
from inference import (
    FP32_LINEARS,
    KERNEL_LIBRARIES,
    NO_INT8_ENGINE,
    SMOOTHING_ALPHA,
    Predictor,
    calibration_images,
    input_ranges,
    int8_bits,
    int8_engine,
    int8_sums,
    probability_agreement,
    smooth_activations,
    vit_from_torchvision,
)
from onnx_engine import (
    INPUT,
    OnnxRuntimePredictor,
    OnnxRuntimeUnavailable,
    export,
    open_session,
)
from tests.standins import EXAMPLE_PHOTOS, inject_outliers
from train_vit import at_least

BASELINE = "bare fp32 forward (torchvision, no maps)"


def onnx_paths(model: nn.Module, calibration: torch.Tensor, folder: Path, threads: int) -> dict:
    """name -> (images -> (logits, maps)) on ONNX Runtime: the served fp32 engine (onnx_engine.py), on the same
    export ONNX Runtime's own int8 dynamic quantization, and int8 with the served method (SmoothQuant, the
    bits, quantized_linears); {} with a note where ONNX Runtime cannot run here."""
    try:
        import onnxruntime
        from onnxruntime.quantization import QuantType, quantize_dynamic
    except ImportError as error:
        print(f"ONNX Runtime left out: {error} (pip install -r requirements.txt)\n")
        return {}
    folder.mkdir(exist_ok=True)
    try:
        fp32 = OnnxRuntimePredictor(vit_from_torchvision(model), folder, weights_sha256=folder.name, threads=threads)
    except OnnxRuntimeUnavailable as error:
        print(f"ONNX Runtime left out: {error}\n")
        return {}
    int8_file = folder / "vit-int8.onnx"
    with without_root_warnings():
        quantize_dynamic(str(fp32.file), str(int8_file), weight_type=QuantType.QInt8, per_channel=True)
    weight_bits = int8_bits()[1]  # ONNX Runtime's dynamic quantization keeps 8-bit activations, as served
    smoothed = vit_from_torchvision(model)
    smooth_activations(smoothed, input_ranges(smoothed, calibration), SMOOTHING_ALPHA[weight_bits])
    smoothed_file, served_method_file = folder / "vit-fp32-smoothed.onnx", folder / "vit-int8-served-method.onnx"
    export(smoothed, smoothed_file)
    served_method_options = {
        "per_channel": True,
        "reduce_range": weight_bits == 7,  # ONNX Runtime's reduce_range keeps the weights to 7 bits
        "nodes_to_quantize": quantized_linears(smoothed_file, smoothed.config.num_layers),
    }
    with without_root_warnings():
        quantize_dynamic(
            str(smoothed_file), str(served_method_file), weight_type=QuantType.QInt8, **served_method_options
        )

    def on_onnx_runtime(file: Path):
        return open_session(onnxruntime, file, threads)

    return {
        "ONNX Runtime fp32 (onnx_engine.py)": path(fp32),
        "ONNX Runtime int8 dynamic": path(on_graph(fp32, int8_file, on_onnx_runtime)),
        # SmoothQuant changes the blocks alone: fp32's head and map outputs are the smoothed graph's too
        f"ONNX Runtime int8, served method ({weight_bits}-bit weights)": path(
            on_graph(fp32, served_method_file, on_onnx_runtime)
        ),
        **openvino_paths(fp32, smoothed_file, served_method_options, calibration, threads),
    }


def openvino_paths(
    fp32: OnnxRuntimePredictor,
    smoothed_file: Path,
    served_method_options: dict,
    calibration: torch.Tensor,
    threads: int,
) -> dict:
    """name -> (images -> (logits, maps)) on OpenVINO where it is installed: the app's fp32 export, and the smoothed
    export with the served method's Linears and bits quantized statically by ONNX Runtime's quantizer; {} with a
    note where OpenVINO cannot run them here."""
    try:
        import openvino
        from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    except ImportError as error:
        print(f"OpenVINO left out: {error} (pip install openvino)\n")
        return {}

    class BundledPhotos(CalibrationDataReader):
        def __init__(self):
            self.inputs = iter({INPUT: image[None].numpy()} for image in calibration)

        def get_next(self):
            return next(self.inputs, None)

    static_file = smoothed_file.with_name("vit-int8-static-qdq.onnx")
    version = openvino.__version__.split("-")[0]
    try:
        with without_root_warnings():
            quantize_static(
                str(smoothed_file),
                str(static_file),
                BundledPhotos(),
                quant_format=QuantFormat.QDQ,
                activation_type=QuantType.QUInt8,
                weight_type=QuantType.QInt8,
                # The served Linears give fp32 outputs: rounded again to 8 bits, q and k would enter the attention's
                # products (in fp32 on torch) quantized, and OpenVINO might run those in int8 too
                extra_options={"OpTypesToExcludeOutputQuantization": ["MatMul"]},
                **served_method_options,
            )
        core = openvino.Core()

        def on_openvino(file: Path) -> OpenVinoSession:
            return OpenVinoSession(core, file, threads)

        return {
            f"OpenVINO {version} fp32": path(on_graph(fp32, fp32.file, on_openvino)),
            f"OpenVINO {version} int8, served method, static activation scales": path(
                on_graph(fp32, static_file, on_openvino)
            ),
        }
    except Exception as error:  # the quantizer's or OpenVINO's own error types
        print(f"OpenVINO {version} left out: {type(error).__name__}: {error}\n")
        return {}


class OpenVinoSession:
    """The graph in `file` compiled by OpenVINO for the CPU, answering ONNX Runtime's session.run, in fp32 wherever
    fp32 is asked (its CPU plugin would otherwise take bf16 where the CPU has it natively)."""

    def __init__(self, core, file: Path, threads: int):
        config = {"INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": "f32"}
        self.request = core.compile_model(str(file), "CPU", config).create_infer_request()

    def run(self, names: list[str], inputs: dict) -> list:
        outputs = self.request.infer(inputs)  # copies of the outputs, the request's own stay
        return [outputs[name] for name in names]


def on_graph(predictor: OnnxRuntimePredictor, file: Path, open_session: Callable) -> OnnxRuntimePredictor:
    """The same head and outputs as `predictor`, running the graph in `file` (the same graph, or a quantized copy of
    its own) in the session `open_session(file)` makes."""
    other = copy.copy(predictor)
    other.file, other.session = file, open_session(file)
    return other


def quantized_linears(file: Path, num_layers: int) -> list[str]:
    """The exported graph's nodes that the served int8 quantizes: the encoder's Linears (MatMuls by a weight) except
    inference.FP32_LINEARS, told apart by the module path torch's exporter records on each node. The attention's
    own products (q k^T, A v) stay fp32, as on torch. Raises where the graph does not show the encoder's 4 Linears a
    layer: given no nodes, ONNX Runtime would quantize every one it can, under this row's name."""
    import onnx

    graph = onnx.load(str(file), load_external_data=False).graph
    weights = {initializer.name for initializer in graph.initializer}
    kept = {f"vit.{name}" for name in FP32_LINEARS}
    nodes, seen_kept = [], set()
    for node in graph.node:
        if node.op_type == "MatMul" and node.input[1] in weights:
            scopes = {entry.key: entry.value for entry in node.metadata_props}.get("namespace", "").split("/")
            module = scopes[-2].split(":")[0] if len(scopes) > 1 else ""  # the last scope is the op, then its module
            if module in kept:
                seen_kept.add(module)
            elif module.startswith("vit.blocks."):
                nodes.append(node.name)
    if seen_kept != kept or len(nodes) != 4 * num_layers - len(kept):
        raise RuntimeError(
            f"{file.name}: found {len(nodes)} encoder Linears to quantize and kept {sorted(seen_kept)} in fp32, "
            f"expected {4 * num_layers - len(kept)} and {sorted(kept)}: torch's exporter no longer names each node's "
            "module as this function reads it"
        )
    return nodes


@contextlib.contextmanager
def without_root_warnings():
    """ONNX Runtime's quantizer warns on the root logger at every call, suggesting its pre-processing."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)


def path(predictor) -> Callable:
    def run(images: torch.Tensor):
        maps = []
        return predictor(images, maps), maps

    return run


def served_paths(model: nn.Module, calibration: torch.Tensor) -> dict:
    """name -> (images -> (logits, maps)) for the project's own paths on torch."""
    served = Predictor(model, "int8", calibration)
    paths = {"fp32 model.py ViT on torch": path(Predictor(model, "fp32"))}
    if served.precision != "int8":  # resolve_precision fell back: this torch has no int8 kernels here
        print(f"no int8 rows: {NO_INT8_ENGINE}\n")
        return paths
    paths[f"served int8 ({served.engine} kernels)"] = path(served)
    # The engine inference.int8_engine did not pick, beside the one it did, so its rule is measured on every x86 CPU:
    # fbgemm's kernels where oneDNN serves (VNNI, AMX), oneDNN's where fbgemm serves (AVX2)
    other = {"onednn": "x86", "x86": "onednn", "fbgemm": "onednn"}.get(served.engine)
    if other in torch.backends.quantized.supported_engines:
        paths[f"int8 on {KERNEL_LIBRARIES[other]}'s kernels ({other} engine)"] = path(
            Predictor(model, "int8", calibration, engine=other)
        )
    return paths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=at_least(3), default=15, help="timed passes per path, in turns")
    parser.add_argument("--inputs", type=at_least(100), default=100, help="images for the agreement check")
    parser.add_argument("--outliers", type=float, default=30, help="outlier scale of the agreement backbone")
    args = parser.parse_args()
    print_machine()
    threads = available_cpus()
    torch.set_num_threads(threads)
    print(f"int8 engine {int8_engine()}: products add in {int8_sums()}, (activation, weight) bits {int8_bits()}\n")

    model, transforms, _ = load_benchmark_classifier()
    calibration = calibration_images(transforms)
    images = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    with tempfile.TemporaryDirectory() as folder, torch.inference_mode():
        paths = {
            **served_paths(model, calibration),
            **onnx_paths(model, calibration, Path(folder) / "random", threads),
        }
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
            **onnx_paths(injected, calibration, Path(folder) / "outliers", threads),
        }
        for name, run in outlier_paths.items():
            probabilities = torch.cat([run(image[None])[0] for image in inputs]).softmax(dim=-1)
            results[name] = probability_agreement(probabilities, reference)
            rows.append(
                [name, f"{results[name]['top1']:.1%}", f"{results[name]['near_tie_margin']:.4f}",
                 f"{results[name]['max_probability_difference']:.4f}",
                 f"{results[name]['mean_probability_difference']:.5f}"]
            )  # fmt: skip
    print(f"Agreement with fp32 over {len(inputs)} inputs, one at a time, outlier scale {args.outliers:g}")
    print_table(["path", "top-1", "fp32's top-two gap where top-1 changed", "max |dp|", "mean |dp|"], rows)
    print(f"results: {save_results('engines', {'latency_ms': times, 'agreement': results})}")


if __name__ == "__main__":
    main()
