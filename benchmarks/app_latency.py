"""End-to-end request latency through the running app: `python app.py` on 127.0.0.1, real photos
sent with gradio_client to /predict (upload, decode, preprocess, model, attention drawing, reply).
When app.py has a --precision flag, one server per precision runs and requests alternate between
them, so both see the same machine load.

    python benchmarks/app_latency.py                 # about 2 minutes
    python benchmarks/app_latency.py --requests 20 --precisions fp32 auto
"""

import argparse
import re
import subprocess
import sys
import time
from contextlib import ExitStack
from pathlib import Path

from common import ROOT, WORK_DIR, generated_head_checkpoint, print_machine, print_table, save_results

import numpy as np
from gradio_client import Client, handle_file

from standins import EXAMPLE_PHOTOS, app_server, twelve_megapixel_jpeg


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=8, help="timed requests per photo and server")
    parser.add_argument(
        "--app-dir", type=Path, default=ROOT, help="the folder whose app.py is served (default: this repository)"
    )
    parser.add_argument(
        "--precisions",
        nargs="*",
        default=["fp32", "auto"],
        help="one server each, when app.py has --precision (else one server as app.py is)",
    )
    args = parser.parse_args()
    print_machine()

    checkpoint = generated_head_checkpoint(WORK_DIR)
    photos = [*EXAMPLE_PHOTOS, twelve_megapixel_jpeg()]
    has_precision = (
        "--precision"
        in subprocess.run([sys.executable, "app.py", "--help"], cwd=args.app_dir, capture_output=True, text=True).stdout
    )
    configs = {p: ["--precision", p] for p in args.precisions} if has_precision else {"app.py as it is": []}

    with ExitStack() as stack:
        clients = {
            name: Client(
                stack.enter_context(app_server(args.app_dir, "--checkpoint", str(checkpoint), *extra))[0], verbose=False
            )
            for name, extra in configs.items()
        }
        total = {name: [] for name in clients}
        model = {name: [] for name in clients}
        label = {
            photo: photo.name if photo in EXAMPLE_PHOTOS else f"{photo.name} (generated 12 MP)" for photo in photos
        }
        per_photo = {(name, label[photo]): [] for name in clients for photo in photos}
        for round_ in range(args.requests + 1):  # round 0 warms up (first request loads lazily initialised parts)
            for photo in photos:
                for name, client in clients.items():
                    started = time.perf_counter()
                    _, timing, *_ = client.predict(handle_file(photo), api_name="/predict")  # the label, the timing
                    elapsed = (time.perf_counter() - started) * 1000
                    if round_:
                        total[name].append(elapsed)
                        model[name].append(float(re.search(r"Model:\*\* (\d+) ms", timing).group(1)))
                        per_photo[(name, label[photo])].append(elapsed)

    print(
        f"{args.requests} requests per photo and server over {len(photos)} photos "
        f"({', '.join(label.values())}), one at a time, servers in turns"
    )
    print_table(
        ["server", "requests", "p50 ms", "p95 ms", "model p50 ms (app's own timing)"],
        [
            [
                name,
                len(t),
                float(np.percentile(t, 50)),
                float(np.percentile(t, 95)),
                float(np.percentile(model[name], 50)),
            ]
            for name, t in total.items()
        ],
    )
    print_table(
        ["server", "photo", "p50 ms"],
        [[name, photo, float(np.percentile(t, 50))] for (name, photo), t in per_photo.items()],
    )
    save_results(
        "app_latency",
        {"total_ms": total, "model_ms": model, "per_photo_ms": {f"{k[0]} {k[1]}": v for k, v in per_photo.items()}},
    )


if __name__ == "__main__":
    main()
