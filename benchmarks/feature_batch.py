"""train_head.py's backbone pass (extract_features) at each batch size, in milliseconds an image: which batch
computes the features fastest on this CPU (train_head.CPU_FEATURE_BATCH), and how far the features move with it.

The frozen ViT-B/16 does the same work per image at any batch size; what changes is likely how much of a layer's
activations stays in the caches (BENCHMARKS.md). The images are standins.py's generated pictures and the backbone the
seeded random vit_b_16: timing does not depend on the weights or pixels.

    python benchmarks/feature_batch.py                    # about 4 minutes on 2 idle cores
    python benchmarks/feature_batch.py --images 64 --batches 4 8 64
"""

import argparse
import sys
import tempfile
from pathlib import Path

from common import WORK_DIR, interleaved_ms, median, print_machine, print_table, random_backbone_home, save_results

import torch

from classifier import build_feature_extractor
from data import ImageDataset
from tests.standins import write_food_dataset
from train_head import extract_features


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=30, help="generated images a pass, a multiple of 3")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 4, 8, 16, 32], help="batch sizes to time")
    parser.add_argument("--repeats", type=int, default=3, help="timed passes at each batch size (medians reported)")
    args = parser.parse_args(argv)

    print_machine()
    random_backbone_home(WORK_DIR / "torch_home")
    with tempfile.TemporaryDirectory() as temp:
        dataset = ImageDataset(write_food_dataset(Path(temp), args.images // 3, 1), "train")
        model, transforms = build_feature_extractor("IMAGENET1K_V1", dataset.class_names)
        dataset.transform = transforms
        features = {}  # each batch's features from its last pass

        def timed(batch: int):
            def run():
                features[batch] = extract_features(model.eval(), dataset, batch, f"batch {batch}")[0]

            return run

        times = interleaved_ms({batch: timed(batch) for batch in args.batches}, args.repeats)
    per_image = {batch: median(times[batch]) / len(dataset) for batch in args.batches}
    baseline, smallest = max(args.batches), min(args.batches)
    fastest = min(per_image, key=per_image.get)
    print(f"\n{len(dataset)} images a pass, {torch.get_num_threads()} torch threads, median of {args.repeats} passes\n")
    print_table(
        ["batch", "ms an image", f"vs batch {baseline}", f"largest feature difference from batch {smallest}"],
        [
            [
                batch,
                per_image[batch],
                f"{per_image[baseline] / per_image[batch]:.2f}x",
                f"{(features[batch] - features[smallest]).abs().max().item():.1e}",
            ]
            for batch in args.batches
        ],
    )
    print(f"fastest: batch {fastest}, {per_image[baseline] / per_image[fastest]:.2f}x batch {baseline}'s speed")
    save_results(
        "feature_batch", dict(images=len(dataset), repeats=args.repeats, times_ms=times, per_image_ms=per_image)
    )


if __name__ == "__main__":
    sys.exit(main())
