"""The page with the model pass taken out, for `browser_latency.py --floor`: what a drop costs in Gradio (the upload,
the input's preview, the queue, the event stream, drawing the label) before this project's work, and with the
photo's decode. Everything else is app.py as served; each prediction is uniform, with uniform attention.

    python benchmarks/page_floor.py --checkpoint <head> [--port N]            # page only
    FOODVISION_FLOOR_DECODE=1 python benchmarks/page_floor.py --checkpoint <head>   # page and decode
"""

import os
import sys

from common import ROOT  # noqa: F401  (puts the project's modules on the path)

import torch

import app
from serving import FoodVision, Prediction

DECODE = os.environ.get("FOODVISION_FLOOR_DECODE") == "1"


def classify_without_model(foodvision: FoodVision, image_path: str) -> Prediction:
    """serving.FoodVision.classify's result without the model: the photo decoded and preprocessed (with DECODE) or
    not at all, uniform probabilities and attention."""
    size = foodvision.transforms.crop_size[0]
    pixels = foodvision.preprocess(image_path) if DECODE else torch.zeros(3, size, size)
    config = foodvision.predictor.vit.config
    tokens = 1 + foodvision.grid_size**2
    maps = [torch.full((config.num_heads, tokens, tokens), 1 / tokens)] * config.num_layers
    names = foodvision.config["class_names"]
    return Prediction({name: 1 / len(names) for name in names}, pixels, maps, model_ms=0.0)


if __name__ == "__main__":
    FoodVision.classify = classify_without_model
    app.main(sys.argv[1:])
