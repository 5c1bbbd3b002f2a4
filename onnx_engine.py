"""fp32 on ONNX Runtime: model.py's ViT exported to ONNX and run by ONNX Runtime's CPU kernels, for where fp32
serves on the CPU and ONNX Runtime runs the pass at least ENGINE_SPEED_UP times as fast as torch on the machine at
hand. inference.choose_predictor measures both at start-up; BENCHMARKS.md (engines.py) has the figures by CPU.

The exported graph runs from the images to y = LN(z_L^0) (Eq. 4) and every layer's attention maps, the page's
explanations; the head stays in torch (a few thousand floats), so the file depends on the backbone's weights alone.
It is cached beside the backbone's weights file, named by their SHA-256, and written atomically.
"""

import contextlib
import hashlib
import importlib.util
import os
import tempfile
import time
from pathlib import Path
from statistics import median

import torch
from torch import nn

import model
from model import ViT

# A second engine is a second set of kernels to trust and its own copy of the weights in memory (BENCHMARKS.md,
# app_latency.py): it serves only where it pays this much
ENGINE_SPEED_UP = 1.25
# An fp32 engine computes what torch does in another order: its probabilities and maps may differ by rounding alone
FP32_TOLERANCE = 1e-4
INPUT, FEATURES = "images", "features"
PROVIDERS = ["CPUExecutionProvider"]


class OnnxRuntimeUnavailable(Exception):
    """ONNX Runtime cannot run the model here; the message says why and how to fix it."""


class LogitsFreeViT(nn.Module):
    """The graph that is exported: model.py's ViT from images to y (Eq. 4), then each layer's attention maps."""

    def __init__(self, vit: ViT):
        super().__init__()
        self.vit = vit

    def forward(self, images: torch.Tensor):
        maps = []
        return (self.vit.forward_features(images, maps), *maps)


def exported_file(folder: Path, weights_sha256: str) -> Path:
    """The cached export's path: named by the weights' SHA-256 and by what else shapes the graph (torch, whose
    exporter writes it, and model.py, which defines it), so a file from other code is never read as this one's."""
    code = hashlib.sha256(f"{torch.__version__}\n".encode() + Path(model.__file__).read_bytes()).hexdigest()
    return folder / f"{export_prefix(weights_sha256)}-{code[:8]}.onnx"


def export_prefix(weights_sha256: str) -> str:
    """The start of the name of every export of these weights, whatever code made it."""
    return f"vit-fp32-{weights_sha256[:16]}"


def remove_older_exports(file: Path, weights_sha256: str) -> None:
    """The same weights' exports by other code (an older torch or model.py) beside `file`, each a copy of the weights
    no longer read."""
    for stale in file.parent.glob(f"{export_prefix(weights_sha256)}-*.onnx"):
        if stale != file:
            with contextlib.suppress(OSError):  # another user's file in a shared folder stays: this export is whole
                stale.unlink(missing_ok=True)


def export(vit: ViT, file: Path) -> None:
    """The ViT as ONNX at `file`, written to a hidden partial file first and renamed, so a half-written export is
    never read as a whole one (nor two processes' exports mixed). torch's exporter (torch.export) needs the onnx and
    onnxscript packages."""
    for package in ("onnx", "onnxscript"):
        if importlib.util.find_spec(package) is None:
            raise OnnxRuntimeUnavailable(f"{package} is not installed (pip install -r requirements.txt)")
    maps = [f"attention_{layer}" for layer in range(vit.config.num_layers)]
    with torch.inference_mode():
        program = torch.onnx.export(
            LogitsFreeViT(vit).eval(),
            (torch.zeros(1, 3, vit.config.image_size, vit.config.image_size),),
            input_names=[INPUT],
            output_names=[FEATURES, *maps],
            dynamic_shapes=({0: torch.export.Dim("batch")},),
            dynamo=True,
            verbose=False,
        )
    handle, partial = tempfile.mkstemp(dir=file.parent, prefix=f".{file.name}.", suffix=".partial")
    os.close(handle)
    try:
        program.save(partial, external_data=False)  # one file, renamed whole (protobuf's limit is 2 GB)
        os.replace(partial, file)
    finally:
        Path(partial).unlink(missing_ok=True)


class OnnxRuntimePredictor:
    """inference.Predictor's contract (logits, optionally every layer's attention maps and y) in fp32, the backbone
    on ONNX Runtime, the head in torch. The export is cached in `cache_folder` (serving.py: beside the backbone's
    weights file, as the export depends on those alone) and made again when the cached file cannot be read; where
    the folder is read-only, it is exported to a temporary folder, loaded and deleted."""

    precision = "fp32"

    def __init__(self, vit: ViT, cache_folder: Path, weights_sha256: str, threads: int):
        try:
            import onnxruntime
        except Exception as error:  # not installed, or an install whose native library does not load
            reason = "onnxruntime is not installed" if isinstance(error, ImportError) else f"onnxruntime: {error}"
            raise OnnxRuntimeUnavailable(f"{reason} (pip install -r requirements.txt)") from None
        self.vit = vit
        try:
            with contextlib.ExitStack() as cleanup:
                if not os.access(cache_folder, os.W_OK):
                    cache_folder = Path(cleanup.enter_context(tempfile.TemporaryDirectory(prefix="foodvision-")))
                self.file = exported_file(cache_folder, weights_sha256)
                self.cached = self.file.exists()
                if not self.cached:
                    export(vit, self.file)
                try:
                    self.session = open_session(onnxruntime, self.file, threads)
                except Exception:  # onnxruntime's own error types: a corrupt or truncated cached file, made again
                    if not self.cached:
                        raise
                    self.cached = False
                    export(vit, self.file)
                    self.session = open_session(onnxruntime, self.file, threads)
                if not self.cached:
                    remove_older_exports(self.file, weights_sha256)
        except OnnxRuntimeUnavailable:
            raise
        except Exception as error:  # whatever fails here, torch serves instead and the page says why
            reason = " ".join(str(error).split())[:300]
            failure = f"exporting or loading the ONNX model failed: {type(error).__name__}: {reason}"
            raise OnnxRuntimeUnavailable(failure) from None
        self.maps = [output.name for output in self.session.get_outputs() if output.name != FEATURES]

    def __call__(
        self, images: torch.Tensor, attention_maps: list | None = None, features: list | None = None
    ) -> torch.Tensor:
        wanted = [FEATURES, *self.maps] if attention_maps is not None else [FEATURES]
        y, *maps = (torch.from_numpy(output) for output in self.session.run(wanted, {INPUT: as_input(images)}))
        if attention_maps is not None:
            attention_maps.extend(maps)
        if features is not None:
            features.append(y)
        with torch.inference_mode():
            return self.vit.forward_head(y)

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """y = LN(z_L^0) (Eq. 4) in float32, the head's input."""
        return torch.from_numpy(self.session.run([FEATURES], {INPUT: as_input(images)})[0])


def open_session(onnxruntime, file: Path, threads: int):
    """An ONNX Runtime session for the graph in `file` on the CPU, as the app runs it (session_options)."""
    return onnxruntime.InferenceSession(str(file), session_options(onnxruntime, threads), providers=PROVIDERS)


def session_options(onnxruntime, threads: int):
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    # Its threads otherwise spin after each run, taking the cores from Gradio's event loop and from torch
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.log_severity_level = 3  # errors only: its notes on the graph are not the user's business
    return options


def as_input(images: torch.Tensor):
    return images.detach().to("cpu", torch.float32).contiguous().numpy()


def speed_up(baseline, candidate, images: torch.Tensor, repeats: int = 5) -> float:
    """How many times as fast `candidate` runs the served pass (with the attention maps) as `baseline` (ONNX Runtime
    against torch, int8 against fp32): medians of `repeats` passes each, in turns after one warm-up each, so that both
    see the same machine."""
    times = {baseline: [], candidate: []}
    for repeat in range(repeats + 1):
        for run, measured in times.items():
            started = time.perf_counter()
            run(images, [])
            if repeat:
                measured.append(time.perf_counter() - started)
    return median(times[baseline]) / median(times[candidate])
