"""FoodVision Mini: drop a food photo, see whether a Vision Transformer thinks it is pizza, steak or
sushi, how long that took, and the image as the ViT sees it (its 16x16 patches, Figure 1 of
Dosovitskiy et al. 2020, and where the class token looks in the last layer).

    python app.py                                # http://127.0.0.1:7860
    python app.py --checkpoint user/foodvision-mini --host 0.0.0.0
    python predict.py examples/* --figures out/      # the same, without a browser

The model is torchvision's ImageNet-pretrained vit_b_16, frozen, with the small head that
train_head.py trains (checkpoint.py loads it from a folder or a Hugging Face Hub repo).
The same file is the Hugging Face Space: `import app` builds nothing; `python app.py` serves.
"""

import argparse
import os
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no telemetry unless the user turns it on

import gradio as gr
import torch
import torchvision
from PIL import Image

from checkpoint import CONFIG_FILE, DEFAULT_CHECKPOINT_DIR, CheckpointError, load_classifier
from images import ImageError, attention_overlay, load_rgb, patch_grid, to_display
from inference import PRECISIONS, Predictor, resolve_precision
from model import DEFAULT_WEIGHTS, VIT_CONFIGS, WeightsUnavailableError

APP_DIR = Path(__file__).resolve().parent
EXAMPLES = sorted(str(path) for path in (APP_DIR / "examples").glob("*") if path.suffix.lower() in {".jpg", ".jpeg", ".png", ".webp"})
# One request at a time, using every core: on a CPU that gives the lowest latency per request and
# bounds memory. The patch view decodes the upload too, so it runs in the same group as the model:
# one decoded photo and one set of activations in flight in all; the queue holds the rest.
MODEL_CONCURRENCY = 1
ONE_AT_A_TIME = {"concurrency_limit": MODEL_CONCURRENCY, "concurrency_id": "model"}
QUEUE_SIZE = 256  # requests waiting beyond this are turned away at once instead of piling up
MAX_UPLOAD = "25mb"
# Gradio keeps every upload (and every picture it serves) on disk; a long-running Space would fill
# its disk. Every hour, the files more than an hour old are deleted (the examples are kept).
DELETE_CACHE = (3600, 3600)  # (how often, minimum age), in seconds


def available_cpus() -> int:
    """Cores this process may really use: the affinity mask, capped by a cgroup CPU quota
    (containers such as Hugging Face Spaces report the host's cores but grant only a few)."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()
        if quota != "max":
            cpus = min(cpus, max(1, int(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return cpus


class Prediction(NamedTuple):
    probabilities: dict[str, float]  # {class name: probability}, in the checkpoint's class order
    pixels: torch.Tensor  # (3, H, W) model input, normalised
    attention: torch.Tensor  # (patches,) last-layer class-token attention, mean over heads
    model_ms: float


@dataclass
class FoodVision:
    """The classifier the page serves, or, when none could be loaded, why not (`problem`)."""

    transforms: torch.nn.Module  # the weights' own preprocessing (resize, centre crop, normalise)
    patch_size: int
    model: torchvision.models.VisionTransformer | None = None
    config: dict | None = None
    source: str = ""
    device: torch.device = torch.device("cpu")
    problem: str | None = None
    precision: str = "auto"  # inference.Predictor's, one of inference.PRECISIONS

    def __post_init__(self):
        self.predictor = Predictor(self.model, self.precision) if self.model is not None else None

    def preprocess(self, image_path: str) -> torch.Tensor:
        """The (3, H, W) model input from an uploaded file, or a gr.Error saying what is wrong."""
        try:
            photo = load_rgb(image_path, min_size=self.transforms.resize_size[0])
        except ImageError as error:
            raise gr.Error(str(error), title="Cannot read this image") from None
        return self.transforms(photo)

    def patches(self, image: str | None) -> Image.Image | None:
        """The preprocessed image cut into its grid of patches (needs no model)."""
        if not image:
            return None
        shown = to_display(self.preprocess(image), self.transforms.mean, self.transforms.std)
        return patch_grid(shown, self.patch_size)

    def run_model(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits (B, classes) and the last layer's class-token attention over the patches
        (B, patches) for a batch of model inputs: the one place the network runs."""
        return self.predictor(pixels.to(self.device), return_attention=True)

    def classify(self, image_path: str) -> Prediction:
        """The prediction for one image file; a gr.Error when no model is serving or the file is
        not a usable photo."""
        if self.model is None:
            raise gr.Error(self.problem, title="No model is serving")
        pixels = self.preprocess(image_path)
        started = time.perf_counter()
        logits, attention = self.run_model(pixels.unsqueeze(0))
        model_ms = (time.perf_counter() - started) * 1000
        probabilities = logits.float().softmax(dim=-1)[0].tolist()
        return Prediction(dict(zip(self.config["class_names"], probabilities)), pixels, attention[0], model_ms)

    def predict(self, image: str | None) -> tuple[dict[str, float] | None, str, Image.Image | None]:
        """The page's prediction: class probabilities (shown as the top 3), the timing, and the
        last-layer class-token attention drawn over the preprocessed image."""
        started = time.perf_counter()
        if not image:  # the photo was removed from the page
            return None, "", None
        prediction = self.classify(image)
        grid = self.transforms.crop_size[0] // self.patch_size
        overlay = attention_overlay(
            to_display(prediction.pixels, self.transforms.mean, self.transforms.std),
            prediction.attention.reshape(grid, grid),
        )
        total_ms = (time.perf_counter() - started) * 1000
        timing = f"**Model:** {prediction.model_ms:.0f} ms · **whole request:** {total_ms:.0f} ms (decode, preprocess, model, drawing; {self.device.type})"
        return prediction.probabilities, timing, overlay

    def describe(self) -> str:
        """Markdown: what is serving (or what is missing and how to fix it)."""
        if self.model is None:
            return (
                f"### No model is serving\n{self.problem}\n\n"
                "The patch view works without a model; predictions need a trained head."
            )
        total = sum(parameter.numel() for parameter in self.model.parameters())
        head = sum(parameter.numel() for parameter in self.model.heads.parameters())
        lines = [
            f"- **Backbone:** torchvision `{self.config['backbone']}`, weights `{self.config['weights']}` (frozen), "
            f"{self.transforms.crop_size[0]} px input, {self.patch_size}x{self.patch_size} patches",
            f"- **Head checkpoint:** `{self.source}`",
            f"- **Classes:** {', '.join(self.config['class_names'])}",
            f"- **Parameters:** {total:,} in all, of which {head:,} in the trained head",
            f"- **Device:** {self.device}, inference in {self.predictor.precision}"
            f"{' (model.py ViT, int8 dynamic quantization: see BENCHMARKS.md)' if self.predictor.precision == 'int8' else ''}",
        ]
        for title, key in (("Metrics after training", "metrics"), ("Training", "training"), ("Data", "data")):
            if self.config.get(key):
                lines.append(f"- **{title}:** {format_metric(self.config[key])}")
        return "\n".join(lines)


def format_metric(value) -> str:
    """A config.json record as one line: floats to 4 significant digits, dicts as "key value, ..."."""
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, dict):
        return ", ".join(f"{key} {format_metric(item)}" for key, item in value.items() if item is not None)
    return str(value)


def load(checkpoint: str | None, device: torch.device | str = "cpu", precision: str = "auto") -> FoodVision:
    """The served classifier from `checkpoint` (a folder or a Hub repo id; default
    checkpoints/foodvision-mini). With no head at the default place yet, one is trained first
    (train_head.py's defaults: needs the dataset and the pretrained weights, i.e. internet).
    Anything unreachable leaves a FoodVision whose `problem` says what is missing and how to fix it."""
    source = checkpoint or str(DEFAULT_CHECKPOINT_DIR)
    try:
        if not checkpoint and not (DEFAULT_CHECKPOINT_DIR / CONFIG_FILE).is_file():
            train_default_head()
        model, transforms, config = load_classifier(source)
    except (CheckpointError, WeightsUnavailableError, TrainingUnavailable) as error:
        transforms = torchvision.models.ViT_B_16_Weights[DEFAULT_WEIGHTS].transforms()
        return FoodVision(transforms, VIT_CONFIGS["vit_b_16"].patch_size, source=source, problem=str(error))
    return FoodVision(
        transforms,
        patch_size=model.patch_size,
        model=model.to(device),
        config=config,
        source=source,
        device=torch.device(device),
        precision=precision,
    )


class TrainingUnavailable(RuntimeError):
    """No head exists yet and none could be trained here (no dataset or no pretrained weights)."""


def train_default_head() -> None:
    """A head with train_head.py's defaults (the course's 10% split and recipe), saved at the
    default checkpoint place; tqdm shows the progress in the terminal."""
    from data import DatasetError
    from train_head import train_head

    print(f"No trained head at {DEFAULT_CHECKPOINT_DIR}: training one with train_head.py's defaults.", flush=True)
    try:
        train_head(output_dir=DEFAULT_CHECKPOINT_DIR)
    except (DatasetError, WeightsUnavailableError, CheckpointError) as error:
        raise TrainingUnavailable(
            f"There is no trained head at {DEFAULT_CHECKPOINT_DIR}, and training one here failed: {error}\n\n"
            "To fix it, either run python train_head.py where the dataset and the pretrained weights "
            "can be downloaded (or are cached), then restart the app; or start it with "
            "--checkpoint FOLDER_OR_HUB_REPO (or FOODVISION_CHECKPOINT) naming a trained head."
        ) from None


def build_demo(foodvision: FoodVision) -> gr.Blocks:
    """The page; launching is left to the caller."""
    size, patch = foodvision.transforms.crop_size[0], foodvision.patch_size
    with gr.Blocks(title="FoodVision Mini", delete_cache=DELETE_CACHE) as demo:
        classes = " or ".join(f"**{name}**" for name in foodvision.config["class_names"]) if foodvision.config else "food"
        gr.Markdown(
            f"# FoodVision Mini\nDrop a photo of {classes}. A Vision Transformer (ViT-B/16, "
            "ImageNet-pretrained and frozen, with a small trained head) names it and shows the image "
            "the way it reads it: a sequence of patches."
        )
        if foodvision.model is None:
            gr.Markdown(foodvision.describe(), elem_id="status")
        with gr.Row():
            with gr.Column():
                image = gr.Image(label="Food photo", sources=["upload", "webcam", "clipboard"], type="filepath", height=360, elem_id="photo")
                gr.Examples(EXAMPLES, inputs=image, label="Real photos")
            with gr.Column():
                label = gr.Label(num_top_classes=3, label="Prediction", elem_id="prediction")
                timing = gr.Markdown(label="Prediction time", elem_id="timing")
        with gr.Row():
            grid = gr.Image(label=f"Patches: {size // patch}x{size // patch} of {patch}x{patch} pixels", format="png", interactive=False, height=300, elem_id="patches")
            attention = gr.Image(label="Attention: class token, last layer", format="png", interactive=False, height=300, elem_id="attention")
        gr.Markdown(
            f"Left: the {size}x{size} input the model receives (the weights' own resize and centre crop), "
            f"cut into the sequence of {patch}x{patch} patches, the \"{patch}x{patch} words\" of the paper's title, "
            "that the transformer embeds and reads. Right: how much the class token, whose final state "
            "is classified, attends to each patch in the last layer (mean over the heads)."
        )
        if foodvision.model is not None:
            with gr.Accordion("What model is serving", open=False):
                gr.Markdown(foodvision.describe(), elem_id="model-info")
        # The handlers take the upload undecoded (preprocess=False): gr.Image would open every file
        # with Pillow itself and answer a non-image with an error users cannot read, while every
        # upload here goes through images.load_rgb's guards and messages.
        def patches(image: dict | None) -> Image.Image | None:
            return foodvision.patches(uploaded_file(image))

        def predict(image: dict | None) -> tuple[dict[str, float] | None, str, Image.Image | None]:
            return foodvision.predict(uploaded_file(image))

        image.change(patches, inputs=image, outputs=grid, preprocess=False, **ONE_AT_A_TIME).success(
            predict, inputs=image, outputs=[label, timing, attention], preprocess=False, **ONE_AT_A_TIME
        )
    return demo


def uploaded_file(upload: dict | None) -> str | None:
    """The path of an uploaded file, from gr.Image's undecoded payload (FileData)."""
    if upload is None:
        return None
    if not upload.get("path"):
        raise gr.Error("The upload arrived without a file; please upload the photo again.")
    return upload["path"]


def usable_device(name: str) -> torch.device:
    """argparse type: a torch device this machine can really allocate on."""
    try:
        device = torch.device(name)
        torch.empty(0, device=device)
    except (RuntimeError, NotImplementedError) as error:
        raise argparse.ArgumentTypeError(f"{name!r} is not a usable torch device here ({str(error).splitlines()[0]})") from None
    return device


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """--checkpoint, --device and --precision, shared by the server and predict.py; check the
    parsed values with check_model_arguments."""
    parser.add_argument(
        "--checkpoint",
        default=os.environ.get("FOODVISION_CHECKPOINT"),
        help="head checkpoint folder or Hugging Face Hub repo id (env FOODVISION_CHECKPOINT; "
        "default checkpoints/foodvision-mini, trained first if missing)",
    )
    parser.add_argument(
        "--device",
        type=usable_device,
        default="cuda" if torch.cuda.is_available() else "cpu",
        help="torch device (default: cuda if available, else cpu)",
    )
    parser.add_argument(
        "--precision",
        choices=PRECISIONS,
        default=os.environ.get("FOODVISION_PRECISION", "auto"),
        help="inference path (env FOODVISION_PRECISION; default auto: the fastest path this CPU runs "
        "accurately, chosen by inference.resolve_precision; figures in BENCHMARKS.md)",
    )


def check_model_arguments(parser: argparse.ArgumentParser, args: argparse.Namespace) -> argparse.Namespace:
    """args, or a clear parser error for a precision that cannot run: argparse checks `choices` only
    for a value typed on the command line, not for a default from FOODVISION_PRECISION, and
    inference.resolve_precision is the one place that knows which precision runs on which device."""
    try:
        with warnings.catch_warnings():  # a CPU fallback to fp32 is reported once, when the model loads
            warnings.simplefilter("ignore")
            resolve_precision(args.precision, args.device)
    except ValueError as error:
        parser.error(f"argument --precision (or env FOODVISION_PRECISION): {error}")
    return args


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_model_arguments(parser)
    # Hugging Face Spaces set GRADIO_SERVER_NAME=0.0.0.0; locally the app stays private by default.
    parser.add_argument("--host", default=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"), help="address to serve on (0.0.0.0: every interface)")
    parser.add_argument("--port", type=int, default=int(os.environ.get("GRADIO_SERVER_PORT", 7860)))
    parser.add_argument("--share", action="store_true", help="also serve through a temporary public gradio.live link")
    return check_model_arguments(parser, parser.parse_args(argv))


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(available_cpus())
    foodvision = load(args.checkpoint, args.device, args.precision)
    print(foodvision.describe(), flush=True)
    demo = build_demo(foodvision)
    demo.queue(max_size=QUEUE_SIZE).launch(
        server_name=args.host, server_port=args.port, share=args.share, max_file_size=MAX_UPLOAD
    )


if __name__ == "__main__":
    main(sys.argv[1:])
