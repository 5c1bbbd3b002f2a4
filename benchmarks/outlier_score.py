"""The frozen features put to work (outliers.py, fewshot.py): what the "is this even food?" score costs per photo,
how well it separates drawn non-food from drawn food on the fp32 and the int8 path, what it adds to the
checkpoint and to train_head.py's time, and the few-shot linear evaluation's table.

The backbone is the seeded random vit_b_16 and the photos are drawn (the real weights and dataset cannot be
downloaded here), at the course's 10% split size: 75 training and 25 test photos a class, and 15 drawn non-food
pictures of each kind for --ood-dir. Accuracy and AUROC with the real weights cannot be measured here.

    python benchmarks/outlier_score.py            # a few minutes on 2 cores
"""

import argparse
import contextlib
import io
import json
import shutil
import tempfile
from pathlib import Path

from common import WORK_DIR, interleaved_ms, median, print_machine, print_table, random_backbone_home, save_results

import numpy as np
import torch
from safetensors.torch import save

import outliers
import serving
from classifier import head_state_dict
from inference import int8_sums
from tests.standins import (
    GENERATED_CLASSES,
    NON_FOOD_KINDS,
    draw_food_image,
    draw_non_food_image,
    write_food_dataset,
    write_non_food_folder,
)
from train_head import train_head


def served_scores(served: serving.FoodVision, pictures: list, folder: Path) -> torch.Tensor:
    """Each picture classified from a file, as an upload is, and its outlier score."""
    folder.mkdir(parents=True, exist_ok=True)
    scores = []
    for index, picture in enumerate(pictures):
        picture.save(folder / f"{index}.png")
        scores.append(served.classify(str(folder / f"{index}.png")).outlier.score)
    return torch.tensor(scores)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--train-per-class", type=int, default=75)
    parser.add_argument("--test-per-class", type=int, default=25)
    parser.add_argument("--non-food-per-kind", type=int, default=15)
    parser.add_argument("--fresh-per-class", type=int, default=20, help="fresh drawn food a class for the served AUROC")
    args = parser.parse_args()
    print_machine()
    work = WORK_DIR / "outlier_score"
    shutil.rmtree(work, ignore_errors=True)
    random_backbone_home(WORK_DIR / "torch_home")
    dataset = write_food_dataset(work / "pizza_steak_sushi", args.train_per_class, args.test_per_class, seed=5)
    non_food = write_non_food_folder(work / "not-food", args.non_food_per_kind, seed=6)
    with contextlib.redirect_stdout(io.StringIO()):
        checkpoint = train_head(data_dir=dataset, output_dir=work / "foodvision-mini", device="cpu", ood_dir=non_food)
    metrics, evaluation = (json.loads((checkpoint / name).read_text()) for name in ("metrics.json", "evaluation.json"))

    training = metrics["features_seconds"] + metrics["head_training_seconds"]
    added = metrics["outliers_and_fewshot_seconds"]
    print("train_head.py's time (the int8 record's pass over the test split not included)")
    print_table(
        ["part", "s", "vs backbone pass + head"],
        [
            ["backbone pass (train, test, --ood-dir) + head", training, "1.00x"],
            ["outlier score fit + few-shot evaluation", added, f"{added / training:.4f}x"],
        ],
    )

    served = serving.load(str(checkpoint), "cpu", "fp32")
    head_bytes = len(save(head_state_dict(served.model)))
    score_bytes = served.outliers.size_bytes()
    print("checkpoint (model.safetensors)")
    print_table(
        ["content", "bytes"],
        [["head alone", f"{head_bytes:,}"], ["outlier score's tensors", f"{score_bytes:,}"]],
    )

    y = []
    served.predictor(served.preprocess(str(non_food / "noise-0.png"))[None], None, y)
    times = interleaved_ms({"score one photo": lambda: served.outliers.score(y[0])}, repeats=2000, warmup=50)
    model_times = interleaved_ms(
        {"fp32 model pass": lambda: served.predictor(served.preprocess(str(non_food / "noise-0.png"))[None], [], [])},
        repeats=5,
    )
    print("cost per photo (median)")
    print_table(
        ["step", "ms"],
        [
            ["outlier score", f"{median(times['score one photo']):.4f}"],
            ["fp32 model pass with maps, for scale", f"{median(model_times['fp32 model pass']):.1f}"],
        ],
    )

    rng = np.random.default_rng(9)
    food = [draw_food_image(name, rng) for name in GENERATED_CLASSES for _ in range(args.fresh_per_class)]
    other = [draw_non_food_image(kind, rng) for kind in NON_FOOD_KINDS for _ in range(args.fresh_per_class // 2)]
    rows, served_auroc = [], {}
    with tempfile.TemporaryDirectory() as folder:
        for precision in ["fp32"] + (["int8"] if int8_sums() else []):
            path = serving.load(str(checkpoint), "cpu", precision)
            food_scores = served_scores(path, food, Path(folder) / f"food-{precision}")
            other_scores = served_scores(path, other, Path(folder) / f"other-{precision}")
            served_auroc[precision] = outliers.auroc(food_scores, other_scores)
            rows.append(
                [
                    f"served {precision}",
                    f"{served_auroc[precision]:.3f}",
                    f"{outliers.fpr_at_tpr(food_scores, other_scores):.3f}",
                    f"{path.outliers.is_outlier(food_scores).double().mean().item():.3f}",
                ]
            )
    ood = evaluation["outliers"]["ood"]
    rows.insert(
        0, ["train_head.py --ood-dir (fp32 features)", f"{ood['auroc']:.3f}", f"{ood['fpr_at_95_tpr']:.3f}", "-"]
    )
    print(f"drawn non-food against drawn food ({len(food)} fresh food, {len(other)} fresh non-food)")
    print_table(["scored on", "AUROC", "FPR at 95% TPR", "fresh food flagged"], rows)

    shots = evaluation["fewshot"]["shots"]
    print("few-shot linear evaluation (test accuracy, mean of 3 seeds; stand-in features)")
    print_table(
        ["photos a class", *shots],
        [["accuracy", *(f"{r['mean']:.3f}" if r["mean"] is not None else "-" for r in shots.values())]],
    )
    print(f"the trained linear head: {evaluation['fewshot']['linear_head_accuracy']:.3f}")
    save_results(
        "outlier_score",
        {
            "training_seconds": training,
            "added_seconds": added,
            "head_bytes": head_bytes,
            "score_bytes": score_bytes,
            "score_ms": median(times["score one photo"]),
            "served_auroc": served_auroc,
            "train_head_ood": ood,
            "fewshot": shots,
        },
    )


if __name__ == "__main__":
    main()
