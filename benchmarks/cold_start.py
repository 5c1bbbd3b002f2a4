"""Cold start on the CPU: seconds from `python app.py` to a page that answers. From a trained checkpoint (what a
Space with FOODVISION_CHECKPOINT does once its files are downloaded) and on a first start without a head, which
trains one first while a notice page answers (the course's 225 train / 75 test images; generated pictures stand in
for them, and the dataset and weights downloads are not counted: they depend on the network). Also the part of a
start spent in `serving.load` in this process, with the checkpoint's int8 record for this setup and without one,
where the int8 path has to pass its self-check on the bundled photos.

    python benchmarks/cold_start.py                   # about 3 minutes
"""

import argparse
import functools
import json
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from common import ROOT, WORK_DIR, generated_head_checkpoint, interleaved_ms, print_machine, print_table, save_results

from tests.standins import app_server, fresh_clone, page_config_once, write_food_dataset


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
            page_config_once(url, "Real photos", timeout=600)
            from_checkpoint.append(time.monotonic() - started)
    with tempfile.TemporaryDirectory() as folder:
        clone = fresh_clone(Path(folder) / "clone")
        write_food_dataset(clone / "data" / "pizza_steak_sushi", train_per_class=75, test_per_class=25)
        started = time.monotonic()
        with app_server(clone, env={"FOODVISION_CHECKPOINT": ""}, timeout=600) as (url, _):
            page_config_once(url, "Starting: training the head", timeout=600)
            notice = time.monotonic() - started
            page_config_once(url, "Real photos", timeout=900)
            trained = time.monotonic() - started
    rows = [
        ["from a checkpoint", len(from_checkpoint), statistics.median(from_checkpoint), max(from_checkpoint)],
        ["first start: notice page answers", 1, notice, notice],
        ["first start: head trained, app answers", 1, trained, trained],
    ]
    print_table(["start", "runs", "median s", "max s"], rows)
    loads = load_seconds(checkpoint, args.starts)
    print_table(
        ["serving.load", "runs", "median s", "max s"],
        [[k, len(v), statistics.median(v), max(v)] for k, v in loads.items()],
    )
    save_results(
        "cold_start",
        {"from_checkpoint_s": from_checkpoint, "notice_s": notice, "first_start_s": trained, "load_s": loads},
    )


def load_seconds(checkpoint: Path, runs: int) -> dict[str, list[float]]:
    """Seconds of serving.load in this process, with the checkpoint's int8 record and with the record removed."""
    import serving
    from classifier import CONFIG_FILE

    with tempfile.TemporaryDirectory() as folder:
        without_record = Path(shutil.copytree(checkpoint, Path(folder) / "without-record"))
        config = json.loads((without_record / CONFIG_FILE).read_text())
        del config["int8"]
        (without_record / CONFIG_FILE).write_text(json.dumps(config))
        sources = {"with the int8 record": checkpoint, "without it: int8 self-check": without_record}
        loaded = {}

        def load(name: str) -> None:
            loaded[name] = serving.load(str(sources[name]), "cpu")

        times = interleaved_ms({name: functools.partial(load, name) for name in sources}, runs)
        # the two rows differ only if the record vouches for this setup (a cached head from other code may not)
        for name, served in loaded.items():
            print(f"{name}: {served.precision_reason}")
    return {name: [ms / 1000 for ms in values] for name, values in times.items()}


if __name__ == "__main__":
    main()
