"""Shared fixtures. The pretrained backbone cannot be downloaded on the CI machines, so the
`torch_home` fixture writes a randomly initialised vit_b_16 state dict where torchvision's
weights loader looks first; everything downstream runs the real loading code. Nor can the
dataset: `pizza_steak_sushi_dataset` draws one, and `serve_bytes` serves zips over HTTP."""

import contextlib
import http.server
import io
import os
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image, ImageDraw


def write_random_backbone(home: Path) -> None:
    """A seeded, randomly initialised vit_b_16 state dict in `home`'s torch hub cache, under the
    real weights' file name (the benchmarks use it too)."""
    cache_file = home / "hub" / "checkpoints" / Path(torchvision.models.ViT_B_16_Weights.IMAGENET1K_V1.url).name
    if cache_file.exists():
        return
    cache_file.parent.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    torch.save(torchvision.models.vit_b_16().state_dict(), cache_file)


@pytest.fixture(scope="session")
def torch_home(tmp_path_factory) -> Path:
    home = tmp_path_factory.mktemp("torch_home")
    write_random_backbone(home)
    previous = os.environ.get("TORCH_HOME")
    os.environ["TORCH_HOME"] = str(home)
    yield home
    if previous is None:
        os.environ.pop("TORCH_HOME", None)
    else:
        os.environ["TORCH_HOME"] = previous


# Strongly different colours and shapes per class, so that even a randomly initialised backbone
# gives separable features; jitter and noise keep the task from being trivial.
_GENERATED_CLASSES = {
    "pizza": ((225, 150, 40), "ellipse"),
    "steak": ((110, 45, 30), "rectangle"),
    "sushi": ((235, 235, 225), "ellipses"),
}


def draw_food_image(class_name: str, rng: np.random.Generator, size: int = 64) -> Image.Image:
    """A small picture of `class_name`: a jittered shape in the class colour on a plate of random
    tint. With the random backbone this gives test accuracy 1.00 (seed 0) and 0.96 (seed 1) but
    not a perfect training fit; plates of any colour (tint 255) bring it down to 0.75."""
    colour, shape = _GENERATED_CLASSES[class_name]
    grey = rng.integers(110, 230)
    plate = tuple(int(np.clip(grey + rng.integers(-100, 101), 0, 255)) for _ in range(3))
    image = Image.new("RGB", (size, size), plate)
    draw = ImageDraw.Draw(image)
    fill = tuple(int(np.clip(c + rng.integers(-30, 31), 0, 255)) for c in colour)
    left, top = rng.integers(0, size // 6, size=2)
    right, bottom = size - rng.integers(0, size // 6, size=2)
    if shape == "ellipse":
        draw.ellipse((left, top, right, bottom), fill=fill)
    elif shape == "rectangle":
        draw.rectangle((left, top + size // 8, right, bottom - size // 8), fill=fill)
    else:
        for _ in range(5):
            x, y = rng.integers(0, size - size // 3, size=2)
            draw.ellipse((x, y, x + size // 3, y + size // 3), fill=fill, outline=(20, 60, 20), width=3)
    pixels = np.asarray(image, dtype=np.float32) + rng.normal(0, 25, size=(size, size, 3))
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def write_food_dataset(root: Path, train_per_class: int, test_per_class: int, seed: int = 0) -> Path:
    """A dataset folder in the course layout: root/{train,test}/<class>/<n>.jpg."""
    rng = np.random.default_rng(seed)
    for subset, count in (("train", train_per_class), ("test", test_per_class)):
        for class_name in _GENERATED_CLASSES:
            folder = root / subset / class_name
            folder.mkdir(parents=True)
            for index in range(count):
                draw_food_image(class_name, rng).save(folder / f"{index}.jpg", quality=90)
    return root


@pytest.fixture(scope="session")
def pizza_steak_sushi_dataset(tmp_path_factory) -> Path:
    """A generated 3-class dataset (15 train / 8 test images a class, 64 px): big enough that the
    head's test accuracy means something, small enough for a 0.3 s/image CPU backbone."""
    return write_food_dataset(tmp_path_factory.mktemp("pizza_steak_sushi"), 15, 8)


@pytest.fixture(scope="session")
def trained_head_checkpoint(tmp_path_factory, torch_home, pizza_steak_sushi_dataset) -> Path:
    """A head checkpoint folder written by train_head.main on the generated dataset with the
    random `torch_home` backbone (default hyperparameters). train_head's console output is kept
    in stdout.txt beside the folder."""
    import train_head

    run_dir = tmp_path_factory.mktemp("trained_head")
    checkpoint_dir = run_dir / "foodvision-mini"
    console = io.StringIO()
    with contextlib.redirect_stdout(console):
        status = train_head.main(["--data-dir", str(pizza_steak_sushi_dataset), "--output", str(checkpoint_dir)])
    (run_dir / "stdout.txt").write_text(console.getvalue())
    if status != 0:
        raise RuntimeError(f"train_head failed with status {status}:\n{console.getvalue()}")
    return checkpoint_dir


class _BytesHandler(http.server.BaseHTTPRequestHandler):
    """Serves the server's `files` {path: (body, claimed Content-Length)}; a claimed length above
    the body's is how a connection that drops mid-download looks to the client."""

    def do_GET(self):
        if self.path not in self.server.files:
            self.send_error(404)
            return
        body, claimed_length = self.server.files[self.path]
        self.send_response(200)
        self.send_header("Content-Type", "application/zip")
        self.send_header("Content-Length", str(claimed_length))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format, *args):
        pass


@pytest.fixture
def serve_bytes():
    """serve_bytes(name, body, claimed_length=None) -> URL on 127.0.0.1 (the dataset downloads
    are tested over real HTTP; the server stops after the test)."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _BytesHandler)
    server.files = {}
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()

    def serve(name: str, body: bytes, claimed_length: int | None = None) -> str:
        server.files[f"/{name}"] = (body, len(body) if claimed_length is None else claimed_length)
        return f"http://127.0.0.1:{server.server_port}/{name}"

    yield serve
    server.shutdown()
    server.server_close()
    thread.join()
