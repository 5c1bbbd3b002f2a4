"""Train the head of the frozen ImageNet-pretrained vit_b_16 on pizza/steak/sushi (course chapters 08-09).

The course runs the whole backbone over every image in every epoch, although the backbone is frozen, has no
dropout and sees no augmentation: its class-token features never change. Here they are computed once (one
backbone pass over train and test) and the head, one Linear layer, is trained on that cache, so 10 epochs cost
little more than one pass; the training itself is the course's (Adam 1e-3, batch 32, CrossEntropyLoss, 10 epochs,
seed 42).

    python train_head.py                       # 10% split, downloaded into data/
    python train_head.py --split 20_percent    # the course's best run
    python train_head.py --data-dir my_photos  # any train/<class>, test/<class> folder

Writes a checkpoint (model.safetensors + config.json, see classifier.py) together with metrics.json,
loss_curves.png, fewshot.png, evaluation.json and a model card (README.md) into --output, which --push-to-hub
publishes as it is. From the same cached features it fits the outlier score (outliers.py) and runs the paper's
few-shot linear evaluation (fewshot.py).
"""

import argparse
import inspect
import json
import math
import re
import shlex
import sys
import time
from pathlib import Path, PurePosixPath
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import torch
import torchvision
from torch import nn
from tqdm.auto import tqdm

import outliers
from classifier import (
    BACKBONE,
    CONFIG_FILE,
    DEFAULT_CHECKPOINT_DIR,
    DEFAULT_WEIGHTS,
    RECORD_KEYS,
    WEIGHTS_NAMES,
    CheckpointError,
    WeightsUnavailableError,
    build_feature_extractor,
    check_replaceable,
    check_weights_file,
    describe_weights,
    model_card,
    push_to_hub,
    save_head,
    trainable_parameters,
)
from data import DATASET_URLS, DEFAULT_ROOT, DEFAULT_SPLIT, DatasetError, ImageDataset, PhotoFolder, prepare_dataset
from devices import resolve_device
from fewshot import fewshot_accuracy
from hub import CHECKPOINT_VARIABLE, on_zero_gpu, repo_id_argument
from inference import (
    Predictor,
    agreement,
    calibration_images,
    fast_features,
    int8_setup,
    resolve_precision,
    vit_from_torchvision,
)
from outliers import OutlierScore
from outputs import epoch_line, plot_curves, plot_fewshot

MOST_WRONG = 5  # how many confidently wrong test images the evaluation lists
# The backbone pass's batch on a CPU: 8 computed the features faster than the head's 32 on the EPYC AVX2
# (BENCHMARKS.md, feature_batch.py)
CPU_FEATURE_BATCH = 8
# Query parameters that carry a secret in signed URLs (S3's X-Amz-Signature and -Credential, Azure's sig, tokens)
SECRET_PARAMETER = re.compile(r"sig|token|key|credential|auth|security|expires|password", re.IGNORECASE)
ACCEPTED = 0.95  # the outlier threshold accepts this fraction of the test photos: the usual rule, needing no OOD data


def read_as_served(transforms, *datasets: ImageDataset) -> None:
    """Each photo of `datasets` decoded and transformed as serving reads an upload, so its features in training are
    those it is served with."""
    for dataset in datasets:
        dataset.transform, dataset.decode_size = transforms, transforms.resize_size[0]


def extract_features(
    model: nn.Module, dataset: ImageDataset, batch_size: int, desc: str, device: str = "cpu"
) -> tuple[torch.Tensor, torch.Tensor]:
    """The backbone's class-token features y (N, D) (Eq. 4) and labels (N,) of every image, on the CPU, computed by
    model.py's ViT holding the torchvision model's tensors: the code that serves them, and faster than torchvision's
    at these batches (BENCHMARKS.md, vit_implementations.py)."""
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size)
    vit = vit_from_torchvision(model)
    features, labels = [], []
    with torch.inference_mode():
        for images, batch_labels in tqdm(loader, desc=desc, unit="batch"):
            features.append(vit.forward_features(images.to(device)).cpu())
            labels.append(batch_labels)
    return torch.cat(features), torch.cat(labels)


def feature_batch_size(device: str, batch_size: int) -> int:
    """The backbone pass's batch: CPU_FEATURE_BATCH on the CPU, the head's `batch_size` on a GPU."""
    return CPU_FEATURE_BATCH if torch.device(device).type == "cpu" else batch_size


def train_epoch(head: nn.Module, loader, optimizer: torch.optim.Optimizer, loss_fn: nn.Module) -> tuple[float, float]:
    """One pass over the cached training features; mean loss and accuracy over the samples."""
    head.train()
    total_loss, correct, count = 0.0, 0, 0
    for features, labels in loader:
        logits = head(features)
        loss = loss_fn(logits, labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        total_loss += loss.item() * len(labels)
        correct += (logits.argmax(dim=1) == labels).sum().item()
        count += len(labels)
    return total_loss / count, correct / count


@torch.inference_mode()
def evaluate(
    head: nn.Module, features: torch.Tensor, labels: torch.Tensor, loss_fn: nn.Module
) -> tuple[float, float, torch.Tensor]:
    """Loss, accuracy and logits of the head on cached features."""
    head.eval()
    logits = head(features)
    return loss_fn(logits, labels).item(), (logits.argmax(dim=1) == labels).float().mean().item(), logits


def fit(head: nn.Module, train: tuple, test: tuple, epochs: int, lr: float, batch_size: int, seed: int) -> list[dict]:
    """Train `head` on cached (features, labels) with the course's Adam + CrossEntropyLoss and
    return one dict of train/test loss and accuracy per epoch. ValueError where the training diverges (the loss or
    the weights stop being finite numbers), so that no such head is ever saved."""
    loader = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(*train),
        batch_size=batch_size,
        shuffle=True,
        generator=torch.Generator().manual_seed(seed),
    )
    optimizer = torch.optim.Adam(head.parameters(), lr=lr)
    loss_fn = nn.CrossEntropyLoss()
    history = []
    for epoch in tqdm(range(1, epochs + 1), desc="Training the head", unit="epoch"):
        diverged = f"Training diverged in epoch {epoch} with lr {lr}"
        fix = "nothing was saved. Train again with a lower --lr (the course's is 1e-3)."
        try:
            train_loss, train_acc = train_epoch(head, loader, optimizer, loss_fn)
        except RuntimeError as error:  # Adam's first step, lr / (1 - beta1), overflows float32 for lr above ~3e37
            raise ValueError(f"{diverged} ({error}); {fix}") from None
        test_loss, test_acc, _ = evaluate(head, *test, loss_fn)
        finite = math.isfinite(train_loss) and math.isfinite(test_loss)
        if not (finite and all(torch.isfinite(parameter).all() for parameter in head.parameters())):
            raise ValueError(f"{diverged}: the head's loss or weights are no longer finite numbers; {fix}")
        history.append(
            dict(epoch=epoch, train_loss=train_loss, train_acc=train_acc, test_loss=test_loss, test_acc=test_acc)
        )
        tqdm.write(epoch_line(history[-1]))
    return history


def measure_int8(
    model: nn.Module, test_set: ImageDataset, test_features: torch.Tensor, weights: str, outlier_score: OutlierScore
) -> dict:
    """The app's int8 path against fp32 on the test split, with these very weights (real pretrained ViTs have the
    outlier channels a random backbone lacks): top-1 agreement, the largest probability difference and the worst
    feature cosine, with the setup the measurement holds for (inference.int8_setup), and how far the outlier
    score moves. The app serves int8 only where such a record passed for its own setup, or its self-check does."""
    if resolve_precision("auto", torch.device("cpu")) != "int8":
        return {"measured": False, "why": "torch has no int8 kernels for this CPU; the app will not serve int8"}
    fast = Predictor(model, "int8", calibration_images(test_set.transform))
    images = torch.stack(
        [test_set[index][0] for index in tqdm(range(len(test_set)), desc="int8 check (test split)", leave=False)]
    )
    int8_features = fast_features(fast, images)
    measured = agreement(fast, images, test_features, int8_features)
    tqdm.write(f"int8 path against fp32 on the test split: {measured.describe()}")
    fp32_scores, int8_scores = outlier_score.score(test_features), outlier_score.score(int8_features)
    return {
        "measured": True,
        "setup": int8_setup(check_weights_file(weights).sha256),
        "agreement": measured.as_record(),
        "outlier_score": {
            "max_difference": (int8_scores - fp32_scores).abs().max().item(),
            "threshold": outlier_score.threshold,
            "decisions_changed": (outlier_score.is_outlier(int8_scores) != outlier_score.is_outlier(fp32_scores))
            .sum()
            .item(),
        },
    }


def evaluate_features(
    train: tuple, test: tuple, ood_features: torch.Tensor | None, class_names: list[str], linear_head_accuracy: float
) -> tuple[OutlierScore, dict]:
    """The frozen features put to work, on the cached features alone (no backbone pass): the "is this even food?"
    score fitted on the training photos with the threshold that accepts ACCEPTED of the test photos, measured
    against `ood_features` (photos of other things) where given; and the paper's few-shot linear evaluation
    (Section 4.1), beside the trained linear head's accuracy. Returns the score and evaluation.json's entries."""
    outlier_score = outliers.fit(*train, len(class_names))
    outlier_score.set_threshold(test[0], ACCEPTED)
    test_scores = outlier_score.score(test[0])
    report = {
        "method": "relative Mahalanobis distance (Ren et al. 2021) on y = LN(z_L^0), Ledoit-Wolf shrinkage",
        "shrinkage": outlier_score.shrinkage,
        "threshold": outlier_score.threshold,
        "accepts": ACCEPTED,
        "test_scores": outliers.summary(test_scores),
        "size_bytes": outlier_score.size_bytes(),
    }
    if ood_features is not None:
        ood_scores = outlier_score.score(ood_features)
        report["ood"] = {
            "photos": len(ood_features),
            "auroc": outliers.auroc(test_scores, ood_scores),
            "fpr_at_95_tpr": outliers.fpr_at_tpr(test_scores, ood_scores, tpr=0.95),
            "flagged": outlier_score.is_outlier(ood_scores).double().mean().item(),
            "scores": outliers.summary(ood_scores),
        }
    few_shot = fewshot_accuracy(*train, *test, len(class_names), class_names=class_names)
    few_shot["linear_head_accuracy"] = linear_head_accuracy
    return outlier_score, {"outliers": report, "fewshot": few_shot}


def data_source(data_dir: str | Path | None, dataset_url: str | None, split: str) -> str:
    """Where the photos came from, as the published config and model card say it: a local folder by its name only,
    as its path names the user's home; a local file by its name too; a URL without credentials (user:token@, a signed
    URL's signature and expiry), keeping what names the data (Google Drive's ?id=)."""
    if data_dir is not None:
        return f"a local folder, {Path(data_dir).resolve().name}"
    if dataset_url is None:
        return DATASET_URLS[split]
    address = urlsplit(dataset_url)
    if address.scheme not in ("http", "https"):
        return f"a local file, {PurePosixPath(address.path).name}"
    query = [(name, value) for name, value in parse_qsl(address.query) if not SECRET_PARAMETER.search(name)]
    return urlunsplit((address.scheme, address.netloc.rpartition("@")[2], address.path, urlencode(query), ""))


def evaluation_summary(logits: torch.Tensor, labels: torch.Tensor, class_names: list[str], paths: list[str]) -> dict:
    """Per-class accuracy, confusion matrix (rows: true class, columns: predicted class), the
    test images predicted wrong with the highest probability, and every test prediction."""
    probabilities = logits.softmax(dim=1)
    predicted = probabilities.argmax(dim=1)
    confusion = torch.zeros(len(class_names), len(class_names), dtype=torch.long)
    confusion.index_put_((labels, predicted), torch.ones_like(labels), accumulate=True)
    per_class = {name: confusion[i, i].item() / max(confusion[i].sum().item(), 1) for i, name in enumerate(class_names)}
    predictions = [
        dict(
            path=path,
            true=class_names[true],
            predicted=class_names[pred],
            probability=probs[pred].item(),
            probabilities=dict(zip(class_names, probs.tolist())),
        )
        for path, true, pred, probs in zip(paths, labels.tolist(), predicted.tolist(), probabilities)
    ]
    wrong = sorted((p for p in predictions if p["true"] != p["predicted"]), key=lambda p: -p["probability"])
    return dict(
        test_accuracy=(predicted == labels).float().mean().item(),
        per_class_accuracy=per_class,
        confusion_matrix=dict(class_names=class_names, rows_true_columns_predicted=confusion.tolist()),
        most_wrong=[{key: p[key] for key in ("path", "true", "predicted", "probability")} for p in wrong[:MOST_WRONG]],
        predictions=predictions,
    )


def train_head(
    data_dir: str | Path | None = None,
    dataset_url: str | None = None,
    split: str = DEFAULT_SPLIT,
    output_dir: str | Path = DEFAULT_CHECKPOINT_DIR,
    weights: str = DEFAULT_WEIGHTS,
    epochs: int = 10,
    lr: float = 1e-3,
    batch_size: int = 32,
    seed: int = 42,
    download_dir: str | Path = DEFAULT_ROOT,
    device: str | None = None,
    ood_dir: str | Path | None = None,
) -> Path:
    """Train a head on the dataset (a local `data_dir`, else the download of `dataset_url` or of
    the course's `split`) and save the checkpoint with its reports to `output_dir`, returned. `ood_dir`: a folder
    of photos of other things, against which the outlier score's AUROC is measured.
    The backbone runs on `device` (default: CUDA when available, else CPU); the head, one Linear layer, trains
    on the CPU, on the cached features: little beside the backbone pass (BENCHMARKS.md, head_training.py).

    Raises DatasetError for unusable data, WeightsUnavailableError when the ImageNet weights are
    neither cached nor downloadable, CheckpointError when `output_dir` cannot be written."""
    for name, value in (("epochs", epochs), ("batch_size", batch_size)):
        if value < 1:
            raise ValueError(f"{name} must be at least 1, got {value}")
    if problem := learning_rate_problem(lr):
        raise ValueError(f"lr {problem}")
    check_replaceable(Path(output_dir))
    device = str(resolve_device(device))
    ood_set = PhotoFolder(ood_dir) if ood_dir is not None else None  # before the download, so a typo costs nothing
    dataset_dir = prepare_dataset(data_dir, split, dataset_url, download_dir)
    train_set = ImageDataset(dataset_dir, "train")
    test_set = ImageDataset(dataset_dir, "test")
    class_names = train_set.class_names
    if len(train_set) <= len(class_names):  # before the backbone pass, which outliers.fit comes after
        raise DatasetError(
            f"{dataset_dir / 'train'} holds {len(train_set)} photos for {len(class_names)} classes. The outlier score "
            "is fitted to how each class's photos vary about their mean, so at least one class needs two or more; "
            "add photos."
        )
    torch.manual_seed(seed)  # the new head's initialisation
    model, transforms = build_feature_extractor(weights, class_names)
    read_as_served(transforms, train_set, test_set, *([ood_set] if ood_set is not None else []))
    started = time.perf_counter()
    model.to(device)
    feature_batch = feature_batch_size(device, batch_size)
    train = extract_features(model, train_set, feature_batch, "Backbone features (train)", device)
    test = extract_features(model, test_set, feature_batch, "Backbone features (test)", device)
    ood_features = None
    if ood_set is not None:
        ood_features, _ = extract_features(model, ood_set, feature_batch, "Backbone features (--ood-dir)", device)
    model.cpu()
    features_seconds = time.perf_counter() - started
    history = fit(model.heads, train, test, epochs, lr, batch_size, seed)
    training_seconds = time.perf_counter() - started - features_seconds
    _, _, test_logits = evaluate(model.heads, *test, nn.CrossEntropyLoss())
    paths = [path.relative_to(dataset_dir).as_posix() for path, _ in test_set.samples]
    evaluation = evaluation_summary(test_logits, test[1], class_names, paths)
    evaluated = time.perf_counter()
    outlier_score, feature_evaluation = evaluate_features(
        train, test, ood_features, class_names, evaluation["test_accuracy"]
    )
    evaluation |= feature_evaluation
    evaluation_seconds = time.perf_counter() - evaluated
    few_shot = evaluation["fewshot"]["shots"]
    final = {key: value for key, value in history[-1].items() if key != "epoch"}
    config = dict(
        backbone=BACKBONE,
        weights=weights,
        image_size=transforms.crop_size[0],
        class_names=class_names,
        num_features=train[0].shape[1],
        metrics=final,
        training=dict(
            epochs=epochs,
            lr=lr,
            batch_size=batch_size,
            seed=seed,
            optimizer="Adam",
            loss="CrossEntropyLoss",
            head_parameters=trainable_parameters(model),
        ),
        data=dict(
            source=data_source(data_dir, dataset_url, split),
            split=None if data_dir is not None or dataset_url else split,
            train_images=len(train_set),
            test_images=len(test_set),
        ),
        versions=dict(torch=torch.__version__, torchvision=torchvision.__version__),
        int8=measure_int8(model, test_set, test[0], weights, outlier_score),
        # the tensors themselves travel in model.safetensors, under "outliers."
        outliers={key: evaluation["outliers"][key] for key in RECORD_KEYS["outliers"]},
        fewshot={
            "seeds": evaluation["fewshot"]["seeds"],
            "accuracy": {shots: result["mean"] for shots, result in few_shot.items()},
        },
    )
    metrics = dict(
        history=history,
        device=device,
        features_seconds=features_seconds,
        head_training_seconds=training_seconds,
        outliers_and_fewshot_seconds=evaluation_seconds,
    )
    reports = {
        "metrics.json": (json.dumps(metrics, indent=2) + "\n").encode(),
        "evaluation.json": (json.dumps(evaluation, indent=2) + "\n").encode(),
        "loss_curves.png": plot_curves(history),
        "fewshot.png": plot_fewshot(evaluation["fewshot"]),
        "README.md": model_card(config).encode(),
    }
    output_dir = save_head(model, output_dir, config, reports, outlier_score)
    per_class = ", ".join(f"{name} {acc:.2f}" for name, acc in evaluation["per_class_accuracy"].items())
    print(f"Test accuracy {evaluation['test_accuracy']:.4f} ({per_class}). Saved {output_dir}")
    return output_dir


def learning_rate_problem(lr: float) -> str | None:
    """Why `lr` is no learning rate (NaN, infinite, zero or negative), or None."""
    return None if math.isfinite(lr) and lr > 0 else f"must be a positive finite number, got {lr}"


def learning_rate_argument(value: str) -> float:
    """An argparse type: --lr as a float, refused before any work where it is no learning rate."""
    try:
        lr = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {value!r}") from None
    if problem := learning_rate_problem(lr):
        raise argparse.ArgumentTypeError(problem)
    return lr


# The command line's defaults are train_head's, so the two cannot disagree.
DEFAULTS = {name: parameter.default for name, parameter in inspect.signature(train_head).parameters.items()}


class TrainingUnavailable(RuntimeError):
    """No head exists yet and none could be trained here (no dataset or no pretrained weights)."""


def needs_first_training(checkpoint: str | None) -> bool:
    """No checkpoint named and none at the default place yet: the first start of the app trains one."""
    return not checkpoint and not (DEFAULT_CHECKPOINT_DIR / CONFIG_FILE).is_file()


def train_default_head() -> None:
    """The first start's head: train_head's defaults (the course's 10% split and recipe), saved at the default
    checkpoint place; tqdm shows the progress in the terminal. The backbone runs on CUDA where a GPU is held, and on
    the CPU on ZeroGPU, whose GPU is lent only inside @spaces.GPU functions."""
    print(f"No trained head at {DEFAULT_CHECKPOINT_DIR}: training one with train_head.py's defaults.", flush=True)
    try:
        train_head(output_dir=DEFAULT_CHECKPOINT_DIR, device="cpu" if on_zero_gpu() else None)
    except (DatasetError, WeightsUnavailableError, CheckpointError, ValueError) as error:
        raise TrainingUnavailable(
            f"There is no trained head at {DEFAULT_CHECKPOINT_DIR}, and training one here failed: {error}\n\n"
            "To fix it, either run python train_head.py where the dataset and the pretrained weights "
            "can be downloaded (or are cached), then restart the app; or start it with "
            f"--checkpoint FOLDER_OR_HUB_REPO (or {CHECKPOINT_VARIABLE}) naming a trained head."
        ) from None


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    data = parser.add_argument_group("data")
    data.add_argument(
        "--data-dir", help="a local dataset folder (train/<class>/*.jpg, test/<class>/*.jpg); no download"
    )
    data.add_argument(
        "--dataset-url", help="the dataset zip to download, or a zip file's path (default: the course's zip of --split)"
    )
    data.add_argument(
        "--split", default=DEFAULTS["split"], choices=list(DATASET_URLS), help="which course split to download"
    )
    data.add_argument(
        "--download-dir",
        default=DEFAULTS["download_dir"],
        type=Path,
        help="where downloaded datasets are kept (default: %(default)s)",
    )
    training = parser.add_argument_group("training (defaults: the course's)")
    weights_help = "torchvision vit_b_16 weights; " + "; ".join(describe_weights(name) for name in WEIGHTS_NAMES)
    training.add_argument("--weights", default=DEFAULTS["weights"], choices=WEIGHTS_NAMES, help=weights_help)
    training.add_argument("--epochs", type=int, default=DEFAULTS["epochs"], help="%(default)s")
    training.add_argument(
        "--lr", type=learning_rate_argument, default=DEFAULTS["lr"], help="Adam learning rate (%(default)s)"
    )
    training.add_argument(
        "--batch-size",
        type=int,
        default=DEFAULTS["batch_size"],
        help=f"the head's; on a GPU also the backbone pass's (on the CPU, {CPU_FEATURE_BATCH}). %(default)s",
    )
    training.add_argument("--seed", type=int, default=DEFAULTS["seed"], help="%(default)s")
    training.add_argument("--device", help="where the backbone runs, e.g. cpu or cuda (default: cuda when available)")
    parser.add_argument(
        "--ood-dir",
        type=Path,
        help="a folder of photos that are not food: the outlier score's AUROC and FPR at 95%% TPR against it go "
        "into evaluation.json",
    )
    output = parser.add_argument_group("output")
    output.add_argument(
        "--output", default=DEFAULTS["output_dir"], type=Path, help="checkpoint folder (default: %(default)s)"
    )
    output.add_argument(
        "--push-to-hub",
        metavar="REPO_ID",
        type=repo_id_argument,
        help="also publish the checkpoint as this Hugging Face Hub repo",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Command line entry point; problems with data, weights or checkpoint print one message and
    return 1 instead of a traceback."""
    args = parse_args(argv)
    try:
        output_dir = train_head(
            data_dir=args.data_dir,
            dataset_url=args.dataset_url,
            split=args.split,
            output_dir=args.output,
            weights=args.weights,
            epochs=args.epochs,
            lr=args.lr,
            batch_size=args.batch_size,
            seed=args.seed,
            download_dir=args.download_dir,
            device=args.device,
            ood_dir=args.ood_dir,
        )
    except (DatasetError, WeightsUnavailableError, CheckpointError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    if args.push_to_hub:
        try:
            print(f"Published {push_to_hub(output_dir, args.push_to_hub)}")
        except Exception as error:  # network, authentication and permission errors all end the same way
            print(
                f"error: the checkpoint is saved in {output_dir}, but publishing it to the Hugging Face Hub "
                f"repo {args.push_to_hub} failed ({type(error).__name__}: {error}). Log in with `hf auth login` "
                f"(or set HF_TOKEN) and publish it with "
                f"`hf upload {args.push_to_hub} {shlex.quote(str(output_dir))} .`",
                file=sys.stderr,
            )
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
