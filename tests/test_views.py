"""views.py: every view of a photo is defined once and reaches both the page and `python views.py`."""

import pytest
from PIL import Image

import app
import onnx_engine
import views
from standins import EXAMPLE_PHOTOS


def test_the_command_line_saves_every_view_and_the_weights_figures(
    trained_head_checkpoint, torch_home, tmp_path, capsys, monkeypatch
):
    """`python views.py --checkpoint ... --out ...` with the stand-in backbone (conftest): a file for each entry of
    VIEWS, Markdown for the walk, pictures for the rest, and Figure 7 (left and centre); torch draws them, with no
    ONNX export or engine measurement for one photo."""

    def exported(*args):
        raise AssertionError("views.py set up ONNX Runtime for one photo")

    monkeypatch.setattr(onnx_engine.OnnxRuntimePredictor, "__init__", exported)
    assert views.main(["--checkpoint", str(trained_head_checkpoint), "--out", str(tmp_path)]) == 0
    pictures = {view.name for view in views.VIEWS if not view.text} | {"embedding_filters", "position_similarity"}
    assert {path.stem for path in tmp_path.glob("*.png")} == pictures
    assert {path.stem for path in tmp_path.glob("*.md")} == {view.name for view in views.VIEWS if view.text}
    for path in tmp_path.glob("*.png"):
        with Image.open(path) as picture:
            assert picture.width > 100 and picture.height > 100
    assert "Eq. 4" in (tmp_path / "walk.md").read_text()
    assert str(tmp_path / "rollout.png") in capsys.readouterr().out


def test_a_checkpoint_that_cannot_load_is_an_error_not_a_figure(tmp_path, capsys):
    assert views.main(["--checkpoint", str(tmp_path / "missing"), "--out", str(tmp_path / "out")]) == 1
    assert "error:" in capsys.readouterr().err and not (tmp_path / "out").exists()


def test_an_out_that_is_a_file_is_refused_before_the_model_loads(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(views, "load", lambda *args, **kwargs: pytest.fail("the model loaded"))
    (tmp_path / "out").write_text("notes")
    with pytest.raises(SystemExit) as exit_info:
        views.main(["--checkpoint", str(tmp_path / "missing"), "--out", str(tmp_path / "out")])
    assert exit_info.value.code == 2
    assert f"--out: {tmp_path / 'out'} is a file; the output is written as a folder" in capsys.readouterr().err


def test_every_view_is_laid_out_on_the_page_and_filled_by_its_event(foodvision_fp32):
    """One entry in VIEWS is the whole edit: the page has an output with the view's id, and the photo's events fill
    it (the photo views with the prediction, the inside views after it)."""
    demo = app.build_demo(foodvision_fp32)
    ids = {block.elem_id for block in demo.blocks.values()}
    assert {view.name for view in views.VIEWS} <= ids
    filled = {
        block.elem_id
        for dependency in demo.fns.values()
        for block in dependency.outputs
        if getattr(block, "elem_id", None)
    }
    assert {view.name for view in views.VIEWS} <= filled


def test_a_view_can_be_drawn_for_any_layer_and_differs_between_layers(foodvision_fp32):
    analysis = views.PhotoAnalysis.of(foodvision_fp32.classify(str(EXAMPLE_PHOTOS[0])), foodvision_fp32)
    weights = views.Weights.of(foodvision_fp32)
    following = tuple(view for view in views.VIEWS if view.follows_layer)
    first, last = (views.draw_views(following, analysis, weights, layer) for layer in (1, analysis.layers))
    assert following and all(first[name].tobytes() != last[name].tobytes() for name in first)


@pytest.mark.parametrize("placement", [dict(section="photo"), dict(section="inside", follows_layer=True)])
def test_a_markdown_view_the_page_would_save_as_a_picture_is_refused(placement):
    with pytest.raises(ValueError, match="a Markdown view goes in the 'inside' section"):
        views.View("notes", "Notes", draw=lambda analysis, weights, layer: "text", text=True, **placement)
