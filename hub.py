"""What a Hugging Face Hub repo id looks like, which files make a head checkpoint and a Space, and what a Space tells
the app: the facts classifier.py (which reads and pushes checkpoints), train_head.py, train_vit.py, options.py,
app.py, images.py and deploy.py (which plans a Space without importing torch) share."""

import argparse
import json
import os
from pathlib import Path

from huggingface_hub.utils import HFValidationError, validate_repo_id

WEIGHTS_FILE = "model.safetensors"  # the head's tensors
CONFIG_FILE = "config.json"  # the config and class names that rebuild the model, and its training records
HEAD_FILES = (WEIGHTS_FILE, CONFIG_FILE)
BACKBONE = "vit_b_16"  # the only backbone the classifier builds, named in every head's config
# config.json keys that loading needs; everything else (metrics, data) is a record for people.
REQUIRED_KEYS = ("backbone", "weights", "image_size", "class_names")
CHECKPOINT_VARIABLE = "FOODVISION_CHECKPOINT"  # the head the app serves by default: a Space variable, or the shell's
RUN_STATE_FILE = "train_state.safetensors"  # train_vit.py's --resume state: a folder holding it is a run, not a head
EXAMPLES_FOLDER = "examples"  # the real photos under the upload box (SOURCE.md credits them): in a clone and a Space


def head_config_problem(directory: Path) -> str | None:
    """Why `directory`'s config.json is no head's of train_head.py (a train_vit.py run, another model's folder, a
    damaged file), or None; read without torch. The app's classifier.read_config checks the rest when it loads."""
    try:
        config = json.loads((directory / CONFIG_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        return f"its {CONFIG_FILE} cannot be read ({error})"
    if not isinstance(config, dict) or config.get("backbone") != BACKBONE:
        return f"its {CONFIG_FILE} does not name the {BACKBONE} backbone, as a head's of train_head.py does"
    if missing := [key for key in REQUIRED_KEYS if key not in config]:
        return f"its {CONFIG_FILE} lacks {', '.join(missing)}"
    return None


def on_zero_gpu() -> bool:
    """Whether this process is a ZeroGPU Space, whose GPU is lent only inside @spaces.GPU functions (Spaces set
    SPACES_ZERO_GPU there)."""
    return bool(os.environ.get("SPACES_ZERO_GPU"))


def repo_id_problem(value: str) -> str | None:
    """Why `value` is not a repo id USER/NAME (or ORG/NAME) that the Hub accepts, or None: the Hub's own rules
    (huggingface_hub's validate_repo_id), which also take a bare NAME, which this project never means: a checkpoint
    or a Space is always someone's."""
    if value.count("/") != 1:
        return f"{value!r} is not of the form USER/NAME (or ORG/NAME)."
    try:
        validate_repo_id(value)
    except HFValidationError as error:
        return str(error)
    return None


def is_repo_id(value: str) -> bool:
    return repo_id_problem(value) is None


def repo_id_argument(value: str) -> str:
    """An argparse type: `value` when it is a Hub repo id, else the Hub's reason, before any work is done."""
    if problem := repo_id_problem(value):
        raise argparse.ArgumentTypeError(f"not a Hub repo id: {problem}")
    return value
