"""Head checkpoints: a folder with the trained head's weights (model.safetensors, a few KB) and
config.json (class names, backbone and weights name, image size, metrics, training data), which
together rebuild the classifier with no outside knowledge. The frozen backbone is not saved: it
is torchvision's published vit_b_16, so only the head is stored, not the course's pickle of the
whole model.

The same folder loads from disk or from a Hugging Face Hub model repo (`user/foodvision-mini`).
No pickle is involved: safetensors holds only tensors, JSON only data.
"""

import contextlib
import json
import re
import shutil
import tempfile
from pathlib import Path

import torch
from huggingface_hub import HfApi, hf_hub_download
from huggingface_hub.errors import EntryNotFoundError
from safetensors import SafetensorError
from safetensors.torch import load_file, save

from model import build_feature_extractor

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
DEFAULT_CHECKPOINT_DIR = Path(__file__).resolve().parent / "checkpoints" / "foodvision-mini"
# config.json keys that loading needs; everything else (metrics, data) is a record for people.
REQUIRED_KEYS = ("backbone", "weights", "image_size", "class_names")
BACKBONE = "vit_b_16"  # the only backbone model.build_feature_extractor builds
REPO_ID_PATTERN = re.compile(r"[\w.-]+/[\w.-]+")
RETRAIN = "Train the head again with `python train_head.py`."


class CheckpointError(Exception):
    """A missing, corrupt or mismatched checkpoint; the message names the file and the fix."""


def head_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The trainable part of the extractor under its full-model names (heads.weight, heads.bias)."""
    return {f"heads.{name}": tensor.detach().contiguous() for name, tensor in model.heads.state_dict().items()}


def save_head(
    model: torch.nn.Module,
    directory: str | Path,
    config: dict,
    extra_files: dict[str, bytes] | None = None,
) -> Path:
    """Write the head, `config` and `extra_files` (reports) to `directory` atomically: everything
    goes into a temp folder beside it that is renamed into place, so no reader ever sees a
    half-written checkpoint. Only an earlier checkpoint folder (or an empty one) is replaced, so a
    mistyped --output cannot delete unrelated files."""
    directory = Path(directory)
    if directory.exists() and not (directory / CONFIG_FILE).is_file() and any(directory.iterdir()):
        raise CheckpointError(
            f"{directory} already exists and is not a checkpoint folder (it has no {CONFIG_FILE}); "
            "refusing to replace it. Choose another output folder."
        )
    try:
        replace_folder(directory, {
            WEIGHTS_FILE: save(head_state_dict(model), metadata={"format": "pt"}),
            CONFIG_FILE: (json.dumps(config, indent=2) + "\n").encode(),
            **(extra_files or {}),
        })
    except OSError as error:
        raise CheckpointError(
            f"Could not write the checkpoint to {directory} ({error}); an earlier checkpoint there is kept. "
            "Choose a writable folder with free space."
        ) from None
    return directory


def replace_folder(directory: Path, files: dict[str, bytes]) -> None:
    """Make `directory` hold exactly `files`: they are written to a temp folder beside it, which
    then takes its place. An existing folder is first renamed aside, so between the two renames no
    folder is at `directory`; if the second rename fails, the old folder is renamed back, and a
    save killed in between is repaired by the next save (`recover_replaced_folder`)."""
    directory.parent.mkdir(parents=True, exist_ok=True)
    recover_replaced_folder(directory)
    temp = Path(tempfile.mkdtemp(dir=directory.parent, prefix=f".{directory.name}-new-"))
    try:
        for name, content in files.items():
            (temp / name).write_bytes(content)
        temp.chmod(0o755)  # mkdtemp makes it owner-only
        if not directory.exists():
            temp.rename(directory)
            return
        # the old folder goes one level down in a fresh unique folder: a rename onto an existing
        # name would fail (or, for an empty folder, replace it)
        aside = Path(tempfile.mkdtemp(dir=directory.parent, prefix=f".{directory.name}-old-"))
        previous = aside / directory.name
        directory.rename(previous)
        try:
            temp.rename(directory)
        except BaseException as error:
            try:
                previous.rename(directory)
            except OSError:
                raise CheckpointError(
                    f"Could not move the new checkpoint into {directory} ({error}), nor the previous one back: "
                    f"it is in {previous}. Move it to {directory} by hand (the next save also does)."
                ) from None
            with contextlib.suppress(OSError):
                aside.rmdir()  # empty now; rmdir never deletes a checkpoint
            raise
        shutil.rmtree(aside, ignore_errors=True)
    finally:
        shutil.rmtree(temp, ignore_errors=True)


def recover_replaced_folder(directory: Path) -> None:
    """Repair what a save killed between its two renames leaves: the previous folder inside a
    `.<name>-old-*` folder and nothing at `directory`. It is renamed back; once `directory` exists,
    such folders hold superseded checkpoints and are deleted."""
    prefix = f".{directory.name}-old-"
    for aside in sorted(path for path in directory.parent.iterdir() if path.name.startswith(prefix)):
        previous = aside / directory.name
        if previous.is_dir() and not directory.exists():
            previous.rename(directory)
        shutil.rmtree(aside, ignore_errors=True)


def checkpoint_files(path_or_repo_id: str | Path, revision: str | None = None) -> Path:
    """The local folder holding the checkpoint: `path_or_repo_id` itself when it exists on disk,
    else a Hub repo's snapshot in the Hugging Face cache (downloaded if needed; with
    HF_HUB_OFFLINE=1 only the cache is used)."""
    path = Path(path_or_repo_id)
    if path.exists():
        if not path.is_dir():
            raise CheckpointError(f"{path} is a file; a checkpoint is a folder with {WEIGHTS_FILE} and {CONFIG_FILE}.")
        return path
    how_to_fix = (
        "Train one with `python train_head.py` (it writes checkpoints/foodvision-mini), or pass a "
        "Hugging Face Hub repo id such as user/foodvision-mini."
    )
    if not REPO_ID_PATTERN.fullmatch(str(path_or_repo_id)):
        raise CheckpointError(f"There is no checkpoint folder {path}. {how_to_fix}")
    try:
        hf_hub_download(str(path_or_repo_id), WEIGHTS_FILE, revision=revision)
        return Path(hf_hub_download(str(path_or_repo_id), CONFIG_FILE, revision=revision)).parent
    except (OSError, EntryNotFoundError, ValueError) as error:
        reason = " ".join(str(error).split())  # huggingface_hub's messages span several lines
        raise CheckpointError(
            f"There is no checkpoint folder {path}, and the Hugging Face Hub repo {path_or_repo_id} could "
            f"not provide {WEIGHTS_FILE} and {CONFIG_FILE} ({type(error).__name__}: {reason}). {how_to_fix}"
        ) from None


def read_config(path: Path) -> dict:
    """config.json, checked for the keys that rebuilding the model needs."""
    try:
        config = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise CheckpointError(f"{path} is not valid JSON ({error}); the checkpoint is corrupt. {RETRAIN}") from None
    if not isinstance(config, dict):
        raise CheckpointError(f"{path} holds {type(config).__name__}, not a JSON object; the checkpoint is corrupt. {RETRAIN}")
    missing = [key for key in REQUIRED_KEYS if key not in config]
    if missing:
        raise CheckpointError(f"{path} lacks {', '.join(missing)}; it was not written by train_head.py. {RETRAIN}")
    names = config["class_names"]
    if not (isinstance(names, list) and names and all(isinstance(n, str) for n in names) and len(set(names)) == len(names)):
        raise CheckpointError(f"{path}: class_names must be a non-empty list of distinct strings, got {names!r}.")
    if config["backbone"] != BACKBONE:
        raise CheckpointError(f"{path}: backbone {config['backbone']!r} is not supported; only {BACKBONE} heads load.")
    return config


def read_weights(path: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(path)
    except (SafetensorError, OSError, ValueError) as error:
        raise CheckpointError(f"{path} is not a readable safetensors file ({error}); the checkpoint is corrupt. {RETRAIN}") from None


def load_classifier(path_or_repo_id: str | Path = DEFAULT_CHECKPOINT_DIR, revision: str | None = None):
    """Rebuild the trained classifier from a checkpoint folder or a Hub repo id.

    Returns (model in eval mode, the weights' transforms, config dict). The backbone comes from
    model.build_feature_extractor, which raises WeightsUnavailableError when torchvision's
    weights file can be neither found in the cache nor downloaded."""
    directory = checkpoint_files(path_or_repo_id, revision)
    for path in (directory / CONFIG_FILE, directory / WEIGHTS_FILE):
        if not path.is_file():
            raise CheckpointError(f"{path} is missing: a checkpoint folder needs {WEIGHTS_FILE} and {CONFIG_FILE}. {RETRAIN}")
    config = read_config(directory / CONFIG_FILE)
    state_dict = read_weights(directory / WEIGHTS_FILE)
    try:
        model, transforms = build_feature_extractor(config["weights"], config["class_names"])
    except ValueError as error:
        raise CheckpointError(f"{directory / CONFIG_FILE}: {error}.") from None
    if config["image_size"] != transforms.crop_size[0]:
        raise CheckpointError(
            f"{directory / CONFIG_FILE} says image_size {config['image_size']}, but the weights "
            f"{config['weights']} take {transforms.crop_size[0]} px images; the config is inconsistent."
        )
    expected = {f"heads.{name}": tuple(tensor.shape) for name, tensor in model.heads.state_dict().items()}
    found = {name: tuple(tensor.shape) for name, tensor in state_dict.items()}
    if found != expected:
        raise CheckpointError(
            f"{directory / WEIGHTS_FILE} holds {found}, but {len(config['class_names'])} classes "
            f"need {expected}; the weights do not match config.json."
        )
    model.heads.load_state_dict({name.removeprefix("heads."): tensor for name, tensor in state_dict.items()})
    return model.eval(), transforms, config


def model_card(config: dict) -> str:
    """README.md for the Hub page: what the head is, its test metrics and how to load it."""
    metrics = config.get("metrics", {})
    data = config.get("data", {})
    return (
        "---\nlibrary_name: pytorch\npipeline_tag: image-classification\ntags: [vision-transformer, foodvision-mini]\n---\n\n"
        f"# FoodVision Mini head: {', '.join(config['class_names'])}\n\n"
        f"A {len(config['class_names'])}-class head for torchvision's frozen `{config['backbone']}` "
        f"(weights `{config['weights']}`, {config['image_size']} px), trained by FoodVision Mini's train_head.py "
        f"on {data.get('train_images', '?')} images from {data.get('source', '?')}. "
        f"Test accuracy {metrics.get('test_acc', float('nan')):.4f} on {data.get('test_images', '?')} images.\n\n"
        "```python\nfrom checkpoint import load_classifier  # FoodVision Mini's checkpoint.py\n"
        "model, transforms, config = load_classifier(\"<this repo id>\")\n```\n"
    )


def push_to_hub(directory: str | Path, repo_id: str, private: bool | None = None) -> str:
    """Publish a checkpoint folder as a Hub model repo (created if needed); returns the commit URL.
    Needs a token with write access (`hf auth login` or HF_TOKEN)."""
    api = HfApi()
    api.create_repo(repo_id, private=private, exist_ok=True)
    commit = api.upload_folder(repo_id=repo_id, folder_path=directory, commit_message="Upload FoodVision Mini head")
    return commit.commit_url
