"""FoodVision Mini's page: drop a food photo, see whether a Vision Transformer thinks it is pizza, steak or sushi,
how long that took, the image as the ViT sees it (its 16x16 patches, Figure 1 of Dosovitskiy et al. 2020) and
the paper's own analyses of the served model on this photo (Figures 6 and 7, the walk through Eqs. 1-4).

    python app.py                                # http://127.0.0.1:7860
    python app.py --checkpoint user/foodvision-mini --host 0.0.0.0
    python predict.py examples/* --figures out/  # the same, without a browser

The model and everything about serving it live in serving.py; this file holds the components, the event wiring,
the translation of serving errors into messages on the page, and `main`. It is also the Hugging Face Space, on
every hardware: on ZeroGPU the prediction runs inside a `@spaces.GPU` function, elsewhere that decorator changes
nothing, and without the `spaces` package there is none. `import app` builds nothing; `python app.py` serves.
"""

import argparse
import contextlib
import functools
import inspect
import os
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no telemetry unless the user turns it on

try:  # Hugging Face's ZeroGPU helper, imported before anything can touch CUDA (spaces-zerogpu docs)
    import spaces
except ImportError:  # a laptop or a server without it: nothing to decorate
    spaces = None

import gradio as gr
import torch
from PIL import Image

from devices import available_cpus, torch_thread
from figures import (
    attention_rollout,
    draw_attention_distance,
    draw_filters,
    draw_head_maps,
    draw_patch_similarity,
    draw_rollout,
    embedding_filters,
    equation_walk,
    mean_attention_distance,
    patch_under,
    position_embedding_similarity,
    similarity_picture,
)
from images import attention_overlay, example_photos, patch_grid, to_display
from serving import (
    DEFAULT_CHECKPOINT_DIR,
    FoodVision,
    Prediction,
    ServingError,
    TrainingUnavailable,
    add_model_arguments,
    check_model_arguments,
    load,
    needs_first_training,
    train_default_head,
    unavailable,
)

EXAMPLES = [str(path) for path in example_photos()]
# One request at a time, using every core: on a CPU that gives the lowest latency per request and bounds memory;
# the queue holds the rest.
ONE_AT_A_TIME = {"concurrency_limit": 1, "concurrency_id": "model"}
# While a request runs, a small elapsed-time counter instead of Gradio's default spinner over every output: the
# spinners animate every frame, and on a 2-core machine that drawing takes the CPU the model needs (the label shows
# about 0.07 s sooner; BENCHMARKS.md, in a real browser).
QUIET_PROGRESS = {"show_progress": "minimal"}
QUEUE_SIZE = 256  # requests waiting beyond this are turned away at once instead of piling up
# Gradio keeps a session's gr.State in memory until up to an hour after its tab closes, and the session of a REST
# API call, which holds no connection, until it is evicted: beyond this many sessions the oldest go, which bounds
# the kept predictions (about 2 MB a visitor) near 4 GB instead of Gradio's default 10,000 sessions.
STATE_SESSIONS = 2000
MAX_UPLOAD = "25mb"
# Gradio keeps every upload (and every picture it serves) on disk; a long-running Space would fill its disk.
# Every hour, the files more than an hour old are deleted (the examples are kept).
DELETE_CACHE = (3600, 3600)  # (how often, minimum age), in seconds
# ZeroGPU lends a GPU for each call of a @spaces.GPU function for at most this many seconds; shorter durations
# queue sooner. A prediction needs well under one.
GPU_SECONDS = 10
SIMILARITY_SCALE, SIMILARITY_GAP = 3, 1  # Figure 7 (centre) on the page: pixels per cell, cells between maps


def gpu(function):
    """`function` as a ZeroGPU task where the `spaces` package is installed (outside ZeroGPU its decorator returns
    the function as it is)."""
    return spaces.GPU(duration=GPU_SECONDS)(function) if spaces is not None else function


FINISHED = object()  # what next() returns for a handler's generator that has no update left


def on_the_torch_thread(handler):
    """`handler` computed on devices.torch_thread (why: TorchThread), a generator one update at a time."""
    if not inspect.isgeneratorfunction(handler):

        @functools.wraps(handler)
        def computed(*args):
            return torch_thread.run(handler, *args)

        return computed

    @functools.wraps(handler)
    def updates(*args):
        steps = handler(*args)
        try:
            while (update := torch_thread.run(next, steps, FINISHED)) is not FINISHED:
                yield update
        finally:
            if steps.gi_frame is not None:  # a visitor left mid-request: Gradio closes this from its event loop,
                torch_thread.later(steps.close)  # which must not wait for another visitor's model pass

    return updates


@contextlib.contextmanager
def errors_on_the_page():
    """A ServingError raised inside becomes an error message on the page (gr.Error) under its title."""
    try:
        yield
    except ServingError as error:
        raise gr.Error(str(error), title=error.title) from None


class Pictures:
    """PNG files for the page, each written under a new name and renamed into place. Gradio copies a returned file
    into its cache atomically; a returned PIL image it writes in place under a name made of the image's hash, so
    two visitors getting the same picture at once could read a half-written file (tests/test_app.py). Files older
    than MAX_AGE_S go at the first save after that, within SWEEP_EVERY_S: Gradio has copied them by then."""

    MAX_AGE_S = 60
    # The folder is swept at most this often, not on every save: under many visitors it holds thousands of files
    SWEEP_EVERY_S = 30

    def __init__(self):
        self.folder = Path(tempfile.mkdtemp(prefix="foodvision-pictures-"))
        self.swept = time.monotonic()

    def sweep(self) -> None:
        """Delete the files older than MAX_AGE_S, pictures and the leftovers of failed saves alike."""
        self.swept = time.monotonic()
        now = time.time()
        for old in self.folder.iterdir():
            try:
                if now - old.stat().st_mtime > self.MAX_AGE_S:
                    old.unlink()
            except FileNotFoundError:  # deleted by another event's sweep, or renamed by a save in progress
                pass
            except OSError as error:  # housekeeping never fails a visitor's request
                print(f"Could not delete an old picture: {error}", file=sys.stderr)

    def save(self, picture, name: str) -> str:
        if time.monotonic() - self.swept > self.SWEEP_EVERY_S:
            self.sweep()
        path = self.folder / f"{uuid.uuid4().hex}-{name}.png"
        partial = path.with_suffix(".partial")
        if isinstance(picture, Image.Image):
            picture.save(partial, format="png", compress_level=1)  # a few ms, not tens: bytes are cheap on loopback
        else:  # a matplotlib Figure
            picture.savefig(partial, format="png", dpi=110)
        partial.rename(path)
        return str(path)


@dataclass(frozen=True, eq=False)  # compared by identity: == on tensors is elementwise
class KeptPrediction:
    """What "Inside the ViT" draws of a visitor's last prediction, kept in their gr.State (see STATE_SESSIONS): each
    head's class-token attention and mean attention distance, about 0.7 MB, where every layer's full maps would be
    22 MB a visitor (BENCHMARKS.md, "Memory per visitor")."""

    probabilities: dict[str, float]
    pixels: torch.Tensor  # (3, H, W) model input, normalised, for the walk through Eqs. 1-4
    class_token_attention: torch.Tensor  # (layers, heads, N): each head's attention from the class token to a patch
    distances: torch.Tensor  # (layers, heads): mean attention distance in pixels (Figure 7, right)

    @classmethod
    def of(cls, prediction: Prediction, patch_size: int) -> "KeptPrediction":
        maps = prediction.attention_maps
        return cls(
            prediction.probabilities,
            prediction.pixels,
            torch.stack([attention[:, 0, 1:] for attention in maps]),
            mean_attention_distance([attention[None] for attention in maps], patch_size),
        )


class Page:
    """What the page computes for a photo, from one decode and one model pass (serving.FoodVision.classify)."""

    def __init__(self, foodvision: FoodVision):
        self.foodvision = foodvision
        self.pictures = Pictures()
        transforms = foodvision.transforms
        self.mean, self.std = transforms.mean, transforms.std
        if foodvision.model is not None:
            # Figure 7 (left and centre) depend on the weights alone: computed once, at start
            embedding = foodvision.patch_embedding
            self.filters = self.pictures.save(draw_filters(embedding_filters(embedding.projection.weight)), "filters")
            self.similarity = position_embedding_similarity(embedding.position_embedding)
            self.similarity_map = self.pictures.save(
                similarity_picture(self.similarity, SIMILARITY_SCALE, SIMILARITY_GAP), "similarity"
            )

    @property
    def patch(self) -> int:
        return self.foodvision.patch_size

    def patches(self, image_path: str | None) -> str | None:
        """The preprocessed image cut into its grid of patches (needs no model)."""
        if not image_path:
            return None
        shown = to_display(self.foodvision.preprocess(image_path), self.mean, self.std)
        return self.pictures.save(patch_grid(shown, self.patch), "patches")

    def predict(self, image_path: str | None):
        """The prediction (top 3) and its timing as soon as the model has spoken, then with them the patch grid, the
        last layer's class-token attention, Figure 6's rollout, and the KeptPrediction the deeper views draw from:
        two updates of one request, so the label does not wait for the drawing."""
        if not image_path:  # the photo was removed from the page
            yield None, "", None, None, None, None
            return
        started = time.perf_counter()
        prediction = self.foodvision.classify(image_path)
        answered_ms = (time.perf_counter() - started) * 1000
        timing = (
            f"**Model:** {prediction.model_ms:.0f} ms · **prediction:** {answered_ms:.0f} ms "
            f"(decode, preprocess, model; {self.foodvision.device.type})"
        )
        yield prediction.probabilities, timing, None, None, None, None  # the previous photo's pictures go
        kept = KeptPrediction.of(prediction, self.patch)
        shown = to_display(prediction.pixels, self.mean, self.std)
        grid = self.foodvision.grid_size
        # the class token's attention to each patch in the last layer, mean over the heads
        overlay = attention_overlay(shown, kept.class_token_attention[-1].mean(dim=0).reshape(grid, grid))
        rollout = attention_rollout([attention[None] for attention in prediction.attention_maps])[0]
        pictures = [
            self.pictures.save(patch_grid(shown, self.patch), "patches"),
            self.pictures.save(overlay, "attention"),
            self.pictures.save(draw_rollout(shown, rollout), "rollout"),
        ]
        drawn_ms = (time.perf_counter() - started) * 1000 - answered_ms
        yield prediction.probabilities, f"{timing} · **pictures:** {drawn_ms:.0f} ms more", *pictures, kept

    def inside(self, kept: KeptPrediction | None, layer: int):
        """The deeper views of the last prediction: one layer's attention per head, the attention distance per head
        against depth (Figure 7, right) with the examples' for reference, and the Eq. 1-4 walk."""
        if kept is None:
            return None, None, ""
        reference = self.foodvision.reference_distances
        distance_plot = draw_attention_distance(kept.distances, reference, "average over the examples")
        walk = equation_walk(self.foodvision.patch_embedding, kept.pixels, kept.probabilities, kept.distances)
        return self.heads(kept, layer), self.pictures.save(distance_plot, "distance"), walk

    def heads(self, kept: KeptPrediction | None, layer: int) -> str | None:
        """One layer's class-token attention, head by head: the one view that follows the layer slider."""
        if kept is None:
            return None
        shown = to_display(kept.pixels, self.mean, self.std)
        return self.pictures.save(draw_head_maps(kept.class_token_attention[layer - 1], shown), f"heads-layer-{layer}")

    def patch_similarity(self, selected: gr.SelectData) -> str | None:
        """The position-embedding similarity map of the patch clicked on Figure 7 (centre)."""
        x, y = selected.index
        patch = patch_under(x, y, self.foodvision.grid_size, SIMILARITY_SCALE, SIMILARITY_GAP)
        if patch is None:
            return None
        return self.pictures.save(draw_patch_similarity(self.similarity, patch), f"similarity-{patch}")


def uploaded_file(upload: dict | None) -> str | None:
    """The path of an uploaded file, from gr.Image's undecoded payload (FileData)."""
    if upload is None:
        return None
    if not upload.get("path"):
        raise ServingError("The upload arrived without a file; please upload the photo again.", title="Upload failed")
    return upload["path"]


def build_demo(foodvision: FoodVision) -> gr.Blocks:
    """The page; launching is left to the caller."""
    page = Page(foodvision)
    size, patch = foodvision.transforms.crop_size[0], foodvision.patch_size
    grid = size // patch
    with gr.Blocks(title="FoodVision Mini", delete_cache=DELETE_CACHE) as demo:
        names = foodvision.config["class_names"] if foodvision.config else ["food"]
        gr.Markdown(
            f"# FoodVision Mini\nDrop a photo of {' or '.join(f'**{name}**' for name in names)}. "
            "A Vision Transformer (ViT-B/16, ImageNet-pretrained and frozen, with a small trained head) names it "
            "and shows the image the way it reads it: a sequence of patches."
        )
        gr.Markdown(foodvision.status(), elem_id="status")
        with gr.Row():
            with gr.Column():
                image = gr.Image(
                    label="Food photo",
                    sources=["upload", "webcam", "clipboard"],
                    type="filepath",
                    height=360,
                    elem_id="photo",
                )
                gr.Examples(EXAMPLES, inputs=image, label="Real photos")
            with gr.Column():
                label = gr.Label(num_top_classes=3, label="Prediction", elem_id="prediction")
                timing = gr.Markdown(label="Prediction time", elem_id="timing")
        with gr.Row():
            picture = dict(format="png", interactive=False, height=260)
            patches = gr.Image(label=f"Patches: {grid}x{grid} of {patch}x{patch} pixels", elem_id="patches", **picture)
            attention = gr.Image(label="Attention: class token, last layer", elem_id="attention", **picture)
            rollout = gr.Image(label="Attention rollout, all layers (Figure 6)", elem_id="rollout", **picture)
        gr.Markdown(
            f"Left: the {size}x{size} input the model receives (the weights' own resize and centre crop), cut into "
            f'the sequence of {patch}x{patch} patches, the "{patch}x{patch} words" of the paper\'s title. Middle: '
            "how much the class token, whose final state is classified, attends to each patch in the last layer "
            "(mean over the heads). Right: attention rollout (Figure 6, Appendix D.8), the attention of all layers "
            "multiplied through, with the residual connections: what of each patch reaches the class token."
        )
        kept = gr.State()
        if foodvision.model is not None:
            layers = foodvision.predictor.vit.config.num_layers
            with gr.Accordion("Inside the ViT: the paper's figures for this photo and these weights", open=True):
                walk = gr.Markdown(elem_id="walk")
                with gr.Row():
                    with gr.Column():
                        layer = gr.Slider(1, layers, value=layers, step=1, label="Layer", elem_id="layer")
                        heads = gr.Image(label="The class token's attention, head by head", elem_id="heads", **picture)
                    distance = gr.Image(
                        label="Mean attention distance per head (Figure 7, right)", elem_id="distance", **picture
                    )
                with gr.Row():
                    gr.Image(
                        page.filters,
                        label="Embedding filters E: first 28 principal components (Figure 7, left)",
                        elem_id="filters",
                        **picture,
                    )
                    similarity = gr.Image(
                        page.similarity_map,
                        label="Position embedding similarity (Figure 7, centre): click a patch",
                        elem_id="position-similarity",
                        **picture,
                    )
                    chosen = gr.Image(
                        label="The clicked patch's similarity to every patch", elem_id="chosen", **picture
                    )
                gr.Markdown(
                    "Figure 7 (right): each dot is one head's mean attention distance, the pixels across which it "
                    "gathers information; in the paper some heads attend globally already in the lowest layers and "
                    "the distance grows with depth. Figure 7 (centre): the position embeddings learn the 2D grid, "
                    "each patch's embedding most similar to its own row and column. With stand-in weights (see the "
                    "status above) these figures are not the paper's."
                )
            with gr.Accordion("What model is serving", open=False):
                gr.Markdown(foodvision.describe(), elem_id="model-info")

        # The handlers take the upload undecoded (preprocess=False): gr.Image would open every file with Pillow
        # itself and answer a non-image with an error users cannot read, while every upload here goes through
        # images.load_rgb's guards and messages.
        @gpu
        @on_the_torch_thread
        def predict(upload: dict | None):
            with errors_on_the_page():
                yield from page.predict(uploaded_file(upload))

        @on_the_torch_thread
        def show_patches(upload: dict | None) -> str | None:
            with errors_on_the_page():
                return page.patches(uploaded_file(upload))

        outputs = [label, timing, patches, attention, rollout, kept]
        event = image.change(
            predict,
            image,
            outputs,
            preprocess=False,
            api_name="predict",
            show_progress_on=label,
            **QUIET_PROGRESS,
            **ONE_AT_A_TIME,
        )
        # The patch grid alone: an API endpoint (a button the page never shows), and the page's one view when no
        # model is serving
        patches_only = dict(inputs=image, outputs=patches, preprocess=False, **ONE_AT_A_TIME)
        gr.Button(visible=False).click(show_patches, api_name="patches", **patches_only)
        if foodvision.model is None:
            image.change(show_patches, api_visibility="private", **patches_only)
        else:
            private = dict(api_visibility="private", **QUIET_PROGRESS)
            event.then(on_the_torch_thread(page.inside), [kept, layer], [heads, distance, walk], **private)
            layer.release(on_the_torch_thread(page.heads), [kept, layer], heads, **private)
            similarity.select(on_the_torch_thread(page.patch_similarity), None, chosen, api_visibility="private")
    return demo


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_model_arguments(parser)
    # Hugging Face Spaces set GRADIO_SERVER_NAME=0.0.0.0; locally the app stays private by default.
    host = os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1")
    parser.add_argument("--host", default=host, help="address to serve on (0.0.0.0: every interface)")
    parser.add_argument("--port", type=int, default=int(os.environ.get("GRADIO_SERVER_PORT", 7860)))
    parser.add_argument("--share", action="store_true", help="also serve through a temporary public gradio.live link")
    return check_model_arguments(parser, parser.parse_args(argv))


# Reloads the notice page once training has ended, when the app itself is about to answer at the same address.
RELOAD_WHEN_TRAINED = "(notice) => { if (notice.startsWith('### Ready')) setTimeout(() => location.reload(), 4000); }"


def train_behind_a_notice(args: argparse.Namespace) -> str | None:
    """The first start with no head: train one (serving.train_default_head, minutes) while a small page at the
    app's address says so, instead of a page that does not answer; then close that page. Returns why training
    failed, or None."""
    started, outcome = time.monotonic(), {}

    def train() -> None:
        try:
            train_default_head()
        except TrainingUnavailable as error:
            outcome["problem"] = str(error)
        outcome["done"] = True

    def notice() -> str:
        if outcome.get("done"):
            return "### Ready\nThe head is trained; this page reloads into the app in a few seconds."
        return (
            f"### Starting: training the head ({time.monotonic() - started:.0f} s so far)\nThis is the first start "
            f"and there is no trained head at {DEFAULT_CHECKPOINT_DIR}: the app is training one with train_head.py's "
            "defaults (downloading the dataset and the pretrained weights, one backbone pass over the images, then "
            "the head). It takes a few minutes on a CPU; this page reloads into the app when it is done. Set "
            "FOODVISION_CHECKPOINT to a trained head's Hub repo to skip this (README, Deploy)."
        )

    thread = threading.Thread(target=train, name="first-start training", daemon=True)
    with gr.Blocks(title="FoodVision Mini: starting") as page:
        text = gr.Markdown(notice(), elem_id="status")
        gr.Timer(2).tick(notice, outputs=text).then(None, inputs=text, js=RELOAD_WHEN_TRAINED)
    page.launch(server_name=args.host, server_port=args.port, prevent_thread_lock=True)
    thread.start()
    thread.join()
    time.sleep(3)  # a last tick shows the visitors "Ready"
    page.close()
    return outcome.get("problem")


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(available_cpus())
    problem = train_behind_a_notice(args) if needs_first_training(args.checkpoint) else None
    if problem is None:
        foodvision = torch_thread.run(load, args.checkpoint, args.device, args.precision)
    else:
        foodvision = unavailable(str(DEFAULT_CHECKPOINT_DIR), problem)
    print(foodvision.describe(), flush=True)
    demo = torch_thread.run(build_demo, foodvision)
    demo.queue(max_size=QUEUE_SIZE).launch(
        server_name=args.host,
        server_port=args.port,
        share=args.share,
        max_file_size=MAX_UPLOAD,
        state_session_capacity=STATE_SESSIONS,
    )


if __name__ == "__main__":
    main(sys.argv[1:])
