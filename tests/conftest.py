"""Shared fixtures over standins.py: a random vit_b_16 where torchvision's loader looks first (`torch_home`), drawn
pizza/steak/sushi datasets, a head that train_head.py trained on one of them, and zips served over HTTP."""

import os
from pathlib import Path

import pytest
import torch

import inference
import serving
from marks import SMALL_HEAD
from standins import (
    REPO,
    TINY_CALIBRATION,
    BytesHandler,
    app_server,
    http_server,
    tiny_extractor,
    train_head_checkpoint,
    write_food_dataset,
    write_non_food_folder,
    write_random_backbone,
)

SMALL_SESSION_HEAD = bool(os.environ.get(SMALL_HEAD))  # set by the AVX2-kernel rerun (marks.py)


@pytest.fixture(scope="session")
def torch_home(tmp_path_factory) -> Path:
    home = write_random_backbone(tmp_path_factory.mktemp("torch_home"))
    previous = os.environ.get("TORCH_HOME")
    os.environ["TORCH_HOME"] = str(home)
    yield home
    if previous is None:
        os.environ.pop("TORCH_HOME", None)
    else:
        os.environ["TORCH_HOME"] = previous


@pytest.fixture(scope="session")
def pizza_steak_sushi_dataset(tmp_path_factory) -> Path:
    """A generated 3-class dataset (15 train / 8 test images a class, 64 px) for the dataset code, train_vit.py's tiny
    ViTs and train_head.py's download test: big enough that a test accuracy means something, small enough to train
    from scratch on a CPU."""
    return write_food_dataset(tmp_path_factory.mktemp("pizza_steak_sushi"), 15, 8)


@pytest.fixture
def serve_bytes():
    """serve_bytes(name, body, claimed_length=None) -> URL on 127.0.0.1 (the dataset downloads are tested over
    real HTTP; the server stops after the test)."""
    with http_server(BytesHandler, files={}) as server:

        def serve(name: str, body: bytes, claimed_length: int | None = None) -> str:
            server.files[f"/{name}"] = (body, len(body) if claimed_length is None else claimed_length)
            return f"http://127.0.0.1:{server.server_port}/{name}"

        yield serve


@pytest.fixture
def tiny_examples():
    """(a tiny ViT, "photos" for it, their fp32 y and maps from one pass), as serving.load hands the bundled photos'
    to choose_predictor and fastest_fp32."""
    model = tiny_extractor()
    maps = []
    with torch.inference_mode():
        features = inference.vit_from_torchvision(model).forward_features(TINY_CALIBRATION, maps)
    return model, TINY_CALIBRATION, features, maps


@pytest.fixture
def torch_build(monkeypatch):
    """torch_build(engines): this process as a build of torch with those quantized engines, for the test (["qnnpack",
    "none"], as torch for ARM reports them; ["none"]: no int8 kernels at all). What stays real: x86 builds have
    QNNPACK too, so its kernels (x86's, not ARM's) really run."""

    def simulate(engines: list[str]) -> None:
        monkeypatch.setattr(inference, "quantized_engines", lambda: engines)
        inference.int8_engine.cache_clear()

    yield simulate
    monkeypatch.undo()
    inference.int8_engine.cache_clear()


@pytest.fixture(scope="session")
def head_dataset(tmp_path_factory) -> Path:
    """The generated pizza/steak/sushi photos the session's head is trained on (60 train / 20 test a class): with
    fewer, the class Gaussians in 768 dimensions are too loose for the outlier score to mean much (BENCHMARKS.md,
    outlier_score.py). 15 / 8 where marks.SMALL_HEAD is set."""
    train, test = (15, 8) if SMALL_SESSION_HEAD else (60, 20)
    return write_food_dataset(tmp_path_factory.mktemp("head_dataset"), train, test, seed=3)


@pytest.fixture(scope="session")
def trained_head_checkpoint(tmp_path_factory, torch_home, head_dataset) -> Path:
    """A head checkpoint folder written by `python train_head.py --ood-dir` on `head_dataset`, against drawn non-food
    (6 of each standins.NON_FOOD_KINDS; no --ood-dir where marks.SMALL_HEAD is set), with the random `torch_home`
    backbone and the default hyperparameters; its console output is in stdout.txt beside the folder."""
    root = tmp_path_factory.mktemp("trained_head")
    ood = [] if SMALL_SESSION_HEAD else ["--ood-dir", str(write_non_food_folder(root / "not-food", 6, seed=4))]
    return train_head_checkpoint(head_dataset, root / "run" / "foodvision-mini", torch_home, *ood)


@pytest.fixture(scope="session")
def served(trained_head_checkpoint, torch_home):
    """(url, process) of `python app.py --checkpoint <trained_head_checkpoint>` on 127.0.0.1, one server for the
    session: the API tests' requests, bad ones included, then the browser's, as a public server takes them."""
    with app_server(REPO, "--checkpoint", str(trained_head_checkpoint), env={"TORCH_HOME": str(torch_home)}) as running:
        yield running


@pytest.fixture(scope="session")
def foodvision(trained_head_checkpoint, torch_home) -> serving.FoodVision:
    """The session's head loaded in this process as app.py loads it on the CPU (precision auto), for the page's own
    methods and what the served model says of itself. Tests read it; none changes it."""
    return serving.load(str(trained_head_checkpoint), "cpu")


@pytest.fixture(scope="session")
def foodvision_fp32(trained_head_checkpoint, torch_home) -> serving.FoodVision:
    """The same head served in fp32, as `--precision fp32` loads it (the engine measured at load, onnx_engine.py)."""
    return serving.load(str(trained_head_checkpoint), "cpu", "fp32")
