"""fp32 on ONNX Runtime: model.py's ViT exported to ONNX and run by ONNX Runtime's CPU kernels, for where fp32
serves on the CPU and ONNX Runtime runs the pass at least ENGINE_SPEED_UP times as fast as torch on the machine at
hand. inference.choose_predictor measures both at start-up; BENCHMARKS.md (engines.py) has the figures by CPU.

The exported graph runs from the images to y = LN(z_L^0) (Eq. 4) and every layer's attention maps, the page's
explanations; the head stays in torch (a few thousand floats), so the file depends on the backbone's weights alone.
It is cached beside the head, named by the SHA-256 of the backbone's weights file, and written atomically.
"""

import importlib.util
import os
import sys
import tempfile
import time
from pathlib import Path
from statistics import median

import torch
from torch import nn

from model import ViT

# A second engine is a second set of kernels to trust and its own copy of the weights in memory (about 330 MB for
# ViT-B/16): it serves only where it pays this much (the rule benchmarks/engines.py judges engines by)
ENGINE_SPEED_UP = 1.25
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
    return folder / f"vit-fp32-{weights_sha256[:16]}.onnx"


def export(vit: ViT, file: Path) -> None:
    """The ViT as ONNX at `file`, written to a partial file first and renamed, so a half-written export is never
    read as a whole one. torch's exporter (torch.export) needs the onnx and onnxscript packages."""
    for package in ("onnx", "onnxscript"):
        if importlib.util.find_spec(package) is None or sys.modules.get(package, True) is None:
            raise OnnxRuntimeUnavailable(f"{package} is not installed (pip install -r requirements.txt)")
    partial = file.with_name(file.name + ".partial")
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
    program.save(str(partial), external_data=False)  # one file, renamed whole (protobuf's limit is 2 GB)
    os.replace(partial, file)


class OnnxRuntimePredictor:
    """inference.Predictor's contract (logits, optionally every layer's attention maps and y) in fp32, the backbone
    on ONNX Runtime, the head in torch. Built from the served model's ViT; the export is reused while the weights'
    SHA-256 is the same, and made again when the cached file cannot be read."""

    precision = "fp32"
    engine = "onnxruntime"

    def __init__(self, vit: ViT, cache_folder: Path, weights_sha256: str, threads: int):
        try:
            import onnxruntime
        except ImportError:
            raise OnnxRuntimeUnavailable("onnxruntime is not installed (pip install -r requirements.txt)") from None
        self.vit = vit
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads
        # Its threads otherwise spin after each run, taking the cores from Gradio's event loop and from torch
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.log_severity_level = 3  # errors only: its notes on the graph are not the user's business
        if not os.access(cache_folder, os.W_OK):  # a read-only checkpoint: exported for this start only
            cache_folder = Path(tempfile.mkdtemp(prefix="foodvision-onnx-"))
        self.file = exported_file(cache_folder, weights_sha256)
        self.cached = self.file.exists()
        try:
            if not self.cached:
                export(vit, self.file)
            try:
                self.session = onnxruntime.InferenceSession(str(self.file), options, providers=PROVIDERS)
            except Exception:  # onnxruntime's own error types: a corrupt or truncated cached file, made again
                if not self.cached:
                    raise
                self.cached = False
                export(vit, self.file)
                self.session = onnxruntime.InferenceSession(str(self.file), options, providers=PROVIDERS)
        except OnnxRuntimeUnavailable:
            raise
        except Exception as error:  # whatever fails here, torch serves instead and the page says why
            reason = " ".join(str(error).split())[:300]
            failure = f"exporting or loading the ONNX model failed: {type(error).__name__}: {reason}"
            raise OnnxRuntimeUnavailable(failure) from None

    def __call__(
        self, images: torch.Tensor, attention_maps: list | None = None, features: list | None = None
    ) -> torch.Tensor:
        wanted = None if attention_maps is not None else [FEATURES]
        y, *maps = (torch.from_numpy(output) for output in self.session.run(wanted, {INPUT: images.numpy()}))
        if attention_maps is not None:
            attention_maps.extend(maps)
        if features is not None:
            features.append(y)
        with torch.inference_mode():
            return self.vit.forward_head(y)

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """y = LN(z_L^0) (Eq. 4) in float32, the head's input."""
        return torch.from_numpy(self.session.run([FEATURES], {INPUT: images.numpy()})[0])


def speed_up(torch_pass, onnx_pass, images: torch.Tensor, repeats: int = 5) -> float:
    """How many times as fast ONNX Runtime runs the served pass (with the attention maps) as torch: medians of
    `repeats` passes each, in turns after one warm-up each, so that both see the same machine."""
    times = {torch_pass: [], onnx_pass: []}
    for repeat in range(repeats + 1):
        for run, measured in times.items():
            started = time.perf_counter()
            run(images, [])
            if repeat:
                measured.append(time.perf_counter() - started)
    return median(times[torch_pass]) / median(times[onnx_pass])
