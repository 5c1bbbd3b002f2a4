"""model.py's ViT-B/16 against torchvision's vit_b_16 and the course's implementation
(benchmarks/course_vit.py), same config, same parameter count: inference latency and one training
step (forward, backward, AdamW step), timed in turns in one process.

    python benchmarks/vit_implementations.py                 # about 2 minutes on 2 cores
    python benchmarks/vit_implementations.py --repeats 20 --train-repeats 5 --train-batch 16
"""

import argparse

from common import interleaved_ms, median, print_machine, print_table, save_results

import torch
import torchvision
from course_vit import CourseViT
from torch import nn

from model import build_vit

NUM_CLASSES = 3
REFERENCE = "torchvision vit_b_16"


def implementations() -> dict[str, nn.Module]:
    torch.manual_seed(0)
    return {
        "model.py ViT": build_vit("vit_b_16", num_classes=NUM_CLASSES),
        REFERENCE: torchvision.models.vit_b_16(num_classes=NUM_CLASSES),
        # the course's dropout defaults (0.1) would add work the other two do not do
        "course ViT (nn.MultiheadAttention)": CourseViT(
            num_classes=NUM_CLASSES, mlp_dropout=0.0, embedding_dropout=0.0
        ),
    }


def training_step(model: nn.Module, images: torch.Tensor, labels: torch.Tensor):
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    loss_fn = nn.CrossEntropyLoss()

    def step():
        optimizer.zero_grad(set_to_none=True)
        loss_fn(model(images), labels).backward()
        optimizer.step()

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=10, help="timed inference passes per implementation (batch 1)")
    parser.add_argument("--inference-batch", type=int, default=8, help="a second, batched inference measurement")
    parser.add_argument("--train-repeats", type=int, default=3, help="timed training steps per implementation")
    parser.add_argument("--train-batch", type=int, default=8)
    args = parser.parse_args()
    print_machine()

    models = implementations()
    counts = {name: sum(p.numel() for p in model.parameters()) for name, model in models.items()}
    results = {"parameters": counts, "inference_ms": {}, "train_step_ms": None}
    for batch, repeats in ((1, args.repeats), (args.inference_batch, max(2, args.repeats // 3))):
        images = torch.randn(batch, 3, 224, 224)
        for model in models.values():
            model.eval()
        with torch.inference_mode():
            results["inference_ms"][batch] = interleaved_ms(
                {n: (lambda m=m: m(images)) for n, m in models.items()}, repeats
            )
    images = torch.randn(args.train_batch, 3, 224, 224)
    labels = torch.randint(0, NUM_CLASSES, (args.train_batch,))
    for model in models.values():
        model.train()
    results["train_step_ms"] = interleaved_ms(
        {n: training_step(m, images, labels) for n, m in models.items()}, args.train_repeats
    )

    rows = []
    for name in models:
        row = [name, f"{counts[name]:,}"]
        for times in (*results["inference_ms"].values(), results["train_step_ms"]):
            reference = median(times[REFERENCE])
            row += [median(times[name]), f"{median(times[name]) / reference:.2f}"]
        rows.append(row)
    batch1, batched = results["inference_ms"]
    print(
        f"Median ms ({args.repeats} inference passes at batch {batch1}, "
        f"{max(2, args.repeats // 3)} at batch {batched}, "
        f"{args.train_repeats} training steps at batch {args.train_batch}); ratio = time / torchvision's, same run"
    )
    print_table(
        [
            "implementation",
            "parameters",
            f"inference b{batch1} ms",
            "ratio",
            f"inference b{batched} ms",
            "ratio",
            f"train step b{args.train_batch} ms",
            "ratio",
        ],
        rows,
    )
    print(f"results: {save_results('vit_implementations', results)}")


if __name__ == "__main__":
    main()
