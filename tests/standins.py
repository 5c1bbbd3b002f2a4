"""Offline stand-ins for what the tests and benchmarks cannot download, and the helpers that drive the real parts.

These machines reach no model hub, dataset host or Hugging Face: torchvision's pretrained weights, the course's
dataset and the Hub are replaced by a seeded random vit_b_16 written where torchvision's loader looks first,
pizza/steak/sushi pictures drawn here, and servers on 127.0.0.1, so every real loading path still runs. Neither
the app nor training imports this module; a fresh clone holds all it needs.
"""

import base64
import contextlib
import hashlib
import http.server
import io
import json
import os
import re
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import zlib
from pathlib import Path

import numpy as np
import torch
import torchvision
from PIL import Image, ImageDraw

from images import example_photos

REPO = Path(__file__).resolve().parent.parent  # the project folder, this file being in tests/
EXAMPLE_PHOTOS = example_photos()
TINY_VIT = dict(image_size=32, patch_size=8, num_layers=2, num_heads=2, hidden_dim=16, mlp_dim=32)
TINY_CALIBRATION = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(1))


def tiny_extractor(seed: int = 0) -> torch.nn.Module:
    """A torchvision VisionTransformer (TINY_VIT) with a 3-class head, small enough for structural checks in
    milliseconds."""
    torch.manual_seed(seed)
    model = torchvision.models.VisionTransformer(**TINY_VIT)
    model.heads = torch.nn.Linear(TINY_VIT["hidden_dim"], 3)
    return model.eval()


def write_random_backbone(home: Path) -> Path:
    """A seeded, randomly initialised vit_b_16 state dict in `home`'s torch hub cache, under the real
    IMAGENET1K_V1 file name, so torchvision loads it as if it had downloaded the weights. Returns `home`."""
    cache_file = home / "hub" / "checkpoints" / Path(torchvision.models.ViT_B_16_Weights.IMAGENET1K_V1.url).name
    if not cache_file.exists():
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        torch.manual_seed(0)
        torch.save(torchvision.models.vit_b_16().state_dict(), cache_file)
    return home


# Strongly different colours and shapes per class, so that even a randomly initialised backbone gives separable
# features; jitter and noise keep the task from being trivial.
GENERATED_CLASSES = {
    "pizza": ((225, 150, 40), "ellipse"),
    "steak": ((110, 45, 30), "rectangle"),
    "sushi": ((235, 235, 225), "ellipses"),
}


def draw_food_image(class_name: str, rng: np.random.Generator, size: int = 64) -> Image.Image:
    """A small picture of `class_name`: a jittered shape in the class colour on a plate of random tint. With the
    random backbone a head trained on these reaches a high test accuracy but not a perfect training fit."""
    colour, shape = GENERATED_CLASSES[class_name]
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


NON_FOOD_KINDS = ("noise", "text", "stripes", "triangle", "gradient")


def draw_non_food_image(kind: str, rng: np.random.Generator, size: int = 64) -> Image.Image:
    """A small picture of something that is none of GENERATED_CLASSES: coloured noise, a line of text on paper,
    stripes, a blue or green triangle, or a smooth gradient."""
    if kind == "noise":
        return Image.fromarray(rng.integers(0, 256, size=(size, size, 3), dtype=np.uint8))
    if kind == "gradient":
        ramp = np.linspace(0, 1, size, dtype=np.float32)
        start, end = rng.integers(0, 256, size=(2, 3))
        pixels = start + (end - start) * ramp[:, None, None] * np.ones((size, size, 1), np.float32)
        return Image.fromarray(pixels.astype(np.uint8))
    image = Image.new("RGB", (size, size), tuple(int(v) for v in rng.integers(180, 256, size=3)))
    draw = ImageDraw.Draw(image)
    if kind == "text":
        for row in range(0, size, 12):
            words = "".join(chr(int(c)) for c in rng.integers(97, 123, size=10))
            draw.text((2, row), words, fill=(0, 0, 0))
    elif kind == "stripes":
        width = int(rng.integers(3, 9))
        colour = tuple(int(v) for v in rng.integers(0, 120, size=3))
        for x in range(0, size, 2 * width):
            draw.rectangle((x, 0, x + width - 1, size), fill=colour)
    else:
        colour = (int(rng.integers(0, 60)), int(rng.integers(100, 200)), int(rng.integers(150, 256)))
        points = [tuple(int(v) for v in rng.integers(0, size, size=2)) for _ in range(3)]
        draw.polygon(points, fill=colour[:: 1 if rng.random() < 0.5 else -1])
    return image


def write_non_food_folder(folder: Path, per_kind: int, seed: int = 1) -> Path:
    """A folder of drawn non-food pictures, per_kind of each of NON_FOOD_KINDS (train_head.py --ood-dir)."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True)
    for kind in NON_FOOD_KINDS:
        for index in range(per_kind):
            draw_non_food_image(kind, rng).save(folder / f"{kind}-{index}.png")
    return folder


def write_food_dataset(root: Path, train_per_class: int, test_per_class: int, seed: int = 0) -> Path:
    """A dataset folder in the course layout: root/{train,test}/<class>/<n>.jpg."""
    rng = np.random.default_rng(seed)
    for subset, count in (("train", train_per_class), ("test", test_per_class)):
        for class_name in GENERATED_CLASSES:
            folder = root / subset / class_name
            folder.mkdir(parents=True)
            for index in range(count):
                draw_food_image(class_name, rng).save(folder / f"{index}.jpg", quality=90)
    return root


def train_head_checkpoint(dataset: Path, output: Path, torch_home: Path, *flags: str) -> Path:
    """`python train_head.py --data-dir dataset --output output` run as a user runs it, over the backbone in
    `torch_home`; its console output is kept in output/../stdout.txt. Returns the checkpoint folder."""
    command = [sys.executable, "train_head.py", "--data-dir", str(dataset), "--output", str(output), *flags]
    env = {**os.environ, "TORCH_HOME": str(torch_home)}
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    (output.parent / "stdout.txt").write_text(result.stdout)
    if result.returncode != 0:
        raise RuntimeError(f"train_head.py failed with status {result.returncode}:\n{result.stdout}{result.stderr}")
    return output


LARGE_PHOTO = REPO / "data" / "standins" / "generated-12mp.jpg"  # data/ is not committed


def twelve_megapixel_jpeg(path: Path = LARGE_PHOTO) -> Path:
    """A 3024x4032 (12 MP) JPEG shaped like a phone photo (smooth shading, a round dish, sensor noise), for the
    decode and upload costs a real full-size photo has; written once."""
    if path.exists():
        return path
    height, width = 4032, 3024
    rows, columns = np.mgrid[0:height, 0:width].astype(np.float32)
    dish = ((rows - height / 2) ** 2 + (columns - width / 2) ** 2) < (width * 0.4) ** 2
    red = 90 + 120 * columns / width + 40 * dish
    green = 70 + 60 * rows / height + 60 * dish
    blue = 60 + 30 * np.sin(rows / 97) + 10 * dish
    noise = np.random.default_rng(0).normal(0, 6, size=(height, width, 3))
    pixels = np.clip(np.stack([red, green, blue], axis=-1) + noise, 0, 255).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path, quality=90)
    return path


def encoded(image: Image.Image, format: str, **options) -> io.BytesIO:
    """`image` saved in `format` to memory, rewound."""
    buffer = io.BytesIO()
    image.save(buffer, format, **options)
    buffer.seek(0)
    return buffer


def png_declaring(width: int, height: int) -> io.BytesIO:
    """A tiny PNG whose header claims width x height pixels (a decompression bomb's shape)."""
    data = bytearray(encoded(Image.new("L", (1, 1)), "PNG").getvalue())
    ihdr = 8 + 4  # signature, then the IHDR chunk's length field
    data[ihdr + 4 : ihdr + 12] = struct.pack(">II", width, height)
    crc = zlib.crc32(bytes(data[ihdr : ihdr + 4 + 13]))
    data[ihdr + 4 + 13 : ihdr + 4 + 13 + 4] = struct.pack(">I", crc)
    return io.BytesIO(bytes(data))


def free_port() -> int:
    """A port on 127.0.0.1 that was free a moment ago (nothing listens there once the probe closes)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


# Debian's chromium (apt-get install -y chromium) drives the browser test and benchmark: Playwright's own browser
# download does not work offline.
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update"]


def probabilities_of(label: dict) -> dict[str, float]:
    """{class name: probability} from a gr.Label value as the API returns it."""
    return {item["label"]: item["confidence"] for item in label["confidences"]}


def fresh_clone(destination: Path) -> Path:
    """The repository as a user's fresh clone has it, copied to `destination`: no checkpoint, no data, no tests or
    benchmarks."""
    ignored = (".git", ".venv", "checkpoints", "data", "tests", "test-artifacts", "__pycache__", "benchmarks")
    return Path(shutil.copytree(REPO, destination, ignore=shutil.ignore_patterns(*ignored)))


def page_config_once(url: str, text: str, timeout: float = 300) -> str:
    """The config of the page at `url` once it holds `text` (polled every 0.2 s; the first start serves a notice
    page first, then the app); RuntimeError when it never does."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            page = urllib.request.urlopen(url + "config", timeout=10).read().decode()
            if text in page:
                return page
        except OSError:
            pass  # between the notice page and the app
        time.sleep(0.2)
    raise RuntimeError(f"the page at {url} never said {text!r} in {timeout:.0f} s")


@contextlib.contextmanager
def app_server(app_dir: Path, *args: str, env: dict | None = None, timeout: float = 180, script: str = "app.py"):
    """`python app.py --port <free> *args` (or another script taking app.py's arguments) run from app_dir; yields
    (url, process) once the page answers, and stops the server afterwards. A server that does not start raises
    RuntimeError with its console output, which goes to a file: a pipe read only at the end would fill with the
    tracebacks Gradio prints for refused requests and stop the server mid-run."""
    port = free_port()
    with tempfile.TemporaryFile() as console:
        process = subprocess.Popen(
            [sys.executable, script, "--port", str(port), *args],
            cwd=app_dir,
            env={**os.environ, **(env or {})},
            stdout=console,
            stderr=subprocess.STDOUT,
        )
        url = f"http://127.0.0.1:{port}/"
        try:
            deadline = time.monotonic() + timeout
            while True:
                try:
                    urllib.request.urlopen(url, timeout=5).close()
                    break
                except OSError:
                    if process.poll() is not None or time.monotonic() > deadline:
                        process.kill()
                        process.wait()
                        console.seek(0)
                        log = console.read().decode(errors="replace")
                        raise RuntimeError(f"{script} did not start (exit {process.returncode}):\n{log}") from None
                    time.sleep(0.5)
            yield url, process
        finally:
            process.terminate()
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def idle_load(pid: int, seconds: float = 5.0) -> tuple[float, float] | None:
    """(CPU ms a second, wake-ups a second) of the idle process `pid` over `seconds`, from /proc; None where there is
    no /proc (not Linux). On a 2-core machine each wake-up takes a core from torch's threads for a moment."""
    proc = Path(f"/proc/{pid}")
    if not proc.is_dir():
        return None

    def cpu_ticks_and_wakeups() -> tuple[int, int]:
        utime, stime = proc.joinpath("stat").read_text().rpartition(")")[2].split()[11:13]  # fields 14, 15
        wakeups = 0
        for task in proc.joinpath("task").iterdir():
            with contextlib.suppress(FileNotFoundError, ProcessLookupError):  # a thread that ended meanwhile
                status = task.joinpath("status").read_text()
                wakeups += int(re.search(r"^voluntary_ctxt_switches:\s+(\d+)", status, re.MULTILINE).group(1))
        return int(utime) + int(stime), wakeups

    ticks_before, wakeups_before = cpu_ticks_and_wakeups()
    started = time.monotonic()
    time.sleep(seconds)
    ticks_after, wakeups_after = cpu_ticks_and_wakeups()
    elapsed = time.monotonic() - started
    ms_per_tick = 1000 / os.sysconf("SC_CLK_TCK")
    return (ticks_after - ticks_before) * ms_per_tick / elapsed, (wakeups_after - wakeups_before) / elapsed


@contextlib.contextmanager
def http_server(handler: type[http.server.BaseHTTPRequestHandler], **attributes):
    """A threading HTTP server on 127.0.0.1 with `handler`, the keyword arguments set as attributes of the server
    (handlers read them as self.server.<name>); yields the server, stopped afterwards."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    for name, value in attributes.items():
        setattr(server, name, value)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)  # polls: a quick shutdown
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


class QuietHandler(http.server.BaseHTTPRequestHandler):
    def log_message(self, format, *args):
        pass


class BytesHandler(QuietHandler):
    """Serves the server's `files` {path: (body, claimed Content-Length)}; a claimed length above the body's is how
    a connection that drops mid-download looks to the client."""

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


class HubFilesHandler(QuietHandler):
    """Answers huggingface_hub's file requests (HEAD and GET /<repo>/resolve/<revision>/<file>) from the server's
    `repos` {repo_id: folder}, with the headers the real Hub sends; each request's path is added to the server's
    `requested` list where it has one."""

    COMMIT = "0123456789abcdef0123456789abcdef01234567"  # every repo's one commit

    def do_HEAD(self):
        self.answer(send_body=False)

    def do_GET(self):
        self.answer(send_body=True)

    def answer(self, send_body: bool):
        getattr(self.server, "requested", []).append(self.path)
        repo_id, _, rest = self.path.lstrip("/").partition("/resolve/")
        folder = self.server.repos.get(repo_id)
        path = folder / rest.split("/", 1)[-1] if folder else None
        if path is None or not path.is_file():
            self.send_response(404)
            self.send_header("X-Error-Code", "RepoNotFound" if folder is None else "EntryNotFound")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        body = path.read_bytes()
        self.send_response(200)
        self.send_header("X-Repo-Commit", self.COMMIT)
        self.send_header("ETag", f'"{hashlib.sha256(body).hexdigest()}"')
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if send_body:
            self.wfile.write(body)


def inject_outliers(model: torch.nn.Module, scale: float, channels: int = 6, seed: int = 0) -> torch.nn.Module:
    """Give a torchvision VisionTransformer the LayerNorm outlier channels of real pretrained ViTs (RepQ-ViT;
    "massive activations"), without changing its function: in the same `channels` of every ln_1 and ln_2, the
    affine scale and bias are multiplied by `scale` and the following Linear's matching input columns divided by
    it. In fp32 the logits stay (up to rounding); a per-tensor int8 activation scale no longer fits the rest."""
    chosen = torch.randperm(model.hidden_dim, generator=torch.Generator().manual_seed(seed))[:channels]
    with torch.no_grad():
        for layer in model.encoder.layers:
            for norm, following in (
                (layer.ln_1, layer.self_attention.in_proj_weight),
                (layer.ln_2, layer.mlp[0].weight),
            ):
                norm.weight[chosen] *= scale
                norm.bias[chosen] *= scale
                following[:, chosen] /= scale
    return model


HUB_TOKEN = "hf_stand_in_token"
HUB_USER = "alice"
HUB_REPO_ROUTE = re.compile(r"^/api/(?P<kind>models|spaces)/(?P<repo>[\w.-]+/[\w.-]+)(?P<rest>/.*)?$")


class StandInHub:
    """Just enough of the Hub's API for HfApi.whoami, space_info, repo_info, create_repo, create_commit
    (validate-yaml, preupload, commit), add_space_variable and request_space_hardware. Every file is
    declared "regular" at preupload, so contents travel base64-encoded in the NDJSON commit (no LFS).
    `failures` maps "whoami", "validate-yaml", "create spaces", "create models", "hardware" or "commit" to the status
    that route answers instead (validate-yaml's 400 with the Hub's list of errors)."""

    def __init__(self):
        self.requests: list[dict] = []  # {"method", "path", "body", "auth"} in arrival order
        self.unserved: list[str] = []  # routes the stand-in does not know: deploy.py called something new
        # "spaces/alice/x" or "models/alice/x" -> {"sdk", "files", "hardware", "private"}
        self.repos: dict[str, dict] = {}
        self.failures: dict[str, int] = {}
        self.url = ""  # while serving

    @contextlib.contextmanager
    def serving(self):
        """The stand-in answering at self.url on 127.0.0.1 while the context lasts."""
        with http_server(StandInHubHandler, hub=self) as server:
            self.url = f"http://127.0.0.1:{server.server_port}"
            yield self

    def add_repo(
        self, kind: str, repo_id: str, sdk: str | None = None, files=(), hardware: str = "cpu-basic", private=False
    ):
        self.repos[f"{kind}/{repo_id}"] = {
            "sdk": sdk,
            "files": dict.fromkeys(files, b""),
            "hardware": hardware,
            "private": private,
        }

    def call_indices(self, method: str, pattern: str) -> list[int]:
        """Where in `requests` the calls with `method` to a path matching `pattern` are."""
        return [
            index
            for index, request in enumerate(self.requests)
            if request["method"] == method and re.search(pattern, request["path"])
        ]

    def calls(self, method: str, pattern: str) -> list[dict]:
        return [self.requests[index] for index in self.call_indices(method, pattern)]

    def commits(self, kind: str, repo_id: str) -> list[list[dict]]:
        """The NDJSON lines of every commit to that repo, in order."""
        return [request["body"] for request in self.calls("POST", f"^/api/{kind}/{repo_id}/commit/")]

    def answer(self, method: str, path: str, body) -> tuple[int, object, dict]:
        if method == "GET" and path == "/api/whoami-v2":
            if "whoami" in self.failures:
                return self.failures["whoami"], {"error": "Invalid credentials in Authorization header"}, {}
            return 200, {"type": "user", "name": HUB_USER, "auth": {"accessToken": {"role": "write"}}}, {}
        if method == "POST" and path == "/api/repos/create":
            kind = f"{body.get('type') or 'model'}s"
            repo_id = f"{body['organization']}/{body['name']}"
            prefix = "spaces/" if kind == "spaces" else ""
            if f"create {kind}" in self.failures:
                return self.failures[f"create {kind}"], {"error": "Payment required"}, {}
            if f"{kind}/{repo_id}" in self.repos:
                return 409, {"error": "You already created this repo", "url": f"{self.url}/{prefix}{repo_id}"}, {}
            private = body.get("visibility") == "private"  # huggingface_hub 2 sends visibility, not private
            self.add_repo(kind, repo_id, sdk=body.get("sdk"), hardware=body.get("hardware"), private=private)
            return 200, {"url": f"{self.url}/{prefix}{repo_id}"}, {}
        if method == "POST" and path == "/api/validate-yaml":
            if "validate-yaml" in self.failures:
                errors = [
                    {"message": '"colorFrom" must be one of [red, yellow, green, blue, indigo, purple, pink, gray]'}
                ]
                return self.failures["validate-yaml"], {"errors": errors, "warnings": []}, {}
            return 200, {"errors": [], "warnings": []}, {}
        match = HUB_REPO_ROUTE.match(path)
        if match is None:
            self.unserved.append(f"{method} {path}")
            return 404, {"error": "not served by the stand-in"}, {}
        key, rest = f"{match['kind']}/{match['repo']}", match["rest"] or ""
        repo = self.repos.get(key)
        if repo is None:
            return 404, {"error": "Repository not found"}, {"X-Error-Code": "RepoNotFound"}
        if method == "GET" and rest == "":
            siblings = [{"rfilename": name} for name in repo["files"]]
            info = {"id": match["repo"], "private": bool(repo["private"]), "siblings": siblings}
            if match["kind"] == "spaces":
                hardware = {"current": repo["hardware"], "requested": repo["hardware"]}
                info |= {"sdk": repo["sdk"], "runtime": {"stage": "RUNNING", "hardware": hardware}}
            return 200, info, {}
        if method == "POST" and rest.startswith("/preupload/"):
            files = [{"path": file["path"], "uploadMode": "regular", "shouldIgnore": False} for file in body["files"]]
            return 200, {"files": files}, {}
        if method == "POST" and rest.startswith("/commit/"):
            if "commit" in self.failures:
                return self.failures["commit"], {"error": "You don't have the rights to push here"}, {}
            for line in body:
                if line["key"] == "file":
                    repo["files"][line["value"]["path"]] = base64.b64decode(line["value"]["content"])
                elif line["key"] == "deletedFile":
                    repo["files"].pop(line["value"]["path"])
            return 200, {"commitUrl": f"{self.url}/{key}/commit/{'0' * 40}", "commitOid": "0" * 40}, {}
        if method == "POST" and rest == "/variables" and match["kind"] == "spaces":
            return 200, {body["key"]: {"value": body["value"], "updatedAt": "2026-01-01T00:00:00.000Z"}}, {}
        if method == "POST" and rest == "/hardware" and match["kind"] == "spaces":
            if "hardware" in self.failures:
                return self.failures["hardware"], {"error": "Payment required"}, {}
            repo["hardware"] = body["flavor"]
            return 200, {"stage": "BUILDING", "hardware": {"current": None, "requested": body["flavor"]}}, {}
        self.unserved.append(f"{method} {path}")
        return 404, {"error": "not served by the stand-in"}, {}


class StandInHubHandler(QuietHandler):
    """Records each request in the server's `hub` (a StandInHub) and sends back what hub.answer says."""

    def do_GET(self):
        self.handle_request("GET")

    def do_POST(self):
        self.handle_request("POST")

    def handle_request(self, method: str):
        hub = self.server.hub
        raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if self.headers.get("Content-Type", "").startswith("application/x-ndjson"):
            body = [json.loads(line) for line in raw.decode().splitlines() if line]
        else:
            body = json.loads(raw) if raw else None
        path = self.path.split("?")[0]
        hub.requests.append({"method": method, "path": path, "body": body, "auth": self.headers.get("Authorization")})
        status, payload, headers = hub.answer(method, path, body)
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)
