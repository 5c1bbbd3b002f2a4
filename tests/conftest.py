"""Shared fixtures over standins.py: a random vit_b_16 where torchvision's loader looks first (`torch_home`), a
drawn pizza/steak/sushi dataset, a head that train_head.py trained on them, and zips served over HTTP."""

import os
from pathlib import Path

import pytest

from standins import (
    BytesHandler,
    http_server,
    train_head_checkpoint,
    write_food_dataset,
    write_non_food_folder,
    write_random_backbone,
)


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
    """A generated 3-class dataset (15 train / 8 test images a class, 64 px): big enough that the head's test
    accuracy means something, small enough for a CPU backbone."""
    return write_food_dataset(tmp_path_factory.mktemp("pizza_steak_sushi"), 15, 8)


@pytest.fixture(scope="session")
def trained_head_checkpoint(tmp_path_factory, torch_home, pizza_steak_sushi_dataset) -> Path:
    """A head checkpoint folder written by `python train_head.py` on the generated dataset with the random
    `torch_home` backbone (default hyperparameters); its console output is in stdout.txt beside the folder."""
    run_dir = tmp_path_factory.mktemp("trained_head")
    return train_head_checkpoint(pizza_steak_sushi_dataset, run_dir / "foodvision-mini", torch_home)


@pytest.fixture
def serve_bytes():
    """serve_bytes(name, body, claimed_length=None) -> URL on 127.0.0.1 (the dataset downloads are tested over
    real HTTP; the server stops after the test)."""
    with http_server(BytesHandler, files={}) as server:

        def serve(name: str, body: bytes, claimed_length: int | None = None) -> str:
            server.files[f"/{name}"] = (body, len(body) if claimed_length is None else claimed_length)
            return f"http://127.0.0.1:{server.server_port}/{name}"

        yield serve


@pytest.fixture(scope="session")
def ood_trained_head(tmp_path_factory, torch_home) -> Path:
    """A head trained with --ood-dir on more drawn photos (60 train / 20 test a class) against drawn non-food (12 of
    each standins.NON_FOOD_KINDS): with 15 photos a class in 768 dimensions the class Gaussians are too loose for
    the outlier score to mean much (BENCHMARKS.md, outlier_score.py)."""
    root = tmp_path_factory.mktemp("ood")
    dataset = write_food_dataset(root / "pizza_steak_sushi", 60, 20, seed=3)
    non_food = write_non_food_folder(root / "not-food", 12, seed=4)
    return train_head_checkpoint(dataset, root / "run" / "foodvision-mini", torch_home, "--ood-dir", str(non_food))
