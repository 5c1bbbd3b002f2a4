"""Size and speed of the ViT feature extractor beside the course's comparison model, torchvision's
EfficientNet-B2 as a feature extractor (frozen backbone + Dropout/Linear head, chapter 09): parameters,
what a checkpoint of the trained part weighs against a full-model file, and batch-1 latency.

    python benchmarks/model_size.py                  # about 1 minute
    python benchmarks/model_size.py --repeats 30

Random weights (none can be downloaded here): sizes and speed do not depend on the values.
"""

import argparse
import io
import tempfile
from pathlib import Path

from common import (
    WORK_DIR,
    interleaved_ms,
    median,
    print_machine,
    print_table,
    random_backbone_home,
    save_results,
)  # first: puts the project on sys.path

import torch
import torchvision
from safetensors.torch import save_file
from torch import nn

from classifier import build_feature_extractor, head_state_dict
from inference import Predictor, calibration_images

CLASSES = ("pizza", "steak", "sushi")


def efficientnet_b2_extractor() -> tuple[nn.Module, int]:
    """The course's EffNetB2 feature extractor and its weights' input size (288 px)."""
    weights = torchvision.models.EfficientNet_B2_Weights.IMAGENET1K_V1
    model = torchvision.models.efficientnet_b2()
    model.classifier = nn.Sequential(
        nn.Dropout(p=0.3, inplace=True), nn.Linear(model.classifier[1].in_features, len(CLASSES))
    )
    return model.eval(), weights.transforms().crop_size[0]


def mebibytes(state_dict: dict, safetensors: bool) -> float:
    if safetensors:
        with tempfile.TemporaryDirectory() as directory:
            path = Path(directory) / "head.safetensors"
            save_file({k: v.contiguous() for k, v in state_dict.items()}, path)
            return path.stat().st_size / 2**20
    buffer = io.BytesIO()
    torch.save(state_dict, buffer)
    return buffer.tell() / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=15)
    args = parser.parse_args()
    print_machine()

    random_backbone_home(WORK_DIR / "torch_home")
    vit, vit_transforms = build_feature_extractor(class_names=CLASSES)
    vit.eval()
    predictor = Predictor(vit, calibration=calibration_images(vit_transforms))
    effnet, effnet_size = efficientnet_b2_extractor()
    vit_input = torch.randn(1, 3, vit_transforms.crop_size[0], vit_transforms.crop_size[0])
    effnet_input = torch.randn(1, 3, effnet_size, effnet_size)
    served = f"ViT-B/16 as served ({predictor.precision}, with the page's attention maps)"
    with torch.inference_mode():
        times = interleaved_ms(
            {
                "ViT-B/16 fp32": lambda: vit(vit_input),
                served: lambda: predictor(vit_input, []),
                "EfficientNet-B2 fp32": lambda: effnet(effnet_input),
            },
            args.repeats,
        )
    effnet_head = {f"classifier.1.{k}": v for k, v in effnet.classifier[1].state_dict().items()}
    rows = []
    for name, model, head, size, key in (
        ("ViT-B/16", vit, head_state_dict(vit), vit_input.shape[-1], "ViT-B/16 fp32"),
        ("EfficientNet-B2", effnet, effnet_head, effnet_size, "EfficientNet-B2 fp32"),
    ):
        rows.append(
            [
                name,
                f"{size} px",
                f"{sum(p.numel() for p in model.parameters()):,}",
                f"{sum(v.numel() for v in head.values()):,}",
                f"{mebibytes(head, safetensors=True) * 1024:.1f} KiB",
                f"{mebibytes(model.state_dict(), safetensors=False):.1f} MiB",
                median(times[key]),
            ]
        )
    # int8: the quantized copy the Predictor serves from, beside the fp32 model it was made from
    quantized = predictor.precision == "int8"
    rows.append(
        [
            served,
            f"{vit_input.shape[-1]} px",
            "",
            "",
            "",
            f"{mebibytes(predictor.vit.state_dict(), safetensors=False):.1f} MiB in memory" if quantized else "",
            median(times[served]),
        ]
    )
    print(f"Median of {args.repeats} interleaved batch-1 passes")
    print_table(
        [
            "model",
            "input",
            "parameters",
            "trained (head) parameters",
            "head checkpoint (safetensors)",
            "full model file (torch.save)",
            "batch-1 ms",
        ],
        rows,
    )
    print(f"results: {save_results('model_size', {'rows': rows, 'latency_ms': times})}")


if __name__ == "__main__":
    main()
