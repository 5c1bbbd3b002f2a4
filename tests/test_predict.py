"""predict.py: the served prediction on the command line, one line per photo, a clear error per unusable file."""

import os
import re
import shutil
from pathlib import Path

import pytest
from PIL import Image

import predict
from app import EXAMPLES
from standins import GENERATED_CLASSES


def test_predict_cli_prints_top3_and_times_and_saves_figures(trained_head_checkpoint, torch_home, tmp_path, capsys):
    bad = tmp_path / "notes.txt"
    bad.write_text("not a photo")
    folder = tmp_path / "a-folder"
    folder.mkdir()
    status = predict.main(
        [
            *EXAMPLES,
            str(bad),
            str(folder),
            "--checkpoint",
            str(trained_head_checkpoint),
            "--figures",
            str(tmp_path / "figures"),
        ]
    )
    out, err = capsys.readouterr()
    assert status == 1  # two inputs failed
    assert "notes.txt: error: This file is not an image" in err
    assert f"{folder}: error: no image files in this folder (.jpg, .jpeg, .png" in err
    lines = [line for line in out.splitlines() if not line.startswith(("  figure:", "  warning:"))]
    assert len(lines) == len(EXAMPLES)
    for line, photo in zip(lines, EXAMPLES):
        assert re.fullmatch(
            rf"{re.escape(photo)}: (\w+ [01]\.\d{{3}}, ){{2}}\w+ [01]\.\d{{3}} \| model \d+ ms, total \d+ ms", line
        )
        top3 = [(name, float(p)) for name, p in re.findall(r"(\w+) ([01]\.\d{3})", line.split(" | ")[0])]
        # three classes: the top 3 are all of them, most likely first, their probabilities adding to 1
        assert sorted(name for name, _ in top3) == sorted(GENERATED_CLASSES)
        assert [p for _, p in top3] == sorted((p for _, p in top3), reverse=True)
        assert abs(sum(p for _, p in top3) - 1) <= 0.002
        figure = Image.open(tmp_path / "figures" / f"{Path(photo).stem}.png")
        assert figure.width > 100 and figure.height > 100


def test_a_folder_stands_for_the_images_in_it(trained_head_checkpoint, torch_home, capsys):
    """`python predict.py examples/` (README): the bundled photos, in order, and not the folder's SOURCE.md."""
    assert predict.main([str(Path(EXAMPLES[0]).parent), "--checkpoint", str(trained_head_checkpoint)]) == 0
    out, err = capsys.readouterr()
    assert [line.split(":")[0] for line in out.splitlines() if not line.startswith("  ")] == EXAMPLES
    assert "error" not in err


def test_figures_never_overwrite_the_photos_or_each_other(tmp_path, capsys):
    """Refused before the model loads, with the photos as they were."""
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        shutil.copy(EXAMPLES[0], tmp_path / folder / "dinner.png")
    photo, namesake = str(tmp_path / "a" / "dinner.png"), str(tmp_path / "b" / "dinner.png")
    shutil.copy(EXAMPLES[0], tmp_path / "b" / "Dinner.jpg")
    (tmp_path / "linked").mkdir()
    os.link(photo, tmp_path / "linked" / "dinner.png")  # the photo under a second name, as a case-blind system has it
    other_case = str(tmp_path / "b" / "Dinner.jpg")
    for images, figures, message in (
        ([photo], tmp_path / "a", f"the figure for {photo} would overwrite {photo}"),
        ([photo], tmp_path / "linked", f"the figure for {photo} would overwrite {photo}"),
        ([photo, namesake], tmp_path / "out", f"the figures for {photo} and {namesake} would both be"),
        ([photo, other_case], tmp_path / "out", "dinner.png and Dinner.png, would be one file where case is ignored"),
    ):
        with pytest.raises(SystemExit) as exit_info:
            predict.main([*images, "--figures", str(figures)])
        assert exit_info.value.code == 2
        assert message in capsys.readouterr().err
    assert Path(photo).read_bytes() == Path(EXAMPLES[0]).read_bytes()
    assert not (tmp_path / "out").exists()


def test_a_figures_folder_that_cannot_be_made_is_refused_before_the_model_loads(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(predict, "load", lambda *args, **kwargs: pytest.fail("the model was loaded"))
    monkeypatch.setattr(predict, "train_default_head", lambda: pytest.fail("a head was trained"))
    taken = tmp_path / "figures"
    taken.write_text("a file where the folder would go")
    for figures, problem in ((taken, f"{taken} is a file"), (taken / "more", f"{taken} is a file, so no folder")):
        with pytest.raises(SystemExit) as exit_info:
            predict.main([EXAMPLES[0], "--figures", str(figures)])
        assert exit_info.value.code == 2 and f"--figures: {problem}" in capsys.readouterr().err
    assert taken.read_text() == "a file where the folder would go"


def test_the_same_photo_named_twice_writes_its_one_figure(tmp_path):
    folder = Path(EXAMPLES[0]).parent
    figures = predict.figure_paths([EXAMPLES[0], str(folder / ".." / folder.name / Path(EXAMPLES[0]).name)], tmp_path)
    assert set(figures.values()) == {tmp_path / f"{Path(EXAMPLES[0]).stem}.png"}


def test_nothing_to_classify_exits_before_the_model_loads(tmp_path, capsys, monkeypatch):
    """Folders without images: their errors, exit 1, and no model loaded (nor a first head trained for it)."""
    monkeypatch.setattr(predict, "load", lambda *args, **kwargs: pytest.fail("the model was loaded"))
    monkeypatch.setattr(predict, "train_default_head", lambda: pytest.fail("a head was trained"))
    (tmp_path / "empty").mkdir()
    assert predict.main([str(tmp_path / "empty")]) == 1
    assert "empty: error: no image files in this folder" in capsys.readouterr().err
