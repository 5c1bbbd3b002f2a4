"""train_head.py end to end on generated images with the random `torch_home` backbone: the head
really learns, the reports agree with each other, the tiny checkpoint reloads (from a folder and
from a Hub repo id in an offline cache) and predicts what the trained model predicted, and broken
checkpoints raise CheckpointError saying which file and what is wrong."""

import inspect
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import huggingface_hub
import pytest
import torch
from safetensors.torch import load_file
from torch import nn

import train_head
from classifier import CONFIG_FILE, WEIGHTS_FILE, CheckpointError, build_feature_extractor, load_classifier, save_head
from data import load_image
from standins import REPO, HubFilesHandler, http_server

# Chance is 1/3; standins' seeded data and random backbone give a head far above this bar. The margin
# allows for other torch builds' rounding, not for a head that fails.
MIN_TEST_ACCURACY = 0.8


def read_json(path: Path) -> dict:
    return json.loads(path.read_text())


def test_head_learns_and_reports_agree(trained_head_checkpoint):
    config = read_json(trained_head_checkpoint / CONFIG_FILE)
    history = read_json(trained_head_checkpoint / "metrics.json")["history"]
    evaluation = read_json(trained_head_checkpoint / "evaluation.json")
    assert config["class_names"] == ["pizza", "steak", "sushi"]
    assert (config["backbone"], config["weights"], config["image_size"]) == ("vit_b_16", "IMAGENET1K_V1", 224)
    assert config["training"]["epochs"] == len(history) == 10
    assert config["metrics"]["test_acc"] == history[-1]["test_acc"] == pytest.approx(evaluation["test_accuracy"])
    assert evaluation["test_accuracy"] >= MIN_TEST_ACCURACY
    assert history[-1]["train_loss"] < history[0]["train_loss"]

    confusion = torch.tensor(evaluation["confusion_matrix"]["rows_true_columns_predicted"])
    assert confusion.sum() == config["data"]["test_images"] == len(evaluation["predictions"])
    assert confusion.trace() / confusion.sum() == pytest.approx(evaluation["test_accuracy"])
    per_class = (confusion.diag() / confusion.sum(dim=1)).tolist()
    assert list(evaluation["per_class_accuracy"].values()) == pytest.approx(per_class)
    wrong = [p for p in evaluation["predictions"] if p["true"] != p["predicted"]]
    assert len(evaluation["most_wrong"]) == min(len(wrong), train_head.MOST_WRONG)
    assert [w["probability"] for w in evaluation["most_wrong"]] == sorted(
        (p["probability"] for p in wrong), reverse=True
    )[: train_head.MOST_WRONG]

    assert (trained_head_checkpoint / "loss_curves.png").read_bytes().startswith(b"\x89PNG")
    printed = (trained_head_checkpoint.parent / "stdout.txt").read_text()
    epochs = re.findall(
        r"Epoch: (\d+) \| train_loss: [\d.]+ \| train_acc: [\d.]+ \| test_loss: [\d.]+ \| test_acc: ([\d.]+)", printed
    )
    assert [int(e) for e, _ in epochs] == list(range(1, 11))
    assert float(epochs[-1][1]) == pytest.approx(history[-1]["test_acc"], abs=5e-5)


def test_evaluation_summary_counts_and_ranks_the_mistakes():
    logits = torch.tensor([[4.0, 0, 0], [0, 3, 0], [0, 0, 1], [2, 0, 0], [0, 5, 0], [0, 0, 2]])
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    paths = [f"test/{i}.jpg" for i in range(6)]
    summary = train_head.evaluation_summary(logits, labels, ["a", "b", "c"], paths)
    assert summary["test_accuracy"] == pytest.approx(2 / 6)
    assert summary["per_class_accuracy"] == pytest.approx(dict(a=0.5, b=0.0, c=0.5))
    assert summary["confusion_matrix"]["rows_true_columns_predicted"] == [[1, 1, 0], [1, 0, 1], [0, 1, 1]]
    assert [(w["path"], w["true"], w["predicted"]) for w in summary["most_wrong"]] == [
        ("test/4.jpg", "c", "b"),
        ("test/1.jpg", "a", "b"),
        ("test/3.jpg", "b", "a"),
        ("test/2.jpg", "b", "c"),
    ]
    assert summary["most_wrong"][0]["probability"] == pytest.approx(torch.tensor([0.0, 5, 0]).softmax(0)[1].item())


def test_checkpoint_is_tiny_and_pickle_free(trained_head_checkpoint):
    size = sum((trained_head_checkpoint / name).stat().st_size for name in (WEIGHTS_FILE, CONFIG_FILE))
    assert size < 16_000  # the head is a few thousand floats; the course pickled the whole model
    assert not [p for p in trained_head_checkpoint.iterdir() if p.suffix in (".pt", ".pth", ".pkl", ".bin")]
    assert not [p for p in trained_head_checkpoint.parent.iterdir() if p.name.startswith(".")]  # no temp dirs left


def test_reloaded_checkpoint_predicts_what_training_predicted(trained_head_checkpoint, pizza_steak_sushi_dataset):
    model, transforms, config = load_classifier(trained_head_checkpoint)
    predictions = read_json(trained_head_checkpoint / "evaluation.json")["predictions"]
    chosen = predictions[::4]  # every class, right and wrong ones, at a quarter of the backbone passes
    images = torch.stack([transforms(load_image(pizza_steak_sushi_dataset / p["path"])) for p in chosen])
    with torch.inference_mode():
        probabilities = model(images).softmax(dim=1)
    assert [config["class_names"][i] for i in probabilities.argmax(dim=1)] == [p["predicted"] for p in chosen]
    expected = torch.tensor([list(p["probabilities"].values()) for p in chosen])
    torch.testing.assert_close(probabilities, expected, atol=1e-4, rtol=0)


def test_main_downloads_trains_saves_and_reports_a_failed_push(
    serve_bytes, pizza_steak_sushi_dataset, torch_home, tmp_path, capsys, monkeypatch
):
    """The whole command line path: download over HTTP, train with every flag set, save; then the
    Hub upload fails (a closed local port stands in for an unreachable huggingface.co, so no test
    run can publish anything) and says the checkpoint is kept."""
    small = tmp_path / "small"
    for subset, count in (("train", 2), ("test", 1)):
        for folder in sorted((pizza_steak_sushi_dataset / subset).iterdir()):
            (small / subset / folder.name).mkdir(parents=True)
            for image in sorted(folder.iterdir())[:count]:
                shutil.copy(image, small / subset / folder.name)
    url = serve_bytes("pizza_steak_sushi.zip", Path(shutil.make_archive(tmp_path / "small", "zip", small)).read_bytes())
    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", "http://127.0.0.1:9")
    output = tmp_path / "checkpoint"
    argv = [
        "--dataset-url",
        url,
        "--download-dir",
        str(tmp_path / "data"),
        "--output",
        str(output),
        "--epochs",
        "2",
        "--batch-size",
        "4",
        "--lr",
        "0.01",
        "--seed",
        "1",
        "--device",
        "cpu",
        "--push-to-hub",
        "someone/foodvision-mini",
    ]
    assert train_head.main(argv) == 1
    printed = capsys.readouterr()
    assert "Epoch: 2 | train_loss:" in printed.out
    assert (
        f"the checkpoint is saved in {output}, but publishing it to the Hugging Face Hub repo "
        "someone/foodvision-mini failed" in printed.err
    )
    assert sorted(p.name for p in (tmp_path / "data" / "pizza_steak_sushi" / "test").iterdir()) == [
        "pizza",
        "steak",
        "sushi",
    ]
    config = read_json(output / CONFIG_FILE)
    assert config["data"] == dict(source=url, split=None, train_images=6, test_images=3)
    assert config["training"] | dict(epochs=2, batch_size=4, lr=0.01, seed=1) == config["training"]
    assert len(read_json(output / "metrics.json")["history"]) == 2
    assert f"Test accuracy {config['metrics']['test_acc']:.4f} on 3 images" in (output / "README.md").read_text()


def load_in_subprocess(repo_id: str, env: dict, local: Path) -> subprocess.CompletedProcess:
    """load_classifier(repo_id) in a fresh interpreter (huggingface_hub reads HF_* variables at
    import); it checks the head equals the local checkpoint's and prints any CheckpointError."""
    script = (
        "import sys, torch\n"
        "from classifier import CheckpointError, load_classifier\n"
        "try:\n"
        "    hub, *_ = load_classifier(sys.argv[1])\n"
        "except CheckpointError as error:\n"
        "    sys.exit(f'CheckpointError: {error}')\n"
        "local, *_ = load_classifier(sys.argv[2])\n"
        "pairs = zip(hub.heads.state_dict().values(), local.heads.state_dict().values())\n"
        "assert all(torch.equal(a, b) for a, b in pairs)\n"
    )
    return subprocess.run(
        [sys.executable, "-c", script, repo_id, str(local)],
        cwd=REPO,
        env=dict(os.environ, **env),
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_hub_repo_id_downloads_then_loads_offline(trained_head_checkpoint, torch_home, tmp_path):
    """huggingface_hub's real download code runs against a stand-in Hub on 127.0.0.1 (HF_ENDPOINT)
    and fills a fresh cache; with HF_HUB_OFFLINE=1 the same repo id then loads from that cache.
    Publishing (--push-to-hub) needs the real Hub and a token: not tested here."""
    env = dict(HF_HUB_CACHE=str(tmp_path / "hub"), TORCH_HOME=str(torch_home), HF_HUB_DISABLE_TELEMETRY="1")
    with http_server(HubFilesHandler, repos={"someone/foodvision-mini": trained_head_checkpoint}) as server:
        online = dict(env, HF_ENDPOINT=f"http://127.0.0.1:{server.server_port}")
        result = load_in_subprocess("someone/foodvision-mini", online, trained_head_checkpoint)
        assert result.returncode == 0, result.stderr
        missing = load_in_subprocess("someone/not-there", online, trained_head_checkpoint)
    assert "the Hugging Face Hub repo someone/not-there could not provide model.safetensors" in missing.stderr
    assert list((tmp_path / "hub").glob("models--someone--foodvision-mini/snapshots/*/config.json"))
    offline = dict(env, HF_HUB_OFFLINE="1")
    result = load_in_subprocess("someone/foodvision-mini", offline, trained_head_checkpoint)
    assert result.returncode == 0, result.stderr


@pytest.fixture
def broken_copy(trained_head_checkpoint, tmp_path) -> Path:
    return Path(shutil.copytree(trained_head_checkpoint, tmp_path / "checkpoint"))


def edit_config(directory: Path, **changes) -> None:
    (directory / CONFIG_FILE).write_text(json.dumps(read_json(directory / CONFIG_FILE) | changes))


def test_missing_checkpoint(tmp_path, broken_copy):
    with pytest.raises(
        CheckpointError, match=r"There is no checkpoint folder .*nowhere\. Train one with `python train_head.py`"
    ):
        load_classifier(tmp_path / "nowhere")
    (broken_copy / WEIGHTS_FILE).unlink()
    with pytest.raises(CheckpointError, match=rf"{re.escape(str(broken_copy / WEIGHTS_FILE))} is missing"):
        load_classifier(broken_copy)


def test_corrupt_checkpoint_files(broken_copy):
    weights = (broken_copy / WEIGHTS_FILE).read_bytes()
    (broken_copy / WEIGHTS_FILE).write_bytes(weights[: len(weights) // 2])
    with pytest.raises(
        CheckpointError, match=rf"{re.escape(str(broken_copy / WEIGHTS_FILE))} is not a readable safetensors file"
    ):
        load_classifier(broken_copy)
    (broken_copy / CONFIG_FILE).write_text('{"class_names": ["pizza"')
    with pytest.raises(CheckpointError, match=rf"{re.escape(str(broken_copy / CONFIG_FILE))} is not valid JSON"):
        load_classifier(broken_copy)


@pytest.mark.parametrize(
    "changes, message",
    [
        (
            dict(class_names=["pizza", "steak", "sushi", "ramen"]),
            r"4 classes need .*the weights do not match config\.json",
        ),
        (dict(image_size=384), r"says image_size 384, but the weights IMAGENET1K_V1 take 224 px images"),
        (dict(weights="IMAGENET1K_V2"), r"unknown vit_b_16 weights 'IMAGENET1K_V2'"),
        (dict(class_names=["pizza", "pizza", "sushi"]), r"class_names must be a non-empty list of distinct strings"),
    ],
)
def test_mismatched_config(broken_copy, torch_home, changes, message):
    edit_config(broken_copy, **changes)
    with pytest.raises(CheckpointError, match=message):
        load_classifier(broken_copy)


def test_save_head_replaces_only_checkpoints(tmp_path):
    model = nn.Module()
    model.heads = nn.Linear(768, 3)
    config = dict(backbone="vit_b_16", weights="IMAGENET1K_V1", image_size=224, class_names=["a", "b", "c"])
    target = save_head(model, tmp_path / "checkpoint", config)
    nn.init.zeros_(model.heads.weight)
    save_head(model, target, config)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint"]
    assert sorted(p.name for p in target.iterdir()) == [CONFIG_FILE, WEIGHTS_FILE]
    assert not load_file(target / WEIGHTS_FILE)["heads.weight"].any()  # the second save replaced the first
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "todo.txt").write_text("keep me")
    with pytest.raises(CheckpointError, match="is not a checkpoint folder"):
        save_head(model, tmp_path / "notes", config)
    assert (tmp_path / "notes" / "todo.txt").read_text() == "keep me"


def fail_rename_number(monkeypatch, number: int) -> None:
    """From now on, the `number`th Path.rename raises OSError, as a full disk would."""
    real_rename, calls = Path.rename, []

    def rename(self, target):
        calls.append(self)
        if len(calls) == number:
            raise OSError(28, "No space left on device")
        return real_rename(self, target)

    monkeypatch.setattr(Path, "rename", rename)


def test_failed_replace_keeps_the_previous_checkpoint(trained_head_checkpoint, torch_home, tmp_path, monkeypatch):
    target = Path(shutil.copytree(trained_head_checkpoint, tmp_path / "checkpoint"))
    before = {p.name: p.read_bytes() for p in target.iterdir()}
    model = nn.Module()
    model.heads = nn.Linear(768, 3)
    fail_rename_number(monkeypatch, 2)  # the first moves the old checkpoint aside, the second the new one in
    with pytest.raises(CheckpointError, match="No space left on device.*an earlier checkpoint there is kept"):
        save_head(model, target, read_json(target / CONFIG_FILE))
    monkeypatch.undo()
    assert {p.name: p.read_bytes() for p in target.iterdir()} == before
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint"]  # neither the new files nor an empty -old- folder
    _, _, config = load_classifier(target)
    assert config["class_names"] == ["pizza", "steak", "sushi"]


def test_next_save_restores_a_checkpoint_left_aside_by_a_killed_save(tmp_path):
    model = nn.Module()
    model.heads = nn.Linear(768, 3)
    config = dict(backbone="vit_b_16", weights="IMAGENET1K_V1", image_size=224, class_names=["a", "b", "c"])
    target = save_head(model, tmp_path / "checkpoint", config)
    before = (target / WEIGHTS_FILE).read_bytes()
    (tmp_path / ".checkpoint-old-killed").mkdir()
    target.rename(tmp_path / ".checkpoint-old-killed" / "checkpoint")  # where a save killed mid-swap leaves it
    (tmp_path / ".checkpoint-old-empty").mkdir()  # killed before the first rename
    with pytest.raises(CheckpointError, match="Could not write the checkpoint"):
        save_head(model, target, config, {"no/such/folder.json": b"{}"})  # fails after the repair, while writing
    assert (target / WEIGHTS_FILE).read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint"]


def test_command_line_defaults_are_train_heads():
    parameters = inspect.signature(train_head.train_head).parameters
    args = vars(train_head.parse_args([]))
    for name in ("split", "weights", "epochs", "lr", "batch_size", "seed", "download_dir", "device"):
        assert args[name] == parameters[name].default, name
    assert args["output"] == parameters["output_dir"].default
    assert parameters["weights"].default == inspect.signature(build_feature_extractor).parameters["weights"].default
