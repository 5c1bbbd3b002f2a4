"""Pages without the model pass, for `browser_latency.py --floor`: what a drop costs before this project's own work.
FOODVISION_FLOOR chooses the page:

- `page`: app.py as served, each prediction uniform (with uniform attention) instead of the model's and the photo not
  decoded: the upload, the input's preview, the queue, the event stream and drawing this page's views;
- `decode`: the same with the photo decoded and preprocessed as serving does it;
- `bare`: a Gradio page with only the photo input, the label and the timing line, answering at once: Gradio's own
  cost of a drop, whatever the page.

    FOODVISION_FLOOR=page python benchmarks/page_floor.py --checkpoint <head> [--port N]
"""

import os
import sys

from common import ROOT  # noqa: F401  (puts the project's modules on the path)

import gradio as gr
import torch

import app
from serving import FoodVision, Prediction

FLOORS = {  # FOODVISION_FLOOR: the page's name in browser_latency's results
    "bare": "bare Gradio page: photo, label, timing",
    "page": "this page without the model or the decode",
    "decode": "this page with the decode, without the model",
}


def classify_without_model(foodvision: FoodVision, image_path: str, decode: bool) -> Prediction:
    """serving.FoodVision.classify's result without the model: the photo decoded and preprocessed (with `decode`)
    or not at all, uniform probabilities and attention."""
    size = foodvision.transforms.crop_size[0]
    pixels = foodvision.preprocess(image_path) if decode else torch.zeros(3, size, size)
    config = foodvision.predictor.vit.config
    tokens = 1 + foodvision.grid_size**2
    maps = [torch.full((config.num_heads, tokens, tokens), 1 / tokens)] * config.num_layers
    names = foodvision.class_names
    return Prediction({name: 1 / len(names) for name in names}, pixels, maps, model_ms=0.0)


def serve_bare_page(argv: list[str]) -> None:
    """The photo input, the label and the timing line, with app.build_demo's element ids (browser_latency watches
    them), its quiet progress and its queue (app.queued), and nothing else: no examples, pictures or deeper views."""
    args = app.parse_args(argv)

    def answer(upload: dict | None):
        yield {"pizza": 0.4, "steak": 0.3, "sushi": 0.3}, "**Model:** 0 ms"

    with gr.Blocks(title="Bare page") as demo:
        image = gr.Image(label="Food photo", type="filepath", height=360, elem_id="photo")
        label = gr.Label(num_top_classes=3, label="Prediction", elem_id="prediction")
        timing = gr.Markdown(elem_id="timing")
        image.change(
            answer,
            image,
            [label, timing],
            preprocess=False,
            api_name="predict",
            show_progress_on=label,
            **app.QUIET_PROGRESS,
        )
    app.queued(demo).launch(server_name=args.host, server_port=args.port)


if __name__ == "__main__":
    floor = os.environ.get("FOODVISION_FLOOR")
    if floor not in FLOORS:
        sys.exit(f"Set FOODVISION_FLOOR to one of {', '.join(FLOORS)}.")
    if floor == "bare":
        serve_bare_page(sys.argv[1:])
    else:
        decode = floor == "decode"
        FoodVision.classify = lambda foodvision, image_path: classify_without_model(foodvision, image_path, decode)
        app.main(sys.argv[1:])
