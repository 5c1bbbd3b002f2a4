"""The classifier as the app and predict.py serve it, without any user interface: loading it, and one prediction
with its attention maps and timing. What `load` returns is one of two states: a FoodVision, which serves, or a
NoModel, which says why nothing serves and how to fix it; both preprocess photos, which the patch view needs.

Every problem a visitor or a user can fix arrives as a ServingError whose message says what is wrong and what to
do; the page shows it as an error, the command line prints it.
"""

import copy
import sys
import time
from dataclasses import dataclass

import torch
import torchvision

from classifier import (
    BACKBONE,
    DEFAULT_CHECKPOINT_DIR,
    DEFAULT_WEIGHTS,
    PRETRAINED,
    CheckpointError,
    WeightsCheck,
    WeightsUnavailableError,
    check_weights_file,
    checkpoint_files,
    load_classifier,
    load_outlier_score,
)
from figures import mean_attention_distance
from images import ImageError, load_rgb
from inference import Predictor, calibration_images, choose_predictor, recording_input_ranges, vit_from_torchvision
from model import VIT_CONFIGS, PatchEmbedding
from onnx_engine import OnnxRuntimePredictor
from outliers import OutlierScore, above_threshold


class ServingError(Exception):
    """A request or a start-up that cannot be served; `title` heads the message on the page."""

    def __init__(self, message: str, title: str):
        super().__init__(message)
        self.title = title


@dataclass(frozen=True)
class OutlierVerdict:
    """The "is this even food?" check of one photo (outliers.py): its relative Mahalanobis score against the
    checkpoint's threshold, set by train_head.py on the test split."""

    score: float
    threshold: float

    @property
    def is_outlier(self) -> bool:
        return above_threshold(self.score, self.threshold)


@dataclass
class Prediction:
    probabilities: dict[str, float]  # {class name: probability}, in the checkpoint's class order
    pixels: torch.Tensor  # (3, H, W) model input, normalised
    attention_maps: list[torch.Tensor]  # every layer's (heads, 1+N, 1+N), model.py's contract for one image
    model_ms: float
    outlier: OutlierVerdict | None = None  # None where the checkpoint has no outlier score (the check is off)

    def warning(self) -> str:
        """What the page, the API and predict.py say when the photo looks like none of the classes; "" otherwise.
        The label stays, marked as unreliable."""
        if self.outlier is None or not self.outlier.is_outlier:
            return ""
        *others, last = self.probabilities
        classes = f"{', '.join(others)} or {last}" if others else last
        return (
            f"This does not look like {classes} (score {self.outlier.score:.1f}, threshold "
            f"{self.outlier.threshold:.1f}): the label is unreliable."
        )


@dataclass
class Preprocessing:
    """The weights' own preprocessing (resize, centre crop, normalise) and patch size: what the patch view needs,
    with a model or without."""

    transforms: torch.nn.Module
    patch_size: int

    @property
    def grid_size(self) -> int:
        return self.transforms.crop_size[0] // self.patch_size

    def preprocess(self, image_path: str) -> torch.Tensor:
        """The (3, H, W) model input from an image file, or a ServingError saying what is wrong with it."""
        try:
            photo = load_rgb(image_path, min_size=self.transforms.resize_size[0])
        except ImageError as error:
            raise ServingError(str(error), title="Cannot read this image") from None
        return self.transforms(photo)


@dataclass
class NoModel(Preprocessing):
    """Nothing serves: `problem` says what is missing and how to fix it."""

    source: str
    problem: str

    @classmethod
    def because(cls, source: str, problem: str) -> "NoModel":
        transforms, patch_size = PRETRAINED[DEFAULT_WEIGHTS].transforms(), VIT_CONFIGS[BACKBONE].patch_size
        return cls(transforms, patch_size, source, problem)

    def classify(self, image_path: str) -> Prediction:
        raise ServingError(self.problem, title="No model is serving")


@dataclass
class FoodVision(Preprocessing):
    """The classifier being served, with the precision that serves it and why (inference.choose_predictor)."""

    model: torchvision.models.VisionTransformer
    predictor: Predictor | OnnxRuntimePredictor
    precision_reason: str
    config: dict  # the checkpoint's config.json: class names, weights, training records
    source: str  # the checkpoint folder or Hub repo id
    device: torch.device
    weights_check: WeightsCheck  # whether the backbone is the published weights file
    outliers: OutlierScore | None  # the "is this even food?" score, None for a checkpoint from before it
    # Eq. 1 of the served weights on the CPU, for the explanations drawn beside a prediction: on ZeroGPU the model
    # itself is reachable only inside the GPU function
    patch_embedding: PatchEmbedding
    # (layers, heads): the bundled examples' mean attention distance per head (Figure 7, right), the reference each
    # visitor's photo is drawn against; computed once at load, since on ZeroGPU whatever a GPU call computes stays in
    # the forked process that ran it
    reference_distances: torch.Tensor

    @property
    def class_names(self) -> list[str]:
        return self.config["class_names"]

    def classify(self, image_path: str) -> Prediction:
        """The prediction for one image file, with every layer's attention maps; a ServingError when the file is
        not a usable photo."""
        pixels = self.preprocess(image_path)
        started = time.perf_counter()
        attention_maps, features = [], []
        logits = self.predictor(pixels.unsqueeze(0).to(self.device), attention_maps, features)
        if self.device.type == "cuda":  # CUDA kernels run after their launch returns: wait, or the clock reads launches
            torch.cuda.synchronize(self.device)
        model_ms = (time.perf_counter() - started) * 1000
        probabilities = logits.float().softmax(dim=-1)[0].tolist()
        maps = [attention[0].cpu() for attention in attention_maps]
        outlier = None
        if self.outliers is not None:  # scored from the y (Eq. 4) of this very pass, in the served precision
            outlier = OutlierVerdict(self.outliers.score(features[0].cpu()).item(), self.outliers.threshold)
        return Prediction(dict(zip(self.class_names, probabilities)), pixels, maps, model_ms, outlier)


def load(
    checkpoint: str | None, device: torch.device | str = "cpu", precision: str = "auto", measure_engines: bool = True
) -> FoodVision | NoModel:
    """The served classifier from `checkpoint` (a folder or a Hub repo id; default checkpoints/foodvision-mini), or
    a NoModel saying what is missing and how to fix it. Training a first head is the caller's
    (train_head.train_default_head). `measure_engines`: where fp32 serves on the CPU, export the backbone for ONNX
    Runtime and measure it against torch (inference.fastest_fp32); False for a one-off command, whose single pass
    would not repay the export and the measurement, and torch runs it."""
    source = checkpoint or str(DEFAULT_CHECKPOINT_DIR)
    try:
        folder = checkpoint_files(source)  # resolved once: a Hub repo's head and score come from one snapshot
        model, transforms, config = load_classifier(folder)
        outliers = load_outlier_score(folder, config, model.hidden_dim)
    except (CheckpointError, WeightsUnavailableError) as error:
        return NoModel.because(source, str(error))
    device = torch.device(device)
    weights_check = check_weights_file(config["weights"])
    vit = vit_from_torchvision(model)  # the same tensors, still on the CPU: the explanations are computed from here
    examples = calibration_images(transforms)
    # One fp32 pass over the bundled photos gives the self-checks' reference y (Eq. 4) and maps (int8's, and the fp32
    # engine's), int8's SmoothQuant calibration and the examples' mean attention distance, the reference each
    # visitor's photo is drawn against in Figure 7 (right)
    attention_maps = []
    with torch.inference_mode(), recording_input_ranges(vit) as examples_ranges:
        examples_features = vit.forward_features(examples, attention_maps)
    model = model.to(device)
    predictor, reason = choose_predictor(
        model,
        examples,
        examples_features,
        attention_maps,
        examples_ranges,
        precision,
        config.get("int8"),
        weights_check.sha256,
        # the ONNX export depends on the backbone's weights alone
        cache_folder=weights_check.file.parent if measure_engines else None,
    )
    print(f"Precision: {predictor.precision}. {reason}", file=sys.stderr, flush=True)  # the log, not the results
    return FoodVision(
        transforms,
        model.patch_size,
        model=model,
        predictor=predictor,
        precision_reason=reason,
        config=config,
        source=source,
        device=device,
        weights_check=weights_check,
        outliers=outliers,
        patch_embedding=copy.deepcopy(vit.patch_embedding),
        reference_distances=mean_attention_distance(attention_maps, model.patch_size),
    )
