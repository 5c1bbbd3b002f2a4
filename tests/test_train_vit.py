"""train_vit.py: a tiny ViT learns the generated pizza/steak/sushi images from scratch; two
torchrun processes download the dataset once (over HTTP on 127.0.0.1), keep identical replicas and
report metrics over the whole test set; a run killed mid-training and resumed ends with the same
weights as an uninterrupted one; bad flags, configurations and data end in one clear message."""

import contextlib
import json
import math
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import load_file, save
from torch.utils.data import DataLoader
from torchvision.transforms import v2

import train_vit
from data import ImageDataset
from hub import RUN_STATE_FILE
from model import ViT, build_vit
from standins import REPO, free_port

# A ViT small enough to train in seconds on a CPU (24k parameters, 16 patches of 8x8); at this size
# fp32 beats bf16 autocast
TINY = [
    "--image-size",
    "32",
    "--patch-size",
    "8",
    "--num-layers",
    "2",
    "--hidden-dim",
    "32",
    "--mlp-dim",
    "64",
    "--num-heads",
    "4",
    "--batch-size",
    "8",
    "--crop-scale",
    "0.5",
    "--lr",
    "3e-3",
    "--warmup-steps",
    "4",
    "--workers",
    "0",
    "--amp",
    "none",
]
MIN_TEST_ACCURACY = 0.85  # chance is 1/3; 15 epochs stay well above this bar across seeds
SINGLE_THREAD = {**os.environ, "OMP_NUM_THREADS": "1"}


@pytest.fixture(autouse=True, scope="module")
def single_thread():
    """A model this small trains far faster on one thread than on two that share the cores with other work;
    subprocesses get OMP_NUM_THREADS=1 for the same reason."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny_run(dataset: Path, output: Path, *extra: str) -> list[str]:
    return ["--data-dir", str(dataset), *TINY, "--output", str(output), *extra]


def figures_on_test_split(model: torch.nn.Module, dataset: Path) -> tuple[float, float]:
    """(mean loss, accuracy) on the whole test split, each image once, computed here rather than by train_vit's own
    loop."""
    test_set = ImageDataset(dataset, "test", train_vit.eval_transform(model.config.image_size))
    images, labels = next(iter(DataLoader(test_set, batch_size=len(test_set))))
    with torch.no_grad():
        logits = model(images)
    return F.cross_entropy(logits, labels).item(), (logits.argmax(1) == labels).float().mean().item()


def torchrun(*flags: str) -> subprocess.CompletedProcess:
    """train_vit.py under torchrun, two processes on the CPU (gloo, also where a GPU is: nccl needs one GPU per
    process)."""
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr=127.0.0.1"]
    command += [f"--master_port={free_port()}", "train_vit.py", *flags, "--device", "cpu"]
    return subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300, env=SINGLE_THREAD)


@pytest.fixture(scope="module")
def trained_run(pizza_steak_sushi_dataset, tmp_path_factory) -> Path:
    output = tmp_path_factory.mktemp("vit") / "run"
    started = time.perf_counter()
    assert train_vit.main(tiny_run(pizza_steak_sushi_dataset, output, "--epochs", "15")) == 0
    print(f"tiny ViT, 15 epochs from scratch: {time.perf_counter() - started:.1f} s")
    return output


def test_tiny_vit_learns_from_scratch_and_rebuilds_from_its_checkpoint(trained_run, pizza_steak_sushi_dataset):
    history = json.loads((trained_run / "metrics.json").read_text())
    assert [row["epoch"] for row in history] == list(range(1, 16))
    assert history[-1]["train_loss"] < 0.7 * history[0]["train_loss"]
    assert history[-1]["test_acc"] >= MIN_TEST_ACCURACY
    assert (trained_run / "loss_curves.png").read_bytes().startswith(b"\x89PNG")

    model, config = train_vit.load_checkpoint(trained_run)
    assert config["class_names"] == ["pizza", "steak", "sushi"]
    c = model.config
    assert (c.image_size, c.patch_size, c.num_layers, c.hidden_dim, c.num_classes) == (32, 8, 2, 32, 3)
    assert figures_on_test_split(model, pizza_steak_sushi_dataset)[1] == pytest.approx(history[-1]["test_acc"])


def test_the_pre_training_head_of_section_3_1_trains_and_rebuilds(pizza_steak_sushi_dataset, tmp_path, capsys):
    """--representation-size: the head is an MLP with one tanh hidden layer, saved with the config that rebuilds it."""
    output = tmp_path / "mlp-head"
    flags = tiny_run(pizza_steak_sushi_dataset, output, "--epochs", "1", "--representation-size", "16")
    assert train_vit.main(flags) == 0
    model, config = train_vit.load_checkpoint(output)
    assert config["vit_config"]["representation_size"] == 16
    assert isinstance(model.pre_logits[1], torch.nn.Tanh) and model.pre_logits[0].out_features == 16
    assert model.head.in_features == 16
    capsys.readouterr()
    # resumed without the flag, it would be another model: refused
    assert train_vit.main([*tiny_run(pizza_steak_sushi_dataset, output, "--epochs", "2"), "--resume"]) == 1
    assert "pass the flags of the original run" in capsys.readouterr().err


def test_learning_rate_warms_up_linearly_then_decays_to_zero():
    args = train_vit.parse_args(["--lr", "1.0", "--warmup-steps", "10", "--schedule", "cosine"])
    cosine = [train_vit.learning_rate(step, 110, args) for step in range(110)]
    assert cosine[:10] == pytest.approx([(step + 1) / 10 for step in range(10)])
    assert cosine[10] == 1.0 and cosine[60] == pytest.approx(0.5) and cosine[-1] < 1e-3
    assert all(later <= earlier for earlier, later in zip(cosine[10:], cosine[11:]))
    args.schedule = "linear"
    assert [train_vit.learning_rate(step, 110, args) for step in (10, 60, 109)] == pytest.approx([1.0, 0.5, 0.01])


def test_weight_decay_skips_biases_layernorms_and_embeddings():
    model = build_vit("vit_b_16", 3, image_size=32, patch_size=8, num_layers=2, hidden_dim=32, mlp_dim=64, num_heads=4)
    decay, no_decay = train_vit.make_optimizer(model, 1e-3, 0.1).param_groups
    names = {id(p): name for name, p in model.named_parameters()}
    assert (decay["weight_decay"], no_decay["weight_decay"]) == (0.1, 0.0)
    assert len(decay["params"]) + len(no_decay["params"]) == len(names)
    matrices = {name for name, p in model.named_parameters() if name.endswith("weight") and p.ndim >= 2}
    assert {names[id(p)] for p in decay["params"]} == matrices
    undecayed = {names[id(p)] for p in no_decay["params"]}
    assert {
        "patch_embedding.class_token",
        "patch_embedding.position_embedding",
        "norm.weight",
        "head.bias",
    } <= undecayed


def test_augmentation_flags_reach_the_training_transform():
    args = train_vit.parse_args(["--crop-scale", "0.3", "--hflip", "0.25", "--augment", "trivialaugment"])
    crop, flip, policy = train_vit.train_transform(48, args).transforms[:3]
    assert (crop.size, crop.scale, flip.p) == ((48, 48), (0.3, 1.0), 0.25)
    assert isinstance(policy, v2.TrivialAugmentWide)
    args.augment = "randaugment"
    assert isinstance(train_vit.train_transform(48, args).transforms[2], v2.RandAugment)
    args.augment = "none"
    policies = (v2.TrivialAugmentWide, v2.RandAugment)
    assert not any(isinstance(t, policies) for t in train_vit.train_transform(48, args).transforms)
    image = train_vit.eval_transform(48)(Image.new("RGB", (80, 60), (255, 0, 0)))
    assert image.shape == (3, 48, 48) and image[0].min() == 1.0 and image[1].max() == -1.0  # pixels in [-1, 1]


def test_amp_auto_is_bf16_on_ampere_gpus_and_amx_cpus_only(monkeypatch):
    cpu = torch.device("cpu")
    for amx in (True, False):
        monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)
        assert train_vit.bf16_autocast("auto", cpu) is amx
        assert train_vit.bf16_autocast("bf16", cpu) is True  # forced, even where it is slower than fp32
        assert train_vit.bf16_autocast("none", cpu) is False
    # cuda:0, the current GPU, is pre-Ampere (bf16 by emulation only), cuda:1 computes bf16 natively
    current = [0]

    @contextlib.contextmanager
    def select(device):
        previous, current[0] = current[0], torch.device(device).index
        yield
        current[0] = previous

    monkeypatch.setattr(torch.cuda, "device", select)
    emulates = {0: True, 1: True, 2: False}  # cuda:2 cannot compute bf16 at all
    monkeypatch.setattr(
        torch.cuda,
        "is_bf16_supported",
        lambda including_emulation=True: current[0] == 1 or (including_emulation and emulates[current[0]]),
    )
    pre_ampere, ampere, without = (torch.device("cuda", index) for index in range(3))
    assert train_vit.bf16_autocast("auto", ampere) is True
    assert train_vit.bf16_autocast("bf16", ampere) is True
    assert train_vit.bf16_autocast("auto", pre_ampere) is False
    assert train_vit.bf16_autocast("bf16", pre_ampere) is True  # forced, as on a CPU without native bf16
    assert train_vit.bf16_autocast("none", ampere) is train_vit.bf16_autocast("none", pre_ampere) is False
    assert train_vit.bf16_autocast("auto", without) is False
    with pytest.raises(train_vit.TrainingError, match="--amp bf16: the GPU cuda:2 cannot compute in bfloat16"):
        train_vit.bf16_autocast("bf16", without)
    current[0] = 1  # the run's GPU decides, not the current one
    assert train_vit.bf16_autocast("auto", pre_ampere) is False


def test_bf16_autocast_on_cpu_trains(pizza_steak_sushi_dataset, tmp_path, capsys, monkeypatch):
    """CPU bf16 autocast works on any x86 CPU (emulated where not native): the head computes in bf16 in training and
    in evaluation."""
    head_dtypes = {"training": set(), "evaluation": set()}

    def vit_with_recorded_head(config):
        model = ViT(config)
        model.head.register_forward_hook(
            lambda head, inputs, output: head_dtypes["training" if head.training else "evaluation"].add(output.dtype)
        )
        return model

    monkeypatch.setattr(train_vit, "ViT", vit_with_recorded_head)
    flags = tiny_run(
        pizza_steak_sushi_dataset, tmp_path / "bf16", "--epochs", "2", "--amp", "bf16", "--label-smoothing", "0.1"
    )
    assert train_vit.main(flags) == 0
    assert "bf16 autocast" in capsys.readouterr().out
    assert head_dtypes == {"training": {torch.bfloat16}, "evaluation": {torch.bfloat16}}
    history = json.loads((tmp_path / "bf16" / "metrics.json").read_text())
    assert all(math.isfinite(row["train_loss"]) and math.isfinite(row["test_loss"]) for row in history)


def test_torchrun_two_processes_download_once_and_keep_identical_replicas(
    pizza_steak_sushi_dataset, serve_bytes, tmp_path
):
    # an odd test split, which two processes cannot share evenly: padding one share would count an image twice
    odd = shutil.copytree(pizza_steak_sushi_dataset, tmp_path / "odd")
    min((odd / "test" / "sushi").iterdir()).unlink()
    archive = shutil.make_archive(str(tmp_path / "pizza_steak_sushi"), "zip", odd)
    url = serve_bytes("pizza_steak_sushi.zip", Path(archive).read_bytes())
    downloads, output = tmp_path / "downloads", tmp_path / "ddp"
    result = torchrun(
        *TINY, "--dataset-url", url, "--download-dir", str(downloads), "--output", str(output), "--epochs", "3"
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "2 process(es) on cpu" in result.stdout
    assert [p.name for p in downloads.iterdir()] == ["pizza_steak_sushi"]  # rank 0 downloaded, rank 1 waited
    # by pattern, not by line: the two processes share the pipe, and one's line can end after the other's text
    checksums = dict(re.findall(r"(rank \d): parameters sha256 ([0-9a-f]{64})", result.stdout))
    saved = train_vit.parameters_sha256(load_file(output / "model.safetensors"))
    assert checksums == {"rank 0": saved, "rank 1": saved}

    history = json.loads((output / "metrics.json").read_text())
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    # each process evaluates its share of the test set: the all-reduced figures must be the whole set's, each image once
    model, _ = train_vit.load_checkpoint(output)
    assert len(ImageDataset(downloads / "pizza_steak_sushi", "test")) == 23
    test_loss, test_acc = figures_on_test_split(model, downloads / "pizza_steak_sushi")
    assert (history[-1]["test_loss"], history[-1]["test_acc"]) == pytest.approx((test_loss, test_acc), rel=1e-5)


def test_torchrun_a_problem_only_rank_0_meets_is_one_clear_error(tmp_path):
    """Rank 0 alone looks at the data first; the other process learns its outcome and ends with it, silently. (torchrun
    itself reports its failed processes with a traceback of its own, from its launcher.)"""
    result = torchrun(*TINY, "--data-dir", str(tmp_path / "nowhere"), "--output", str(tmp_path / "run"))
    assert result.returncode == 1
    output = result.stdout + result.stderr
    errors = [line for line in output.splitlines() if "error:" in line]
    assert errors == [
        f"error: The data directory {tmp_path / 'nowhere'} does not exist. Pass --data-dir a folder holding "
        "train/<class>/*.jpg and test/<class>/*.jpg, or leave it out to download the dataset."
    ]
    assert not re.search(r'File ".*train_vit\.py", line', output) and "[rank1]" not in output, output[-3000:]


def test_resume_after_a_kill_matches_an_uninterrupted_run(pizza_steak_sushi_dataset, tmp_path):
    epochs = "5"  # the kill must land before the end: 4 epochs of margin
    assert train_vit.main(tiny_run(pizza_steak_sushi_dataset, tmp_path / "uninterrupted", "--epochs", epochs)) == 0

    interrupted = tmp_path / "interrupted"
    flags = tiny_run(pizza_steak_sushi_dataset, interrupted, "--epochs", epochs)
    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
    process = subprocess.Popen([sys.executable, "train_vit.py", *flags], cwd=REPO, env=SINGLE_THREAD, **quiet)
    while not (interrupted / "config.json").exists() and process.poll() is None:
        time.sleep(0.01)
    process.kill()  # SIGKILL as soon as the first epoch is saved, as a preempted job would be
    assert process.wait() == -9, "the run finished before it could be interrupted"
    epochs_done = json.loads((interrupted / "config.json").read_text())["epoch"]
    assert 1 <= epochs_done < int(epochs)

    assert train_vit.main([*flags, "--resume"]) == 0
    expected = load_file(tmp_path / "uninterrupted" / "model.safetensors")
    resumed = load_file(interrupted / "model.safetensors")
    assert expected.keys() == resumed.keys()
    for name in expected:
        torch.testing.assert_close(resumed[name], expected[name], rtol=0, atol=1e-6, msg=name)
    assert metrics_without_time(interrupted) == metrics_without_time(tmp_path / "uninterrupted")


class Killed(BaseException):
    """A SIGKILL's stand-in, raised in-process at a chosen point of the saving."""


def test_resume_after_a_kill_in_the_last_save_rewrites_the_stale_files(pizza_steak_sushi_dataset, tmp_path, capsys):
    """The kill lands right after the last epoch's train_state.safetensors: the run is complete, but the model,
    config, metrics and curves are still the previous epoch's until --resume exports them again."""
    run = tmp_path / "run"
    flags = tiny_run(pizza_steak_sushi_dataset, run, "--epochs", "2")
    write_atomically, states_written = train_vit.write_atomically, []

    def killed_after_the_last_state(path, data):
        write_atomically(path, data)
        if path.name == RUN_STATE_FILE:
            states_written.append(path)
            if len(states_written) == 2:
                raise Killed

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(train_vit, "write_atomically", killed_after_the_last_state)
        with pytest.raises(Killed):
            train_vit.main(flags)
    tensors, metadata = train_vit.read_safetensors(run / RUN_STATE_FILE)
    assert len(json.loads(metadata["history"])) == 2 and len(json.loads((run / "metrics.json").read_text())) == 1
    stale_curves = (run / "loss_curves.png").read_bytes()
    capsys.readouterr()

    assert train_vit.main([*flags, "--resume"]) == 0
    assert "resuming" in capsys.readouterr().out
    exported = load_file(run / "model.safetensors")
    assert exported.keys() == {key.removeprefix("model.") for key in tensors if key.startswith("model.")}
    for name, value in exported.items():
        torch.testing.assert_close(value, tensors[f"model.{name}"], rtol=0, atol=0, msg=name)
    assert json.loads((run / "config.json").read_text()) == json.loads(metadata["config"])
    assert json.loads((run / "config.json").read_text())["epoch"] == 2
    assert json.loads((run / "metrics.json").read_text()) == json.loads(metadata["history"])
    curves = (run / "loss_curves.png").read_bytes()
    assert curves.startswith(b"\x89PNG") and curves != stale_curves


def epoch_draws(dataset: Path, output: Path, monkeypatch, *flags: str) -> list[tuple[list[int], int]]:
    """Each epoch's (training order, torch's seed for its augmentation and dropout) in a tiny run."""
    draws = []

    class RecordingSampler(train_vit.DistributedSampler):
        def __iter__(self):  # called as the epoch's loader starts, after its seeding
            draws.append((list(super().__iter__()), torch.initial_seed()))
            return iter(draws[-1][0])

    monkeypatch.setattr(train_vit, "DistributedSampler", RecordingSampler)
    assert train_vit.main(tiny_run(dataset, output, *flags)) == 0
    return draws


def test_each_epoch_shuffles_the_training_images_anew(pizza_steak_sushi_dataset, tmp_path, monkeypatch):
    orders = [
        order for order, _ in epoch_draws(pizza_steak_sushi_dataset, tmp_path / "run", monkeypatch, "--epochs", "3")
    ]
    assert len(orders) == 3
    assert all(sorted(order) == list(range(45)) for order in orders)
    assert orders[0] != orders[1] != orders[2] != orders[0]


def test_neighbouring_seeds_do_not_replay_each_others_epochs(pizza_steak_sushi_dataset, tmp_path, monkeypatch):
    """A seed sweep's runs are independent: --seed 43's first epoch is not --seed 42's second."""
    seed_42 = epoch_draws(pizza_steak_sushi_dataset, tmp_path / "42", monkeypatch, "--epochs", "2", "--seed", "42")
    [seed_43] = epoch_draws(pizza_steak_sushi_dataset, tmp_path / "43", monkeypatch, "--epochs", "1", "--seed", "43")
    assert seed_43[0] != seed_42[1][0] and seed_43[1] != seed_42[1][1]


@pytest.mark.parametrize(
    "missing",
    [
        "model.head.weight",  # load_state_dict: Missing key(s)
        "optimizer.0.exp_avg_sq",  # AdamW: KeyError in the first step
        "optimizer.3.",  # a parameter's whole optimizer state: AdamW would restart its moments silently
        "param_groups",  # a metadata entry
    ],
)
def test_resume_refuses_an_incomplete_state(missing, trained_run, pizza_steak_sushi_dataset, tmp_path, capsys):
    """A train_state.safetensors that opens but lacks a tensor or the optimizer's param groups."""
    tensors, metadata = train_vit.read_safetensors(trained_run / RUN_STATE_FILE)
    run = shutil.copytree(trained_run, tmp_path / "run")
    damaged = save(
        {name: value for name, value in tensors.items() if not name.startswith(missing)},
        {name: value for name, value in metadata.items() if name != missing},
    )
    (run / RUN_STATE_FILE).write_bytes(damaged)
    assert train_vit.main([*tiny_run(pizza_steak_sushi_dataset, run), "--epochs", "15", "--resume"]) == 1
    error = capsys.readouterr().err
    assert f"--resume: {run / RUN_STATE_FILE} is not a complete train_vit.py state (" in error
    assert "restore it from a backup, or drop --resume and start a new run in a new --output" in error


def metrics_without_time(run: Path) -> list[dict]:
    return [{k: v for k, v in row.items() if k != "seconds"} for row in json.loads((run / "metrics.json").read_text())]


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--image-size", "30", "--patch-size", "8"], "image_size 30 is not divisible by patch_size 8"),
        (["--hidden-dim", "30", "--num-heads", "4"], "hidden_dim 30 is not divisible by num_heads 4"),
        (["--dropout", "1.5"], "dropout must be in [0, 1)"),
        (["--warmup-steps", "1000", "--epochs", "2"], "--warmup-steps 1000 is longer than the whole run"),
        (["--device", "gpu"], "--device: 'gpu' is not a usable torch device here"),
        (["--batch-size", "64"], "--batch-size 64 is more than the 45 training images: no full batch"),
        (["--batch-size", "8", "--micro-batch-size", "3"], "use a multiple of 3"),
    ],
)
def test_bad_configuration_is_one_clear_error(flags, message, pizza_steak_sushi_dataset, tmp_path, capsys):
    assert train_vit.main([*tiny_run(pizza_steak_sushi_dataset, tmp_path / "run"), *flags]) == 1
    assert message in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    "flag, value, reason",
    [
        ("--epochs", "0", "is below the minimum 1"),
        ("--batch-size", "-8", "is below the minimum 1"),
        ("--lr", "-1e-3", "is below the minimum 0.0"),
        ("--lr", "nan", "is not a finite number"),
        ("--weight-decay", "inf", "is not a finite number"),
        ("--num-heads", "0", "is below the minimum 1"),
        ("--crop-scale", "0", "is outside (0, 1]"),
        ("--crop-scale", "1.5", "is outside (0, 1]"),
        ("--hflip", "-0.1", "is outside [0, 1]"),
        ("--hflip", "2", "is outside [0, 1]"),
        ("--label-smoothing", "1.5", "is outside [0, 1]"),
        ("--label-smoothing", "-0.1", "is outside [0, 1]"),
    ],
)
def test_out_of_range_numbers_are_refused_by_the_parser(flag, value, reason, capsys):
    with pytest.raises(SystemExit) as exit:
        train_vit.main([f"{flag}={value}"])
    assert exit.value.code == 2
    assert f"argument {flag}: {value} {reason}" in capsys.readouterr().err


def test_range_ends_are_accepted():
    args = train_vit.parse_args(["--crop-scale", "1", "--hflip", "0", "--label-smoothing", "1"])
    assert (args.crop_scale, args.hflip, args.label_smoothing) == (1.0, 0.0, 1.0)


def test_missing_or_broken_data_is_one_clear_error(tmp_path, capsys):
    assert train_vit.main(tiny_run(tmp_path / "nowhere", tmp_path / "run")) == 1
    assert f"The data directory {tmp_path / 'nowhere'} does not exist" in capsys.readouterr().err
    (tmp_path / "half" / "train" / "pizza").mkdir(parents=True)
    assert train_vit.main(tiny_run(tmp_path / "half", tmp_path / "run")) == 1
    assert "has no test/ folder" in capsys.readouterr().err


def test_a_new_run_never_writes_over_files_already_there(trained_run, tmp_path, capsys):
    """Refused before the data is read (the data folder here does not exist)."""
    head = tmp_path / "foodvision-mini"
    head.mkdir()
    (head / "model.safetensors").write_bytes(b"a trained head")
    (tmp_path / "notes.txt").write_text("keep me")
    for output, message in (
        (trained_run, "already holds a checkpoint; continue it with --resume"),
        (head, f"{head} already holds files that are no run of train_vit.py's (model.safetensors)"),
        (tmp_path / "notes.txt", "--output: " + f"{tmp_path / 'notes.txt'} is a file"),
        (tmp_path / "notes.txt" / "run", f"{tmp_path / 'notes.txt'} is a file, so no folder"),
    ):
        assert train_vit.main(tiny_run(tmp_path / "nowhere", output)) == 1
        assert message in capsys.readouterr().err
    assert (head / "model.safetensors").read_bytes() == b"a trained head"


def test_resume_refuses_what_it_cannot_continue(trained_run, pizza_steak_sushi_dataset, tmp_path, capsys):
    assert train_vit.main([*tiny_run(pizza_steak_sushi_dataset, tmp_path / "empty"), "--resume"]) == 1
    assert "drop --resume to start afresh" in capsys.readouterr().err
    assert train_vit.main([*tiny_run(pizza_steak_sushi_dataset, trained_run), "--hidden-dim", "64", "--resume"]) == 1
    assert "pass the flags of the original run" in capsys.readouterr().err
    changed = [
        "--epochs",
        "20",
        "--lr",
        "0.01",
        "--schedule",
        "linear",
        "--hflip",
        "0.5",
        "--amp",
        "bf16",
        "--workers",
        "1",
    ]
    assert train_vit.main([*tiny_run(pizza_steak_sushi_dataset, trained_run), *changed, "--resume"]) == 1
    error = capsys.readouterr().err
    assert "started with --epochs 15 (now 20), --lr 0.003 (now 0.01), --schedule cosine (now linear);" in error
    assert "Pass the original flags to continue it, or drop --resume" in error
    assert len(json.loads((trained_run / "metrics.json").read_text())) == 15  # nothing was trained or saved
    # how the run is computed may change, and the run says it is no longer the uninterrupted one bit for bit
    resumed = [*tiny_run(pizza_steak_sushi_dataset, trained_run), "--epochs", "15", *changed[-4:], "--resume"]
    assert train_vit.main(resumed) == 0
    note = "(bf16_autocast False -> True after epoch 15, workers 0 -> 1 after epoch 15): it keeps its schedule"
    assert note in capsys.readouterr().out
    # a run that took other steps an epoch, as another process count pads each share of an epoch differently
    shutil.copytree(trained_run, tmp_path / "padded")
    tensors, metadata = train_vit.read_safetensors(tmp_path / "padded" / "train_state.safetensors")
    config = json.loads(metadata["config"])
    config |= {"drift": ["workers 2 -> 0 after epoch 7"]}  # an earlier resumption's change is told on every later one
    (tmp_path / "padded" / "train_state.safetensors").write_bytes(
        save(tensors, metadata | {"config": json.dumps(config)})
    )
    assert (
        train_vit.main([*tiny_run(pizza_steak_sushi_dataset, tmp_path / "padded"), "--epochs", "15", "--resume"]) == 0
    )
    assert "changed on resuming (workers 2 -> 0 after epoch 7): it keeps" in capsys.readouterr().out
    config["setup"] |= {"steps_per_epoch": 6, "processes": 2}
    (tmp_path / "padded" / "train_state.safetensors").write_bytes(
        save(tensors, metadata | {"config": json.dumps(config)})
    )
    assert (
        train_vit.main([*tiny_run(pizza_steak_sushi_dataset, tmp_path / "padded"), "--epochs", "15", "--resume"]) == 1
    )
    message = "took 6 steps an epoch; on 1 process(es) instead of 2 (each pads its share to whole batches), it would"
    assert message in capsys.readouterr().err
    config["setup"] |= {"processes": 1}  # the same process count: the data changed
    (tmp_path / "padded" / "train_state.safetensors").write_bytes(
        save(tensors, metadata | {"config": json.dumps(config)})
    )
    assert (
        train_vit.main([*tiny_run(pizza_steak_sushi_dataset, tmp_path / "padded"), "--epochs", "15", "--resume"]) == 1
    )
    assert "took 6 steps an epoch; with the training images there now, it would take 5" in capsys.readouterr().err
    (tmp_path / "corrupt").mkdir()
    (tmp_path / "corrupt" / "train_state.safetensors").write_bytes(b"not a safetensors file")
    assert train_vit.main([*tiny_run(pizza_steak_sushi_dataset, tmp_path / "corrupt"), "--resume"]) == 1
    assert "cannot read" in capsys.readouterr().err


def test_command_line_error_has_no_traceback(tmp_path):
    command = [sys.executable, "train_vit.py", "--image-size", "100", "--output", str(tmp_path / "run")]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    assert result.stderr.startswith("error: bad model configuration: image_size 100 is not divisible by patch_size 16")
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_imagenet_preset_is_table_3_and_flags_override_it():
    args = train_vit.parse_args(["--preset", "imagenet"])
    table_3 = (args.batch_size, args.lr, args.weight_decay, args.warmup_steps, args.dropout, args.schedule)
    assert table_3 == (4096, 3e-3, 0.3, 10_000, 0.1, "cosine") and args.clip_grad_norm == 1.0
    assert train_vit.parse_args(["--preset", "imagenet", "--lr", "1e-3"]).lr == 1e-3


def test_gradient_accumulation_takes_the_same_steps_as_the_whole_batch(pizza_steak_sushi_dataset, tmp_path):
    """--micro-batch-size 4 at --batch-size 8 sums two halves' gradients into one step: the same weights as passes
    of 8 (augmentation draws come in the same order; dropout is off)."""
    whole, accumulated = tmp_path / "whole", tmp_path / "accumulated"
    flags = ["--epochs", "2", "--dropout", "0"]
    assert train_vit.main(tiny_run(pizza_steak_sushi_dataset, whole, *flags)) == 0
    assert train_vit.main(tiny_run(pizza_steak_sushi_dataset, accumulated, *flags, "--micro-batch-size", "4")) == 0
    # the logits, not the weights: the key bias gets no gradient (softmax ignores it), so Adam turns rounding noise
    # there into updates that differ between the two runs and change nothing
    test_images = torch.stack(
        [image for image, _ in ImageDataset(pizza_steak_sushi_dataset, "test", train_vit.eval_transform(32))]
    )
    with torch.no_grad():
        expected, found = (train_vit.load_checkpoint(run)[0](test_images) for run in (whole, accumulated))
    torch.testing.assert_close(found, expected, rtol=1e-3, atol=1e-4)
    steps = [row["lr"] for row in json.loads((accumulated / "metrics.json").read_text())]
    assert steps == [row["lr"] for row in json.loads((whole / "metrics.json").read_text())]


def test_more_torchrun_processes_than_gpus_is_a_clear_error(monkeypatch, capsys):
    """torchrun --nproc_per_node=2 on a one-GPU machine: the process without a GPU says so (rank 0 waits for it)."""
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setattr(train_vit, "resolve_device", lambda name: torch.device("cuda"))
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    message = "local process 1, but this machine has 1 CUDA GPU.*--nproc_per_node=1, or --device cpu"
    with pytest.raises(train_vit.TrainingError, match=message):
        train_vit.init_distributed("cuda")
    monkeypatch.setattr(train_vit, "train", lambda args: train_vit.init_distributed("cuda"))
    assert train_vit.main([]) == 1
    assert re.search(message, capsys.readouterr().err)  # reported by rank 1 itself


def test_torchrun_virtual_local_ranks_each_take_their_one_gpu(monkeypatch):
    """--virtual-local-rank: every process is local rank 0 and sees only its own GPU, as cuda:0."""
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("LOCAL_RANK", "0")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    monkeypatch.setattr(train_vit, "resolve_device", lambda name: torch.device("cuda"))
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    chosen, backends = [], []
    monkeypatch.setattr(torch.cuda, "set_device", chosen.append)
    monkeypatch.setattr(train_vit.dist, "init_process_group", backends.append)
    monkeypatch.setattr(train_vit.dist, "get_rank", lambda: 0)
    monkeypatch.setattr(train_vit.dist, "get_world_size", lambda: 2)
    assert train_vit.init_distributed("cuda") == (0, 2, torch.device("cuda", 0))
    assert chosen == [torch.device("cuda", 0)] and backends == ["nccl"]
