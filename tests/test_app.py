"""The app as users meet it: a real `python app.py` server on 127.0.0.1 driven by gradio_client,
checked against the same prediction computed in this process; plus predict.py."""

import argparse
import inspect
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import NamedTuple

import gradio as gr
import httpx
import numpy as np
import pytest
import torch
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError
from PIL import Image

import app
import serving
from app import EXAMPLES, MAX_UPLOAD, QUEUE_POLLS_SECONDS, Inside, Page, Pictures, on_the_torch_thread, queued
from classifier import load_classifier, load_outlier_score
from devices import default_device, torch_thread
from figures import attention_rollout, mean_attention_distance
from images import attention_overlay, load_rgb, patch_grid, to_display
from inference import Predictor, calibration_images
from marks import needs_int8_engine
from outliers import above_threshold
from standins import (
    EXAMPLE_PHOTOS,
    REPO,
    app_server,
    encoded,
    free_port,
    fresh_clone,
    idle_load,
    page_config_once,
    png_declaring,
    probabilities_of,
    twelve_megapixel_jpeg,
    write_food_dataset,
)
from views import views_in

PHOTOS = [*EXAMPLE_PHOTOS, twelve_megapixel_jpeg()]


PHOTO_VIEWS = [view.name for view in views_in("photo")]


@pytest.fixture(scope="module")
def client(served):
    return Client(served[0], verbose=False)


class Expected(NamedTuple):
    probabilities: dict[str, float]
    grid: np.ndarray  # the photo as the ViT sees it, drawn as the page's patch view
    not_food: bool | None  # the outlier check's verdict (outliers.py); None where the checkpoint has no score


@pytest.fixture(scope="module")
def reference(trained_head_checkpoint, torch_home):
    """The app's pipeline computed here, independently of the server: image path -> Expected, on the device and in
    the precision the server defaults to (on a CUDA machine, fp32 on the GPU)."""
    model, transforms, config = load_classifier(trained_head_checkpoint)
    outliers = load_outlier_score(trained_head_checkpoint, config, model.hidden_dim)
    device = default_device()
    calibration = calibration_images(transforms) if device.type == "cpu" else None
    predictor = Predictor(model.to(device), calibration=calibration)  # the app's default inference path

    def compute(path) -> Expected:
        pixels = transforms(load_rgb(path, min_size=transforms.resize_size[0]))
        # with its attention maps, as the app asks: int8 rounding follows the (fp32-equal) attention path taken
        features = []
        probabilities = predictor(pixels.unsqueeze(0).to(device), [], features).softmax(dim=-1)[0].tolist()
        grid = patch_grid(to_display(pixels, transforms.mean, transforms.std), model.patch_size)
        not_food = None
        if outliers is not None:
            not_food = bool(above_threshold(outliers.score(features[0].cpu()), outliers.threshold).item())
        return Expected(dict(zip(config["class_names"], probabilities)), as_served(grid), not_food)

    return compute


def as_served(photo_drawing: Image.Image) -> np.ndarray:
    """A drawing of the photo as the page's JPEG decodes (app.Pictures): the same pixels, or another picture."""
    return np.asarray(Image.open(encoded(photo_drawing, "JPEG", **Pictures.PHOTO_JPEG)))


def assert_prediction(result, expected: Expected):
    label, timing, patches, attention, rollout, verdict = result
    assert ("does not look like pizza, steak or sushi" in verdict) if expected.not_food else verdict == ""
    probabilities = probabilities_of(label)
    assert set(probabilities) == set(expected.probabilities) and len(probabilities) == 3
    assert sum(probabilities.values()) == pytest.approx(1, abs=1e-5)
    assert probabilities == pytest.approx(expected.probabilities, abs=1e-5)
    assert label["label"] == max(expected.probabilities, key=expected.probabilities.get)
    model_ms, answered_ms, drawn_ms = (float(ms) for ms in re.findall(r"(\d+) ms", timing))
    assert 0 < model_ms <= answered_ms and drawn_ms >= 0
    assert Image.open(attention).size == Image.open(rollout).size == (224, 224)
    assert Image.open(patches).width > 224  # the 224 px input spread out by the gaps between patches


@pytest.mark.parametrize("photo", PHOTOS, ids=lambda path: f"{path.parent.name}/{path.name}")
def test_real_photo_prediction_and_patch_grid(client, reference, foodvision, photo):
    expected = reference(photo)
    result = client.predict(handle_file(photo), api_name="/predict")
    assert_prediction(result, expected)
    assert result[-1] == foodvision.classify(photo).warning()  # the not-food verdict, as the page computes it
    assert np.array_equal(np.asarray(Image.open(result[2]).convert("RGB")), expected.grid)  # one event, one decode

    grid = np.asarray(Image.open(client.predict(handle_file(photo), api_name="/patches")).convert("RGB"))
    assert np.array_equal(grid, expected.grid)
    white_columns = np.flatnonzero((grid >= 224).all(axis=(0, 2)))  # JPEG leaves the white gaps nearly white
    separators = 1 + np.count_nonzero(np.diff(white_columns) > 1) if len(white_columns) else 0
    assert separators == 224 // 16 - 1  # 14 columns of patches, 13 gaps between them


def encoded_bytes(image: Image.Image, format: str, **options) -> bytes:
    return encoded(image, format, **options).getvalue()


def gradient() -> Image.Image:
    return Image.merge(
        "RGB", [Image.linear_gradient("L"), Image.linear_gradient("L").rotate(90), Image.new("L", (256, 256), 90)]
    )


def exif_rotated_jpeg() -> bytes:
    exif = Image.Exif()
    exif[0x0112] = 6
    return encoded_bytes(gradient().resize((120, 80)), "JPEG", exif=exif)


BAD_INPUTS = {
    "truncated.jpg": (lambda: encoded_bytes(gradient(), "JPEG")[:3000], "damaged or truncated"),
    "random-bytes.jpg": (lambda: np.random.default_rng(0).bytes(5000), "not an image"),
    "notes.txt": (lambda: b"pizza, steak or sushi?\n" * 20, "not an image"),
    "empty.png": (lambda: b"", "not an image"),
    "bomb-10-gigapixels.png": (lambda: png_declaring(100_000, 100_000).getvalue(), "more than the limit of 67,108,864"),
    "bomb-72-megapixels.png": (
        lambda: png_declaring(9000, 8000).getvalue(),
        r"9000x8000 pixels \(72,000,000\), more than the limit of 67,108,864",
    ),
    # a few KB, but resized to a 256-pixel short side it would be 64,000,000x256 pixels
    "strip-1000000x4.png": (
        lambda: encoded_bytes(Image.new("RGB", (1_000_000, 4)), "PNG"),
        "1000000x4 pixels: its long side is more than 20 times",
    ),
}
ODD_BUT_VALID = {
    "cmyk.jpg": lambda: encoded_bytes(gradient().convert("CMYK"), "JPEG"),
    "16-bit.png": lambda: encoded_bytes(
        Image.fromarray((np.arange(256 * 256, dtype=np.uint16).reshape(256, 256))), "PNG"
    ),
    "palette.gif": lambda: encoded_bytes(gradient().convert("P", palette=Image.Palette.ADAPTIVE), "GIF"),
    "rgba.png": lambda: encoded_bytes(gradient().convert("RGBA").resize((64, 64)), "PNG"),
    "exif-rotated.jpg": exif_rotated_jpeg,
    "one-pixel.png": lambda: encoded_bytes(Image.new("RGB", (1, 1), (200, 120, 40)), "PNG"),
}


@pytest.fixture(scope="module")
def good_photo(reference):
    photo = Path(EXAMPLES[0])
    return photo, reference(photo)


@pytest.mark.parametrize("name", BAD_INPUTS)
def test_bad_upload_gets_a_clear_error_and_the_server_keeps_serving(client, good_photo, tmp_path, name):
    make, message = BAD_INPUTS[name]
    upload = tmp_path / name
    upload.write_bytes(make())
    for endpoint in ("/predict", "/patches"):
        with pytest.raises(AppError, match=message):
            client.predict(handle_file(upload), api_name=endpoint)
    photo, expected = good_photo
    assert_prediction(client.predict(handle_file(photo), api_name="/predict"), expected)


def test_an_unreadable_upload_clears_the_previous_photos_answer(foodvision, tmp_path):
    """The error comes beside an empty label and no pictures, and Inside the ViT (drawn from "kept") has no photo:
    not the previous photo's answer, as if it were this upload's."""
    page = Page(foodvision, Pictures())
    try:
        assert list(page.predict(EXAMPLES[0]))[-1]["kept"] is not None
        unreadable = tmp_path / "dinner.jpg"
        unreadable.write_text("not a photo")
        updates = page.predict(str(unreadable))
        cleared = next(updates)
        assert cleared["label"] is None and cleared["timing"] == "" and cleared["kept"] is None
        assert all(cleared[view.name] is None for view in app.PHOTO_VIEWS)
        with pytest.raises(serving.ServingError, match="This file is not an image"):
            next(updates)
    finally:
        shutil.rmtree(page.pictures.folder)


def test_a_visitors_unreadable_photo_is_a_message_on_the_page_and_nothing_in_the_log(capsys):
    """Gradio prints a gr.Error's traceback by default: forty lines for each bad upload buried the server's faults."""
    with pytest.raises(gr.Error, match="not an image") as raised:
        with app.errors_on_the_page():
            raise serving.ServingError("This file is not an image that can be read.", title="Cannot read this image")
    assert raised.value.title == "Cannot read this image" and not raised.value.print_exception
    assert capsys.readouterr().err == ""


def test_a_fault_clears_the_previous_answer_too_and_the_page_says_only_that_the_server_failed(
    foodvision, monkeypatch, capsys
):
    """Not only a ServingError: any exception while classifying (a bug, memory running out) must not leave the
    previous photo's answer beside the new photo, and must reach the page as a plain message, its traceback in the
    log rather than Gradio's bare "Error"."""
    page = Page(foodvision, Pictures())
    try:
        assert list(page.predict(EXAMPLES[0]))[-1]["kept"] is not None
        monkeypatch.setattr(foodvision, "classify", lambda path: 1 / 0)
        updates = page.predict(EXAMPLES[1])
        cleared = next(updates)
        assert cleared["label"] is None and cleared["kept"] is None
        assert all(cleared[view.name] is None for view in app.PHOTO_VIEWS)
        with pytest.raises(gr.Error, match="Something went wrong on the server") as raised:
            with app.errors_on_the_page():
                next(updates)
        assert raised.value.title == "Server error"
        assert "ZeroDivisionError" in capsys.readouterr().err
        assert not raised.value.print_exception  # the fault's traceback once, not Gradio's of the message too
    finally:
        shutil.rmtree(page.pictures.folder)


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="counts wake-ups from Linux's /proc")
def test_an_idle_server_leaves_the_cores_to_the_model(served):
    """Gradio's queue looks for events every millisecond, waking an idle server hundreds of times a second
    (BENCHMARKS.md, app_latency.py); polled as app.QUEUE_POLLS_SECONDS says, it wakes a few times a poll interval."""
    _, wakeups = idle_load(served[1].pid, seconds=3)
    polls = sum(1 / seconds for seconds in QUEUE_POLLS_SECONDS.values())
    assert served[1].poll() is None, "the server stopped"
    assert wakeups < 3 * polls, f"{wakeups:.0f} wake-ups a second against {polls:.0f} polls"


def test_the_queue_takes_the_apps_polling_intervals():
    """Each interval the app sets still exists in this Gradio and holds the app's value: a release that renames
    one fails here instead of silently polling every millisecond again."""
    queue = queued(gr.Blocks())._queue
    assert {interval: getattr(queue, interval) for interval in QUEUE_POLLS_SECONDS} == QUEUE_POLLS_SECONDS


def test_oversized_upload_is_refused_at_the_door(client, served, good_photo):
    limit = int(MAX_UPLOAD.removesuffix("mb")) * 1024 * 1024
    response = httpx.post(
        served[0] + "gradio_api/upload", files={"files": ("huge.jpg", bytes(limit + 1), "image/jpeg")}, timeout=60
    )
    assert response.status_code == 413 and f"maximum allowed size of {limit} bytes" in response.text
    photo, expected = good_photo
    assert_prediction(client.predict(handle_file(photo), api_name="/predict"), expected)


@pytest.mark.parametrize("name", ODD_BUT_VALID)
def test_odd_but_valid_upload_is_classified_like_here(client, reference, good_photo, tmp_path, name):
    upload = tmp_path / name
    upload.write_bytes(ODD_BUT_VALID[name]())
    assert_prediction(client.predict(handle_file(upload), api_name="/predict"), reference(upload))
    photo, expected = good_photo
    assert_prediction(client.predict(handle_file(photo), api_name="/predict"), expected)


def test_32_simultaneous_requests_all_get_their_own_correct_answer(client, reference, served):
    """Predictions and patch views mixed, as the page sends them (both decode the upload)."""
    requests = [
        (PHOTOS[index % len(PHOTOS)], ("/predict", "/patches")[index // len(PHOTOS) % 2]) for index in range(32)
    ]
    expected = {photo: reference(photo) for photo, _ in requests}
    with ThreadPoolExecutor(max_workers=32) as pool:
        results = list(pool.map(lambda request: client.predict(handle_file(request[0]), api_name=request[1]), requests))
    for (photo, endpoint), result in zip(requests, results):
        if endpoint == "/predict":
            assert_prediction(result, expected[photo])
        else:
            assert np.array_equal(np.asarray(Image.open(result).convert("RGB")), expected[photo].grid)
    peak_rss_kb = int(re.search(r"VmHWM:\s+(\d+) kB", Path(f"/proc/{served[1].pid}/status").read_text()).group(1))
    assert peak_rss_kb < 3 * 1024 * 1024, f"server peak RSS {peak_rss_kb / 1024:.0f} MiB"


def test_each_visitor_keeps_under_a_megabyte_for_inside_the_vit(foodvision):
    """What the page keeps in a visitor's gr.State for "Inside the ViT" is the class token's attention and the
    distances, not every layer's full maps (nor views into them, which would keep them alive)."""
    pictures, photo = Pictures(), str(EXAMPLE_PHOTOS[0])
    kept = list(Page(foodvision, pictures).predict(photo))[-1]["kept"]
    full = foodvision.classify(photo)
    tensors = [value for value in vars(kept).values() if isinstance(value, torch.Tensor)]
    kept_bytes = sum(tensor.untyped_storage().nbytes() for tensor in tensors)
    assert kept_bytes < 1_000_000 < 20_000_000 < sum(attention.nbytes for attention in full.attention_maps)
    maps = [attention[None] for attention in full.attention_maps]
    torch.testing.assert_close(kept.distances, mean_attention_distance(maps, foodvision.patch_size))
    torch.testing.assert_close(kept.class_token_attention[-1], full.attention_maps[-1][:, 0, 1:])
    assert kept.probabilities == pytest.approx(full.probabilities, abs=1e-6)
    torch.testing.assert_close(kept.rollout, attention_rollout(maps)[0])
    inside = Inside(foodvision, pictures).views(kept, 12)
    assert Image.open(inside["heads"]).width > 224 and Image.open(inside["distance"]).size[0] > 0
    assert inside["heads"].endswith(".jpg") and inside["distance"].endswith(".png")  # the photo's, and a plot
    assert "Eq. 4" in inside["walk"]


def test_offline_fresh_clone_starts_and_says_what_is_missing(tmp_path):
    """No checkpoint, no cached weights, the dataset unreachable (every download goes to a closed
    port): the page says so, predictions get that as an error, and the patch view still works."""
    clone = fresh_clone(tmp_path / "clone")
    closed = f"http://127.0.0.1:{free_port()}"
    offline = {
        "TORCH_HOME": str(tmp_path / "empty-torch-home"),
        "HTTP_PROXY": closed,
        "HTTPS_PROXY": closed,
        "http_proxy": closed,
        "https_proxy": closed,
        "NO_PROXY": "127.0.0.1,localhost",
        "no_proxy": "127.0.0.1,localhost",
        "HF_HUB_OFFLINE": "1",
        "FOODVISION_CHECKPOINT": "",
    }
    with app_server(clone, env=offline) as (url, _):
        page = page_config_once(url, "No model is serving")
        assert "pizza_steak_sushi" in page and "--checkpoint" in page
        client = Client(url, verbose=False)
        with pytest.raises(AppError, match="There is no trained head"):
            client.predict(handle_file(EXAMPLES[0]), api_name="/predict")
        grid = Image.open(client.predict(handle_file(EXAMPLES[0]), api_name="/patches"))
        assert grid.width > 224 and grid.width == grid.height
    assert not (clone / "checkpoints" / "foodvision-mini").exists()


def test_first_start_trains_a_head_while_the_page_says_so(tmp_path, torch_home):
    """A fresh clone whose dataset is already downloaded (a folder with the course zip's name, here 4 training and 2
    test photos a class: what is tested is the start, not the head) and whose weights are cached: the address
    answers at once with a notice that a head is being trained, then serves the app."""
    clone = fresh_clone(tmp_path / "clone")
    write_food_dataset(clone / "data" / "pizza_steak_sushi", 4, 2)
    environment = {"TORCH_HOME": str(torch_home), "FOODVISION_CHECKPOINT": "", "HF_HUB_OFFLINE": "1"}
    with app_server(clone, env=environment) as (url, _):
        page_config_once(url, "Starting: training the head", timeout=60)
        page_config_once(url, "Real photos")  # the app itself, with its examples
        result = Client(url, verbose=False).predict(handle_file(EXAMPLES[0]), api_name="/predict")
        assert set(probabilities_of(result[0])) == {"pizza", "steak", "sushi"}
    assert (clone / "checkpoints" / "foodvision-mini" / "config.json").is_file()


def test_a_first_training_that_fails_says_why_instead_of_no_head(monkeypatch, capsys):
    """A fault in the first start's training (here a RuntimeError, as torch raises when memory runs out) ends the
    notice and comes back as the reason no model serves, with its traceback on the console."""

    def fails():
        raise RuntimeError("DefaultCPUAllocator: not enough memory")

    monkeypatch.setattr(app, "train_default_head", fails)
    problem = app.train_behind_a_notice(argparse.Namespace(host="127.0.0.1", port=free_port()))
    assert problem.startswith("Training the first head failed: RuntimeError: DefaultCPUAllocator: not enough memory")
    assert "python train_head.py" in problem
    assert "Traceback" in capsys.readouterr().err


def test_on_zerogpu_the_first_start_trains_before_any_page_launches(monkeypatch):
    """ZeroGPU's `spaces` readies the GPU at the process's first Blocks.launch, so that launch must be the app's: the
    first start trains without a notice page there."""
    trained, launched = [], []
    monkeypatch.setenv("SPACES_ZERO_GPU", "true")
    monkeypatch.setattr(app, "train_default_head", lambda: trained.append(len(launched)))
    monkeypatch.setattr(gr.Blocks, "launch", lambda *args, **kwargs: launched.append(args))
    assert app.first_start(argparse.Namespace(host="127.0.0.1", port=free_port())) is None
    assert trained == [0] and launched == []


def test_many_visitors_clicking_the_same_example_at_once_get_whole_pictures(served, reference):
    """Each visitor on its own connection, all asking for the same example at the same moment, in two rounds (the
    second writes each picture over the first's files while its own visitors read them): every picture arrives whole
    (Gradio writes a returned PIL image in place under its hash, where one request could read another's half-written
    file; the app returns files, which Gradio copies atomically)."""
    photo = PHOTOS[0]
    expected = reference(photo)
    visitors = [Client(served[0], verbose=False) for _ in range(12)]
    for _ in range(2):
        with ThreadPoolExecutor(max_workers=len(visitors)) as pool:
            results = list(pool.map(lambda visitor: visitor.predict(handle_file(photo), api_name="/predict"), visitors))
        for result in results:
            assert_prediction(result, expected)
            for picture in result[2:5]:  # patches, attention, rollout
                with Image.open(picture) as image:
                    image.load()  # a truncated file fails here
            assert np.array_equal(np.asarray(Image.open(result[2]).convert("RGB")), expected.grid)


def test_drawings_of_the_photo_are_jpegs_within_a_few_levels_and_the_weights_pictures_exact_pngs():
    """The page's pictures of a real photo (its patch grid, the attention over it) go out as JPEG, close to the
    drawing; the weights' pictures (Figure 7's filters, a similarity map) keep their exact colours as PNG."""
    pictures = Pictures()
    photo = load_rgb(EXAMPLE_PHOTOS[0]).resize((224, 224))
    drawings = [
        patch_grid(photo, 16),
        attention_overlay(photo, torch.rand(14, 14, generator=torch.Generator().manual_seed(0))),
    ]
    try:
        for drawing in drawings:
            with Image.open(pictures.save(drawing, "drawing", photo=True)) as served:
                assert served.format == "JPEG" and served.size == drawing.size
                error = np.abs(np.asarray(served, dtype=int) - np.asarray(drawing, dtype=int))
            assert error.mean() < 3 and np.percentile(error, 99) < 16, (error.mean(), np.percentile(error, 99))
        weights_picture = Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 40, 3), dtype=np.uint8))
        with Image.open(pictures.save(weights_picture, "filters")) as served:
            assert served.format == "PNG" and np.array_equal(np.asarray(served), np.asarray(weights_picture))
    finally:
        shutil.rmtree(pictures.folder)


def test_old_pictures_are_swept_at_most_every_half_minute_and_new_ones_kept(monkeypatch):
    """The page's picture folder keeps what Gradio may still copy and deletes what it has long copied, the leftover
    of a failed save included; between sweeps a save does not list the folder."""
    pictures = Pictures()
    try:
        fresh = Path(pictures.save(Image.new("RGB", (8, 8)), "fresh"))
        old = Path(pictures.save(Image.new("RGB", (8, 8)), "old"))
        leftover = pictures.folder / "failed.partial"
        leftover.write_bytes(b"half a picture")
        long_ago = time.time() - 2 * Pictures.MAX_AGE_S
        for path in (old, leftover):
            os.utime(path, (long_ago, long_ago))

        pictures.save(Image.new("RGB", (8, 8)), "between-sweeps")
        assert old.exists() and leftover.exists()  # swept less than SWEEP_EVERY_S ago

        monkeypatch.setattr(pictures, "swept", time.monotonic() - Pictures.SWEEP_EVERY_S - 1)
        newest = Path(pictures.save(Image.new("RGB", (8, 8)), "after-a-sweep"))
        assert not old.exists() and not leftover.exists()
        assert fresh.exists() and newest.exists()
    finally:
        shutil.rmtree(pictures.folder)


def test_a_sweep_goes_on_past_files_that_vanish_or_cannot_be_deleted(monkeypatch, capsys):
    """Events save and sweep from several threads: a file another sweep deleted, or one that cannot be deleted,
    leaves the rest of the sweep and the visitor's request alone."""
    pictures = Pictures()
    try:
        paths = [Path(pictures.save(Image.new("RGB", (8, 8)), name)) for name in ("vanished", "stuck", "old")]
        long_ago = time.time() - 2 * Pictures.MAX_AGE_S
        for path in paths:
            os.utime(path, (long_ago, long_ago))
        vanished, stuck, old = paths
        unlink = Path.unlink

        def unlink_racing_another_sweep(path, *args, **kwargs):
            if path == vanished:
                unlink(path)
                raise FileNotFoundError(path)
            if path == stuck:
                raise PermissionError(f"Permission denied: {path}")
            return unlink(path, *args, **kwargs)

        monkeypatch.setattr(Path, "unlink", unlink_racing_another_sweep)
        pictures.sweep()
        assert not vanished.exists() and not old.exists() and stuck.exists()
        assert f"Could not delete an old picture: Permission denied: {stuck}" in capsys.readouterr().err
    finally:
        monkeypatch.undo()
        shutil.rmtree(pictures.folder)


def test_the_pictures_folder_goes_when_its_process_ends_and_stays_when_a_forked_child_does():
    """Every start of the app (and every test run) left a folder of pictures in the temp folder."""
    script = """import os, sys
from PIL import Image
from app import Pictures
pictures = Pictures()
pictures.save(Image.new("RGB", (8, 8)), "patches", photo=True)
if os.fork() == 0:
    sys.exit(0)  # a forked child, as ZeroGPU's, ending: the parent still serves from the folder
os.wait()
print(pictures.folder, any(pictures.folder.iterdir()))
"""
    ended = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=120)
    folder, kept_through_the_child = ended.stdout.split()
    assert kept_through_the_child == "True", ended.stderr
    assert not Path(folder).exists()


@pytest.mark.parametrize("decode", [False, True])
def test_the_floor_benchmarks_prediction_without_the_model_feeds_every_view(foodvision, monkeypatch, decode):
    """benchmarks/page_floor.py's stand-in for the model pass (browser_latency --floor) still gives the page all it
    draws, so the floor measures the page's work and not an error page."""
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parent.parent / "benchmarks"))
    from page_floor import classify_without_model

    monkeypatch.setattr(serving.FoodVision, "classify", lambda self, path: classify_without_model(self, path, decode))
    pictures, photo = Pictures(), str(EXAMPLE_PHOTOS[0])
    answered, drawn = Page(foodvision, pictures).predict(photo)
    assert answered["label"] == pytest.approx({name: 1 / 3 for name in foodvision.class_names})
    assert "**Model:** 0 ms" in answered["timing"]
    assert answered.keys() == {"label", "verdict", "timing", "kept", *PHOTO_VIEWS}
    assert all(answered[name] is None for name in [*PHOTO_VIEWS, "kept"])  # the last photo's views go at once
    kept = drawn.pop("kept")
    assert drawn.keys() == {"label", "verdict", "timing", *PHOTO_VIEWS}
    assert all(Image.open(drawn[name]).size[0] >= 224 and drawn[name].endswith(".jpg") for name in PHOTO_VIEWS)
    assert kept.pixels.abs().sum() > 0 if decode else kept.pixels.abs().sum() == 0
    inside = Inside(foodvision, pictures).views(kept, foodvision.predictor.vit.config.num_layers)
    assert Path(inside["heads"]).is_file() and Path(inside["distance"]).is_file() and "Eq. 4" in inside["walk"]


def test_every_handler_computes_on_the_one_torch_thread_and_a_request_left_midway_closes_there():
    """app.on_the_torch_thread: each update of a generator handler, and a plain handler, run on devices.torch_thread
    (one libgomp team in the process), with the signature Gradio reads; a visitor who leaves closes it there."""
    ran, closed = [], []

    def handler(upload: dict | None):
        try:
            ran.append(threading.get_ident())
            yield 1
            ran.append(threading.get_ident())
            yield 2
        finally:
            closed.append(threading.get_ident())

    wrapped = on_the_torch_thread(handler)
    assert inspect.isgeneratorfunction(wrapped) and inspect.signature(wrapped) == inspect.signature(handler)
    assert list(wrapped(None)) == [1, 2]
    torch_ident = torch_thread.run(threading.get_ident)
    assert set(ran) == {torch_ident} and torch_ident != threading.get_ident()
    updates = wrapped(None)
    next(updates)
    updates.close()
    torch_thread.run(lambda: None)  # the close is queued, not awaited: once this has run, so has the close
    assert closed == [torch_ident, torch_ident]
    assert on_the_torch_thread(lambda upload: threading.get_ident())(None) == torch_ident


def test_every_handler_shows_a_servingerror_under_its_title_and_a_fault_as_a_server_error(capsys):
    """Not only predict: Inside the ViT's drawings, the layer slider and the similarity map go through
    on_the_torch_thread too, so a fault there is a message on the page, not Gradio's bare "Error"."""

    def fault(upload):
        return 1 / 0

    def faulty_updates(upload):
        yield 1
        raise serving.ServingError("This photo is unusable.", title="Cannot read this image")

    with pytest.raises(gr.Error, match="Something went wrong on the server") as raised:
        on_the_torch_thread(fault)(None)
    assert raised.value.title == "Server error" and "ZeroDivisionError" in capsys.readouterr().err
    updates = on_the_torch_thread(faulty_updates)(None)
    assert next(updates) == 1
    with pytest.raises(gr.Error, match="This photo is unusable.") as raised:
        next(updates)
    assert raised.value.title == "Cannot read this image"


# app.main as `python app.py` runs it, up to the server's start; prints the process's native threads (those Python
# did not start: libraries' workers) before it and after it, and torch's thread count
STARTUP_THREADS = """
import os, sys, threading
import gradio as gr
import torch
import app

def native_threads():
    return len(os.listdir("/proc/self/task")) - len(threading.enumerate())

torch.set_num_threads(app.available_cpus())  # as app.main does first: threads it starts count in `before`
torch.cuda.is_available()  # asked by --device's default: on a GPU machine, CUDA's threads count in `before` too
before = native_threads()
gr.Blocks.launch = lambda self, *args, **kwargs: None
app.main(sys.argv[1:])
print(before, native_threads(), torch.get_num_threads())
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="counts the process's threads in /proc")
@needs_int8_engine  # int8 serves without ONNX Runtime, whose own thread pool would add to the count
def test_the_app_starts_with_one_openmp_team_the_torch_threads(trained_head_checkpoint, torch_home):
    """Every torch computation of a serving `python app.py` (a first start's training has a daemon thread of its
    own), the precision check in its argument parsing included, runs on devices.torch_thread, so libgomp starts one
    team of workers: with a second one (the main thread's), it stops their spinning between parallel regions, and
    the server's pass ran slower than the same pass in a process with one team (BENCHMARKS.md, "One libgomp team")."""
    argv = ["--checkpoint", str(trained_head_checkpoint), "--device", "cpu", "--precision", "int8"]
    result = subprocess.run(
        [sys.executable, "-c", STARTUP_THREADS, *argv], cwd=REPO, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stderr
    before, after, threads = map(int, result.stdout.split()[-3:])
    if threads < 2:
        pytest.skip("one torch thread: libgomp starts no workers to count")
    assert after - before == threads - 1, f"{after - before} native threads started, one team has {threads - 1}"
