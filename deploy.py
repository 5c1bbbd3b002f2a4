"""Deploy FoodVision Mini as a Hugging Face Space: upload the files the app needs in one commit.

    python deploy.py USER/foodvision-mini-app                      # ZeroGPU (free accounts can host 2)
    python deploy.py USER/foodvision-mini-app --checkpoint checkpoints/foodvision-mini
    python deploy.py USER/foodvision-mini-app --checkpoint USER/foodvision-mini --hardware cpu-upgrade
    python deploy.py USER/foodvision-mini-app --dry-run            # print the plan, contact nothing

Steps, in this order so that a refused token, card, head or Space (402: the plan does not cover the hardware)
leaves nothing half-done: check the token (whoami), check that an existing Space of that name is a Gradio one,
have the Hub check README.md's front matter, check that a head named by repo id is there and whole, create the
Space (or request the hardware on an existing one), push a local head checkpoint as a model repo, set the Space
variable FOODVISION_CHECKPOINT that app.py reads, then upload the app in a single commit, which also deletes
files of earlier deploys that no longer belong. A failure after the first write says what was done; running
deploy.py again finishes the deploy.

What it uploads is an include list: app.py and the project modules it imports, followed through their imports
(space_modules), plus SPACE_CONFIG_FILES, examples/ and the pictures README.md shows. A module the app comes to
import is deployed without editing this script; a new script nothing imports stays home.
Only huggingface_hub is needed: no torch import, so planning and tests are fast.
"""

import argparse
import ast
import os
import posixpath
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote, urlsplit

import httpx2  # huggingface_hub's HTTP client: its TransportError is how "the Hub is unreachable" surfaces
import yaml  # huggingface_hub's dependency: metadata_load raises its YAMLError on a broken front matter
from huggingface_hub import CommitOperationAdd, CommitOperationDelete, HfApi, get_token, metadata_load
from huggingface_hub.errors import (
    HfHubHTTPError,
    LocalTokenNotFoundError,
    OfflineModeIsEnabled,
    RepositoryNotFoundError,
)
from huggingface_hub.utils import build_hf_headers, get_session, hf_raise_for_status, parse_ratelimit_headers

from hub import (
    CHECKPOINT_VARIABLE,
    EXAMPLES_FOLDER,
    HEAD_FILES,
    head_config_problem,
    is_repo_id,
    repo_id_argument,
    repo_id_problem,
)

try:
    from huggingface_hub import SpaceHardware
except ImportError:  # an older or newer huggingface_hub without the enum: flavours are passed through unchecked
    SpaceHardware = None

PROJECT_DIR = Path(__file__).resolve().parent
DEFAULT_ENDPOINT = "https://huggingface.co"

ENTRY_POINT = "app.py"  # what the Space runs; every uploaded module is one it reaches by imports
# Folders never uploaded: only top-level modules, examples/ and the card's pictures are collected. The list is used
# to delete them from Spaces made by an earlier `hf upload . .`.
LOCAL_ONLY_FOLDERS = ("tests", "benchmarks", "data", "checkpoints", "runs", ".venv", "test-artifacts", ".ci")
# A Markdown picture's address, ![text](path "title") or ![text](<path with spaces>): the Space's card (README.md)
# shows those of project files from the Space's own, so they are uploaded beside it
CARD_PICTURE = re.compile(r"!\[[^\]]*\]\(\s*(<[^>]*>|[^)\s]+)")
DOCS_FOLDER = "docs"  # where README.md's pictures live: a picture no longer on the card is deleted from the Space
# The Space installs the first; the second's front matter configures it (SDK, Python version, app file).
SPACE_CONFIG_FILES = ("requirements.txt", "README.md")
REQUIRED_FILES = (ENTRY_POINT, *SPACE_CONFIG_FILES)

ZERO_GPU = "zero"  # --hardware alias for the Hub's ZeroGPU flavour
ZERO_GPU_FLAVOR = SpaceHardware.ZERO_A10G.value if SpaceHardware is not None else "zero-a10g"
# ZeroGPU runs only a few exact Python builds (https://huggingface.co/docs/hub/spaces-zerogpu).
ZERO_GPU_PYTHON_VERSIONS = ("3.10.13", "3.12.12")
# The Space's torch and torchvision: requirements.txt pins the versions the development machines install offline,
# which ZeroGPU does not list; the uploaded requirements.txt pins these instead (the newest pair its docs list), the
# same on every hardware so that one set of versions is what users deploy.
SPACE_TORCH_PINS = {"torch": "2.11.0", "torchvision": "0.26.0"}

SPACES_CONFIG_DOCS = "https://huggingface.co/docs/hub/spaces-config-reference"
LOGIN_HINT = (
    "Log in with `hf auth login`, or set HF_TOKEN to a token with write access "
    "(https://huggingface.co/settings/tokens)."
)


class DeployError(Exception):
    """A deploy that cannot go on; the message says what happened and what to do."""


@dataclass
class Plan:
    """Everything a deploy will do, computed before contacting the Hub (and all that --dry-run prints)."""

    space_repo: str
    hardware: str  # a new Space's, and the one asked of an existing Space when hardware_asked
    private: bool
    endpoint: str
    app_dir: Path
    files: list[str]
    head_repo: str | None = None  # the model repo FOODVISION_CHECKPOINT will name
    head_folder: Path | None = None  # a local checkpoint to push to head_repo first
    head_files: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    hardware_asked: bool = True  # --hardware given: an existing Space is moved to it

    @property
    def space_url(self) -> str:
        return f"{self.endpoint}/spaces/{self.space_repo}"


def hardware_flavor(name: str) -> str:
    """--hardware's value as a Hub flavour id: `zero` is ZeroGPU, others must be SpaceHardware values."""
    if name == ZERO_GPU:
        return ZERO_GPU_FLAVOR
    if SpaceHardware is not None and name not in {flavor.value for flavor in SpaceHardware}:
        known = ", ".join([ZERO_GPU, *(flavor.value for flavor in SpaceHardware)])
        raise argparse.ArgumentTypeError(f"unknown hardware {name!r}; choose one of: {known}")
    return name


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("space", type=repo_id_argument, help="the Space to create or update, USER/NAME")
    parser.add_argument(
        "--hardware",
        type=hardware_flavor,
        help=f"`zero` (ZeroGPU, {ZERO_GPU_FLAVOR}: the only hardware free accounts can host a Gradio Space on), "
        "cpu-basic, cpu-upgrade or a GPU flavour such as t4-small (default: zero for a new Space; an existing one "
        "keeps its hardware)",
    )
    parser.add_argument(
        "--checkpoint",
        metavar="FOLDER_OR_REPO",
        help="the head the Space serves: a local checkpoint folder (pushed as a model repo first) or a Hub model "
        f"repo id; the Space variable {CHECKPOINT_VARIABLE} is set to it. Without it, an existing Space keeps "
        "its variable and a new one trains a head at start-up",
    )
    parser.add_argument(
        "--head-repo", type=repo_id_argument, help="model repo for a local --checkpoint (default: SPACE-head)"
    )
    parser.add_argument("--private", action="store_true", help="create the Space (and the head repo) private")
    parser.add_argument("--token", help="Hub token with write access (default: HF_TOKEN, else the `hf auth login` one)")
    parser.add_argument("--dry-run", action="store_true", help="print the files and settings, contact nothing")
    parser.add_argument(
        "--app-dir", type=Path, default=PROJECT_DIR, help="the project folder to deploy (default: this script's)"
    )
    parser.add_argument(
        "--endpoint",
        default=os.environ.get("HF_ENDPOINT", DEFAULT_ENDPOINT).rstrip("/"),
        help=f"Hub address (default: HF_ENDPOINT, else {DEFAULT_ENDPOINT})",
    )
    return parser.parse_args(argv)


def space_files(app_dir: Path) -> list[str]:
    """The paths (relative, POSIX) the Space needs, sorted; DeployError when a required one is missing."""
    missing = [name for name in REQUIRED_FILES if not (app_dir / name).is_file()]
    if missing:
        raise DeployError(
            f"{app_dir} is not a FoodVision Mini folder: {', '.join(missing)} missing. "
            "Run deploy.py from the project, or point --app-dir at it."
        )
    examples = [
        f"{EXAMPLES_FOLDER}/{path.name}"
        for path in (app_dir / EXAMPLES_FOLDER).glob("*")
        if path.is_file() and not path.name.startswith(".")
    ]
    config = [name for name in SPACE_CONFIG_FILES if (app_dir / name).is_file()]
    return sorted({*space_modules(app_dir), *examples, *config, *card_pictures(app_dir)})


def card_pictures(app_dir: Path) -> list[str]:
    """The pictures README.md shows that are files of the project (docs/app.png), outside LOCAL_ONLY_FOLDERS: the
    Space's card shows them only if they are uploaded too."""
    card = (app_dir / "README.md").read_text(encoding="utf-8")
    project = app_dir.resolve()
    pictures = set()
    for address in CARD_PICTURE.findall(card):
        parts = urlsplit(address.removeprefix("<").removesuffix(">"))
        if parts.scheme or parts.netloc or not parts.path:
            continue  # on the web
        path = posixpath.normpath(unquote(parts.path))
        file = (app_dir / path).resolve()  # an absolute or ../ path (%2F included) resolves outside the project
        if file.is_file() and file.is_relative_to(project):
            relative = file.relative_to(project).as_posix()
            if relative.split("/", 1)[0] not in LOCAL_ONLY_FOLDERS:
                pictures.add(relative)
    return sorted(pictures)


def space_modules(app_dir: Path) -> list[str]:
    """ENTRY_POINT and every top-level project module it imports, at any depth, inside functions too."""
    project = {path.stem for path in app_dir.glob("*.py") if path.is_file()}
    reached, waiting = set(), [ENTRY_POINT.removesuffix(".py")]
    while waiting:
        module = waiting.pop()
        if module not in reached:
            reached.add(module)
            waiting.extend(imports_of(app_dir, f"{module}.py") & project)
    return sorted(f"{module}.py" for module in reached)


def parsed(app_dir: Path, name: str) -> ast.Module:
    try:
        return ast.parse((app_dir / name).read_bytes(), filename=name)
    except SyntaxError as error:
        raise DeployError(f"{name} line {error.lineno}: {error.msg}; the Space could not run it. Fix it first.")


def imports_of(app_dir: Path, name: str) -> set[str]:
    """The top-level names of the modules that the file `name` imports (absolute imports only)."""
    imported = set()
    for node in ast.walk(parsed(app_dir, name)):
        if isinstance(node, ast.Import):
            imported.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            imported.add(node.module.split(".")[0])
    return imported


def is_stale(remote_path: str, files: list[str]) -> bool:
    """A file of an earlier deploy that this one would not upload: a removed module, example or card picture, or
    anything under a local-only folder. Files deploy.py never manages (.gitattributes, a LICENSE) are left alone."""
    if remote_path in files:
        return False
    top = remote_path.split("/", 1)[0]
    is_top_level_module = "/" not in remote_path and remote_path.endswith(".py")
    return is_top_level_module or top in (EXAMPLES_FOLDER, DOCS_FOLDER) or top in LOCAL_ONLY_FOLDERS


def space_requirements(app_dir: Path) -> bytes:
    """requirements.txt as the Space gets it: every line as it is, but torch and torchvision at SPACE_TORCH_PINS."""
    lines = (app_dir / "requirements.txt").read_text().splitlines()
    pinned = [
        f"{name}=={SPACE_TORCH_PINS[name]}"
        if (name := re.split(r"[=<>~! \[]", line, maxsplit=1)[0]) in SPACE_TORCH_PINS
        else line
        for line in lines
    ]
    return ("\n".join(pinned) + "\n").encode()


def check_front_matter(app_dir: Path, hardware: str, files: list[str]) -> list[str]:
    """The Space's settings come from README.md's front matter: stop on a wrong SDK or app file; return
    warnings for what ZeroGPU would refuse at build or run time."""
    try:
        metadata = metadata_load(app_dir / "README.md") or {}
    except (yaml.YAMLError, ValueError) as error:  # ValueError: YAML, but a list or a string instead of settings
        raise DeployError(
            f"README.md's front matter is not a block of settings ({str(error).splitlines()[0]}); the Space reads "
            "its settings from it. Fix the block between the --- lines, then run deploy.py again."
        ) from None
    sdk = metadata.get("sdk")
    if sdk != "gradio":
        raise DeployError(
            f"README.md's front matter says sdk: {sdk!r}; the Space is configured from it and app.py is a Gradio "
            "app. Set `sdk: gradio` in README.md's front matter (between the --- lines), then run deploy.py again."
        )
    app_file = metadata.get("app_file", "app.py")
    if app_file not in files:
        raise DeployError(
            f"README.md's front matter names app_file: {app_file}, which is not among the uploaded files. "
            f"Point app_file at {ENTRY_POINT}, the module deploy.py uploads with everything it imports."
        )
    if hardware != ZERO_GPU_FLAVOR:
        return []
    warnings = []
    python_version = str(metadata.get("python_version", ""))
    if python_version not in ZERO_GPU_PYTHON_VERSIONS:
        warnings.append(
            f"README.md asks for python_version {python_version or '(unset)'}; ZeroGPU builds only Python "
            f"{' or '.join(ZERO_GPU_PYTHON_VERSIONS)}. Set one of them in the front matter, or the build will fail."
        )
    if not any(uses_spaces_gpu(app_dir, name) for name in files if name.endswith(".py")):
        warnings.append(
            "No uploaded module uses `spaces.GPU`: on ZeroGPU a GPU is attached only while a function decorated "
            "with @spaces.GPU runs, so without one the model gets no GPU "
            "(https://huggingface.co/docs/hub/spaces-zerogpu)."
        )
    return warnings


def uses_spaces_gpu(app_dir: Path, name: str) -> bool:
    """Whether the module `name` refers to spaces.GPU (as a decorator or called, `spaces.GPU(duration=...)(f)`) or
    imports GPU from spaces: importing `spaces` alone attaches no GPU."""
    for node in ast.walk(parsed(app_dir, name)):
        if isinstance(node, ast.Attribute) and node.attr == "GPU" and getattr(node.value, "id", None) == "spaces":
            return True
        if isinstance(node, ast.ImportFrom) and node.module == "spaces" and any(a.name == "GPU" for a in node.names):
            return True
    return False


def resolve_checkpoint(args: argparse.Namespace) -> tuple[str | None, Path | None, list[str]]:
    """(head repo id, local folder to push or None, that folder's files) for --checkpoint."""
    if args.checkpoint is None:
        return None, None, []
    folder = Path(args.checkpoint).expanduser()
    if folder.is_dir():
        missing = [name for name in HEAD_FILES if not (folder / name).is_file()]
        if problem := (f"{', '.join(missing)} missing" if missing else head_config_problem(folder)):
            raise DeployError(
                f"{folder} is not a head checkpoint: {problem}. "
                "Train one with `python train_head.py`, then pass its output folder to --checkpoint."
            )
        files = sorted(
            path.relative_to(folder).as_posix()
            for path in folder.rglob("*")
            if path.is_file() and not any(part.startswith(".") for part in path.relative_to(folder).parts)
        )
        head_repo = args.head_repo or f"{args.space}-head"
        if problem := repo_id_problem(head_repo):
            raise DeployError(f"The head's model repo {head_repo}: {problem} Name one with --head-repo USER/NAME.")
        return head_repo, folder, files
    # "checkpoints/foodvision-mini" also looks like a repo id: when its first part is a local folder the
    # user meant a path that does not exist, not a repo.
    if is_repo_id(args.checkpoint) and not Path(args.checkpoint.split("/")[0]).is_dir():
        if args.head_repo:
            raise DeployError(
                "--head-repo names where a local --checkpoint folder is pushed; drop it, or pass a folder."
            )
        return args.checkpoint, None, []
    raise DeployError(
        f"--checkpoint {args.checkpoint}: no such folder, and not a Hub repo id (USER/NAME). "
        "Pass the folder train_head.py wrote (checkpoints/foodvision-mini by default) or the head's model repo id."
    )


def make_plan(args: argparse.Namespace) -> Plan:
    app_dir = args.app_dir.resolve()
    files = space_files(app_dir)
    hardware = args.hardware or ZERO_GPU_FLAVOR
    warnings = check_front_matter(app_dir, hardware, files)
    head_repo, head_folder, head_files = resolve_checkpoint(args)
    if head_repo is None:
        warnings.append(
            f"No --checkpoint: unless the Space already has {CHECKPOINT_VARIABLE} set, app.py trains a head at "
            "start-up (downloading the course's dataset), and it is lost whenever the Space restarts."
        )
    elif args.private:
        warnings.append(private_head_hint(head_repo, args.space, args.endpoint))
    return Plan(
        space_repo=args.space,
        hardware=hardware,
        hardware_asked=args.hardware is not None,
        private=args.private,
        endpoint=args.endpoint,
        app_dir=app_dir,
        files=files,
        head_repo=head_repo,
        head_folder=head_folder,
        head_files=head_files,
        warnings=warnings,
    )


def private_head_hint(head_repo: str, space_repo: str, endpoint: str) -> str:
    """How a Space reads a private head: with a token of its own. Not the deploy's write token, which would let
    anyone who can change the Space's code write to every repo of the account."""
    return (
        f"The head {head_repo} is private: the Space can read it only with a token. Create a fine-grained token "
        f"with read access to {head_repo} alone ({endpoint}/settings/tokens) and add it as the secret HF_TOKEN in "
        f"the Space's settings ({endpoint}/spaces/{space_repo}/settings)."
    )


def print_plan(plan: Plan) -> None:
    visibility = "private" if plan.private else "public"
    hardware = plan.hardware if plan.hardware_asked else f"{plan.hardware} if new, else its own"
    print(f"Space     {plan.space_url} (sdk gradio, hardware {hardware}, {visibility})")
    if plan.head_folder is not None:
        print(f"Head      push {plan.head_folder} ({len(plan.head_files)} files) to model repo {plan.head_repo}")
    if plan.head_repo is not None:
        print(f"Variable  {CHECKPOINT_VARIABLE}={plan.head_repo}")
    pins = ", ".join(f"{name}=={version}" for name, version in SPACE_TORCH_PINS.items())
    print(f"Files     {len(plan.files)} from {plan.app_dir}, in one commit (requirements.txt with {pins}):")
    for name in plan.files:
        print(f"  {name}")
    for warning in plan.warnings:
        print(f"warning: {warning}", file=sys.stderr)


class Deployer:
    """Runs a Plan against the Hub; each step names itself so that errors can say where they happened."""

    def __init__(self, plan: Plan, api: HfApi):
        self.plan = plan
        self.api = api
        self.step = "starting"
        self.repo = plan.space_repo  # the repo `step` acts on, whose namespace a 403 names
        self.done: list[str] = []  # what the Hub has changed so far, said if a later step fails
        self.account: str | None = None  # the token's user, once whoami answered
        self.hardware = plan.hardware  # what the Space runs on once create_space is done

    def run(self) -> None:
        plan = self.plan
        self.check_token()
        existing = self.existing_space()
        if plan.private and existing is not None and not existing.private:
            self.warn_stays_public(f"The Space {plan.space_repo} exists and is public", f"{plan.space_url}/settings")
        self.check_card()
        if plan.head_folder is None and plan.head_repo is not None:
            self.check_head_repo()  # before the Space is made: a mistyped id leaves no empty Space behind
        self.create_space(existing)
        if plan.head_folder is not None:
            self.push_head()
        if plan.head_repo is not None:
            self.step = f"setting the Space variable {CHECKPOINT_VARIABLE}"
            self.api.add_space_variable(
                plan.space_repo, CHECKPOINT_VARIABLE, plan.head_repo, description="Hub repo of the head app.py serves"
            )
            self.done.append(f"set {CHECKPOINT_VARIABLE}={plan.head_repo} on the Space")
        self.upload_app(existing)

    def warn_stays_public(self, what: str, settings: str) -> None:
        """create_repo keeps the visibility of a repo that exists, whatever --private says."""
        print(
            f"warning: {what}: --private applies only to what deploy.py creates, so it stays public. "
            f"Make it private in its settings ({settings}) if you meant to.",
            file=sys.stderr,
        )

    def check_card(self) -> None:
        """The Hub's own check of README.md's front matter, which configures the Space. create_commit runs it too,
        but only once the Space, the head and the variable exist: a card it refuses stops the deploy here, before
        anything is written."""
        plan = self.plan
        self.step = "having the Hub check README.md's front matter"
        card = (plan.app_dir / "README.md").read_text(encoding="utf-8")
        response = get_session().post(
            f"{plan.endpoint}/api/validate-yaml",
            json={"content": card, "repoType": "space"},
            headers=build_hf_headers(token=self.api.token),
        )
        if response.status_code == 400:
            try:
                errors = [str(error.get("message")) for error in response.json().get("errors", [])]
            except (ValueError, AttributeError):
                errors = []
            raise DeployError(
                f"The Hub refuses README.md's front matter ({'; '.join(errors) or response.text[:200]}); the Space "
                f"is configured from it. Fix the block between the --- lines ({SPACES_CONFIG_DOCS}), then run "
                "deploy.py again. Nothing was created or changed."
            )
        hf_raise_for_status(response)

    def check_token(self) -> None:
        self.step = "checking the token (whoami)"
        account = self.api.whoami()
        role = account.get("auth", {}).get("accessToken", {}).get("role")
        if role == "read":
            raise DeployError(
                f"The token of {account.get('name')} is read-only; creating a Space needs write access. "
                "Create a write token at https://huggingface.co/settings/tokens and log in with it (`hf auth login`)."
            )
        self.account = account.get("name")
        print(f"Logged in as {self.account}")

    def existing_space(self):
        """The Space's info when it exists (DeployError if it is not a Gradio Space), else None."""
        self.step = f"looking up the Space {self.plan.space_repo}"
        try:
            info = self.api.space_info(self.plan.space_repo)
        except RepositoryNotFoundError:
            return None
        if info.sdk != "gradio":
            raise DeployError(
                f"The Space {self.plan.space_repo} already exists with sdk {info.sdk!r}, not 'gradio', and deploy.py "
                "does not convert Spaces. Deploy under another name (python deploy.py USER/OTHER-NAME), or delete "
                f"that Space first (`hf repos delete {self.plan.space_repo} --repo-type space`, or its Settings page "
                f"at {self.plan.space_url}/settings) and run deploy.py again."
            )
        return info

    def create_space(self, existing) -> None:
        plan = self.plan
        if existing is None:
            self.step = f"creating the Space {plan.space_repo} on {plan.hardware}"
            self.api.create_repo(
                plan.space_repo,
                repo_type="space",
                space_sdk="gradio",
                space_hardware=plan.hardware,
                private=plan.private or None,  # None: the namespace's default visibility
                exist_ok=True,
            )
            self.done.append(f"created the Space {plan.space_repo} on {plan.hardware}")
            return
        # create_repo ignores the hardware of a Space that exists: ask for it explicitly when it differs.
        runtime = existing.runtime
        requested = (runtime.requested_hardware or runtime.hardware) if runtime is not None else None
        if not plan.hardware_asked:
            if requested is not None and requested != plan.hardware:
                self.hardware = requested
                print(f"The Space runs on {requested}, kept: pass --hardware to change it.")
            return
        if requested != plan.hardware:
            self.step = f"requesting {plan.hardware} for the Space {plan.space_repo}"
            self.api.request_space_hardware(plan.space_repo, plan.hardware)
            self.done.append(f"asked for {plan.hardware} on the Space {plan.space_repo}")

    def push_head(self) -> None:
        plan = self.plan
        self.repo = plan.head_repo
        self.step = f"creating the model repo {plan.head_repo}"
        self.api.create_repo(plan.head_repo, repo_type="model", private=plan.private or None, exist_ok=True)
        self.done.append(f"made the model repo {plan.head_repo} (or found it there)")
        self.step = f"looking up the head's model repo {plan.head_repo}"
        head = self.api.repo_info(plan.head_repo, repo_type="model")
        if plan.private and not head.private:
            self.warn_stays_public(
                f"The model repo {plan.head_repo} exists and is public", f"{plan.endpoint}/{plan.head_repo}/settings"
            )
        self.step = f"uploading the head {plan.head_folder} to {plan.head_repo}"
        operations = [CommitOperationAdd(name, str(plan.head_folder / name)) for name in plan.head_files]
        self.api.create_commit(
            plan.head_repo, operations, repo_type="model", commit_message="Upload FoodVision Mini head (deploy.py)"
        )
        self.done.append(f"pushed the head to {plan.head_repo}")
        print(f"Pushed the head to {plan.endpoint}/{plan.head_repo}")
        self.repo = plan.space_repo

    def check_head_repo(self) -> None:
        plan = self.plan
        self.repo = plan.head_repo
        self.step = f"looking up the head's model repo {plan.head_repo}"
        try:
            head = self.api.repo_info(plan.head_repo, repo_type="model")
        except RepositoryNotFoundError:
            raise DeployError(
                f"--checkpoint {plan.head_repo}: no such model repo visible to this token, nor a folder of that name "
                f"in {Path.cwd()}. Publish the head with `python train_head.py --push-to-hub {plan.head_repo}`, or "
                "pass its local folder to --checkpoint."
            ) from None
        held = {sibling.rfilename for sibling in head.siblings or ()}
        if head.siblings is not None and (missing := [name for name in HEAD_FILES if name not in held]):
            raise DeployError(
                f"--checkpoint {plan.head_repo} holds no head: {', '.join(missing)} missing. Publish one there with "
                f"`python train_head.py --push-to-hub {plan.head_repo}`, or pass its local folder to --checkpoint."
            )
        if head.private and not plan.private:  # with --private, the plan has said so already
            print(f"warning: {private_head_hint(plan.head_repo, plan.space_repo, plan.endpoint)}", file=sys.stderr)
        self.repo = plan.space_repo

    def upload_app(self, existing) -> None:
        plan = self.plan
        self.step = f"uploading the app to {plan.space_repo}"
        remote_files = [sibling.rfilename for sibling in (existing.siblings or [])] if existing is not None else []
        stale = sorted(path for path in remote_files if is_stale(path, plan.files))
        operations = [
            CommitOperationAdd(
                name, space_requirements(plan.app_dir) if name == "requirements.txt" else str(plan.app_dir / name)
            )
            for name in plan.files
        ]
        operations += [CommitOperationDelete(path) for path in stale]
        try:
            commit = self.api.create_commit(
                plan.space_repo, operations, repo_type="space", commit_message="Deploy FoodVision Mini (deploy.py)"
            )
        except ValueError as error:  # its own check of README.md, refused (or answered unreadably) since check_card
            raise DeployError(f"huggingface_hub stopped the commit: {str(error).strip()}") from None
        deleted = f", deleted {len(stale)} stale: {', '.join(stale)}" if stale else ""
        print(f"Uploaded {len(plan.files)} files in one commit{deleted}: {commit.commit_url}")


def explain_hub_error(
    error: HfHubHTTPError, plan: Plan, step: str, repo: str, token_source: str, account: str | None
) -> str:
    """One actionable paragraph for an HTTP error the Hub answered while doing `step` on `repo` for the token's
    `account`."""
    status = error.response.status_code if error.response is not None else None
    namespace = repo.split("/")[0]
    if status == 401:
        # HF_TOKEN wins over the `hf auth login` token, so logging in again does not help while it is set.
        fix = {
            "--token": "--token takes precedence over HF_TOKEN and `hf auth login`: pass a valid write token "
            "(https://huggingface.co/settings/tokens), or leave --token out to use those.",
            "HF_TOKEN": "HF_TOKEN takes precedence over `hf auth login`: set it to a valid write token "
            "(https://huggingface.co/settings/tokens), or unset it and log in with `hf auth login`.",
        }.get(token_source, LOGIN_HINT)
        return (
            f"The Hub did not accept the token from {token_source} while {step} (401 Unauthorized): not logged in, "
            f"or the token is invalid or expired. {fix}"
        )
    if status == 402 and account is not None and namespace != account:
        return (
            f"The Hub refused {step} with 402 Payment Required: {namespace} is an organization, and its plan does not "
            f"cover a Gradio Space on {plan.hardware}. Organizations host ZeroGPU and CPU Spaces on a Team or "
            "Enterprise plan (https://huggingface.co/enterprise), paid hardware with billing set up; or deploy under "
            f"your own user name ({account}/...), then run deploy.py again."
        )
    if status == 402:
        if plan.hardware == ZERO_GPU_FLAVOR:
            return (
                f"The Hub refused {step} with 402 Payment Required: this account cannot host another ZeroGPU Space. "
                "Free accounts can host up to 2 (email verified, account older than 30 days); PRO accounts more. "
                "Free a slot by deleting or switching another ZeroGPU Space, or subscribe at "
                "https://huggingface.co/subscribe/pro, then run deploy.py again."
            )
        return (
            f"The Hub refused {step} with 402 Payment Required: {namespace}'s plan does not cover a Gradio Space on "
            f"{plan.hardware} (cpu-basic needs PRO, paid hardware needs billing; free accounts: use --hardware zero, "
            "ZeroGPU, free for up to 2 Spaces). Or subscribe, or add a payment method, at "
            "https://huggingface.co/settings/billing, then run deploy.py again."
        )
    if status == 403:
        return (
            f"The Hub refused {step} (403 Forbidden): the token may not write to {namespace}. Use a token with write "
            "access to that user or organization (a fine-grained token needs the write permission on it), via "
            "`hf auth login` or HF_TOKEN, or deploy under your own user name."
        )
    if status == 429:
        limit = parse_ratelimit_headers(error.response.headers) if error.response is not None else None
        wait = f"Wait {limit.reset_in_seconds} s" if limit is not None else "Wait a few minutes"
        return (
            f"The Hub refused {step} with 429 Too Many Requests: this account has reached a rate limit. {wait}, "
            "then run deploy.py again."
        )
    detail = error.server_message or str(error).strip().splitlines()[0]
    return (
        f"The Hub answered {status} while {step}: {detail}. "
        "Run deploy.py again; if it persists, check https://status.huggingface.co."
    )


def token_and_source(args: argparse.Namespace) -> tuple[str | None, str]:
    """The token to use and where it came from (said in errors: HF_TOKEN hides the `hf auth login` one)."""
    if args.token:
        return args.token, "--token"
    source = "HF_TOKEN" if os.environ.get("HF_TOKEN") else "`hf auth login`"
    return get_token(), source


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        plan = make_plan(args)
    except DeployError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print_plan(plan)
    if args.dry_run:
        print("Dry run: nothing was sent to the Hub.")
        return 0
    token, token_source = token_and_source(args)
    deployer = Deployer(plan, HfApi(endpoint=plan.endpoint, token=token))
    try:
        if not token:
            raise LocalTokenNotFoundError
        deployer.run()
    except DeployError as error:
        message = str(error)
    except LocalTokenNotFoundError:
        message = f"No Hugging Face token: not logged in, and HF_TOKEN is unset. {LOGIN_HINT}"
    except HfHubHTTPError as error:
        message = explain_hub_error(error, plan, deployer.step, deployer.repo, token_source, deployer.account)
    except OfflineModeIsEnabled:
        message = "HF_HUB_OFFLINE is set, so nothing can be uploaded. Unset it and run deploy.py again."
    except (httpx2.TransportError, ConnectionError) as error:  # ConnectionError: hf_xet's, for the large files
        message = (
            f"Cannot reach the Hub at {plan.endpoint} while {deployer.step} ({type(error).__name__}: {error}). "
            "Check the network connection and any proxy, or HF_ENDPOINT / --endpoint if you set one, then run again."
        )
    else:
        print_first_start(plan, deployer.hardware)
        return 0
    if deployer.done:
        message += (
            f" Done before this failed: {'; '.join(deployer.done)}. Running deploy.py again finishes the deploy "
            f"(or delete the Space at {plan.space_url}/settings)."
        )
    print(f"error: {message}", file=sys.stderr)
    return 1


def print_first_start(plan: Plan, hardware: str) -> None:
    print(f"\nSpace: {plan.space_url}")
    where = (
        "ZeroGPU (a GPU is attached only while @spaces.GPU functions run)" if hardware == ZERO_GPU_FLAVOR else hardware
    )
    head = (
        f"the head from {plan.head_repo}" if plan.head_repo else f"then trains a head (no {CHECKPOINT_VARIABLE} given)"
    )
    print(
        f"First start, on {where}: the Space installs requirements.txt, runs app.py, which downloads torchvision's "
        f"vit_b_16 weights (330 MB) and {head}; that takes a few minutes. Follow it in the Space's Logs tab."
    )


if __name__ == "__main__":
    sys.exit(main())
