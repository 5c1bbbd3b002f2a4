"""What training leaves on disk: files and folders written atomically, the per-epoch line and the curves.

A reader (the app, a resumed run, a person) never sees a half-written file or checkpoint folder: everything is
written beside its place and renamed into it. The per-epoch line and the loss/accuracy curves follow the course's
(PyTorch for Deep Learning, chapters 04-09), for train_head.py and train_vit.py alike.
"""

import contextlib
import io
import os
import shutil
import tempfile
from pathlib import Path

from matplotlib.figure import Figure


def why_not_writable(directory: Path, replaced: bool = False) -> str | None:
    """Why no folder `directory` can be written, or None: where it exists, it has to be a folder this user can write
    in; else, or where it is `replaced` (a new folder renamed into its place), so does the folder it is made in.
    Checked before training, so that a mistyped output fails before the work."""
    if directory.exists() and not directory.is_dir():
        return f"{directory} is a file; the output is written as a folder"
    absolute = directory.absolute()
    nearest = next((folder for folder in absolute.parents if folder.exists()), absolute)
    if not nearest.is_dir():
        return f"{nearest} is a file, so no folder {directory} can be made"
    needed = (directory,) if directory.exists() else ()
    if replaced or not directory.exists():
        needed += (nearest,)
    for folder in needed:
        if problem := why_nothing_can_be_made_in(folder):
            return f"{folder} is not writable ({problem}), so {directory} cannot be written"
    return None


def why_nothing_can_be_made_in(folder: Path) -> str | None:
    """Why no folder can be made in `folder`, or None, found by making one and removing it: os.access answers from
    permission bits alone, which root passes everywhere, so a root container's output under /proc or /sys, or on a
    mount that refuses writes (ACLs, network shares), trained fully and failed only when saving."""
    try:
        Path(tempfile.mkdtemp(dir=folder, prefix=".write-check-")).rmdir()
    except OSError as error:
        return error.strerror or type(error).__name__
    return None


def write_atomically(path: Path, data: bytes) -> None:
    """`data` written beside `path` and flushed to the disk, then renamed over it: neither a crash nor a power cut
    leaves a half-written file. A failed write removes its temporary file; one a killed process left is overwritten
    by the next write (one name per file: a ViT-B's train_state.safetensors is about a GB)."""
    temporary = path.with_name(f".{path.name}.tmp")
    try:
        write_durably(temporary, data)
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    sync_folder(path.parent)


def write_durably(path: Path, data: bytes) -> None:
    """A file holding `data`, on the disk when this returns: a rename that makes it visible cannot then outlive its
    contents in a power cut (file systems may commit the rename first)."""
    with open(path, "wb") as file:
        file.write(data)
        file.flush()
        os.fsync(file.fileno())


def sync_folder(folder: Path) -> None:
    """The renames in `folder` on the disk. Windows cannot open a folder for this; there NTFS's journal keeps them."""
    try:
        descriptor = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass  # some file systems (network shares) refuse to sync a folder; the rename itself still happened
    finally:
        os.close(descriptor)


def replace_folder(directory: Path, files: dict[str, bytes], error_type: type[Exception] = OSError) -> None:
    """Make `directory` hold `files` and every other entry it held (copied: a git clone's .git, a person's notes,
    are never lost): the new folder is made beside it, then takes its place. An existing folder is first renamed
    aside, so between the two renames no folder is at `directory`; if the second rename fails, the old folder is
    renamed back, and a replacement killed in between is repaired by the next one (`recover_replaced_folder`).
    `error_type` is raised when neither rename can be done."""
    directory.parent.mkdir(parents=True, exist_ok=True)
    recover_replaced_folder(directory)
    temp = Path(tempfile.mkdtemp(dir=directory.parent, prefix=f".{directory.name}-new-"))
    try:
        for name, content in files.items():
            write_durably(temp / name, content)
        for entry in directory.iterdir() if directory.is_dir() else ():
            if entry.name not in files:
                copy_entry(entry, temp / entry.name)
        temp.chmod(0o755)  # mkdtemp makes it owner-only
        sync_folder(temp)
        if not directory.exists():
            temp.rename(directory)
            sync_folder(directory.parent)
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
                raise error_type(
                    f"Could not move the new folder into {directory} ({error}), nor the previous one back: "
                    f"it is in {previous}. Move it to {directory} by hand (the next save also does)."
                ) from None
            with contextlib.suppress(OSError):
                aside.rmdir()  # empty now; rmdir never deletes a checkpoint
            raise
        sync_folder(directory.parent)
        shutil.rmtree(aside, ignore_errors=True)
    finally:
        shutil.rmtree(temp, ignore_errors=True)


def copy_entry(source: Path, target: Path) -> None:
    """A file or a whole folder copied with its times and modes; links stay links."""
    if source.is_dir() and not source.is_symlink():
        shutil.copytree(source, target, symlinks=True)
    else:
        shutil.copy2(source, target, follow_symlinks=False)


def recover_replaced_folder(directory: Path) -> None:
    """Repair what a replacement killed between its two renames leaves: the previous folder inside a
    `.<name>-old-*` folder and nothing at `directory`. It is renamed back; once `directory` exists, such folders
    hold superseded copies and are deleted."""
    prefix = f".{directory.name}-old-"
    for aside in sorted(path for path in directory.parent.iterdir() if path.name.startswith(prefix)):
        previous = aside / directory.name
        if previous.is_dir() and not directory.exists():
            previous.rename(directory)
        shutil.rmtree(aside, ignore_errors=True)


def epoch_line(metrics: dict) -> str:
    """The course's per-epoch line from one history entry (epoch, train/test loss and accuracy)."""
    return (
        f"Epoch: {metrics['epoch']} | train_loss: {metrics['train_loss']:.4f} | train_acc: {metrics['train_acc']:.4f}"
        f" | test_loss: {metrics['test_loss']:.4f} | test_acc: {metrics['test_acc']:.4f}"
    )


def plot_curves(history: list[dict]) -> bytes:
    """Loss and accuracy curves per epoch, like the course's plot_loss_curves, as PNG bytes. A bare matplotlib
    Figure renders on the Agg canvas without pyplot, so no global backend is switched (training runs headless,
    in tests, and from the app or a notebook)."""
    figure = Figure(figsize=(11, 4))
    epochs = [entry["epoch"] for entry in history]
    for axis, metric in zip(figure.subplots(1, 2), ("loss", "acc")):
        for subset in ("train", "test"):
            axis.plot(
                epochs, [entry[f"{subset}_{metric}"] for entry in history], marker="o", label=f"{subset}_{metric}"
            )
        axis.set(title="Loss" if metric == "loss" else "Accuracy", xlabel="Epochs")
        axis.legend()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=80, bbox_inches="tight")
    return buffer.getvalue()


def plot_fewshot(fewshot: dict) -> bytes:
    """Few-shot linear evaluation (fewshot.fewshot_accuracy): test accuracy against training photos per class, each
    seed a dot and their mean a line, with every photo ("all") and the trained linear head for comparison."""
    figure = Figure(figsize=(6, 4))
    axis = figure.subplots()
    measured = {int(k): result for k, result in fewshot["shots"].items() if k != "all" and result["mean"] is not None}
    shots = sorted(measured)
    for k in shots:
        axis.scatter([k] * len(measured[k]["accuracy_per_seed"]), measured[k]["accuracy_per_seed"], color="0.7", s=12)
    axis.plot(shots, [measured[k]["mean"] for k in shots], marker="o", label="least squares, k photos a class")
    axis.axhline(fewshot["shots"]["all"]["mean"], color="C1", linestyle="--", label="least squares, every photo")
    axis.axhline(fewshot["linear_head_accuracy"], color="C2", linestyle=":", label="the trained linear head")
    axis.set(xscale="log", xlabel="Training photos per class", ylabel="Test accuracy", ylim=(0, 1.02))
    axis.set_xticks(shots, [str(k) for k in shots])
    axis.set_title("Few-shot linear evaluation (paper, Section 4.1)")
    axis.legend(fontsize=8, loc="lower right")
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=80, bbox_inches="tight")
    return buffer.getvalue()
