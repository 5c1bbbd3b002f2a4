"""Training the head on cached backbone features (train_head.py) against the course's way, which
runs the frozen backbone over every image in every epoch (chapter 08's engine.train).

Both train the same head with the same Adam/CrossEntropyLoss/batch settings for --epochs; the
cached way runs the backbone once over train and test, at train_head.py's batch for the CPU. By
default the images are standins.py's generated pizza/steak/sushi pictures and the backbone is the
seeded random vit_b_16 (the real weights cannot be downloaded here): timing does not depend on what
the weights or pixels are.

    python benchmarks/head_training.py                    # about 3 minutes on 2 idle cores
    python benchmarks/head_training.py --repeats 5 --train-per-class 8
"""

import argparse
import contextlib
import io
import sys
import tempfile
from pathlib import Path

from common import WORK_DIR, interleaved_ms, median, print_machine, print_table, random_backbone_home, save_results

import torch
from torch import nn

from classifier import build_feature_extractor
from data import ImageDataset
from tests.standins import write_food_dataset
from train_head import extract_features, feature_batch_size, fit, read_as_served


def course_way(
    model: nn.Module, train_set: ImageDataset, test_set: ImageDataset, epochs: int, lr: float, batch_size: int
) -> None:
    """The course's loop: a full forward pass per batch in every epoch, then a test pass."""
    train_loader = torch.utils.data.DataLoader(train_set, batch_size=batch_size, shuffle=True)
    test_loader = torch.utils.data.DataLoader(test_set, batch_size=batch_size)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)  # frozen parameters get no gradient, as in the course
    loss_fn = nn.CrossEntropyLoss()
    for _ in range(epochs):
        model.train()
        for images, labels in train_loader:
            loss = loss_fn(model(images), labels)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        model.eval()
        with torch.inference_mode():
            for images, labels in test_loader:
                loss_fn(model(images), labels)


def cached_way(
    model: nn.Module, train_set: ImageDataset, test_set: ImageDataset, epochs: int, lr: float, batch_size: int
) -> None:
    """train_head.py's loop: one backbone pass, at its batch for the CPU, then every epoch on the cached features."""
    feature_batch = feature_batch_size("cpu", batch_size)
    train = extract_features(model, train_set, feature_batch, "train features")
    test = extract_features(model, test_set, feature_batch, "test features")
    fit(model.heads, train, test, epochs, lr, batch_size, seed=42)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", type=Path, help="a real dataset folder instead of generated images")
    parser.add_argument("--train-per-class", type=int, default=2, help="generated training images per class")
    parser.add_argument("--test-per-class", type=int, default=1, help="generated test images per class")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3, help="timed runs of each way (medians are reported)")
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args(argv)

    print_machine()
    random_backbone_home(WORK_DIR / "torch_home")
    with tempfile.TemporaryDirectory() as temp:
        data_dir = args.data_dir or write_food_dataset(Path(temp), args.train_per_class, args.test_per_class)
        train_set, test_set = ImageDataset(data_dir, "train"), ImageDataset(data_dir, "test")
        model, transforms = build_feature_extractor("IMAGENET1K_V1", train_set.class_names)
        read_as_served(transforms, train_set, test_set)

        def run(way):
            def timed():
                torch.manual_seed(42)
                model.heads.reset_parameters()  # every run trains a fresh head
                with contextlib.redirect_stdout(io.StringIO()):  # the per-epoch lines would bury the table
                    way(model, train_set, test_set, args.epochs, 1e-3, args.batch_size)

            return timed

        times = interleaved_ms({"course": run(course_way), "cached": run(cached_way)}, args.repeats, warmup=0)
    course, cached = median(times["course"]) / 1000, median(times["cached"]) / 1000
    images = len(train_set) + len(test_set)
    print(
        f"{args.epochs} epochs, {len(train_set)} train + {len(test_set)} test images, "
        f"median of {args.repeats} interleaved runs each\n"
    )
    print_table(
        ["way", "backbone passes", "median s", "runs s"],
        [
            [
                "course: backbone every epoch",
                args.epochs,
                course,
                ", ".join(f"{t / 1000:.1f}" for t in times["course"]),
            ],
            ["train_head.py: cached features", 1, cached, ", ".join(f"{t / 1000:.1f}" for t in times["cached"])],
        ],
    )
    print(f"cached is {course / cached:.1f}x faster (target >= 8x for 10 epochs)")
    save_results(
        "head_training",
        dict(
            epochs=args.epochs,
            images=images,
            repeats=args.repeats,
            times_ms=times,
            median_s=dict(course=course, cached=cached),
            speedup=course / cached,
        ),
    )


if __name__ == "__main__":
    sys.exit(main())
