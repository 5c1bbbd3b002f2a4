"""End-to-end request latency through the running app against what it is made of: `python app.py` on 127.0.0.1 and
a bare Gradio page (page_floor.py: photo in, label out, no work), real photos sent to /predict with gradio_client
(or the standard library: `--client http`), and in this process, between the requests, a bare fp32 torchvision forward
and the served model's pass on the same photos. All in turns, so that every figure sees the same machine load.

    python benchmarks/app_latency.py                                       # about 3 minutes
    python benchmarks/app_latency.py --app-dir ../old-checkout --app-dir .  # two versions, in turns
    python benchmarks/app_latency.py --requests 20 --precision fp32
    python benchmarks/app_latency.py --client http                         # the requests from a bare HTTP client

The ratios it prints are the app's speed targets (BENCHMARKS.md): the model time the app reports against the bare
fp32 forward; a request, less the bare page's, against the work the app reports doing (prediction and pictures); the
model time inside the server against the same pass in this process. Before the requests, each idle server's CPU
time and wake-ups a second are read from /proc: what a server takes from the model's cores while it waits.

The requests come from a child process at the lowest priority (nice 19): gradio_client does work of its own for each
request (it builds an SSL context per connection and polls the job's status; the CPU time it takes a request is
printed), which on a 2-core machine would otherwise take a core from the server's pass, as a visitor's browser on
another machine does not. Its time still counts in every request's latency, the bare page's included. Even at nice 19
its work as the job starts can slow the first blocks of the server's pass; `--client http` sends the same requests
through Gradio's HTTP API with the standard library instead (upload, call, read the event stream), which takes a few
ms of CPU a request, to time the server alone.
"""

import argparse
import http.client
import json
import multiprocessing
import os
import re
import resource
import statistics
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from contextlib import ExitStack
from pathlib import Path
from urllib.parse import urlsplit

from common import (
    MODEL_TIME_TARGET,
    REQUEST_TARGET,
    ROOT,
    SERVER_TARGET,
    WORK_DIR,
    against,
    bare_forward_ms,
    generated_head_checkpoint,
    p95,
    print_machine,
    print_table,
    save_results,
)

import torch
from gradio_client import Client, handle_file

import serving
from devices import available_cpus
from inference import int8_sums
from tests.standins import EXAMPLE_PHOTOS, app_server, idle_load, twelve_megapixel_jpeg
from train_vit import at_least

BARE_PAGE = "bare Gradio page"
TIMING = re.compile(r"Model:\*\* (\d+) ms · \*\*prediction:\*\* (\d+) ms.* \*\*pictures:\*\* (\d+) ms more")
LOWEST_PRIORITY = 19


class HttpClient:
    """/predict through Gradio's HTTP API with the standard library, on one kept-alive connection: the photo uploaded,
    the call made, its event stream read to the end; the outputs of its last update."""

    def __init__(self, url: str):
        address = urlsplit(url)
        self.connection = http.client.HTTPConnection(address.hostname, address.port, timeout=120)

    def send(self, method: str, path: str, body: bytes | None = None, content_type: str | None = None) -> str:
        headers = {"Content-Type": content_type} if content_type else {}
        try:
            self.connection.request(method, path, body, headers)
            response = self.connection.getresponse()
        except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
            # uvicorn closes a connection idle for 5 s (its keep-alive default), as between a slow round's requests
            self.connection.close()
            self.connection.request(method, path, body, headers)
            response = self.connection.getresponse()
        text = response.read().decode()
        if response.status != 200:
            raise RuntimeError(f"{method} {path}: HTTP {response.status}: {text[:200]}")
        return text

    def predict(self, photo: Path) -> list:
        boundary = uuid.uuid4().hex
        form = (
            (
                f'--{boundary}\r\nContent-Disposition: form-data; name="files"; filename="{photo.name}"\r\n'
                "Content-Type: application/octet-stream\r\n\r\n"
            ).encode()
            + photo.read_bytes()
            + f"\r\n--{boundary}--\r\n".encode()
        )
        uploaded = json.loads(
            self.send("POST", "/gradio_api/upload", form, f"multipart/form-data; boundary={boundary}")
        )
        call = {"data": [{"path": uploaded[0], "meta": {"_type": "gradio.FileData"}}]}
        event = json.loads(self.send("POST", "/gradio_api/call/predict", json.dumps(call).encode(), "application/json"))
        stream = self.send("GET", f"/gradio_api/call/predict/{event['event_id']}").splitlines()
        if "event: complete" not in stream:
            raise RuntimeError(f"/predict did not complete: {' '.join(stream)[:300]}")
        return json.loads(stream[stream.index("event: complete") + 1].removeprefix("data:"))


def sender(url: str, client: str) -> Callable[[Path], list]:
    """photo -> the outputs of /predict's last update, sent by `client`: "gradio_client" or "http" (HttpClient). The
    pictures' URLs come back, not their bytes: browser_latency.py counts their loading."""
    if client == "http":
        return HttpClient(url).predict
    gradio = Client(url, verbose=False, download_files=False)
    return lambda photo: gradio.predict(handle_file(photo), api_name="/predict")


_senders: dict[str, Callable[[Path], list]] = {}  # in the client process: one per server, a page's connection


def timed_request(url: str, photo: Path, client: str) -> tuple[float, str, float]:
    """In the client process: (ms from sending `photo` to /predict to its last update, the timing line, the CPU ms
    this process spent on it), the request sent by `client` (sender)."""
    if url not in _senders:
        _senders[url] = sender(url, client)
    cpu_before = resource.getrusage(resource.RUSAGE_SELF)
    started = time.perf_counter()
    timing = _senders[url](photo)[1]  # the label, the timing, ...
    elapsed = (time.perf_counter() - started) * 1000
    cpu_after = resource.getrusage(resource.RUSAGE_SELF)
    cpu_ms = sum(getattr(cpu_after, f) - getattr(cpu_before, f) for f in ("ru_utime", "ru_stime")) * 1000
    return elapsed, timing, cpu_ms


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=at_least(2), default=8, help="timed requests per photo and server")
    parser.add_argument("--app-dir", type=Path, action="append", help="the folder whose app.py is served (repeatable)")
    parser.add_argument("--precision", default="auto", help="app.py's --precision, for every app served")
    parser.add_argument(
        "--client",
        choices=("gradio_client", "http"),
        default="gradio_client",
        help="what sends the requests: gradio_client (the targets' client) or the standard library (HttpClient)",
    )
    args = parser.parse_args()
    app_dirs = args.app_dir or [ROOT]
    if len(set(app_dirs)) < len(app_dirs):
        parser.error("each --app-dir is served once")
    print_machine()
    torch.set_num_threads(available_cpus())

    checkpoint = generated_head_checkpoint(WORK_DIR)
    photos = [*EXAMPLE_PHOTOS, twelve_megapixel_jpeg()]
    foodvision = serving.load(str(checkpoint), "cpu", args.precision)
    in_process = {"bare fp32 forward (torchvision)": [], f"served model pass ({foodvision.predictor.precision})": []}
    floor = str(Path(__file__).resolve().parent / "page_floor.py")
    servers = {str(app_dir): (app_dir, "app.py", {}) for app_dir in app_dirs} | {
        BARE_PAGE: (ROOT, floor, {"FOODVISION_FLOOR": "bare"})
    }
    requests = {name: [] for name in servers}
    reported = {str(app_dir): {"model": [], "prediction": [], "pictures": []} for app_dir in app_dirs}
    client_cpu_ms = []
    with ExitStack() as stack:
        started = {
            name: stack.enter_context(
                app_server(
                    app_dir, "--checkpoint", str(checkpoint), "--precision", args.precision, env=env, script=script
                )
            )
            for name, (app_dir, script, env) in servers.items()
        }
        urls = {name: url for name, (url, _) in started.items()}
        idle = {name: idle_load(process.pid) for name, (_, process) in started.items()}
        client = stack.enter_context(
            ProcessPoolExecutor(
                1, multiprocessing.get_context("spawn"), initializer=os.nice, initargs=(LOWEST_PRIORITY,)
            )
        )
        for round_ in range(args.requests + 1):  # round 0 warms up (first request loads lazily initialised parts)
            for photo in photos:
                for name, url in urls.items():
                    elapsed, timing, cpu_ms = client.submit(timed_request, url, photo, args.client).result()
                    if round_ and name != BARE_PAGE:
                        model_ms, prediction_ms, pictures_ms = map(float, TIMING.search(timing).groups())
                        for figure, ms in zip(reported[name], (model_ms, prediction_ms, pictures_ms)):
                            reported[name][figure].append(ms)
                    if round_:
                        requests[name].append(elapsed)
                        client_cpu_ms.append(cpu_ms)
                bare_ms = bare_forward_ms(foodvision, foodvision.preprocess(str(photo))[None])
                served_ms = foodvision.classify(str(photo)).model_ms
                if round_:
                    for name, ms in zip(in_process, (bare_ms, served_ms)):
                        in_process[name].append(ms)

    median = statistics.median
    forward, served = (median(times) for times in in_process.values())
    bare_page = median(requests[BARE_PAGE])
    print(
        f"{args.requests} requests per photo and server over {len(photos)} photos (the examples and a 12 MP JPEG), "
        f"one at a time, servers in turns; in this process between them: {', '.join(in_process)}"
    )
    print_table(["in this process", "p50 ms"], [[name, median(times)] for name, times in in_process.items()])
    client_cpu = median(client_cpu_ms)
    client_name = "HttpClient" if args.client == "http" else "gradio_client"
    print(f"{client_name}'s own CPU time a request (its process, nice {LOWEST_PRIORITY}): {client_cpu:.1f} ms p50")
    print_table(["server", "requests", "p50 ms", "p95 ms", "idle: CPU ms a second", "idle: wake-ups a second"], [
        [name, len(t), median(t), p95(t), *(idle[name] or ("n/a", "n/a"))]
        for name, t in requests.items()
    ])  # fmt: skip
    # the model-time target of this CPU's int8 kernels; fp32 serving has none (it is the bare forward's own work)
    model_target = MODEL_TIME_TARGET.get(int8_sums()) if foodvision.predictor.precision == "int8" else None
    rows = []
    for app_dir, figures in reported.items():
        work = [p + q for p, q in zip(figures["prediction"], figures["pictures"])]
        model = median(figures["model"])
        rows.append(
            [
                app_dir,
                model,
                against(model / forward, model_target),
                against(model / served, SERVER_TARGET),
                median(work),
                against((median(requests[app_dir]) - bare_page) / median(work), REQUEST_TARGET),
            ]
        )
    print_table(
        ["app", "model p50 ms (its timing line)", "vs bare fp32 forward", "vs same pass in process",
         "prediction + pictures p50 ms", f"request - {BARE_PAGE}, vs that work"],
        rows,
    )  # fmt: skip
    save_results(
        "app_latency",
        {
            "requests_ms": requests,
            "reported_ms": reported,
            "in_process_ms": in_process,
            "client": args.client,
            "precision": args.precision,
            "client_cpu_ms": client_cpu_ms,
            "idle_cpu_ms_and_wakeups_a_second": idle,
        },
    )


if __name__ == "__main__":
    main()
