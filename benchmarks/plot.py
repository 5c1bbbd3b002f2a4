"""Draw benchmarks/latency.png from the JSON results the other scripts leave in benchmarks/results/, replacing it.

python benchmarks/plot.py
"""

import argparse
import json

import matplotlib

matplotlib.use("Agg")
from common import RESULTS, median

import matplotlib.pyplot as plt

OUTPUT = RESULTS.parent / "latency.png"


def load(name: str) -> dict | None:
    path = RESULTS / f"{name}.json"
    return json.loads(path.read_text()) if path.is_file() else None


def bars(axis, title: str, times: dict[str, list[float]], per: int = 1, reference: str | None = None) -> None:
    """Horizontal bars of median times, the reference (default: the first) on top in grey."""
    names = sorted(times, key=lambda name: name != (reference or next(iter(times))))
    values = [median(times[name]) / per for name in names]
    axis.barh(names[::-1], values[::-1], color=["tab:blue"] * (len(names) - 1) + ["tab:gray"])
    reference = values[0]
    for y, value in enumerate(values[::-1]):
        axis.text(value, y, f" {value:,.0f} ms ({reference / value:.2f}x)", va="center", fontsize=8)
    axis.set_title(title, fontsize=10)
    axis.set_xlim(0, max(values) * 1.45)
    axis.tick_params(axis="y", labelsize=8)


def main() -> None:
    argparse.ArgumentParser(description=__doc__.split("\n\n")[0]).parse_args()
    panels = []
    latency = load("latency")
    if latency:
        for batch, times in latency["latency_ms"].items():
            panels.append(
                (f"Classifier, batch {batch}: ms per image (speed-up vs fp32 eager)", times, int(batch), None)
            )
    implementations = load("vit_implementations")
    if implementations:
        first = next(iter(implementations["inference_ms"]))
        tv = "torchvision vit_b_16"
        panels.append(
            (
                f"ViT-B/16 implementations: inference, batch {first} (speed-up vs torchvision)",
                implementations["inference_ms"][first],
                1,
                tv,
            )
        )
        panels.append(
            (
                "ViT-B/16 implementations: one training step (speed-up vs torchvision)",
                implementations["train_step_ms"],
                1,
                tv,
            )
        )
    decode = load("decode")
    if decode:
        panels.append(("12 MP JPEG to model input: decode + transforms", decode["to_input_ms"], 1, None))
    if not panels:
        raise SystemExit(f"no results in {RESULTS}: run the benchmark scripts first")
    figure, axes = plt.subplots(len(panels), 1, figsize=(9, 2.1 * len(panels)), squeeze=False)
    for axis, (title, times, per, reference) in zip(axes[:, 0], panels):
        bars(axis, title, times, per=per, reference=reference)
    machine = (latency or implementations or decode)["machine"]
    figure.suptitle(
        f"FoodVision Mini on {machine['cpu']}, {machine['torch_threads']} threads, torch {machine['torch']} "
        f"(medians; ratios vs the first bar of each panel)",
        fontsize=9,
    )
    figure.tight_layout()
    figure.savefig(OUTPUT, dpi=110)
    print(f"wrote {OUTPUT}")


if __name__ == "__main__":
    main()
