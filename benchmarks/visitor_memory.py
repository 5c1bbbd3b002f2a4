"""Server memory per visitor: `python app.py` on 127.0.0.1, then one prediction for each of many visitors, each a
new gradio_client session, as new browser tabs or API users are. Gradio keeps each session's gr.State for a while
after it disconnects (app.STATE_SESSIONS), so whatever the page keeps for a visitor adds up. Reports the server's
resident memory (VmRSS) before and after, and per visitor.

    python benchmarks/visitor_memory.py                          # about a minute per app
    python benchmarks/visitor_memory.py --visitors 100 --app-dir <older checkout> --app-dir .
    python benchmarks/visitor_memory.py --visitors 10 --precision fp32    # the fp32 engine's memory
"""

import argparse
import time
from pathlib import Path

from common import ROOT, WORK_DIR, generated_head_checkpoint, print_machine, print_table, save_results

from gradio_client import Client, handle_file

from tests.standins import EXAMPLE_PHOTOS, app_server
from train_vit import at_least


def resident_mb(pid: int) -> float:
    """The process's resident set (VmRSS) in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--visitors", type=at_least(1), default=60, help="new sessions, one prediction each")
    parser.add_argument("--app-dir", type=Path, action="append", help="the folder whose app.py is served (repeatable)")
    parser.add_argument("--precision", default="auto", help="app.py's --precision, for every app served")
    args = parser.parse_args()
    print_machine()
    checkpoint = generated_head_checkpoint(WORK_DIR)
    rows, results = [], {}
    for app_dir in args.app_dir or [ROOT]:
        with app_server(app_dir, "--checkpoint", str(checkpoint), "--precision", args.precision) as (url, process):
            Client(url, verbose=False).predict(handle_file(EXAMPLE_PHOTOS[0]), api_name="/predict")  # warm-up
            time.sleep(1)
            before = resident_mb(process.pid)
            for visitor in range(args.visitors):
                photo = EXAMPLE_PHOTOS[visitor % len(EXAMPLE_PHOTOS)]
                Client(url, verbose=False).predict(handle_file(photo), api_name="/predict")
            time.sleep(1)
            after = resident_mb(process.pid)
        per_visitor = (after - before) / args.visitors
        results[str(app_dir)] = {"before_mb": before, "after_mb": after, "per_visitor_mb": per_visitor}
        rows.append([str(app_dir), args.visitors, before, after, per_visitor])
    print(f"Server resident memory after one warm-up prediction, then after {args.visitors} visitors")
    print_table(["app", "visitors", "before MB", "after MB", "MB per visitor"], rows)
    print(f"results: {save_results('visitor_memory', results)}")


if __name__ == "__main__":
    main()
