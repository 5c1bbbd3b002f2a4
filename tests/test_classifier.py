"""classifier.py: head checkpoints (saved atomically, pickle-free, reloaded from a folder or a Hub repo id, broken
ones refused with the file and the fix named), the outlier score stored beside the head, and the check of the
backbone's weights file against the published one."""

import hashlib
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
from safetensors.torch import load_file, save_file
from torch import nn

import classifier
from classifier import (
    CONFIG_FILE,
    WEIGHTS_FILE,
    CheckpointError,
    check_weights_file,
    checkpoint_files,
    load_classifier,
    load_outlier_score,
    save_head,
)
from hub import HEAD_FILES
from standins import REPO, HubFilesHandler, http_server


def read_json(path: Path) -> dict:
    return json.loads(path.read_text())


def test_checkpoint_is_small_and_pickle_free(trained_head_checkpoint):
    """The head is a few thousand floats and the outlier score's Gaussians two (D, D) precisions, whose size the
    config states; the course pickled the whole model."""
    config = json.loads((trained_head_checkpoint / CONFIG_FILE).read_text())
    head_bytes = (trained_head_checkpoint / WEIGHTS_FILE).stat().st_size - config["outliers"]["size_bytes"]
    assert 0 < head_bytes < 16_000 and config["outliers"]["size_bytes"] == 2 * 768 * 768 * 4 + (3 + 1) * 768 * 4 + 8
    assert not [p for p in trained_head_checkpoint.iterdir() if p.suffix in (".pt", ".pth", ".pkl", ".bin")]
    assert not [p for p in trained_head_checkpoint.parent.iterdir() if p.name.startswith(".")]  # no temp dirs left


def load_in_subprocess(env: dict, local: Path, *repo_ids: str) -> subprocess.CompletedProcess:
    """load_classifier(repo_id) of each repo id in one fresh interpreter (huggingface_hub reads HF_* variables at
    import); it prints "<repo id>: the local head" where the head equals the local checkpoint's, and any
    CheckpointError to stderr."""
    script = (
        "import sys, torch\n"
        "from classifier import CheckpointError, load_classifier\n"
        "local, *_ = load_classifier(sys.argv[1])\n"
        "for repo_id in sys.argv[2:]:\n"
        "    try:\n"
        "        hub, *_ = load_classifier(repo_id)\n"
        "    except CheckpointError as error:\n"
        "        print(f'{repo_id}: CheckpointError: {error}', file=sys.stderr)\n"
        "        continue\n"
        "    hub_head, local_head = hub.heads.state_dict(), local.heads.state_dict()\n"
        "    same = hub_head.keys() == local_head.keys()\n"
        "    if same and all(torch.equal(hub_head[name], local_head[name]) for name in hub_head):\n"
        "        print(f'{repo_id}: the local head')\n"
    )
    return subprocess.run(
        [sys.executable, "-c", script, str(local), *repo_ids],
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
    repos = {"someone/foodvision-mini": trained_head_checkpoint}
    with http_server(HubFilesHandler, repos=repos, requested=[]) as server:
        online = dict(env, HF_ENDPOINT=f"http://127.0.0.1:{server.server_port}")
        result = load_in_subprocess(online, trained_head_checkpoint, "someone/foodvision-mini", "someone/not-there")
    assert result.returncode == 0 and result.stdout.splitlines() == ["someone/foodvision-mini: the local head"], result
    # the config comes from the commit the weights came from, not from whatever "main" is by then
    assert "/someone/foodvision-mini/resolve/main/model.safetensors" in server.requested
    assert f"/someone/foodvision-mini/resolve/{HubFilesHandler.COMMIT}/config.json" in server.requested
    assert "the Hugging Face Hub shows no repo someone/not-there to this process" in result.stderr
    assert "if the repo is private give the app a token that can read it (HF_TOKEN" in result.stderr
    assert list((tmp_path / "hub").glob("models--someone--foodvision-mini/snapshots/*/config.json"))
    offline = dict(env, HF_HUB_OFFLINE="1")
    result = load_in_subprocess(offline, trained_head_checkpoint, "someone/foodvision-mini")
    assert result.returncode == 0 and result.stdout.splitlines() == ["someone/foodvision-mini: the local head"], result


class DroppingHubHandler(HubFilesHandler):
    """The stand-in Hub whose downloads break off: the connection closes after half of the bytes its Content-Length
    announced."""

    def answer(self, send_body: bool):
        super().answer(send_body=False)  # the real headers: the commit, the ETag, the whole file's length (or a 404)
        file = self.server.repos["someone/foodvision-mini"] / self.path.rsplit("/", 1)[-1]
        if send_body and "/resolve/" in self.path and file.is_file():
            self.wfile.write(file.read_bytes()[: file.stat().st_size // 2])


def test_a_hub_download_that_breaks_off_is_a_checkpoint_error(tmp_path, monkeypatch):
    """huggingface_hub resumes a few times (a second's pause each) and then lets its HTTP client's error out; the
    app and predict.py take a CheckpointError for a message, not a traceback. (A download that stalls ends in that
    client's ReadTimeout, of the same family.)"""
    head = tmp_path / "head"
    head.mkdir()
    for name in HEAD_FILES:
        (head / name).write_bytes(os.urandom(100_000))
    with http_server(DroppingHubHandler, repos={"someone/foodvision-mini": head}) as server:
        endpoint = f"http://127.0.0.1:{server.server_port}"
        constants = huggingface_hub.constants  # what HF_ENDPOINT and HF_HUB_CACHE set at import
        for name, value in (
            (
                "HUGGINGFACE_CO_URL_TEMPLATE",
                constants.HUGGINGFACE_CO_URL_TEMPLATE.replace(constants.ENDPOINT, endpoint),
            ),
            ("ENDPOINT", endpoint),
            ("HF_HUB_CACHE", str(tmp_path / "cache")),
        ):
            monkeypatch.setattr(constants, name, value)
        with pytest.raises(CheckpointError) as raised:
            checkpoint_files("someone/foodvision-mini")
    message = str(raised.value)
    assert (
        "Downloading model.safetensors and config.json of the Hugging Face Hub repo someone/foodvision-mini" in message
    )
    assert "failed: the connection dropped or stalled (RemoteProtocolError: " in message
    assert "Retrying may help" in message


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
        (dict(outliers=True), r"its outliers record is not the one train_head\.py writes"),
        (dict(fewshot={"seeds": 5}), r"its fewshot record is not the one train_head\.py writes"),
        (dict(fewshot={"accuracy": [0.5], "seeds": 5}), r"its fewshot record's accuracy is not by shots"),
        (dict(int8={"setup": {"torch": "2.14.1"}}), r"its int8 record has a setup but no agreement measured for it"),
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
    assert sorted(p.name for p in target.iterdir()) == sorted(HEAD_FILES)  # what deploy.py checks a head folder for
    assert not load_file(target / WEIGHTS_FILE)["heads.weight"].any()  # the second save replaced the first
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "todo.txt").write_text("keep me")
    with pytest.raises(CheckpointError, match="is not a checkpoint folder"):
        save_head(model, tmp_path / "notes", config)
    assert (tmp_path / "notes" / "todo.txt").read_text() == "keep me"
    # a head whose config was damaged: read_config asks for a new head, so training one replaces it
    (target / CONFIG_FILE).write_text('{"backbone": "vit_b_16", "class_na')
    save_head(model, target, config)
    assert json.loads((target / CONFIG_FILE).read_text()) == config
    # a train_vit.py run with a damaged config is still a run
    (tmp_path / "run").mkdir()
    for name, text in ((WEIGHTS_FILE, "weights"), (CONFIG_FILE, "{"), ("train_state.safetensors", "state")):
        (tmp_path / "run" / name).write_text(text)
    with pytest.raises(CheckpointError, match="its config.json cannot be read"):
        save_head(model, tmp_path / "run", config)
    assert (tmp_path / "run" / "train_state.safetensors").read_text() == "state"


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_a_head_holding_nan_or_infinity_is_refused_at_loading(tmp_path, torch_home, value):
    """What a diverged training would have left: a head that answers every photo with NaN probabilities."""
    model = nn.Module()
    model.heads = nn.Linear(768, 3)
    with torch.no_grad():
        model.heads.weight[1, 7] = value
    config = dict(backbone="vit_b_16", weights="IMAGENET1K_V1", image_size=224, class_names=["a", "b", "c"])
    target = save_head(model, tmp_path / "checkpoint", config)
    with pytest.raises(CheckpointError, match=r"heads\.weight holds NaN or infinite values .*a lower --lr") as raised:
        load_classifier(target)
    assert str(target / WEIGHTS_FILE) in str(raised.value)


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
    with pytest.raises(CheckpointError, match="No space left on device.*the earlier checkpoint there is kept"):
        save_head(model, target, read_json(target / CONFIG_FILE))
    monkeypatch.undo()
    assert {p.name: p.read_bytes() for p in target.iterdir()} == before
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint"]  # neither the new files nor an empty -old- folder
    _, _, config = load_classifier(target)
    assert config["class_names"] == ["pizza", "steak", "sushi"]


def test_a_failed_first_save_claims_no_earlier_checkpoint(tmp_path, monkeypatch):
    model = nn.Module()
    model.heads = nn.Linear(768, 3)
    config = dict(backbone="vit_b_16", weights="IMAGENET1K_V1", image_size=224, class_names=["a", "b", "c"])
    fail_rename_number(monkeypatch, 1)  # the new folder's move into place
    with pytest.raises(CheckpointError, match="No space left on device") as raised:
        save_head(model, tmp_path / "checkpoint", config)
    assert "earlier checkpoint" not in str(raised.value)
    assert list(tmp_path.iterdir()) == []


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


def test_stand_in_weights_are_named_on_the_page_and_the_verdict_is_remembered(torch_home, monkeypatch):
    verdict = check_weights_file("IMAGENET1K_V1")
    assert not verdict.published and verdict.expected_prefix == "c867db91"
    assert "these are not the published IMAGENET1K_V1 weights" in verdict.describe()
    file = verdict.file
    assert hashlib.sha256(file.read_bytes()).hexdigest() == verdict.sha256

    def no_hashing(*args):
        raise AssertionError("hashed again although size and modification time are unchanged")

    monkeypatch.setattr(classifier.hashlib, "sha256", no_hashing)
    assert check_weights_file("IMAGENET1K_V1") == verdict


def test_a_file_matching_its_name_is_the_published_one(tmp_path, monkeypatch):
    content = b"stand-in weights"
    prefix = hashlib.sha256(content).hexdigest()[:8]
    file = tmp_path / f"vit_b_16-{prefix}.pth"
    file.write_bytes(content)
    monkeypatch.setattr(classifier, "cache_file", lambda weights: file)
    assert check_weights_file("IMAGENET1K_V1").published
    file.write_bytes(b"something else")  # a different size: hashed again
    assert not check_weights_file("IMAGENET1K_V1").published


def test_the_outlier_score_reloads_as_trained_and_a_broken_one_names_its_tensor(broken_copy, torch_home):
    config = read_json(broken_copy / CONFIG_FILE)
    score = load_outlier_score(broken_copy, config, 768)
    assert score.threshold == pytest.approx(config["outliers"]["threshold"])
    tensors = load_file(broken_copy / WEIGHTS_FILE)
    wrong_size = tensors | {"outliers.class_means": torch.zeros(3, 384)}
    not_finite = tensors | {"outliers.background_mean": torch.full((768,), float("nan"))}
    for broken, problem in ((wrong_size, "outliers.class_means has shape"), (not_finite, "holds NaN")):
        save_file(broken, broken_copy / WEIGHTS_FILE)
        with pytest.raises(CheckpointError, match=problem) as raised:
            load_outlier_score(broken_copy, config, 768)
        assert "Train the head again" in str(raised.value) and str(broken_copy / WEIGHTS_FILE) in str(raised.value)
    assert (
        load_outlier_score(broken_copy, {key: value for key, value in config.items() if key != "outliers"}, 768) is None
    )
