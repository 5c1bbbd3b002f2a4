"""Train the Vision Transformer of model.py from scratch on a train/<class>, test/<class> image folder
(pizza_steak_sushi by default), with the optimiser and schedule of the paper (Dosovitskiy et al. 2020, Section 4.1,
Table 3, Appendix B.1): Adam(0.9, 0.999) with decoupled weight decay on the weight matrices, linear warmup then
cosine or linear decay, global-norm gradient clipping at 1, dropout 0.1; --representation-size gives the head
Section 3.1's pre-training form (one tanh hidden layer), where the presets keep the linear head. On top, the
small-data helpers of timm and DeiT (random resized crops, flips, TrivialAugment/RandAugment, label smoothing), all
flags.

Two presets set the optimisation flags (any flag given overrides its preset value):
- course (default): what fits 225 photos on a laptop: batch 32, learning rate 1e-3, weight decay 0.1, 10 warmup
  steps, 10 epochs. These are not the paper's numbers.
- imagenet: Table 3's ImageNet row for ViT-B: batch 4096, learning rate 3e-3, weight decay 0.3, 10k warmup steps,
  cosine decay, dropout 0.1, clipping at 1, 300 epochs. --micro-batch-size reaches the batch by gradient
  accumulation on small machines. PyTorch's AdamW shrinks each decayed weight by lr x weight_decay per step, while
  big_vision applies the weight decay independently of the learning rate: the same number is a different decay.

Every step uses a full batch: the last incomplete batch of an epoch is dropped (225 images at batch 32 would leave
one image trained alone at full learning rate).

    python train_vit.py --model vit_b_16 --epochs 10
    python train_vit.py --image-size 64 --patch-size 8 --num-layers 4 --hidden-dim 128 --mlp-dim 256 --num-heads 4 \
        --output runs/small-vit
    python train_vit.py --preset imagenet --data-dir imagenet_folders --micro-batch-size 64
    torchrun --nproc_per_node=4 train_vit.py ...    # DistributedDataParallel, same flags

Expect little from a ViT-B/16 trained on 225 photos: Section 4.2 shows ViTs overtake ResNets only with 14M-300M
pre-training images. The output folder holds model.safetensors + config.json (ViTConfig and class names: enough to
rebuild the model, see load_checkpoint), train_state.safetensors for --resume, metrics.json and loss_curves.png. A
new run needs a new output folder, or one holding only hidden files, so it never writes over another run's or a
trained head's files.
"""

import argparse
import contextlib
import hashlib
import json
import math
import os
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from safetensors import SafetensorError, safe_open
from safetensors.torch import save
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler, Subset
from torchvision.transforms import v2
from tqdm.auto import tqdm

from data import DATASET_URLS, DEFAULT_ROOT, DEFAULT_SPLIT, DatasetError, ImageDataset, prepare_dataset
from devices import default_device, resolve_device
from hub import RUN_STATE_FILE
from model import VIT_CONFIGS, ViT, ViTConfig
from outputs import epoch_line, plot_curves, why_not_writable, write_atomically

DEFAULT_OUTPUT = Path(__file__).resolve().parent / "runs" / "vit-from-scratch"

# ViTConfig fields that flags of the same name override
MODEL_FLAGS = (
    "image_size",
    "patch_size",
    "num_layers",
    "hidden_dim",
    "mlp_dim",
    "num_heads",
    "dropout",
    "attention_dropout",
    "representation_size",
)
# Like biases and LayerNorm parameters, the embeddings are not decayed (timm, big_vision)
NO_WEIGHT_DECAY = ("class_token", "position_embedding")
# Flags besides the model's that shape the run's schedule, data order or updates: --resume continues
# a run only with the values it started with
RESUME_FLAGS = (
    "epochs",
    "batch_size",
    "micro_batch_size",
    "lr",
    "weight_decay",
    "warmup_steps",
    "schedule",
    "clip_grad_norm",
    "label_smoothing",
    "crop_scale",
    "hflip",
    "augment",
    "seed",
    "split",
)
# The optimisation flags each preset sets (module docstring); Table 3 gives ViT-B's ImageNet row.
PRESETS = {
    "course": dict(epochs=10, batch_size=32, lr=1e-3, weight_decay=0.1, warmup_steps=10, dropout=0.1),
    "imagenet": dict(epochs=300, batch_size=4096, lr=3e-3, weight_decay=0.3, warmup_steps=10_000, dropout=0.1),
}


class TrainingError(Exception):
    """A bad flag, configuration or checkpoint; the message says what and how to fix it."""


class ProcessError(TrainingError):
    """A TrainingError that only some of torchrun's processes meet, so each of them reports it (the others wait)."""


def at_least(minimum, kind=int):
    """An argparse type: a finite number no smaller than `minimum`, else argparse's one-line usage error."""

    def parse(text: str):
        value = kind(text)
        if not math.isfinite(value):  # NaN compares as no smaller than anything
            raise argparse.ArgumentTypeError(f"{text} is not a finite number")
        if value < minimum:
            raise argparse.ArgumentTypeError(f"{text} is below the minimum {minimum}")
        return value

    return parse


def fraction(low_open: bool):
    """An argparse type: a float in [0, 1], or in (0, 1] when `low_open`; else argparse's usage error."""
    interval = "(0, 1]" if low_open else "[0, 1]"

    def parse(text: str) -> float:
        value = float(text)
        if not (0 < value <= 1 if low_open else 0 <= value <= 1):
            raise argparse.ArgumentTypeError(f"{text} is outside {interval}")
        return value

    return parse


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    data = parser.add_argument_group("data")
    data.add_argument("--data-dir", help="a local folder with train/<class> and test/<class>; default: download")
    data.add_argument(
        "--split", default=DEFAULT_SPLIT, choices=DATASET_URLS, help="the course zip to download (%(default)s)"
    )
    data.add_argument("--dataset-url", help="download this zip instead of --split's")
    data.add_argument("--download-dir", default=DEFAULT_ROOT, type=Path, help="kept here (%(default)s)")
    model = parser.add_argument_group("model (a Table 1 preset; the other flags override its fields for small runs)")
    model.add_argument("--model", default="vit_b_16", choices=VIT_CONFIGS, help="%(default)s")
    for field in ("image_size", "patch_size", "num_layers", "hidden_dim", "mlp_dim", "num_heads"):
        model.add_argument(f"--{field.replace('_', '-')}", type=at_least(1), help=f"default: the preset's {field}")
    model.add_argument("--dropout", type=float, help="default: the preset's (Table 3: 0.1 for ViT-B/L on ImageNet)")
    model.add_argument("--attention-dropout", type=float, help="not in the paper; default: the preset's 0.0")
    model.add_argument(
        "--representation-size",
        type=at_least(1),
        help="Section 3.1's pre-training head: an MLP with one tanh hidden layer of this width; default: the "
        "preset's linear head (the paper's fine-tuning head)",
    )
    optim = parser.add_argument_group("optimisation (Section 4.1, Table 3; defaults: the --preset's)")
    optim.add_argument("--preset", default="course", choices=PRESETS, help="%(default)s (see the top of this help)")
    optim.add_argument("--epochs", type=at_least(1))
    optim.add_argument("--batch-size", type=at_least(1), help="images per optimizer step, over all processes")
    optim.add_argument(
        "--micro-batch-size",
        type=at_least(1),
        help="images per forward pass and process (default: the whole share of the batch); smaller "
        "values accumulate gradients over several passes per step",
    )
    optim.add_argument("--lr", type=at_least(0.0, float), help="the peak learning rate, after warmup")
    optim.add_argument("--weight-decay", type=at_least(0.0, float), help="decoupled (AdamW), weight matrices only")
    optim.add_argument("--warmup-steps", type=at_least(0), help="optimizer steps of linear warmup")
    optim.add_argument("--schedule", default="cosine", choices=("cosine", "linear"), help="decay to 0 after warmup")
    optim.add_argument(
        "--clip-grad-norm", type=at_least(0.0, float), default=1.0, help="%(default)s (global norm); 0: off"
    )
    optim.add_argument(
        "--label-smoothing", type=fraction(low_open=False), default=0.0, help="%(default)s; DeiT uses 0.1"
    )
    augment = parser.add_argument_group("augmentation (training images only)")
    augment.add_argument(
        "--crop-scale",
        type=fraction(low_open=True),
        default=0.08,
        help="%(default)s: smallest area RandomResizedCrop keeps",
    )
    augment.add_argument(
        "--hflip",
        type=fraction(low_open=False),
        default=0.5,
        help="%(default)s: flip probability; food has no handedness",
    )
    augment.add_argument(
        "--augment", default="none", choices=("none", "trivialaugment", "randaugment"), help="%(default)s"
    )
    run = parser.add_argument_group("run")
    run.add_argument("--output", default=DEFAULT_OUTPUT, type=Path, help="checkpoints, metrics, curves (%(default)s)")
    run.add_argument("--resume", action="store_true", help="continue the run in --output; pass its flags again")
    run.add_argument("--seed", type=int, default=42, help="%(default)s: fixes initialisation, data order, augmentation")
    run.add_argument("--device", default=str(default_device()), help="%(default)s")
    run.add_argument(
        "--amp",
        default="auto",
        choices=("auto", "bf16", "none"),
        help="bf16 autocast; auto: on CUDA GPUs with native bf16 (Ampere or newer) and CPUs with AMX, else fp32",
    )
    run.add_argument("--workers", type=at_least(0), default=2, help="%(default)s data loading processes per process")
    args = parser.parse_args(argv)
    for name, value in PRESETS[args.preset].items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    return args


def init_distributed(device_name: str) -> tuple[int, int, torch.device]:
    """(rank, world size, device). torchrun sets RANK, WORLD_SIZE and LOCAL_RANK; a plain run does not."""
    try:
        device = resolve_device(device_name)
    except ValueError as error:
        raise TrainingError(f"--device: {error}") from None
    if "RANK" not in os.environ:
        return 0, 1, device
    if device.type == "cuda":
        # nccl needs one GPU per process. Only a process whose GPU is missing can tell: under torchrun's
        # --virtual-local-rank every process is local rank 0 and sees one GPU, however many processes there are
        local_rank, gpus = int(os.environ.get("LOCAL_RANK", 0)), torch.cuda.device_count()
        if local_rank >= gpus:
            raise ProcessError(
                f"torchrun started local process {local_rank}, but this machine has {gpus} CUDA GPU(s): "
                f"use --nproc_per_node={gpus}, or --device cpu to train on the CPU"
            )
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return dist.get_rank(), dist.get_world_size(), device


def bf16_autocast(amp: str, device: torch.device) -> bool:
    """--amp auto: bf16 on CUDA GPUs that compute it natively (Ampere or newer) and on CPUs with AMX tiles, fp32
    elsewhere. With AVX512-BF16 alone, bf16 ran slower than fp32 on one CPU and faster on another (BENCHMARKS.md:
    matmul.py, latency.py), so there bf16 is the explicit --amp bf16; so too on older GPUs (T4, V100), which only
    emulate it, slowly (torch's is_bf16_supported counts emulation unless told not to)."""
    if device.type == "cuda":
        with torch.cuda.device(device):  # is_bf16_supported asks about the current GPU, which need not be the run's
            native = torch.cuda.is_bf16_supported(including_emulation=False)
            emulated = torch.cuda.is_bf16_supported(including_emulation=True)
        if amp == "bf16" and not emulated:
            raise TrainingError(f"--amp bf16: the GPU {device} cannot compute in bfloat16; use --amp none")
        return native if amp == "auto" else amp == "bf16"
    if amp == "auto":
        return device.type == "cpu" and torch.cpu._is_amx_tile_supported()
    return amp == "bf16"


def train_transform(image_size: int, args) -> v2.Compose:
    policy = {"none": [], "trivialaugment": [v2.TrivialAugmentWide()], "randaugment": [v2.RandAugment()]}[args.augment]
    crop = v2.RandomResizedCrop(image_size, scale=(args.crop_scale, 1.0))
    return v2.Compose([crop, v2.RandomHorizontalFlip(args.hflip), *policy, *to_tensor()])


def eval_transform(image_size: int) -> v2.Compose:
    # resize to 8/7 of the size, then centre-crop: 256 -> 224 as torchvision's ImageNet transforms
    return v2.Compose([v2.Resize(image_size * 8 // 7), v2.CenterCrop(image_size), *to_tensor()])


def to_tensor() -> list:
    # pixels in [-1, 1], as big_vision's value_range(-1, 1)
    return [v2.ToImage(), v2.ToDtype(torch.float32, scale=True), v2.Normalize([0.5] * 3, [0.5] * 3)]


def make_optimizer(model: ViT, lr: float, weight_decay: float) -> torch.optim.AdamW:
    decay, no_decay = [], []
    for name, parameter in model.named_parameters():
        (no_decay if parameter.ndim < 2 or name.endswith(NO_WEIGHT_DECAY) else decay).append(parameter)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.999))  # Table 3: Adam beta1 0.9, beta2 0.999


def learning_rate(step: int, total_steps: int, args) -> float:
    """Linear warmup to --lr, then cosine or linear decay towards zero, reached just after the last step (Appendix
    B.1): the last step still learns (linear: at --lr / the steps after the warmup) rather than stepping by 0."""
    if step < args.warmup_steps:
        return args.lr * (step + 1) / args.warmup_steps
    progress = (step - args.warmup_steps) / max(1, total_steps - args.warmup_steps)
    return args.lr * (0.5 * (1 + math.cos(math.pi * progress)) if args.schedule == "cosine" else 1 - progress)


@torch.no_grad()
def evaluate(model: ViT, loader: DataLoader, device: torch.device, autocast: bool) -> torch.Tensor:
    """(summed loss, correct, count) over this process's share of the test set."""
    model.eval()
    totals = torch.zeros(3, dtype=torch.float64, device=device)
    for images, labels in loader:
        images, labels = images.to(device), labels.to(device)
        with torch.autocast(device.type, torch.bfloat16, enabled=autocast):
            logits = model(images)
        totals += batch_totals(F.cross_entropy(logits.float(), labels, reduction="sum"), logits, labels)
    return totals


def batch_totals(summed_loss: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """(summed loss, correct predictions, count) of a batch: sums over batches and processes stay exact."""
    return torch.stack([summed_loss, (logits.argmax(1) == labels).sum(), labels.new_tensor(len(labels))])


def all_reduced(totals: torch.Tensor) -> tuple[float, float]:
    """Mean loss and accuracy over every process's samples."""
    if dist.is_initialized():
        dist.all_reduce(totals)
    loss, correct, count = totals.tolist()
    return loss / count, correct / count


def parameters_sha256(state_dict: dict) -> str:
    """A fingerprint of the weights, to check that every DDP replica holds the same model."""
    digest = hashlib.sha256()
    for name in sorted(state_dict):
        tensor = state_dict[name].detach().cpu().contiguous()
        digest.update(name.encode() + tensor.view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def read_safetensors(path: Path) -> tuple[dict, dict]:
    with safe_open(path, "pt") as file:
        return {key: file.get_tensor(key) for key in file.keys()}, file.metadata() or {}


def save_checkpoint(
    out_dir: Path, model: ViT, optimizer, class_names: list, history: list, args, setup: dict, drift: list[str]
) -> None:
    """train_state.safetensors: everything --resume needs in one file, so a crash while saving leaves
    the previous epoch's state whole. No pickle: the optimizer's tensors are stored as
    "optimizer.<param index>.<name>" and its param groups as JSON metadata. It is written first: written last, a kill
    while saving epoch 1 would leave files that neither a new run nor --resume accepts. --resume exports the others
    again, as a kill can leave them an epoch behind."""
    out_dir.mkdir(parents=True, exist_ok=True)
    weights, optimizer_state = model.state_dict(), optimizer.state_dict()
    flags = {name: str(value) if isinstance(value, Path) else value for name, value in vars(args).items()}
    config = {"vit_config": asdict(model.config), "class_names": class_names, "epoch": len(history), "args": flags}
    config |= {"setup": setup, "drift": drift}
    tensors = {f"model.{name}": value for name, value in weights.items()}
    for index, entry in optimizer_state["state"].items():
        tensors |= {f"optimizer.{index}.{name}": value for name, value in entry.items()}
    metadata = {
        "config": json.dumps(config),
        "param_groups": json.dumps(optimizer_state["param_groups"]),
        "history": json.dumps(history),
    }
    write_atomically(out_dir / RUN_STATE_FILE, save(tensors, metadata))
    export(out_dir, weights, config, history)


def export(out_dir: Path, weights: dict, config: dict, history: list) -> None:
    """model.safetensors + config.json (the trained model, rebuilt by load_checkpoint alone), metrics.json and
    loss_curves.png: everything in them is in train_state.safetensors too."""
    write_atomically(out_dir / "model.safetensors", save(weights))
    write_atomically(out_dir / "config.json", json.dumps(config, indent=2).encode())
    write_atomically(out_dir / "metrics.json", json.dumps(history, indent=2).encode())
    write_atomically(out_dir / "loss_curves.png", plot_curves(history))


def load_checkpoint(directory) -> tuple[ViT, dict]:
    """Rebuild a trained model from its output folder alone: (model in eval mode, config.json)."""
    directory = Path(directory)
    try:
        config = json.loads((directory / "config.json").read_text())
        model = ViT(ViTConfig(**config["vit_config"]))
        model.load_state_dict(read_safetensors(directory / "model.safetensors")[0])
    except (OSError, ValueError, KeyError, TypeError, RuntimeError, SafetensorError) as error:
        raise TrainingError(
            f"{directory} does not hold a complete train_vit.py checkpoint (model.safetensors and config.json): {error}"
        ) from error
    return model.eval(), config


def run_setup(steps_per_epoch: int, world_size: int, device: torch.device, autocast: bool, workers: int) -> dict:
    """How a run is computed beyond its RESUME_FLAGS. --resume refuses other steps an epoch (the schedule: each
    process's share of an epoch is padded to whole batches); the rest may change with the machine, and the run then
    is no longer bit for bit the uninterrupted one (each loader process draws its own augmentations)."""
    return dict(
        steps_per_epoch=steps_per_epoch,
        processes=world_size,
        device=device.type,
        bf16_autocast=autocast,
        workers=workers,
    )


def resume(args, model: ViT, optimizer, class_names: list, setup: dict) -> tuple[list, list[str], dict]:
    """Load train_state.safetensors of the run in --output into the freshly built model and optimizer; returns the
    metrics history, whose length is the number of completed epochs, every change in how the run is computed
    (run_setup) since it started, this resumption's included, and the config.json saved with that state."""
    out_dir = args.output
    path = out_dir / RUN_STATE_FILE
    try:
        tensors, metadata = read_safetensors(path)
        config, history = json.loads(metadata["config"]), json.loads(metadata["history"])
    except (OSError, ValueError, KeyError, SafetensorError) as error:
        raise TrainingError(
            f"--resume: cannot read {path} ({error}); it is written after every epoch, so this folder holds no "
            "finished epoch of a train_vit.py run: drop --resume to start afresh"
        ) from error
    if config["vit_config"] != asdict(model.config) or config["class_names"] != class_names:
        raise TrainingError(
            f"--resume: the run in {out_dir} trained {config['vit_config']} on classes {config['class_names']}, "
            f"but these flags and data give {asdict(model.config)} on {class_names}; pass the flags of the original run"
        )
    started_with = config.get("args", {})
    changed = [
        f"--{name.replace('_', '-')} {started_with[name]} (now {getattr(args, name)})"
        for name in RESUME_FLAGS
        if name in started_with and started_with[name] != getattr(args, name)
    ]
    if changed:
        raise TrainingError(
            f"--resume: the run in {out_dir} started with {', '.join(changed)}; continuing it with other values would "
            "change its schedule or data. Pass the original flags to continue it, or drop --resume and choose another "
            "--output to start afresh"
        )
    # runs saved before the setup was recorded name their --workers among their flags
    recorded = dict(config.get("setup", {}))
    if "workers" in started_with:
        recorded.setdefault("workers", started_with["workers"])
    if recorded.get("steps_per_epoch", setup["steps_per_epoch"]) != setup["steps_per_epoch"]:
        cause = (
            f"on {setup['processes']} process(es) instead of {recorded['processes']} (each pads its share to whole "
            "batches)"
            if recorded["processes"] != setup["processes"]
            else "with the training images there now"
        )
        raise TrainingError(
            f"--resume: the run in {out_dir} took {recorded['steps_per_epoch']} steps an epoch; {cause}, it would take "
            f"{setup['steps_per_epoch']}, which changes its schedule. Resume it with the process count and data it "
            "started with"
        )
    try:
        optimizer_state = {}
        for key, value in tensors.items():
            if key.startswith("optimizer."):
                index, name = key.removeprefix("optimizer.").split(".", 1)
                optimizer_state.setdefault(int(index), {})[name] = value
        # every parameter takes part in every step, so after one each has the same tensors (step and both moments).
        # torch's load_state_dict does not check: it would restart a parameter's moments (all missing) or fail in
        # the first step (some missing)
        parameters = sum(len(group["params"]) for group in optimizer.param_groups)
        names = {frozenset(entry) for entry in optimizer_state.values()}
        if sorted(optimizer_state) != list(range(parameters)) or len(names) != 1:
            raise ValueError(f"optimizer state for {len(optimizer_state)} of {parameters} parameters, or parts of it")
        weights = {key.removeprefix("model."): value for key, value in tensors.items() if key.startswith("model.")}
        model.load_state_dict(weights)
        optimizer.load_state_dict({"state": optimizer_state, "param_groups": json.loads(metadata["param_groups"])})
    except (KeyError, ValueError, TypeError, RuntimeError) as error:
        raise TrainingError(
            f"--resume: {path} is not a complete train_vit.py state ({error}); restore it from a backup, or drop "
            "--resume and start a new run in a new --output"
        ) from error
    changes = [
        f"{name} {value} -> {setup[name]} after epoch {len(history)}"
        for name, value in recorded.items()
        if name in setup and value != setup[name]
    ]
    return history, config.get("drift", []) + changes, config


def check_output(output: Path, resuming: bool) -> None:
    """TrainingError unless a run may write `output`, before any download: a run to resume (resume checks it), or a
    new folder or one holding only hidden files, so that a new run never writes over another run's files, a trained
    head or anything else."""
    if problem := why_not_writable(output):
        raise TrainingError(f"--output: {problem}")
    if resuming:
        return
    if (output / RUN_STATE_FILE).exists():
        raise TrainingError(
            f"{output} already holds a checkpoint; continue it with --resume, or pick another --output to start afresh"
        )
    if output.is_dir() and (names := sorted(path.name for path in output.iterdir() if not path.name.startswith("."))):
        raise TrainingError(
            f"{output} already holds files that are no run of train_vit.py's ({', '.join(names[:5])}"
            f"{', ...' if len(names) > 5 else ''}); pick a new or empty --output"
        )


def prepare_dataset_once(args, rank: int, world_size: int) -> Path:
    """The checked dataset folder. Rank 0 downloads and extracts it while the others wait, then tells them how that
    went: a problem only rank 0 meets (a missing folder, a failed download, a corrupt zip) ends every process with
    the same error, which main prints once, rather than with a broken connection on the others."""
    if rank == 0:
        try:
            dataset_dir = prepare_dataset(args.data_dir, args.split, args.dataset_url, args.download_dir)
        except BaseException as error:
            if world_size > 1:
                dist.broadcast_object_list([str(error) or type(error).__name__], src=0)
            raise
        if world_size > 1:
            dist.broadcast_object_list([None], src=0)
        return dataset_dir
    outcome = [None]  # becomes rank 0's error message, or stays None
    dist.broadcast_object_list(outcome, src=0)
    if outcome[0] is not None:
        raise TrainingError(outcome[0])
    return prepare_dataset(args.data_dir, args.split, args.dataset_url, args.download_dir, quiet=True)


def seed_for(*stream) -> int:
    """The seed of one stream of random draws, such as (--seed, epoch, rank)'s: hashed, so that neighbouring --seed
    values draw unrelated streams (with seed + epoch, --seed 43's first epoch would replay --seed 42's second). 63
    bits, so that DistributedSampler's seed + epoch stays within torch's range."""
    return int.from_bytes(hashlib.sha256(repr(stream).encode()).digest()[:8], "little") >> 1


def train(args) -> list:
    rank, world_size, device = init_distributed(args.device)
    share = args.batch_size // world_size  # images per step and process
    micro_batch = args.micro_batch_size or share
    if args.batch_size % world_size or share % micro_batch:
        raise TrainingError(
            f"--batch-size {args.batch_size} does not split into {world_size} process(es) x whole micro-batches of "
            f"{micro_batch}; use a multiple of {world_size * micro_batch}"
        )
    accumulation = share // micro_batch  # forward-backward passes per optimizer step
    overrides = {name: getattr(args, name) for name in MODEL_FLAGS if getattr(args, name) is not None}
    try:
        config = replace(VIT_CONFIGS[args.model], **overrides)  # checked before any download
    except ValueError as error:
        raise TrainingError(f"bad model configuration: {error}") from error
    check_output(args.output, args.resume)
    dataset_dir = prepare_dataset_once(args, rank, world_size)
    train_set, test_set = ImageDataset(dataset_dir, "train"), ImageDataset(dataset_dir, "test")
    class_names = train_set.class_names
    torch.manual_seed(args.seed)
    model = ViT(replace(config, num_classes=len(class_names))).to(device)
    train_set.transform = train_transform(config.image_size, args)
    test_set.transform = eval_transform(config.image_size)
    # DistributedSampler in a single process too: its order is fixed by (seed, epoch), which --resume relies on
    sampler = DistributedSampler(train_set, world_size, rank, shuffle=True, seed=seed_for(args.seed, "order"))
    loading = dict(num_workers=args.workers, pin_memory=device.type == "cuda")
    # drop_last: every step sees a full batch (a last one of a few images would be trained at full learning rate)
    train_loader = DataLoader(train_set, micro_batch, sampler=sampler, drop_last=True, **loading)
    test_loader = DataLoader(Subset(test_set, range(rank, len(test_set), world_size)), micro_batch, **loading)
    steps_per_epoch = len(train_loader) // accumulation
    if steps_per_epoch == 0:
        raise TrainingError(
            f"--batch-size {args.batch_size} is more than the {len(train_set)} training images: no full batch; "
            "lower --batch-size"
        )
    total_steps = args.epochs * steps_per_epoch
    if args.warmup_steps > total_steps:
        raise TrainingError(
            f"--warmup-steps {args.warmup_steps} is longer than the whole run ({args.epochs} epochs x "
            f"{steps_per_epoch} steps = {total_steps}); lower it or train longer"
        )
    optimizer = make_optimizer(model, args.lr, args.weight_decay)
    autocast = bf16_autocast(args.amp, device)
    setup = run_setup(steps_per_epoch, world_size, device, autocast, args.workers)

    history, drift = [], []
    if args.resume:
        history, drift, saved_config = resume(args, model, optimizer, class_names, setup)
        if rank == 0:
            # a kill while saving leaves these files an epoch behind train_state.safetensors, which is written first;
            # in the last epoch nothing else would rewrite them
            export(args.output, model.state_dict(), saved_config, history)
            print(f"resuming {args.output} after epoch {len(history)}")
        if rank == 0 and drift:
            print(
                f"note: how this run is computed changed on resuming ({', '.join(drift)}): it keeps its schedule, "
                "but is no longer bit for bit the run it would have been uninterrupted"
            )
    ddp_model = DistributedDataParallel(model) if world_size > 1 else model
    if rank == 0:
        print(
            f"{args.model} {overrides}: {sum(p.numel() for p in model.parameters()):,} parameters, "
            f"{len(train_set)} train / {len(test_set)} test images of {class_names}, "
            f"{world_size} process(es) on {device}{', bf16 autocast' if autocast else ''}; {steps_per_epoch} steps of "
            f"{args.batch_size} images per epoch ({accumulation} accumulated pass(es) of {micro_batch} per process)"
        )

    for epoch in range(len(history), args.epochs):
        # augmentation and dropout draws depend on (seed, epoch, rank) only: a resumed run repeats them exactly
        torch.manual_seed(seed_for(args.seed, epoch, rank))
        sampler.set_epoch(epoch)
        ddp_model.train()
        totals = torch.zeros(3, dtype=torch.float64, device=device)
        started = time.perf_counter()
        batches = iter(train_loader)
        progress = tqdm(range(steps_per_epoch), desc=f"epoch {epoch + 1}/{args.epochs}", disable=rank != 0, leave=False)
        for step in progress:
            for group in optimizer.param_groups:
                group["lr"] = learning_rate(epoch * steps_per_epoch + step, total_steps, args)
            optimizer.zero_grad(set_to_none=True)
            for micro_step in range(accumulation):
                images, labels = (tensor.to(device, non_blocking=True) for tensor in next(batches))
                # DDP averages gradients across processes only on the step's last backward pass
                last = micro_step == accumulation - 1
                with contextlib.nullcontext() if last or world_size == 1 else ddp_model.no_sync():
                    with torch.autocast(device.type, torch.bfloat16, enabled=autocast):
                        logits = ddp_model(images)
                    loss = F.cross_entropy(logits.float(), labels, label_smoothing=args.label_smoothing)
                    (loss / accumulation).backward()
                totals += batch_totals(loss.detach() * len(labels), logits, labels)
            if args.clip_grad_norm > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), args.clip_grad_norm)
            optimizer.step()
        train_loss, train_acc = all_reduced(totals)
        # the bare model: DDP's forward would sync the replicas, and the test shares can differ by one batch
        test_loss, test_acc = all_reduced(evaluate(model, test_loader, device, autocast))
        history.append(
            dict(epoch=epoch + 1, train_loss=train_loss, train_acc=train_acc, test_loss=test_loss, test_acc=test_acc)
            | {"lr": optimizer.param_groups[0]["lr"], "seconds": time.perf_counter() - started}
        )
        if rank == 0:
            print(epoch_line(history[-1]))
            save_checkpoint(args.output, model, optimizer, class_names, history, args, setup, drift)
    if world_size > 1:  # every replica reports, so a divergence between them would show
        print(f"rank {rank}: parameters sha256 {parameters_sha256(model.state_dict())}", flush=True)
    if rank == 0:
        print(f"saved {args.output}/model.safetensors, config.json, metrics.json, loss_curves.png")
    return history


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        train(args)
    except (TrainingError, DatasetError) as error:
        # under torchrun every process fails alike, except in a ProcessError: one message is enough
        if int(os.environ.get("RANK", 0)) == 0 or isinstance(error, ProcessError):
            print(f"error: {error}", file=sys.stderr)
        return 1
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
