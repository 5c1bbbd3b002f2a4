"""The classifier as the app and predict.py serve it, without any user interface: loading it (training a head on
first run), choosing the precision, and one prediction with its attention maps and timing.

Every problem a visitor or a user can fix arrives as a ServingError whose message says what is wrong and what to
do; the page shows it as an error, the command line prints it.
"""

import argparse
import copy
import os
import sys
import time
import warnings
from dataclasses import dataclass, field

import torch
import torchvision

from classifier import (
    BACKBONE,
    CONFIG_FILE,
    DEFAULT_CHECKPOINT_DIR,
    DEFAULT_WEIGHTS,
    PRETRAINED,
    CheckpointError,
    WeightsCheck,
    WeightsUnavailableError,
    check_weights_file,
    describe_weights,
    load_classifier,
    trainable_parameters,
)
from devices import default_device, resolve_device
from figures import mean_attention_distance
from images import ImageError, load_rgb
from inference import (
    MAX_PROBABILITY_DIFFERENCE,
    PRECISIONS,
    Predictor,
    agreement,
    calibration_images,
    int8_setup,
    int8_sums,
    resolve_precision,
    vit_from_torchvision,
)
from model import VIT_CONFIGS


class ServingError(Exception):
    """A request or a start-up that cannot be served; `title` heads the message on the page."""

    def __init__(self, message: str, title: str):
        super().__init__(message)
        self.title = title


class TrainingUnavailable(RuntimeError):
    """No head exists yet and none could be trained here (no dataset or no pretrained weights)."""


@dataclass
class Prediction:
    probabilities: dict[str, float]  # {class name: probability}, in the checkpoint's class order
    pixels: torch.Tensor  # (3, H, W) model input, normalised
    attention_maps: list[torch.Tensor]  # every layer's (heads, 1+N, 1+N), model.py's contract for one image
    model_ms: float


@dataclass
class FoodVision:
    """The classifier being served, or, when none could be loaded, why not (`problem`)."""

    transforms: torch.nn.Module  # the weights' own preprocessing (resize, centre crop, normalise)
    patch_size: int
    model: torchvision.models.VisionTransformer | None = None
    config: dict | None = None
    source: str = ""
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    problem: str | None = None
    precision: str = "auto"  # inference.Predictor's, one of inference.PRECISIONS
    weights_check: WeightsCheck | None = None  # whether the backbone is the published weights file
    predictor: Predictor | None = None  # built from model and precision when not given
    precision_reason: str = ""  # why this precision serves (the record or self-check behind int8)
    # Eq. 1 of the served weights on the CPU, for the explanations drawn beside a prediction: on ZeroGPU the model
    # itself is reachable only inside the GPU function
    patch_embedding: torch.nn.Module | None = None
    # (layers, heads): the bundled examples' mean attention distance per head (Figure 7, right), the reference each
    # visitor's photo is drawn against; computed once at load, since on ZeroGPU whatever a GPU call computes stays in
    # the forked process that ran it
    reference_distances: torch.Tensor | None = None

    def __post_init__(self):
        if self.predictor is None and self.model is not None:
            calibration = calibration_images(self.transforms) if self.device.type == "cpu" else None
            self.predictor = Predictor(self.model, self.precision, calibration)

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

    def classify(self, image_path: str) -> Prediction:
        """The prediction for one image file, with every layer's attention maps; a ServingError when no model is
        serving or the file is not a usable photo."""
        if self.model is None:
            raise ServingError(self.problem, title="No model is serving")
        pixels = self.preprocess(image_path)
        started = time.perf_counter()
        attention_maps = []
        logits = self.predictor(pixels.unsqueeze(0).to(self.device), attention_maps)
        if self.device.type == "cuda":  # CUDA kernels run after their launch returns: wait, or the clock reads launches
            torch.cuda.synchronize(self.device)
        model_ms = (time.perf_counter() - started) * 1000
        probabilities = logits.float().softmax(dim=-1)[0].tolist()
        maps = [attention[0].cpu() for attention in attention_maps]
        return Prediction(dict(zip(self.config["class_names"], probabilities)), pixels, maps, model_ms)

    def where(self) -> str:
        """Where and how the model runs, in a few words for the page and the log."""
        if self.model is None:
            return "nowhere: no model is serving"
        if self.predictor.precision == "int8":  # its bits are the Predictor's, measured on the torch thread
            how = (
                "model.py's ViT with int8 Linear layers (dynamic quantization; {}-bit activations, {}-bit weights: "
                "this CPU adds int8 products in {})".format(*self.predictor.bits, int8_sums())
            )
        else:
            how = {
                "bf16": "model.py's ViT in bf16 (autocast)",
                "fp32": "fp32, torchvision's vit_b_16 as published (model.py's ViT for the attention maps)",
            }[self.predictor.precision]
        if os.environ.get("SPACES_ZERO_GPU"):
            place = "ZeroGPU on Hugging Face Spaces (a GPU lent for each prediction)"
        elif self.device.type == "cuda":
            place = f"GPU ({torch.cuda.get_device_name(self.device)})"
        else:
            place = f"CPU ({torch.get_num_threads()} threads)"
        return f"{place}, {how}"

    def status(self) -> str:
        """Markdown for the top of the page: what is missing, or where the model runs and any warning about it."""
        if self.model is None:
            return self.describe()
        lines = [f"**Running on** {self.where()}." + (f" {self.precision_reason}" if self.precision_reason else "")]
        if self.weights_check is not None and not self.weights_check.published:
            lines.append(f"**Warning:** {self.weights_check.describe()}; the predictions are not the real model's.")
        return "\n\n".join(lines)

    def describe(self) -> str:
        """Markdown: what is serving (or what is missing and how to fix it)."""
        if self.model is None:
            return (
                f"### No model is serving\n{self.problem}\n\n"
                "The patch view works without a model; predictions need a trained head."
            )
        total = sum(parameter.numel() for parameter in self.model.parameters())
        precision = self.predictor.precision
        lines = [
            f"- **Backbone:** torchvision `{self.config['backbone']}` (frozen), weights "
            f"{describe_weights(self.config['weights'])}",
            f"- **Weights file:** {self.weights_check.describe()}",
            f"- **Input:** {self.transforms.crop_size[0]} px, {self.patch_size}x{self.patch_size} patches",
            f"- **Head checkpoint:** `{self.source}`",
            f"- **Classes:** {', '.join(self.config['class_names'])}",
            f"- **Parameters:** {total:,} in all, of which {trainable_parameters(self.model):,} in the trained head",
            f"- **Runs on:** {self.where()} (precision {precision}; figures in BENCHMARKS.md)",
            *([f"- **Why this precision:** {self.precision_reason}"] if self.precision_reason else []),
        ]
        for title, key in (("Metrics after training", "metrics"), ("Training", "training"), ("Data", "data")):
            if self.config.get(key):
                lines.append(f"- **{title}:** {format_record(self.config[key])}")
        return "\n".join(lines)


def format_record(value) -> str:
    """A config.json record as one line: floats to 4 significant digits, dicts as "key value, ..."."""
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, dict):
        return ", ".join(f"{key} {format_record(item)}" for key, item in value.items() if item is not None)
    return str(value)


def load(checkpoint: str | None, device: torch.device | str = "cpu", precision: str = "auto") -> FoodVision:
    """The served classifier from `checkpoint` (a folder or a Hub repo id; default checkpoints/foodvision-mini).
    With no head at the default place yet, one is trained first (train_head.py's defaults: needs the dataset and
    the pretrained weights, i.e. internet). Anything unreachable leaves a FoodVision whose `problem` says what is
    missing and how to fix it."""
    source = checkpoint or str(DEFAULT_CHECKPOINT_DIR)
    try:
        if needs_first_training(checkpoint):
            train_default_head()
        model, transforms, config = load_classifier(source)
    except (CheckpointError, WeightsUnavailableError, TrainingUnavailable) as error:
        return unavailable(source, str(error))
    device = torch.device(device)
    weights_check = check_weights_file(config["weights"])
    vit = vit_from_torchvision(model)  # the same tensors, still on the CPU: the explanations are computed from here
    patch_embedding = copy.deepcopy(vit.patch_embedding)
    examples = calibration_images(transforms)
    # One fp32 pass over the bundled photos gives the int8 self-check's reference y (Eq. 4) and the examples' mean
    # attention distance, the reference each visitor's photo is drawn against in Figure 7 (right)
    attention_maps = []
    with torch.inference_mode():
        examples_features = vit.forward_features(examples, attention_maps)
    reference_distances = mean_attention_distance(attention_maps, model.patch_size)
    model = model.to(device)
    predictor, reason = choose_predictor(model, examples, examples_features, precision, config, weights_check)
    print(f"Precision: {predictor.precision}. {reason}", file=sys.stderr, flush=True)  # the log, not the results
    return FoodVision(
        transforms,
        model.patch_size,
        model,
        config,
        source,
        device,
        precision=precision,
        weights_check=weights_check,
        patch_embedding=patch_embedding,
        reference_distances=reference_distances,
        predictor=predictor,
        precision_reason=reason,
    )


def choose_predictor(
    model,
    examples: torch.Tensor,
    examples_features: torch.Tensor,
    precision: str,
    config: dict,
    weights_check: WeightsCheck,
):
    """(Predictor, why): with precision "auto", the int8 path serves only where it has proven itself on these
    weights: the checkpoint records a passing measurement on its test split for exactly this setup
    (inference.int8_setup), or, failing that, a self-check against fp32 on the bundled example photos passes.
    Otherwise fp32 serves, and the reason says why. `examples` are those photos as model inputs
    (inference.calibration_images) and `examples_features` their fp32 y (Eq. 4)."""
    device = next(model.parameters()).device
    calibration = examples if device.type == "cpu" else None
    resolved = resolve_precision(precision, device)
    if device.type != "cpu":
        return Predictor(model, resolved), (
            f"{resolved} on {device}: for one photo at a time, bf16 and fp16 autocast ran slower than fp32 and TF32 "
            "no faster on an H100 and an H200 (BENCHMARKS.md); the int8 path is a CPU path."
        )
    if precision != "auto":
        return Predictor(model, resolved, calibration), f"{resolved}, as asked (--precision {precision})."
    if resolved != "int8":
        reason = (
            f"{resolved}: torch has no int8 kernels for this CPU (its x86 engine, fbgemm; ARM builds have none), so "
            "the int8 path cannot be tried."
        )
        return Predictor(model, resolved, calibration), reason
    fast = Predictor(model, "int8", calibration)
    record = config.get("int8") or {}
    if record.get("setup") == int8_setup(weights_check.sha256) and record["agreement"]["passed"]:
        measured = record["agreement"]
        return fast, (
            f"int8 serves: train_head.py measured it against fp32 on the test split for exactly this setup: "
            f"top-1 {measured['top1']:.0%} the same, probabilities within {measured['max_probability_difference']:.4f}."
        )
    if record.get("setup"):
        why_no_record = "the checkpoint's int8 record is for another setup or did not pass"
    else:
        why_no_record = "the checkpoint has no int8 measurement"
    check = agreement(fast, calibration, examples_features)
    if check.passed:
        return (
            fast,
            f"int8 serves: {why_no_record}, and a self-check on the bundled photos passed ({check.describe()}).",
        )
    return Predictor(model, "fp32"), (
        f"fp32 serves, not int8: {why_no_record}, and int8 disagreed with fp32 on the bundled photos "
        f"({check.describe()}); the int8 path promises probabilities within {MAX_PROBABILITY_DIFFERENCE} of fp32's."
    )


def unavailable(source: str, problem: str) -> FoodVision:
    """A FoodVision serving nothing, whose page says `problem` (what is missing and how to fix it)."""
    transforms, patch_size = PRETRAINED[DEFAULT_WEIGHTS].transforms(), VIT_CONFIGS[BACKBONE].patch_size
    return FoodVision(transforms, patch_size, source=source, problem=problem)


def needs_first_training(checkpoint: str | None) -> bool:
    """No checkpoint named and none at the default place yet: the first start trains one."""
    return not checkpoint and not (DEFAULT_CHECKPOINT_DIR / CONFIG_FILE).is_file()


def train_default_head() -> None:
    """A head with train_head.py's defaults (the course's 10% split and recipe), saved at the default checkpoint
    place; tqdm shows the progress in the terminal. The backbone runs on CUDA where a GPU is held, and on the CPU on
    ZeroGPU, whose GPU is lent only inside @spaces.GPU functions. This is the one import of a command-line script
    by another module: the app's documented first run."""
    from data import DatasetError
    from train_head import train_head

    print(f"No trained head at {DEFAULT_CHECKPOINT_DIR}: training one with train_head.py's defaults.", flush=True)
    try:
        train_head(output_dir=DEFAULT_CHECKPOINT_DIR, device="cpu" if os.environ.get("SPACES_ZERO_GPU") else None)
    except (DatasetError, WeightsUnavailableError, CheckpointError) as error:
        raise TrainingUnavailable(
            f"There is no trained head at {DEFAULT_CHECKPOINT_DIR}, and training one here failed: {error}\n\n"
            "To fix it, either run python train_head.py where the dataset and the pretrained weights "
            "can be downloaded (or are cached), then restart the app; or start it with "
            "--checkpoint FOLDER_OR_HUB_REPO (or FOODVISION_CHECKPOINT) naming a trained head."
        ) from None


def usable_device(name: str) -> torch.device:
    """argparse type: devices.resolve_device, its ValueError as argparse's one-line usage error."""
    try:
        return resolve_device(name)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """--checkpoint, --device and --precision, shared by the server and predict.py; check the parsed values with
    check_model_arguments."""
    parser.add_argument(
        "--checkpoint",
        default=os.environ.get("FOODVISION_CHECKPOINT"),
        help="head checkpoint folder or Hugging Face Hub repo id (env FOODVISION_CHECKPOINT; "
        "default checkpoints/foodvision-mini, trained first if missing)",
    )
    parser.add_argument(
        "--device", type=usable_device, default=default_device(), help="torch device (default: cuda if available)"
    )
    parser.add_argument(
        "--precision",
        choices=PRECISIONS,
        default=os.environ.get("FOODVISION_PRECISION", "auto"),
        help="inference path (env FOODVISION_PRECISION; default auto: the fastest path this CPU runs "
        "accurately, chosen by inference.resolve_precision; figures in BENCHMARKS.md)",
    )


def check_model_arguments(parser: argparse.ArgumentParser, args: argparse.Namespace) -> argparse.Namespace:
    """args, or a clear parser error for a precision that cannot run: argparse checks `choices` only for a value
    typed on the command line, not for a default from FOODVISION_PRECISION, and inference.resolve_precision is
    the one place that knows which precision runs on which device."""
    try:
        with warnings.catch_warnings():  # a CPU fallback to fp32 is reported once, when the model loads
            warnings.simplefilter("ignore")
            resolve_precision(args.precision, args.device)
    except ValueError as error:
        parser.error(f"argument --precision (or env FOODVISION_PRECISION): {error}")
    return args
