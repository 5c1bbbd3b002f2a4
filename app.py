"""FoodVision Mini's page: drop a food photo, see whether a Vision Transformer thinks it is pizza, steak or sushi,
how long that took, the image as the ViT sees it (its 16x16 patches, Figure 1 of Dosovitskiy et al. 2020) and
the paper's own analyses of the served model on this photo (Figures 6 and 7, the walk through Eqs. 1-4).

    python app.py                                # http://127.0.0.1:7860
    python app.py --checkpoint user/foodvision-mini --host 0.0.0.0
    python predict.py examples/ --figures out/   # the same, without a browser

Loading lives in serving.py, the precision's choice in inference.py, the views of a photo in views.py; this file
holds the page's text, its layout (lay_out), its events (wire), the translation of serving errors into messages on
the page, and `main`. It is also the Hugging Face Space, on every hardware: on ZeroGPU the prediction runs inside a
`@spaces.GPU` function, elsewhere that decorator changes nothing, and without the `spaces` package there is none.
`import app` builds nothing; `python app.py` serves."""

import argparse
import atexit
import contextlib
import functools
import inspect
import json
import os
import shutil
import sys
import tempfile
import threading
import time
import traceback
import uuid
from pathlib import Path

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no telemetry unless the user turns it on

try:  # Hugging Face's ZeroGPU helper, imported before anything can touch CUDA (spaces-zerogpu docs)
    import spaces
except ImportError:  # a laptop or a server without it: nothing to decorate
    spaces = None

import gradio as gr
import torch
from PIL import Image

from classifier import DEFAULT_CHECKPOINT_DIR, describe_weights, fewshot_line, outliers_line, trainable_parameters
from devices import available_cpus, torch_thread
from figures import (
    draw_filters,
    draw_patch_similarity,
    embedding_filters,
    patch_under,
    position_embedding_similarity,
    similarity_picture,
)
from hub import CHECKPOINT_VARIABLE, on_zero_gpu
from images import example_photos, to_display
from inference import KERNEL_LIBRARIES, sums_of
from onnx_engine import OnnxRuntimePredictor
from options import add_model_arguments, check_model_arguments
from serving import FoodVision, NoModel, ServingError, load
from train_head import TrainingUnavailable, needs_first_training, train_default_head
from views import PhotoAnalysis, View, Weights, draw_views, patches_view, views_in

EXAMPLES = [str(path) for path in example_photos()]
# One request at a time, using every core: on a CPU that gives the lowest latency per request and bounds memory;
# the queue holds the rest.
ONE_AT_A_TIME = {"concurrency_limit": 1, "concurrency_id": "model"}
# While a request runs, a small elapsed-time counter instead of Gradio's default spinner over every output: the
# spinners animate every frame, and on a 2-core machine that drawing takes the CPU the model needs (BENCHMARKS.md,
# in a real browser).
QUIET_PROGRESS = {"show_progress": "minimal"}
# A photo chosen while the last one's request is pending runs after it: the events of a new photo (input, an example's
# click) default to "once", which drops it, and the page would end with the old photo's answer beside the new photo
LAST_PHOTO = {"trigger_mode": "always_last"}
QUEUE_SIZE = 256  # requests waiting beyond this are turned away at once instead of piling up
# Gradio's queue looks for a new event every millisecond and for progress to send every 10 ms
# (queueing.Queue.sleep_when_free, progress_update_sleep_when_free): an idle server woke hundreds of times a second
# and took a tenth of a core (BENCHMARKS.md, app_latency.py), and on 2 cores each wake-up stops one of torch's two
# threads while the other waits for it at the end of the parallel region. Polled every 10 ms, a new event, or one
# waiting for the model's slot, starts at most 10 ms later than it would; these pages send no progress (no
# gr.Progress), so that poll can be slower still. The first-start notice page polls the same way, for the training.
QUEUE_POLLS_SECONDS = {"sleep_when_free": 0.01, "progress_update_sleep_when_free": 0.1}
# Gradio keeps a session's gr.State in memory until up to an hour after its tab closes, and the session of a REST
# API call, which holds no connection, until it is evicted: beyond this many sessions the oldest go, which bounds
# the kept analyses (views.PhotoAnalysis; BENCHMARKS.md, "Memory per visitor") instead of Gradio's default 10,000.
STATE_SESSIONS = 2000
MAX_UPLOAD = "25mb"
# Gradio keeps every upload (and every picture it serves) on disk; a long-running Space would fill its disk.
# Every hour, the files more than an hour old are deleted (the examples are kept).
DELETE_CACHE = (3600, 3600)  # (how often, minimum age), in seconds
# ZeroGPU lends a GPU for each call of a @spaces.GPU function for at most this many seconds; shorter durations
# queue sooner. A prediction needs far less (BENCHMARKS.md, app_latency.py on the H100 and H200).
GPU_SECONDS = 10
SIMILARITY_SCALE, SIMILARITY_GAP = 3, 1  # Figure 7 (centre) on the page: pixels per cell, cells between maps


def gpu(function):
    """`function` as a ZeroGPU task where the `spaces` package is installed (outside ZeroGPU its decorator returns
    the function as it is)."""
    return spaces.GPU(duration=GPU_SECONDS)(function) if spaces is not None else function


def cleared_first(task, cleared: dict):
    """`task` (a ZeroGPU task's generator) after an update clearing the previous answer. ZeroGPU's own failures (the
    visitor's GPU quota used up, its worker failing) arise before the task's first update, where Page.predict cannot
    clear it: the previous photo's label would stay beside the new photo."""

    @functools.wraps(task)
    def updates(*args):
        yield cleared
        yield from task(*args)

    return updates


FINISHED = object()  # what next() returns for a handler's generator that has no update left


def on_the_torch_thread(handler):
    """`handler` computed on devices.torch_thread (why: TorchThread), a generator one update at a time, its errors
    shown on the page (errors_on_the_page). Every handler of the page goes through here."""
    if not inspect.isgeneratorfunction(handler):

        @functools.wraps(handler)
        def computed(*args):
            with errors_on_the_page():
                return torch_thread.run(handler, *args)

        return computed

    @functools.wraps(handler)
    def updates(*args):
        steps = handler(*args)
        try:
            with errors_on_the_page():
                while (update := torch_thread.run(next, steps, FINISHED)) is not FINISHED:
                    yield update
        finally:
            if steps.gi_frame is not None:  # a visitor left mid-request: Gradio closes this from its event loop,
                torch_thread.later(steps.close)  # which must not wait for another visitor's model pass

    return updates


@contextlib.contextmanager
def errors_on_the_page():
    """A ServingError raised inside becomes an error message on the page (gr.Error) under its title, and nothing in
    the log: a visitor's unreadable photo is no fault of the server's, and forty lines of traceback each would bury
    those that are. Any other exception, a fault, becomes a plain message there and its traceback in the log."""
    try:
        yield
    except ServingError as error:
        raise gr.Error(str(error), title=error.title, print_exception=False) from None
    except Exception:
        traceback.print_exc()
        raise gr.Error(
            "Something went wrong on the server with this request; its log has the details. Please try again, or "
            "try another photo.",
            title="Server error",
            print_exception=False,  # the fault's own traceback is printed above, not Gradio's of this gr.Error
        ) from None


class Pictures:
    """Picture files for the page, each written under a new name and renamed into place. Gradio copies a returned file
    into its cache atomically; a returned PIL image it writes in place under a name made of the image's hash, so
    two visitors getting the same picture at once could read a half-written file (tests/test_app.py). Files older
    than MAX_AGE_S go at the first save after that, within SWEEP_EVERY_S: Gradio has copied them by then."""

    MAX_AGE_S = 60
    # The folder is swept at most this often, not on every save: under many visitors it holds thousands of files
    SWEEP_EVERY_S = 30
    # The drawings of a photo: quality 95 with full-resolution colour, within a few levels of the drawing
    # (tests/test_app.py), written faster and smaller than a PNG (BENCHMARKS.md, in a real browser)
    PHOTO_JPEG = {"quality": 95, "subsampling": 0}

    def __init__(self):
        self.folder = Path(tempfile.mkdtemp(prefix="foodvision-pictures-"))
        self.swept = time.monotonic()
        atexit.register(self.remove, os.getpid())

    def remove(self, owner: int) -> None:
        """The folder deleted at exit by the process that made it, not by a forked child (ZeroGPU's) ending."""
        if os.getpid() == owner:
            shutil.rmtree(self.folder, ignore_errors=True)

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

    def save(self, picture, name: str, photo: bool = False) -> str:
        """The picture's path: a picture drawn over the visitor's photo (`photo`) as a JPEG; the weights' pictures
        and every plot (a matplotlib Figure) as PNG, in their exact colours."""
        if time.monotonic() - self.swept > self.SWEEP_EVERY_S:
            self.sweep()
        jpeg = photo and isinstance(picture, Image.Image)
        path = self.folder / f"{uuid.uuid4().hex}-{name}.{'jpg' if jpeg else 'png'}"
        partial = path.with_suffix(".partial")
        if jpeg:
            picture.save(partial, format="jpeg", **self.PHOTO_JPEG)
        elif isinstance(picture, Image.Image):
            picture.save(partial, format="png", compress_level=1)  # fastest; bytes are cheap on loopback
        else:  # a matplotlib Figure
            picture.savefig(partial, format="png", dpi=110)
        partial.rename(path)
        return str(path)


def where(served: FoodVision) -> str:
    """Where and how the model runs, in a few words for the page."""
    if served.predictor.precision == "int8":  # its bits are the Predictor's, measured on the torch thread
        how = (
            "model.py's ViT with int8 Linear layers (dynamic quantization, {}'s kernels; {}-bit activations, {}-bit "
            "weights: they add int8 products in {})".format(
                KERNEL_LIBRARIES[served.predictor.engine], *served.predictor.bits, sums_of(served.predictor.engine)
            )
        )
    elif isinstance(served.predictor, OnnxRuntimePredictor):
        how = "fp32, model.py's ViT exported to ONNX and run by ONNX Runtime (the head in torch)"
    else:
        how = {
            "bf16": "model.py's ViT in bf16 (autocast)",
            "fp32": "fp32, model.py's ViT holding torchvision's vit_b_16 weights (for the attention maps)",
        }[served.predictor.precision]
    if on_zero_gpu():
        place = "ZeroGPU on Hugging Face Spaces (a GPU lent for each prediction)"
    elif served.device.type == "cuda":
        place = f"GPU ({torch.cuda.get_device_name(served.device)})"
    else:
        place = f"CPU ({torch.get_num_threads()} threads)"
    return f"{place}, {how}"


def status(served: FoodVision | NoModel) -> str:
    """Markdown for the top of the page: what is missing, or where the model runs and any warning about it."""
    if isinstance(served, NoModel):
        return (
            f"### No model is serving\n{served.problem}\n\n"
            "The patch view works without a model; predictions need a trained head."
        )
    lines = [f"**Running on** {where(served)}. {served.precision_reason}"]
    if served.outliers is None:
        lines.append(
            "**The not-food check is off:** this head was trained before train_head.py fitted an outlier score, so "
            "any photo gets a label. Train the head again to turn it on."
        )
    if not served.weights_check.published:
        lines.append(f"**Warning:** {served.weights_check.describe()}; the predictions are not the real model's.")
    return "\n\n".join(lines)


def model_info(served: FoodVision) -> str:
    """Markdown for "What model is serving": the checkpoint, its weights and its training records."""
    total = sum(parameter.numel() for parameter in served.model.parameters())
    lines = [
        f"- **Backbone:** torchvision `{served.config['backbone']}` (frozen), weights "
        f"{describe_weights(served.config['weights'])}",
        f"- **Weights file:** {served.weights_check.describe()}",
        f"- **Input:** {served.transforms.crop_size[0]} px, {served.patch_size}x{served.patch_size} patches",
        f"- **Head checkpoint:** `{served.source}`",
        f"- **Classes:** {', '.join(served.class_names)}",
        f"- **Parameters:** {total:,} in all, of which {trainable_parameters(served.model):,} in the trained head",
        f"- **Runs on:** {where(served)} (precision {served.predictor.precision}; figures in BENCHMARKS.md)",
        f"- **Why this precision:** {served.precision_reason}",
    ]
    for title, key in (("Metrics after training", "metrics"), ("Training", "training"), ("Data", "data")):
        if served.config.get(key):
            lines.append(f"- **{title}:** {format_record(served.config[key])}")
    lines += [f"- {line.strip()}" for line in (outliers_line(served.config), fewshot_line(served.config)) if line]
    return "\n".join(lines)


def format_record(value) -> str:
    """A config.json record as one line: floats to 4 significant digits, dicts as "key value, ..."."""
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, dict):
        return ", ".join(f"{key} {format_record(item)}" for key, item in value.items() if item is not None)
    return str(value)


PHOTO_VIEWS, INSIDE_VIEWS = views_in("photo"), views_in("inside")


class Page:
    """What the page computes for a photo, from one decode and one model pass (serving's classify), as updates
    keyed by output name: "label", "verdict" (serving.Prediction.warning), "timing", "kept" (the PhotoAnalysis the
    deeper views draw from) and each view's name (views.VIEWS)."""

    def __init__(self, served: FoodVision | NoModel, pictures: Pictures):
        self.served = served
        self.pictures = pictures

    @staticmethod
    def cleared() -> dict:
        """The update that takes the previous photo's answer and pictures off the page."""
        return {"label": None, "verdict": "", "timing": "", "kept": None} | {view.name: None for view in PHOTO_VIEWS}

    def predict(self, image_path: str | None):
        """The prediction (top 3) and its timing as soon as the model has spoken, then with them the photo's views:
        two updates of one request, so the label does not wait for the drawing."""
        cleared = self.cleared()
        if not image_path:  # the photo was removed from the page
            yield cleared
            return
        started = time.perf_counter()
        try:
            prediction = self.served.classify(image_path)
        except Exception:
            yield cleared  # beside the error, not the previous photo's answer as if it were this upload's
            raise
        answered_ms = (time.perf_counter() - started) * 1000
        timing = (
            f"**Model:** {prediction.model_ms:.0f} ms · **prediction:** {answered_ms:.0f} ms "
            f"(decode, preprocess, model; {self.served.device.type})"
        )
        answer = {"label": prediction.probabilities, "verdict": prediction.warning()}
        yield cleared | answer | {"timing": timing}  # the deeper views wait for this photo's
        analysis = PhotoAnalysis.of(prediction, self.served)
        drawn = draw_views(PHOTO_VIEWS, analysis, Weights.of(self.served))
        pictures = {name: self.pictures.save(picture, name, photo=True) for name, picture in drawn.items()}
        drawn_ms = (time.perf_counter() - started) * 1000 - answered_ms
        # every output again: an API client reads only the last update
        yield answer | {"timing": f"{timing} · **pictures:** {drawn_ms:.0f} ms more", **pictures, "kept": analysis}

    def patches(self, image_path: str | None) -> str | None:
        """The preprocessed image cut into its grid of patches (needs no model)."""
        if not image_path:
            return None
        shown = to_display(self.served.preprocess(image_path), self.served.transforms.mean, self.served.transforms.std)
        return self.pictures.save(patches_view(shown, self.served.patch_size), "patches", photo=True)


class Inside:
    """What "Inside the ViT" computes: the deeper views of the last prediction (views.VIEWS' "inside" section) and
    Figure 7 (left and centre), which depend on the weights alone and are drawn once, at start."""

    def __init__(self, served: FoodVision, pictures: Pictures):
        self.weights = Weights.of(served)
        self.pictures = pictures
        self.layers = served.predictor.vit.config.num_layers
        embedding = served.patch_embedding
        self.filters = pictures.save(draw_filters(embedding_filters(embedding.projection.weight)), "filters")
        self.similarity = position_embedding_similarity(embedding.position_embedding)
        similarity_map = similarity_picture(self.similarity, SIMILARITY_SCALE, SIMILARITY_GAP)
        self.similarity_map = pictures.save(similarity_map, "similarity")
        self.grid_size = served.grid_size

    def views(self, analysis: PhotoAnalysis | None, layer: int, views=INSIDE_VIEWS) -> dict:
        """{view name: Markdown or a picture's path}, nothing drawn before a prediction."""
        if analysis is None:
            return {view.name: None for view in views}
        drawn = draw_views(views, analysis, self.weights, layer)
        return {
            view.name: drawn[view.name] if view.text else self.save(view, drawn[view.name], layer) for view in views
        }

    def save(self, view: View, picture, layer: int) -> str:
        name = f"{view.name}-layer-{layer}" if view.follows_layer else view.name
        return self.pictures.save(picture, name, photo=True)  # every view is of the photo (views.py)

    def patch_similarity(self, selected: gr.SelectData) -> str | None:
        """The position-embedding similarity map of the patch clicked on Figure 7 (centre)."""
        x, y = selected.index
        patch = patch_under(x, y, self.grid_size, SIMILARITY_SCALE, SIMILARITY_GAP)
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


def image_output(view: View, grid: int, patch: int) -> gr.Image:
    return gr.Image(
        label=view.caption.format(grid=grid, patch=patch),
        elem_id=view.name,
        interactive=False,
        height=260,
    )


def lay_out(served: FoodVision | NoModel, inside: Inside | None) -> tuple[gr.Blocks, dict]:
    """The page's components, unwired: (the Blocks, {output or input name: component})."""
    size, patch, grid = served.transforms.crop_size[0], served.patch_size, served.grid_size
    names = served.class_names if isinstance(served, FoodVision) else ["food"]
    parts = {}
    with gr.Blocks(title="FoodVision Mini", delete_cache=DELETE_CACHE) as demo:
        gr.Markdown(
            f"# FoodVision Mini\nDrop a photo of {' or '.join(f'**{name}**' for name in names)}. "
            "A Vision Transformer (ViT-B/16, ImageNet-pretrained and frozen, with a small trained head) names it "
            "and shows the image the way it reads it: a sequence of patches."
        )
        gr.Markdown(status(served), elem_id="status")
        with gr.Row():
            with gr.Column():
                parts["image"] = gr.Image(
                    label="Food photo",
                    sources=["upload", "webcam", "clipboard"],
                    type="filepath",
                    height=360,
                    elem_id="photo",
                )
                parts["examples"] = gr.Examples(EXAMPLES, inputs=parts["image"], label="Real photos")
            with gr.Column():
                parts["label"] = gr.Label(num_top_classes=3, label="Prediction", elem_id="prediction")
                parts["verdict"] = gr.Markdown(elem_id="verdict")  # says so when the photo looks like no class
                parts["timing"] = gr.Markdown(label="Prediction time", elem_id="timing")
        with gr.Row():
            parts |= {view.name: image_output(view, grid, patch) for view in PHOTO_VIEWS}
        gr.Markdown(
            f"Left: the {size}x{size} input the model receives (the weights' own resize and centre crop), cut into "
            f'the sequence of {patch}x{patch} patches, the "{patch}x{patch} words" of the paper\'s title. Middle: '
            "how much the class token, whose final state is classified, attends to each patch in the last layer "
            "(mean over the heads). Right: attention rollout (Figure 6, Appendix D.8), the attention of all layers "
            "multiplied through, with the residual connections: what of each patch reaches the class token."
        )
        parts["kept"] = gr.State()
        if inside is not None:
            with gr.Accordion("Inside the ViT: the paper's figures for this photo and these weights", open=True):
                parts |= {view.name: gr.Markdown(elem_id=view.name) for view in INSIDE_VIEWS if view.text}
                with gr.Row():
                    with gr.Column():
                        parts["layer"] = gr.Slider(
                            1, inside.layers, value=inside.layers, step=1, label="Layer", elem_id="layer"
                        )
                        for view in INSIDE_VIEWS:
                            if view.follows_layer:
                                parts[view.name] = image_output(view, grid, patch)
                    for view in INSIDE_VIEWS:
                        if not view.text and not view.follows_layer:
                            parts[view.name] = image_output(view, grid, patch)
                with gr.Row():
                    picture = dict(interactive=False, height=260)
                    gr.Image(
                        inside.filters,
                        label="Embedding filters E: first 28 principal components (Figure 7, left)",
                        elem_id="filters",
                        **picture,
                    )
                    parts["similarity"] = gr.Image(
                        inside.similarity_map,
                        label="Position embedding similarity (Figure 7, centre): click a patch",
                        elem_id="position-similarity",
                        **picture,
                    )
                    parts["chosen"] = gr.Image(
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
                gr.Markdown(model_info(served), elem_id="model-info")
    return demo, parts


def by_component(parts: dict, names: list[str]):
    """(the components named, a function turning an update keyed by name into one keyed by component)."""

    def update(values: dict) -> dict:
        return {parts[name]: value for name, value in values.items()}

    return [parts[name] for name in names], update


def clearing_script(components: list) -> str:
    """A JavaScript function giving each component its empty value, as gr.ClearButton clears: no request is sent."""
    empty = [component.postprocess(None) for component in components]
    return f"() => {json.dumps([value.model_dump() if hasattr(value, 'model_dump') else value for value in empty])}"


def wire(demo: gr.Blocks, parts: dict, page: Page, inside: Inside | None) -> None:
    """The page's events. The handlers take the upload undecoded (preprocess=False): gr.Image would open every file
    with Pillow itself and answer a non-image with an error users cannot read, while every upload here goes through
    images.load_rgb's guards and messages."""
    image = parts["image"]
    outputs, keyed = by_component(parts, ["label", "timing", *(view.name for view in PHOTO_VIEWS), "kept", "verdict"])

    @on_the_torch_thread
    def predict(upload: dict | None):
        for update in page.predict(uploaded_file(upload)):
            yield keyed(update)

    task = gpu(predict)
    if task is not predict:  # on ZeroGPU; elsewhere its decorator returns the function as it is
        predict = cleared_first(task, keyed(Page.cleared()))

    @on_the_torch_thread
    def show_patches(upload: dict | None) -> str | None:
        return page.patches(uploaded_file(upload))

    # A new photo: the visitor's upload, webcam shot, paste or removal (input: change fires twice when a photo
    # replaces another, which ran the model twice), or an example's click, which sets the photo without an input
    new_photo = (image.input, parts["examples"].load_input_event.then)
    with demo:
        photo_views = PHOTO_VIEWS + (INSIDE_VIEWS if inside is not None else ())
        answers, _ = by_component(parts, ["label", "timing", "verdict", *(view.name for view in photo_views)])
        for trigger in new_photo:  # the previous answer off the page at once, in the browser, while this one waits
            trigger(None, None, answers, js=clearing_script(answers), queue=False, api_visibility="private")
        events = [
            trigger(
                predict,
                image,
                outputs,
                preprocess=False,
                show_progress_on=parts["label"],
                **api,
                **LAST_PHOTO,
                **QUIET_PROGRESS,
                **ONE_AT_A_TIME,
            )
            for trigger, api in zip(new_photo, ({"api_name": "predict"}, {"api_visibility": "private"}))
        ]
        # The patch grid alone: an API endpoint (a button the page never shows), and the page's one view when no
        # model is serving
        patches_only = dict(inputs=image, outputs=parts["patches"], preprocess=False, **ONE_AT_A_TIME)
        gr.Button(visible=False).click(show_patches, api_name="patches", **patches_only)
        if inside is None:
            for trigger in new_photo:
                trigger(show_patches, api_visibility="private", **LAST_PHOTO, **patches_only)
            return
        private = dict(api_visibility="private", **QUIET_PROGRESS)
        inside_outputs, inside_keyed = by_component(parts, [view.name for view in INSIDE_VIEWS])
        following = tuple(view for view in INSIDE_VIEWS if view.follows_layer)
        following_outputs, following_keyed = by_component(parts, [view.name for view in following])

        @on_the_torch_thread
        def draw_inside(analysis: PhotoAnalysis | None, layer: int):
            return inside_keyed(inside.views(analysis, layer))

        @on_the_torch_thread
        def follow_layer(analysis: PhotoAnalysis | None, layer: int):
            return following_keyed(inside.views(analysis, layer, following))

        for event in events:
            event.then(draw_inside, [parts["kept"], parts["layer"]], inside_outputs, **private)
        # input: a drag, a key or a typed number; always_last: after a pending redraw, the layer last chosen
        parts["layer"].input(
            follow_layer, [parts["kept"], parts["layer"]], following_outputs, trigger_mode="always_last", **private
        )
        parts["similarity"].select(
            on_the_torch_thread(inside.patch_similarity), None, parts["chosen"], api_visibility="private"
        )


def build_demo(served: FoodVision | NoModel) -> gr.Blocks:
    """The page; launching is left to the caller."""
    pictures = Pictures()
    inside = Inside(served, pictures) if isinstance(served, FoodVision) else None
    demo, parts = lay_out(served, inside)
    wire(demo, parts, Page(served, pictures), inside)
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


NOTICE_TITLE = "FoodVision Mini: starting"
TRAINING_HEADING = "### Starting: training the head"
# Once training has ended, the notice page asks its address for a page every second and reloads when the app itself
# answers there: not the notice page (still closing), and not nothing (the model loading in between, seconds with the
# real weights), which a reload would turn into the browser's "This site can't be reached".
RELOAD_WHEN_TRAINED = f"""(notice) => {{
    if (notice.startsWith({json.dumps(TRAINING_HEADING)}) || window.awaitingTheApp) return;
    window.awaitingTheApp = true;
    const askAgain = () => setTimeout(ask, 1000);
    const ask = () => fetch(location.href, {{cache: 'no-store', signal: AbortSignal.timeout(5000)}})
        .then(response => response.ok ? response.text() : {json.dumps(NOTICE_TITLE)})
        .then(page => page.includes({json.dumps(NOTICE_TITLE)}) ? askAgain() : location.reload(), askAgain);
    ask();
}}"""


def first_start(args: argparse.Namespace) -> str | None:
    """The first start with no head: train one (train_head.train_default_head, minutes), behind a notice page at the
    app's address (train_behind_a_notice), except on ZeroGPU. There `spaces` readies the GPU at the process's first
    Blocks.launch (its startup: the model's CUDA tensors packed, the @spaces.GPU functions reported), which must be
    the app's; the Space's own page says it is starting meanwhile. Returns why training failed, or None."""
    return torch_thread.run(train_first_head) if on_zero_gpu() else train_behind_a_notice(args)


def train_first_head() -> str | None:
    """train_head.train_default_head; why it failed, or None."""
    try:
        train_default_head()
    except TrainingUnavailable as error:
        return str(error)
    except Exception as error:  # a fault, not a missing part: the page says so, where "no head" would mislead
        traceback.print_exc()
        return (
            f"Training the first head failed: {type(error).__name__}: {error}. The console has the traceback; "
            "`python train_head.py` runs the same training on its own."
        )
    return None


def train_behind_a_notice(args: argparse.Namespace) -> str | None:
    """train_first_head while a small page at the app's address says so, instead of a page that does not answer;
    then close that page."""
    started, outcome = time.monotonic(), {}

    def train() -> None:
        try:
            outcome["problem"] = train_first_head()
        finally:
            outcome["done"] = True

    def notice() -> str:
        if outcome.get("done") and outcome.get("problem"):
            return "### Training failed\nThis page turns into the app in a few seconds; it says why."
        if outcome.get("done"):
            return "### Ready\nThe head is trained; this page turns into the app as soon as the model is loaded."
        return (
            f"{TRAINING_HEADING} ({time.monotonic() - started:.0f} s so far)\nThis is the first start "
            f"and there is no trained head at {DEFAULT_CHECKPOINT_DIR}: the app is training one with train_head.py's "
            "defaults (downloading the dataset and the pretrained weights, one backbone pass over the images, then "
            "the head). It takes a few minutes on a CPU; this page turns into the app when it is done. Set "
            f"{CHECKPOINT_VARIABLE} to a trained head's Hub repo to skip this (README, Deploy)."
        )

    thread = threading.Thread(target=train, name="first-start training", daemon=True)
    with gr.Blocks(title=NOTICE_TITLE) as page:
        text = gr.Markdown(notice(), elem_id="status")
        timer = gr.Timer(2)
        # the last tick stops the timer: the page's own loop (RELOAD_WHEN_TRAINED) waits for the app from there
        timer.tick(lambda: (notice(), gr.Timer(active=not outcome.get("done"))), outputs=[text, timer]).then(
            None, inputs=text, js=RELOAD_WHEN_TRAINED
        )
    queued(page).launch(server_name=args.host, server_port=args.port, prevent_thread_lock=True)
    thread.start()
    thread.join()
    time.sleep(3)  # a last tick shows the visitors "Ready"
    page.close()
    return outcome.get("problem")


def queued(demo: gr.Blocks) -> gr.Blocks:
    """demo with Gradio's queue, polled at most as often as QUEUE_POLLS_SECONDS says (Gradio polls less often on
    Windows). The polling intervals are no public setting: where a Gradio release no longer has one, Gradio's own
    stays."""
    demo.queue(max_size=QUEUE_SIZE)
    for interval, seconds in QUEUE_POLLS_SECONDS.items():
        if hasattr(demo._queue, interval):
            setattr(demo._queue, interval, max(getattr(demo._queue, interval), seconds))
    return demo


def main(argv: list[str] | None = None) -> None:
    torch.set_num_threads(available_cpus())
    # parse_args tries the int8 kernels (inference.int8_engine): on the torch thread too, or the main thread would
    # keep a libgomp team of its own beside the torch thread's, and the model's pass slow down (devices.TorchThread)
    args = torch_thread.run(parse_args, argv)
    problem = first_start(args) if needs_first_training(args.checkpoint) else None
    if problem is None:
        served = torch_thread.run(load, args.checkpoint, args.device, args.precision)
    else:
        served = NoModel.because(str(DEFAULT_CHECKPOINT_DIR), problem)
    print(status(served) if isinstance(served, NoModel) else model_info(served), flush=True)
    demo = torch_thread.run(build_demo, served)
    queued(demo).launch(
        server_name=args.host,
        server_port=args.port,
        share=args.share,
        max_file_size=MAX_UPLOAD,
        state_session_capacity=STATE_SESSIONS,
    )


if __name__ == "__main__":
    main(sys.argv[1:])
