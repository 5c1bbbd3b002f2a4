"""The classifier FoodVision Mini serves: torchvision's pretrained vit_b_16, frozen, with a small trained head.

The backbone is torchvision's published weights, so a head checkpoint is a folder holding only the head and the
outlier score's Gaussians (model.safetensors, about 5 MB, nearly all of it the Gaussians) and config.json (class
names, backbone and weights name, image size, metrics, training data), which together rebuild the classifier with no
outside knowledge; the course pickled the whole model instead. The same folder loads from disk or from a Hugging
Face Hub model repo (`user/foodvision-mini`). No pickle is involved: safetensors holds only tensors, JSON only data."""

import hashlib
import json
import pickle
import re
from dataclasses import dataclass
from pathlib import Path
from urllib.error import URLError

import torch
import torchvision
from huggingface_hub import HfApi, hf_hub_download
from huggingface_hub.errors import EntryNotFoundError, RepositoryNotFoundError
from huggingface_hub.utils import httpx  # the HTTP client huggingface_hub uses (httpx2 in 2.x), under a stable name
from safetensors import SafetensorError
from safetensors.torch import load_file, save
from torch import nn

from hub import BACKBONE, CONFIG_FILE, REQUIRED_KEYS, RUN_STATE_FILE, WEIGHTS_FILE, head_config_problem, is_repo_id
from outliers import PREFIX as OUTLIERS
from outliers import OutlierScore, OutlierScoreError
from outputs import replace_folder, why_not_writable, write_atomically

PRETRAINED = torchvision.models.ViT_B_16_Weights  # every published vit_b_16 weights file, with its metadata
WEIGHTS_NAMES = tuple(weights.name for weights in PRETRAINED)  # iteration skips the DEFAULT alias
DEFAULT_WEIGHTS = "IMAGENET1K_V1"  # the course's
DEFAULT_CLASS_NAMES = ("pizza", "steak", "sushi")
DEFAULT_CHECKPOINT_DIR = Path(__file__).resolve().parent / "checkpoints" / "foodvision-mini"
# The optional records that loading, the page and the model card read, with the keys they read. A head from before a
# record has none; an int8 record without "setup" says why nothing was measured.
RECORD_KEYS = {
    "int8": (),
    "outliers": ("method", "shrinkage", "threshold", "accepts", "size_bytes"),
    "fewshot": ("accuracy", "seeds"),
}
INT8_MEASUREMENT_KEYS = ("passed", "top1", "max_probability_difference")  # its "agreement", beside "setup"
RETRAIN = "Train the head again with `python train_head.py`."


class WeightsUnavailableError(RuntimeError):
    """The pretrained weights file is neither in the torch hub cache nor downloadable."""


class CheckpointError(Exception):
    """A missing, corrupt or mismatched checkpoint; the message names the file and the fix."""


def describe_weights(name: str) -> str:
    """One line on a published weights file from torchvision's own metadata: resolution, accuracy, provenance.
    IMAGENET1K_V1 is not the paper's checkpoint: torchvision trained it from scratch on ImageNet-1k."""
    weights = PRETRAINED[name]
    accuracy = weights.meta["_metrics"]["ImageNet-1K"]["acc@1"]
    provenance = re.sub(r"`([^<`]+) <([^>]+)>`_", r"\1 (\2)", " ".join(weights.meta["_docs"].split()))  # RST links
    return f"{name}: {weights.transforms().crop_size[0]} px, ImageNet-1k acc@1 {accuracy}. {provenance}"


def cache_file(weights: str) -> Path:
    """Where torchvision looks for a weights file before downloading it: $TORCH_HOME/hub/checkpoints/<file>."""
    return Path(torch.hub.get_dir()) / "checkpoints" / Path(PRETRAINED[weights].url).name


@dataclass(frozen=True)
class WeightsCheck:
    """Whether the cached weights file is the published one: torchvision names it after the first hex digits of
    its SHA-256 (`vit_b_16-c867db91.pth`) but checks them only when it downloads the file, not when it loads one
    already in the cache."""

    weights: str
    file: Path
    expected_prefix: str  # from the file name
    sha256: str  # of the file's bytes

    @property
    def published(self) -> bool:
        return self.sha256.startswith(self.expected_prefix)

    def describe(self) -> str:
        if self.published:
            return f"the published {self.weights} weights (SHA-256 {self.sha256[:12]}... checked)"
        return (
            f"these are not the published {self.weights} weights: {self.file} has SHA-256 {self.sha256[:12]}..., "
            f"the published file's starts with {self.expected_prefix}"
        )


def check_weights_file(weights: str) -> WeightsCheck:
    """Hash the cached weights file once; the verdict is remembered beside it (<file>.sha256.json) under the
    file's size and modification time, so a later start reads it instead of hashing hundreds of MB again."""
    file = cache_file(weights)
    expected_prefix = torch.hub.HASH_REGEX.search(file.name).group(1)
    stat = file.stat()
    identity = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
    record = file.with_name(file.name + ".sha256.json")
    try:
        remembered = json.loads(record.read_text())
        if remembered["file"] == identity:
            return WeightsCheck(weights, file, expected_prefix, remembered["sha256"])
    except (OSError, ValueError, KeyError, TypeError):
        pass  # no record yet, or an unreadable one: hash again
    digest = hashlib.sha256()
    with open(file, "rb") as stream:
        while chunk := stream.read(1 << 20):
            digest.update(chunk)
    try:
        write_atomically(record, json.dumps({"file": identity, "sha256": digest.hexdigest()}).encode())
    except OSError:
        pass  # a read-only cache: the file is hashed at every start instead
    return WeightsCheck(weights, file, expected_prefix, digest.hexdigest())


def build_feature_extractor(weights: str = DEFAULT_WEIGHTS, class_names=DEFAULT_CLASS_NAMES):
    """torchvision's pretrained vit_b_16 with every backbone parameter frozen and a new, trainable head
    Linear(D, len(class_names)) in place of the ImageNet one. Returns (model, the weights' own transforms).

    weights: a name of torchvision.models.ViT_B_16_Weights (describe_weights says what each is)."""
    if weights not in WEIGHTS_NAMES:
        raise ValueError(f"unknown vit_b_16 weights {weights!r}; choose one of {', '.join(WEIGHTS_NAMES)}")
    class_names = tuple(class_names)
    if not class_names or len(set(class_names)) != len(class_names):
        raise ValueError(f"class_names must be non-empty and unique, got {class_names}")
    pretrained = PRETRAINED[weights]
    try:
        model = torchvision.models.vit_b_16(weights=pretrained)
    except (URLError, OSError) as error:  # no network, DNS failure, refused connection
        raise WeightsUnavailableError(
            f"the pretrained weights {pretrained.name} could not be downloaded from {pretrained.url} "
            f"({error}). Download that file on a machine with internet and put it at {cache_file(weights)}: "
            f"torchvision loads it from there without the network (set TORCH_HOME to use another cache)."
        ) from error
    except (RuntimeError, EOFError, pickle.UnpicklingError) as error:  # a truncated or foreign file in the cache
        raise WeightsUnavailableError(
            f"the cached weights file {cache_file(weights)} could not be loaded ({error}); it is corrupt or "
            f"incomplete: delete it so it is downloaded again from {pretrained.url}."
        ) from error
    for parameter in model.parameters():
        parameter.requires_grad = False
    model.heads = nn.Linear(model.hidden_dim, len(class_names))
    return model, pretrained.transforms()


def trainable_parameters(model: nn.Module) -> int:
    return sum(parameter.numel() for parameter in model.parameters() if parameter.requires_grad)


def head_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The trainable part of the extractor under its full-model names (heads.weight, heads.bias)."""
    return {f"heads.{name}": tensor.detach().contiguous() for name, tensor in model.heads.state_dict().items()}


def check_replaceable(directory: Path) -> None:
    """CheckpointError unless save_head may write `directory`: missing, empty, or an earlier head checkpoint (its
    config names the backbone, so a train_vit.py run or another model's folder is never taken for one), in a folder
    this process can write in. Training checks it first too, so that a mistyped --output fails before minutes of
    work, not after."""
    if problem := why_not_writable(directory, replaced=True):  # outputs.replace_folder works beside it
        raise CheckpointError(f"{problem}. Choose another output folder.")
    if directory.is_dir() and any(directory.iterdir()) and not is_earlier_head(directory):
        raise CheckpointError(
            f"{directory} already exists and is not a checkpoint folder of train_head.py's "
            f"({head_config_problem(directory)}); refusing to replace it. Choose another output folder."
        )


def is_earlier_head(directory: Path) -> bool:
    """Whether `directory` holds a head of train_head.py's that a new one may replace: its config names the backbone,
    or the config is damaged beside the head's weights (read_config then asks for a new head: training one must
    not be refused) in a folder that is no train_vit.py run."""
    try:
        config = json.loads((directory / CONFIG_FILE).read_text(encoding="utf-8"))
    except ValueError:  # not JSON, or not UTF-8
        return (directory / WEIGHTS_FILE).is_file() and not (directory / RUN_STATE_FILE).exists()
    except OSError:
        return False
    return isinstance(config, dict) and config.get("backbone") == BACKBONE


def save_head(
    model: nn.Module,
    directory: str | Path,
    config: dict,
    extra_files: dict[str, bytes] | None = None,
    outlier_score: OutlierScore | None = None,
):
    """Write the head (with `outlier_score`'s tensors beside it in the same safetensors file), `config` and
    `extra_files` (reports) to `directory` atomically (outputs.replace_folder), so no reader ever sees a
    half-written checkpoint. Only an earlier checkpoint folder (or an empty one) is replaced, so a mistyped
    --output cannot delete unrelated files. Returns the folder."""
    directory = Path(directory)
    check_replaceable(directory)
    files = {
        WEIGHTS_FILE: save(
            head_state_dict(model) | (outlier_score.to_tensors() if outlier_score else {}), metadata={"format": "pt"}
        ),
        CONFIG_FILE: (json.dumps(config, indent=2) + "\n").encode(),
        **(extra_files or {}),
    }
    kept = "; the earlier checkpoint there is kept" if directory.is_dir() else ""
    try:
        replace_folder(directory, files, error_type=CheckpointError)
    except OSError as error:
        raise CheckpointError(
            f"Could not write the checkpoint to {directory} ({error}){kept}. Choose a writable folder with free space."
        ) from None
    return directory


def checkpoint_files(path_or_repo_id: str | Path, revision: str | None = None) -> Path:
    """The local folder holding the checkpoint: `path_or_repo_id` itself when it exists on disk, else a Hub
    repo's snapshot in the Hugging Face cache (downloaded if needed; with HF_HUB_OFFLINE=1 only the cache)."""
    path = Path(path_or_repo_id)
    if path.exists():
        if not path.is_dir():
            raise CheckpointError(f"{path} is a file; a checkpoint is a folder with {WEIGHTS_FILE} and {CONFIG_FILE}.")
        return path
    how_to_fix = (
        "Train one with `python train_head.py` (it writes checkpoints/foodvision-mini), or pass a "
        "Hugging Face Hub repo id such as user/foodvision-mini."
    )
    if not is_repo_id(str(path_or_repo_id)):
        raise CheckpointError(f"There is no checkpoint folder {path}. {how_to_fix}")
    try:
        weights = Path(hf_hub_download(str(path_or_repo_id), WEIGHTS_FILE, revision=revision))
        # The config of the weights' commit (the cache keeps each in snapshots/<commit hash>/), even where the repo
        # is pushed to between the two downloads
        return Path(hf_hub_download(str(path_or_repo_id), CONFIG_FILE, revision=weights.parent.name)).parent
    except httpx.TransportError as error:  # huggingface_hub gives up after its own retries
        raise CheckpointError(
            f"Downloading {WEIGHTS_FILE} and {CONFIG_FILE} of the Hugging Face Hub repo {path_or_repo_id} failed: the "
            f"connection dropped or stalled ({type(error).__name__}: {one_line(error)}). Retrying may help; check "
            "your internet connection, or pass a checkpoint folder on disk."
        ) from None
    except RepositoryNotFoundError:  # the Hub's answer for a private repo to whoever may not read it, too
        raise CheckpointError(
            f"There is no checkpoint folder {path}, and the Hugging Face Hub shows no repo {path_or_repo_id} to this "
            "process: check the name, and if the repo is private give the app a token that can read it (HF_TOKEN; on "
            f"a Space, a secret in its settings). {how_to_fix}"
        ) from None
    except (OSError, EntryNotFoundError, ValueError) as error:
        reason = one_line(error)
        raise CheckpointError(
            f"There is no checkpoint folder {path}, and the Hugging Face Hub repo {path_or_repo_id} could "
            f"not provide {WEIGHTS_FILE} and {CONFIG_FILE} ({type(error).__name__}: {reason}). {how_to_fix}"
        ) from None


def one_line(error: Exception) -> str:
    """An error's message on one line: huggingface_hub's span several."""
    return " ".join(str(error).split())


def read_config(path: Path) -> dict:
    """config.json, checked for the keys that rebuilding the model needs."""
    try:
        config = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise CheckpointError(f"{path} is not valid JSON ({error}); the checkpoint is corrupt. {RETRAIN}") from None
    if not isinstance(config, dict):
        kind = type(config).__name__
        raise CheckpointError(f"{path} holds {kind}, not a JSON object; the checkpoint is corrupt. {RETRAIN}")
    missing = [key for key in REQUIRED_KEYS if key not in config]
    if missing:
        raise CheckpointError(f"{path} lacks {', '.join(missing)}; it was not written by train_head.py. {RETRAIN}")
    names = config["class_names"]
    distinct_strings = isinstance(names, list) and all(isinstance(name, str) for name in names)
    if not (distinct_strings and names and len(set(names)) == len(names)):
        raise CheckpointError(f"{path}: class_names must be a non-empty list of distinct strings, got {names!r}.")
    if config["backbone"] != BACKBONE:
        raise CheckpointError(f"{path}: backbone {config['backbone']!r} is not supported; only {BACKBONE} heads load.")
    for name, keys in RECORD_KEYS.items():
        record = config.get(name)  # an empty one is none, as the readers take it
        if record and not (isinstance(record, dict) and all(key in record for key in keys)):
            raise CheckpointError(f"{path}: its {name} record is not the one train_head.py writes. {RETRAIN}")
    int8 = config.get("int8") or {}
    measured = int8.get("agreement")
    if "setup" in int8 and not (isinstance(measured, dict) and all(key in measured for key in INT8_MEASUREMENT_KEYS)):
        raise CheckpointError(f"{path}: its int8 record has a setup but no agreement measured for it. {RETRAIN}")
    if config.get("fewshot") and not isinstance(config["fewshot"]["accuracy"], dict):
        raise CheckpointError(f"{path}: its fewshot record's accuracy is not by shots. {RETRAIN}")
    return config


def read_weights(path: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(path)
    except (SafetensorError, OSError, ValueError) as error:
        reason = f"{path} is not a readable safetensors file ({error})"
        raise CheckpointError(f"{reason}; the checkpoint is corrupt. {RETRAIN}") from None


def load_classifier(path_or_repo_id: str | Path = DEFAULT_CHECKPOINT_DIR, revision: str | None = None):
    """Rebuild the trained classifier from a checkpoint folder or a Hub repo id.

    Returns (model in eval mode, the weights' transforms, config dict). Raises CheckpointError for a missing,
    corrupt or inconsistent checkpoint and WeightsUnavailableError when torchvision's weights file can be
    neither found in the cache nor downloaded."""
    directory = checkpoint_files(path_or_repo_id, revision)
    for path in (directory / CONFIG_FILE, directory / WEIGHTS_FILE):
        if not path.is_file():
            needs = f"a checkpoint folder needs {WEIGHTS_FILE} and {CONFIG_FILE}"
            raise CheckpointError(f"{path} is missing: {needs}. {RETRAIN}")
    config = read_config(directory / CONFIG_FILE)
    state_dict = read_weights(directory / WEIGHTS_FILE)
    head = {name: tensor for name, tensor in state_dict.items() if not name.startswith(OUTLIERS)}
    if not_finite := [name for name, tensor in head.items() if not torch.isfinite(tensor).all()]:
        raise CheckpointError(
            f"{directory / WEIGHTS_FILE}: {', '.join(not_finite)} holds NaN or infinite values (its training "
            "diverged, or the file is corrupt). Train the head again with `python train_head.py`, with a lower --lr "
            "if its training diverged."
        )
    try:
        model, transforms = build_feature_extractor(config["weights"], config["class_names"])
    except ValueError as error:
        raise CheckpointError(f"{directory / CONFIG_FILE}: {error}.") from None
    if config["image_size"] != transforms.crop_size[0]:
        raise CheckpointError(
            f"{directory / CONFIG_FILE} says image_size {config['image_size']}, but the weights "
            f"{config['weights']} take {transforms.crop_size[0]} px images; the config is inconsistent."
        )
    expected = {name: tuple(tensor.shape) for name, tensor in head_state_dict(model).items()}
    found = {name: tuple(tensor.shape) for name, tensor in head.items()}
    if found != expected:
        raise CheckpointError(
            f"{directory / WEIGHTS_FILE} holds {found}, but {len(config['class_names'])} classes "
            f"need {expected}; the weights do not match config.json."
        )
    model.heads.load_state_dict({name.removeprefix("heads."): state_dict[name] for name in expected})
    return model.eval(), transforms, config


def load_outlier_score(directory: Path, config: dict, feature_dim: int) -> OutlierScore | None:
    """The "is this even food?" score stored beside the head (outliers.py) in the checkpoint folder that
    load_classifier read (checkpoint_files), for a backbone with `feature_dim` features, or None for a checkpoint
    written before train_head.py fitted one. CheckpointError for stored tensors that do not fit this model or are
    corrupt."""
    if not config.get("outliers"):
        return None
    path = Path(directory) / WEIGHTS_FILE
    try:
        return OutlierScore.from_tensors(read_weights(path), feature_dim, len(config["class_names"]))
    except OutlierScoreError as error:
        raise CheckpointError(f"{path}: {error} {RETRAIN}") from None


def model_card(config: dict) -> str:
    """README.md for the Hub page: what the head is, its test metrics and how to load it."""
    metrics = config.get("metrics", {})
    data = config.get("data", {})
    return (
        "---\nlibrary_name: pytorch\npipeline_tag: image-classification\n"
        "tags: [vision-transformer, foodvision-mini]\n---\n\n"
        f"# FoodVision Mini head: {', '.join(config['class_names'])}\n\n"
        f"A {len(config['class_names'])}-class head for torchvision's frozen `{config['backbone']}` "
        f"(weights `{config['weights']}`, {config['image_size']} px), trained by FoodVision Mini's train_head.py "
        f"on {data.get('train_images', '?')} images from {data.get('source', '?')}. "
        f"Test accuracy {metrics.get('test_acc', float('nan')):.4f} on {data.get('test_images', '?')} images.\n\n"
        f"{fewshot_line(config)}{outliers_line(config)}"
        "```python\nfrom classifier import load_classifier  # FoodVision Mini's classifier.py\n"
        'model, transforms, config = load_classifier("<this repo id>")\n```\n'
    )


def fewshot_line(config: dict) -> str:
    """The few-shot linear evaluation (the paper's Section 4.1 metric) of the frozen features, as a Markdown line."""
    if not config.get("fewshot"):
        return ""
    record = config["fewshot"]
    accuracies = ", ".join(f"{shots} {value:.2f}" for shots, value in record["accuracy"].items() if value is not None)
    return (
        f"Few-shot linear evaluation (test accuracy by training photos per class, mean of {record['seeds']} seeds): "
        f"{accuracies}.\n\n"
    )


def outliers_line(config: dict) -> str:
    """The "is this even food?" score stored beside the head, as a Markdown line."""
    if not config.get("outliers"):
        return ""  # a head from before the score: the app's status line says that its check is off
    record = config["outliers"]
    return (
        f"Outlier score: {record['method']} (intensity {record['shrinkage']:.3g}), threshold "
        f"{record['threshold']:.1f} (accepts {record['accepts']:.0%} of the test photos); "
        f"{record['size_bytes'] / 1e6:.1f} MB of tensors in model.safetensors.\n\n"
    )


def push_to_hub(directory: str | Path, repo_id: str, private: bool | None = None) -> str:
    """Publish a checkpoint folder as a Hub model repo (created if needed); returns the commit URL.
    Needs a token with write access (`hf auth login` or HF_TOKEN)."""
    api = HfApi()
    api.create_repo(repo_id, private=private, exist_ok=True)
    commit = api.upload_folder(repo_id=repo_id, folder_path=directory, commit_message="Upload FoodVision Mini head")
    return commit.commit_url
