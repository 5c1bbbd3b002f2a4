"""outputs.py: what training writes, whole or not at all, and its curves."""

import io
import os
from pathlib import Path

import pytest
from PIL import Image

from outputs import epoch_line, plot_curves, plot_fewshot, replace_folder, why_not_writable, write_atomically


def test_an_atomic_write_leaves_the_file_and_no_temporary(tmp_path):
    target = tmp_path / "metrics.json"
    write_atomically(target, b"first")
    write_atomically(target, b"second")
    assert target.read_bytes() == b"second" and [path.name for path in tmp_path.iterdir()] == ["metrics.json"]


def test_a_write_that_fails_leaves_the_earlier_file_and_no_temporary(tmp_path, monkeypatch):
    """As a full disk fails it: the flush to the disk raises."""
    target = tmp_path / "train_state.safetensors"
    write_atomically(target, b"epoch 1")

    def disk_full(descriptor):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", disk_full)
    with pytest.raises(OSError, match="No space left"):
        write_atomically(target, b"epoch 2")
    assert target.read_bytes() == b"epoch 1" and [path.name for path in tmp_path.iterdir()] == [target.name]


def test_a_temporary_file_a_killed_write_left_is_overwritten_by_the_next(tmp_path):
    target = tmp_path / "train_state.safetensors"
    (tmp_path / ".train_state.safetensors.tmp").write_bytes(b"half of an epoch's state")
    write_atomically(target, b"epoch 2")
    assert target.read_bytes() == b"epoch 2" and [path.name for path in tmp_path.iterdir()] == [target.name]


def test_the_current_folder_and_the_root_are_folders_too(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert why_not_writable(Path(".")) is None and why_not_writable(Path("run")) is None
    root_writable = os.access("/", os.W_OK)  # as root, as CI runs, it is
    assert why_not_writable(Path("/")) == (
        None if root_writable else "/ is not writable (Permission denied), so / cannot be written"
    )
    (tmp_path / "notes.txt").write_text("keep me")
    problem = why_not_writable(Path("notes.txt", "run"))
    assert problem == f"{tmp_path / 'notes.txt'} is a file, so no folder {Path('notes.txt', 'run')} can be made"


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs Linux's /proc")
def test_a_folder_where_nothing_can_be_made_is_refused_even_for_root():
    """os.access says yes to root everywhere: a root container's --output under /proc trained fully, then failed."""
    problem = why_not_writable(Path("/proc/foodvision-run"))
    assert problem is not None and problem.startswith("/proc is not writable (") and "cannot be written" in problem


def test_a_replaced_folder_holds_the_new_files_and_keeps_every_other(tmp_path):
    """Training into a git clone of a Hub repo, or a folder with a person's notes, replaces the checkpoint's files
    and loses nothing else."""
    folder = tmp_path / "checkpoint"
    replace_folder(folder, {"a.txt": b"1", "b.txt": b"2"})
    (folder / ".git" / "objects").mkdir(parents=True)
    (folder / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
    (folder / "notes.md").write_text("mine")
    (folder / "latest").symlink_to("a.txt")
    replace_folder(folder, {"a.txt": b"new", "c.txt": b"3"})
    assert sorted(path.name for path in folder.iterdir()) == [".git", "a.txt", "b.txt", "c.txt", "latest", "notes.md"]
    assert (folder / "a.txt").read_bytes() == b"new" and (folder / "notes.md").read_text() == "mine"
    assert (folder / ".git" / "HEAD").read_text() == "ref: refs/heads/main\n" and (folder / ".git" / "objects").is_dir()
    assert (folder / "latest").is_symlink() and (folder / "latest").read_bytes() == b"new"
    assert [path.name for path in tmp_path.iterdir()] == ["checkpoint"]  # nothing left beside it


def test_the_epoch_line_is_the_courses():
    line = epoch_line(dict(epoch=3, train_loss=0.51234, train_acc=0.8, test_loss=0.4, test_acc=0.9))
    assert line == "Epoch: 3 | train_loss: 0.5123 | train_acc: 0.8000 | test_loss: 0.4000 | test_acc: 0.9000"


def test_the_curves_and_the_few_shot_plot_are_pngs():
    history = [dict(epoch=e, train_loss=1 / e, train_acc=0.5, test_loss=1 / e, test_acc=0.6) for e in (1, 2)]
    fewshot = {
        "shots": {
            "1": {"accuracy_per_seed": [0.5, 0.6, 0.7], "mean": 0.6},
            "25": {"accuracy_per_seed": [], "mean": None, "unavailable": "too few photos"},
            "all": {"accuracy_per_seed": [0.9], "mean": 0.9},
        },
        "linear_head_accuracy": 0.95,
    }
    for png in (plot_curves(history), plot_fewshot(fewshot)):
        with Image.open(io.BytesIO(png)) as picture:
            assert picture.format == "PNG" and picture.width > 300 and picture.height > 200
