"""FoodVision Mini without a browser: the served prediction for each image path given, printed as
the top 3 classes with probabilities and the time it took; optionally saved as the course-style
figure (the photo titled with its predicted class and probability).

    python predict.py examples/
    python predict.py dinner.jpg --checkpoint user/foodvision-mini --figures predictions/
"""

import argparse
import sys
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display needed
import matplotlib.pyplot as plt
import torch

from devices import available_cpus
from images import IMAGE_EXTENSIONS, images_in, load_rgb
from options import add_model_arguments, check_model_arguments
from outputs import why_not_writable
from serving import NoModel, ServingError, load
from train_head import TrainingUnavailable, needs_first_training, train_default_head


def file_key(path: Path) -> tuple[int, int] | str:
    """One key per file: its device and inode where it exists, so that links, and names in another case on a file
    system that ignores case (macOS, Windows), are the file they name; else its resolved path."""
    try:
        status = path.stat()
    except OSError:
        return str(path.resolve())
    return status.st_dev, status.st_ino


def figure_paths(image_paths: list[str], directory: Path) -> dict[str, Path]:
    """Where each image's figure goes: <image name>.png in `directory`. ValueError where a figure would overwrite
    one of the images, or two different images' figures each other, before anything is computed. Figure names that
    differ only in case clash too: they are one file on macOS and Windows."""
    figures = {image: directory / f"{Path(image).stem}.png" for image in image_paths}
    keys = {image: file_key(Path(image)) for image in image_paths}
    images = {key: image for image, key in keys.items()}
    named = {}
    for image, figure in figures.items():
        if (photo := images.get(file_key(figure))) is not None:
            raise ValueError(f"the figure for {image} would overwrite {photo}")
        other = named.setdefault(str(figure.resolve()).casefold(), image)
        if keys[other] != keys[image]:  # the same photo named twice writes the same figure
            if figures[other] == figure:
                raise ValueError(f"the figures for {other} and {image} would both be {figure}")
            raise ValueError(
                f"the figures for {other} and {image}, {figures[other].name} and {figure.name}, would be one file "
                "where case is ignored (macOS, Windows)"
            )
    return figures


def save_figure(image_path: str, label: str, probability: float, path: Path) -> Path:
    figure, axes = plt.subplots(figsize=(6, 6))
    axes.imshow(load_rgb(image_path))
    axes.set_title(f"Pred: {label} | Prob: {probability:.3f}")
    axes.axis("off")
    figure.savefig(path, bbox_inches="tight")
    plt.close(figure)
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("images", nargs="+", help="image files to classify, or folders of them")
    add_model_arguments(parser)
    parser.add_argument("--figures", type=Path, help="also save <image name>.png figures in this folder")
    args = check_model_arguments(parser, parser.parse_args(argv))
    if args.figures and (problem := why_not_writable(args.figures)):  # before the model loads
        parser.error(f"--figures: {problem}")
    image_paths, failures = [], 0
    for argument in args.images:
        if not Path(argument).is_dir():
            image_paths.append(argument)
        elif found := images_in(Path(argument)):  # examples/ without its SOURCE.md
            image_paths += map(str, found)
        else:
            print(f"{argument}: error: no image files in this folder ({', '.join(IMAGE_EXTENSIONS)})", file=sys.stderr)
            failures += 1
    if not image_paths:
        return 1
    try:
        figures = figure_paths(image_paths, args.figures) if args.figures else {}
    except ValueError as clash:
        parser.error(f"{clash}; save the figures in another folder (--figures)")

    torch.set_num_threads(available_cpus())
    try:
        if needs_first_training(args.checkpoint):  # the app's first start, without its notice page
            train_default_head()
    except TrainingUnavailable as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    foodvision = load(args.checkpoint, args.device, args.precision, measure_engines=False)
    if isinstance(foodvision, NoModel):
        print(f"error: {foodvision.problem}", file=sys.stderr)
        return 1
    if args.figures:
        args.figures.mkdir(parents=True, exist_ok=True)
    for image_path in image_paths:
        started = time.perf_counter()
        try:
            prediction = foodvision.classify(image_path)
        except ServingError as error:
            print(f"{image_path}: error: {error}", file=sys.stderr)
            failures += 1
            continue
        total_ms = (time.perf_counter() - started) * 1000
        top = sorted(prediction.probabilities.items(), key=lambda item: item[1], reverse=True)[:3]
        print(
            f"{image_path}: "
            + ", ".join(f"{name} {p:.3f}" for name, p in top)
            + f" | model {prediction.model_ms:.0f} ms, total {total_ms:.0f} ms"
        )
        if warning := prediction.warning():
            print(f"  warning: {warning}")
        if args.figures:
            print(f"  figure: {save_figure(image_path, *top[0], figures[image_path])}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
