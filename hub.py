"""What a Hugging Face Hub repo id looks like and which files make a head checkpoint: the facts classifier.py
(which reads and pushes checkpoints) and deploy.py (which plans a Space without importing torch) share."""

import re

REPO_ID_PATTERN = re.compile(r"[\w.-]+/[\w.-]+")  # USER/NAME or ORG/NAME
WEIGHTS_FILE = "model.safetensors"  # the head's tensors
CONFIG_FILE = "config.json"  # the config and class names that rebuild the model, and its training records
HEAD_FILES = (WEIGHTS_FILE, CONFIG_FILE)


def is_repo_id(value: str) -> bool:
    return REPO_ID_PATTERN.fullmatch(value) is not None
