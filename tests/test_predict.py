"""predict.py: the served prediction on the command line, one line per photo, a clear error per unusable file."""

import re
from pathlib import Path

from PIL import Image

import predict
from app import EXAMPLES


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
    assert f"{folder}: error: Cannot read {folder}: Is a directory" in err
    lines = [line for line in out.splitlines() if not line.startswith(("  figure:", "  warning:"))]
    assert len(lines) == len(EXAMPLES)
    for line, photo in zip(lines, EXAMPLES):
        assert re.fullmatch(
            rf"{re.escape(photo)}: (\w+ [01]\.\d{{3}}, ){{2}}\w+ [01]\.\d{{3}} \| model \d+ ms, total \d+ ms", line
        )
        figure = Image.open(tmp_path / "figures" / f"{Path(photo).stem}.png")
        assert figure.width > 100 and figure.height > 100
