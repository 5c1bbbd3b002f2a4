"""The views of one photo, "the image as the ViT sees it", each defined once: the page shows them (app.py) and
this script saves them, both from one PhotoAnalysis of one model pass, with Figure 7 (left and centre), which
depend on the weights alone.

    python views.py --checkpoint PATH_OR_REPO [--image photo.jpg] --out figures/

Adding a view is one entry in VIEWS (its name, caption, where it goes and how it is drawn) plus its test: the page
lays out and wires every entry, and this script saves every entry.
"""

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Literal

import torch
from matplotlib.figure import Figure
from PIL import Image

from figures import (
    attention_rollout,
    draw_attention_distance,
    draw_filters,
    draw_head_maps,
    draw_position_similarity,
    draw_rollout,
    embedding_filters,
    equation_walk,
    mean_attention_distance,
    position_embedding_similarity,
)
from images import attention_overlay, example_photos, patch_grid, to_display
from model import PatchEmbedding
from outputs import why_not_writable
from serving import FoodVision, NoModel, Prediction, ServingError, load


@dataclass(frozen=True, eq=False)  # compared by identity: == on tensors is elementwise
class PhotoAnalysis:
    """What every view of a photo draws from, reduced from its prediction's attention maps: each head's class-token
    attention and mean attention distance and the rollout's class-token row, so that keeping it for a visitor's
    deeper views (app.py's gr.State) costs a small fraction of every layer's full maps (BENCHMARKS.md, "Memory per
    visitor")."""

    probabilities: dict[str, float]
    pixels: torch.Tensor  # (3, H, W) model input, normalised
    mean: tuple[float, ...]  # the normalisation, to show the pixels as a picture
    std: tuple[float, ...]
    patch_size: int
    class_token_attention: torch.Tensor  # (layers, heads, N): each head's attention from the class token to a patch
    distances: torch.Tensor  # (layers, heads): mean attention distance in pixels (Figure 7, right)
    rollout: torch.Tensor  # (N,): what of each patch reaches the class token through all layers (Figure 6)

    @classmethod
    def of(cls, prediction: Prediction, served: FoodVision) -> "PhotoAnalysis":
        maps = prediction.attention_maps  # every layer's (heads, 1+N, 1+N)
        batched = [attention[None] for attention in maps]
        return cls(
            prediction.probabilities,
            prediction.pixels,
            tuple(served.transforms.mean),
            tuple(served.transforms.std),
            served.patch_size,
            torch.stack([attention[:, 0, 1:] for attention in maps]),
            mean_attention_distance(batched, served.patch_size),
            attention_rollout(batched)[0],
        )

    @property
    def grid_size(self) -> int:
        return int(self.class_token_attention.shape[-1] ** 0.5)

    @property
    def layers(self) -> int:
        return self.class_token_attention.shape[0]

    def shown(self) -> Image.Image:
        """The model input as a picture: the photo resized and centre-cropped."""
        return to_display(self.pixels, list(self.mean), list(self.std))


@dataclass(frozen=True)
class Weights:
    """What views take from the served weights rather than the photo."""

    patch_embedding: PatchEmbedding  # Eq. 1, for the walk through Eqs. 1-4
    reference_distances: torch.Tensor  # (layers, heads): the bundled examples' mean attention distances
    reference_label: str = "average over the examples"

    @classmethod
    def of(cls, served: FoodVision) -> "Weights":
        return cls(served.patch_embedding, served.reference_distances)


@dataclass(frozen=True)
class View:
    name: str  # the page's element id and the saved file's name
    caption: str  # may name {grid} and {patch}
    # "photo": beside the prediction, drawn with it; "inside": in "Inside the ViT", drawn after it
    section: Literal["photo", "inside"]
    draw: Callable[["PhotoAnalysis", Weights, int], Image.Image | Figure | str]  # (analysis, weights, layer)
    text: bool = False  # draws Markdown rather than a picture
    follows_layer: bool = False  # redrawn when the layer slider moves

    def __post_init__(self):
        if self.text and (self.section == "photo" or self.follows_layer):
            raise ValueError(
                f"view {self.name!r}: a Markdown view goes in the 'inside' section and does not follow the layer "
                "(the page saves the photo's views and the layer's as pictures)"
            )


def patches_view(shown: Image.Image, patch_size: int) -> Image.Image:
    """The model input cut into its grid of patches, the "16x16 words" (needs no model)."""
    return patch_grid(shown, patch_size)


VIEWS = (
    View(
        "patches",
        "Patches: {grid}x{grid} of {patch}x{patch} pixels",
        "photo",
        lambda analysis, weights, layer: patches_view(analysis.shown(), analysis.patch_size),
    ),
    View(
        "attention",
        "Attention: class token, last layer",
        "photo",
        # mean over the heads of the class token's attention to each patch
        lambda analysis, weights, layer: attention_overlay(
            analysis.shown(),
            analysis.class_token_attention[-1].mean(dim=0).reshape(analysis.grid_size, analysis.grid_size),
        ),
    ),
    View(
        "rollout",
        "Attention rollout, all layers (Figure 6)",
        "photo",
        lambda analysis, weights, layer: draw_rollout(analysis.shown(), analysis.rollout),
    ),
    View(
        "walk",
        "The walk through Eqs. 1-4",
        "inside",
        lambda analysis, weights, layer: equation_walk(
            weights.patch_embedding, analysis.pixels, analysis.probabilities, analysis.distances
        ),
        text=True,
    ),
    View(
        "heads",
        "The class token's attention, head by head",
        "inside",
        lambda analysis, weights, layer: draw_head_maps(analysis.class_token_attention[layer - 1], analysis.shown()),
        follows_layer=True,
    ),
    View(
        "distance",
        "Mean attention distance per head (Figure 7, right)",
        "inside",
        lambda analysis, weights, layer: draw_attention_distance(
            analysis.distances, weights.reference_distances, weights.reference_label
        ),
    ),
)


def views_in(section: str) -> tuple[View, ...]:
    return tuple(view for view in VIEWS if view.section == section)


def draw_views(views: tuple[View, ...], analysis: PhotoAnalysis, weights: Weights, layer: int | None = None) -> dict:
    """{view name: picture or Markdown}; `layer` (from 1) for the views that follow the slider, default the last."""
    return {view.name: view.draw(analysis, weights, layer or analysis.layers) for view in views}


def save(drawn: Image.Image | Figure | str, folder: Path, name: str) -> Path:
    """A view as a file: Markdown as .md, a picture as .png."""
    if isinstance(drawn, str):
        path = folder / f"{name}.md"
        path.write_text(drawn + "\n")
    else:
        path = folder / f"{name}.png"
        if isinstance(drawn, Figure):
            drawn.savefig(path, dpi=150)
        else:
            drawn.save(path)
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Save the app's views of a photo for a FoodVision Mini checkpoint.")
    parser.add_argument("--checkpoint", required=True, help="checkpoint folder or Hugging Face Hub repo id")
    parser.add_argument("--image", type=Path, help="the photo (default: the first of examples/)")
    parser.add_argument("--out", type=Path, required=True, help="folder for the files")
    args = parser.parse_args(argv)
    photo = args.image or next(iter(example_photos()), None)
    if photo is None:
        parser.error("no --image given and no photos in examples/")
    if problem := why_not_writable(args.out):  # before the model runs
        parser.error(f"--out: {problem}")

    # the served weights in model.py's ViT, unquantized, on torch: one photo does not repay an ONNX export
    served = load(args.checkpoint, precision="fp32", measure_engines=False)
    if isinstance(served, NoModel):
        print(f"error: {served.problem}", file=sys.stderr)
        return 1
    try:
        prediction = served.classify(str(photo))
    except ServingError as error:
        print(f"error: {photo}: {error}", file=sys.stderr)
        return 1
    embedding = served.patch_embedding
    drawn = draw_views(VIEWS, PhotoAnalysis.of(prediction, served), Weights.of(served)) | {
        "embedding_filters": draw_filters(embedding_filters(embedding.projection.weight)),
        "position_similarity": draw_position_similarity(position_embedding_similarity(embedding.position_embedding)),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    for name, view in drawn.items():
        print(save(view, args.out, name))
    return 0


if __name__ == "__main__":
    sys.exit(main())
