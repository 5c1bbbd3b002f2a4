"""Cold start on the CPU: seconds from `python app.py` to a page that answers. From a trained checkpoint (what a
Space with FOODVISION_CHECKPOINT does once its files are downloaded) and on a first start without a head, which
trains one first while a notice page answers (the course's 225 train / 75 test images; generated pictures stand in
for them, and the dataset and weights downloads are not counted: they depend on the network).

    python benchmarks/cold_start.py                   # about 3 minutes
"""

import argparse
import shutil
import statistics
import tempfile
import time
import urllib.request
from pathlib import Path

from common import ROOT, WORK_DIR, generated_head_checkpoint, print_machine, print_table, save_results

from standins import app_server, write_food_dataset

IGNORED = (".git", ".venv", "checkpoints", "data", "tests", "test-artifacts", "__pycache__", "benchmarks")


def seconds_until(url: str, text: str, started: float, timeout: float = 900) -> float:
    """Seconds from `started` until the page's config holds `text`."""
    while time.monotonic() - started < timeout:
        try:
            if text in urllib.request.urlopen(url + "config", timeout=10).read().decode():
                return time.monotonic() - started
        except OSError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"the page never said {text!r}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--starts", type=int, default=3, help="starts from the checkpoint")
    args = parser.parse_args()
    print_machine()
    checkpoint = generated_head_checkpoint(WORK_DIR)
    from_checkpoint = []
    for _ in range(args.starts):
        started = time.monotonic()
        with app_server(ROOT, "--checkpoint", str(checkpoint), timeout=600) as (url, _):
            from_checkpoint.append(seconds_until(url, "Real photos", started))
    with tempfile.TemporaryDirectory() as folder:
        clone = Path(shutil.copytree(ROOT, Path(folder) / "clone", ignore=shutil.ignore_patterns(*IGNORED)))
        write_food_dataset(clone / "data" / "pizza_steak_sushi", train_per_class=75, test_per_class=25)
        started = time.monotonic()
        with app_server(clone, env={"FOODVISION_CHECKPOINT": ""}, timeout=600) as (url, _):
            notice = seconds_until(url, "Starting: training the head", started)
            trained = seconds_until(url, "Real photos", started)
    rows = [
        ["from a checkpoint", len(from_checkpoint), statistics.median(from_checkpoint), max(from_checkpoint)],
        ["first start: notice page answers", 1, notice, notice],
        ["first start: head trained, app answers", 1, trained, trained],
    ]
    print_table(["start", "runs", "median s", "max s"], rows)
    save_results("cold_start", {"from_checkpoint_s": from_checkpoint, "notice_s": notice, "first_start_s": trained})


if __name__ == "__main__":
    main()
