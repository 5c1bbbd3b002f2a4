"""serving.py: loading gives a FoodVision or a NoModel; which precision serves and why (the int8 path serves only
where it has proven itself on the weights being served: a passing record for exactly this setup, or a self-check on
the bundled photos); and the "is this even food?" verdict of each prediction."""

import json
import math
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

import app
import inference
import outliers
import predict
import serving
from classifier import CONFIG_FILE, WEIGHTS_FILE, check_weights_file, load_classifier
from figures import mean_attention_distance
from images import example_photos, load_rgb
from marks import needs_int8_engine, needs_x86_int8
from standins import GENERATED_CLASSES, NON_FOOD_KINDS, draw_food_image, draw_non_food_image


@pytest.fixture
def checkpoint_copy(trained_head_checkpoint, tmp_path):
    return shutil.copytree(trained_head_checkpoint, tmp_path / "checkpoint")


def edit_record(checkpoint, **setup_changes) -> None:
    config = json.loads((checkpoint / CONFIG_FILE).read_text())
    config["int8"]["setup"] |= setup_changes
    (checkpoint / CONFIG_FILE).write_text(json.dumps(config))


@needs_x86_int8
def test_a_passing_record_for_this_setup_serves_int8(trained_head_checkpoint, head_dataset, foodvision):
    record = json.loads((trained_head_checkpoint / CONFIG_FILE).read_text())["int8"]
    assert record["measured"] and record["agreement"]["passed"]
    assert record["agreement"]["inputs"] == len(list((head_dataset / "test").rglob("*.jpg")))  # every test photo
    assert foodvision.predictor.precision == "int8"
    reason = foodvision.precision_reason
    assert "train_head.py measured it against fp32 on the test split for exactly this setup" in reason


@needs_x86_int8
def test_the_served_int8_model_is_the_one_calibrated_on_the_example_photos(trained_head_checkpoint, foodvision):
    """serving.load takes SmoothQuant's ranges from the pass over the example photos it runs anyway: the int8 model
    it serves is, to the last bit, the one train_head.py measured, which calibrates on the photos themselves."""
    assert foodvision.predictor.precision == "int8", foodvision.precision_reason
    model, transforms, _ = load_classifier(trained_head_checkpoint)
    measured = inference.Predictor(model, "int8", inference.calibration_images(transforms))
    photo = transforms(load_rgb(example_photos()[0], min_size=transforms.resize_size[0]))[None]
    served_maps, measured_maps = [], []
    assert torch.equal(foodvision.predictor(photo, served_maps), measured(photo, measured_maps))
    assert all(map(torch.equal, served_maps, measured_maps))


@needs_x86_int8
def test_a_record_for_other_weights_falls_back_to_the_self_check(checkpoint_copy, torch_home):
    edit_record(checkpoint_copy, weights_sha256="0" * 64)
    foodvision = serving.load(str(checkpoint_copy), "cpu")
    assert foodvision.predictor.precision == "int8"
    assert "record is for another setup or did not pass, and a self-check on the bundled photos passed" in (
        foodvision.precision_reason
    )


@needs_int8_engine
def test_a_failing_self_check_serves_fp32_and_says_why(checkpoint_copy, torch_home, monkeypatch, capsys):
    edit_record(checkpoint_copy, torch="0.0")
    failing = inference.Agreement(4, 0.75, 0.3, 0.41, 0.1, 0.8)
    monkeypatch.setattr(inference, "agreement", lambda *args: failing)
    foodvision = serving.load(str(checkpoint_copy), "cpu")
    assert foodvision.predictor.precision == "fp32"
    assert "fp32 serves, not int8" in foodvision.precision_reason
    assert "probabilities within 0.4100" in foodvision.precision_reason
    assert "Precision: fp32. fp32 serves, not int8" in capsys.readouterr().err  # and in the log


@needs_int8_engine
def test_a_record_made_with_other_int8_sums_does_not_vouch_for_this_cpu(checkpoint_copy, torch_home):
    """A record measured where int8 products add in int32 (VNNI) says nothing of kernels that add in int16 (AVX2),
    which take other bits: the self-check decides instead."""
    other = {"int32": "int16", "int16": "int32"}[inference.int8_sums()]
    edit_record(checkpoint_copy, int8_sums=other)
    foodvision = serving.load(str(checkpoint_copy), "cpu")
    assert "record is for another setup or did not pass" in foodvision.precision_reason


def test_without_an_int8_engine_fp32_serves_and_the_page_says_why(
    trained_head_checkpoint, torch_home, monkeypatch, torch_build
):
    """A build of torch without int8 kernels (no fbgemm, oneDNN or QNNPACK, no AMX), simulated: the app starts and
    serves fp32, and says why."""
    torch_build(["none"])
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    foodvision = serving.load(str(trained_head_checkpoint), "cpu")
    assert foodvision.predictor.precision == "fp32"
    expected = f"fp32: {inference.NO_INT8_ENGINE} (its quantized engines: none), so the int8 path cannot be tried."
    assert foodvision.precision_reason.startswith(expected)
    assert foodvision.classify(str(example_photos()[0])).probabilities


def test_an_asked_precision_is_served_as_asked(foodvision_fp32):
    assert foodvision_fp32.predictor.precision == "fp32"
    assert "as asked (--precision fp32)" in foodvision_fp32.precision_reason
    # and which engine runs it, as measured at start-up (onnx_engine.py)
    engine = r"\. On (ONNX Runtime: it ran|torch: ONNX Runtime ran) the pass \d\.\d\dx"
    assert re.search(engine, foodvision_fp32.precision_reason)


@needs_int8_engine
def test_the_record_names_everything_it_depends_on(trained_head_checkpoint, torch_home):
    setup = json.loads((trained_head_checkpoint / CONFIG_FILE).read_text())["int8"]["setup"]
    assert setup == inference.int8_setup(check_weights_file("IMAGENET1K_V1").sha256)
    assert setup["torch"] == torch.__version__ and setup["method"] == inference.INT8_METHOD


def test_the_examples_reference_distances_are_computed_at_load_from_each_example(foodvision_fp32):
    """Figure 7 (right)'s reference comes with the loaded model, before any prediction (a ZeroGPU call runs in a
    forked process, so a reference it computed would be lost), and is the examples' average, photo by photo."""
    per_photo = [
        mean_attention_distance([maps[None] for maps in foodvision_fp32.classify(str(photo)).attention_maps], 16)
        for photo in example_photos()
    ]
    assert len(per_photo) >= 2 and not torch.allclose(per_photo[0], per_photo[1])  # an average of differing photos
    assert torch.allclose(foodvision_fp32.reference_distances, torch.stack(per_photo).mean(dim=0), atol=1e-3)


def scored_photos(foodvision, pictures: list[Image.Image], folder: Path) -> tuple[torch.Tensor, list[str]]:
    """The served outlier scores and warnings of pictures, each classified from a file as uploads are."""
    folder.mkdir(exist_ok=True)
    scores, warnings = [], []
    for index, picture in enumerate(pictures):
        picture.save(folder / f"{index}.png")
        prediction = foodvision.classify(str(folder / f"{index}.png"))
        scores.append(prediction.outlier.score)
        warnings.append(prediction.warning())
    return torch.tensor(scores), warnings


def test_the_served_verdict_flags_drawn_non_food_on_every_precision(
    trained_head_checkpoint, foodvision, foodvision_fp32, tmp_path, capsys
):
    """Fresh drawn food and non-food, never seen in training: the score separates them on the fp32 and the int8
    path alike (it is computed from the served pass's own y), the threshold still accepts about 95% of the food,
    and a flagged photo's warning is what the page, the API and predict.py say."""
    rng = np.random.default_rng(11)
    food = [draw_food_image(name, rng) for name in GENERATED_CLASSES for _ in range(10)]
    non_food = [draw_non_food_image(kind, rng) for kind in NON_FOOD_KINDS for _ in range(6)]
    precisions = ["fp32"] + (["int8"] if inference.int8_sums() else [])
    measured = {}
    loaded = {served.predictor.precision: served for served in (foodvision, foodvision_fp32)}
    for precision in precisions:
        served = loaded.get(precision) or serving.load(str(trained_head_checkpoint), "cpu", precision)
        food_scores, food_warnings = scored_photos(served, food, tmp_path / f"food-{precision}")
        other_scores, other_warnings = scored_photos(served, non_food, tmp_path / f"other-{precision}")
        measured[precision] = outliers.auroc(food_scores, other_scores)
        flagged_food = served.outliers.is_outlier(food_scores).double().mean().item()
        # 5% expected; three binomial standard deviations over 30 photos allow up to 17%
        assert flagged_food <= 0.05 + 3 * math.sqrt(0.05 * 0.95 / len(food))
        assert sum(map(bool, other_warnings)) > sum(map(bool, food_warnings))
        assert all(
            bool(warning) == bool(served.outliers.is_outlier(score))
            for warning, score in zip(other_warnings, other_scores)
        )
        worst = other_warnings[int(other_scores.argmax())]
        assert "does not look like pizza, steak or sushi" in worst and "threshold" in worst
    assert measured["fp32"] > 0.75, measured
    if "int8" in measured:
        assert abs(measured["int8"] - measured["fp32"]) < 0.05, measured
    photo = tmp_path / f"other-{precisions[-1]}" / f"{int(other_scores.argmax())}.png"
    assert predict.main([str(photo), "--checkpoint", str(trained_head_checkpoint), "--precision", precisions[-1]]) == 0
    assert "  warning: This does not look like pizza, steak or sushi" in capsys.readouterr().out


def test_a_checkpoint_from_before_the_score_serves_and_says_the_check_is_off(checkpoint_copy, torch_home):
    config = json.loads((checkpoint_copy / CONFIG_FILE).read_text())
    del config["outliers"]
    (checkpoint_copy / CONFIG_FILE).write_text(json.dumps(config))
    tensors = load_file(checkpoint_copy / WEIGHTS_FILE)
    save_file(
        {name: tensor for name, tensor in tensors.items() if name.startswith("heads.")}, checkpoint_copy / WEIGHTS_FILE
    )
    served = serving.load(str(checkpoint_copy), "cpu")
    assert served.outliers is None
    prediction = served.classify(str(example_photos()[0]))
    assert prediction.outlier is None and prediction.warning() == "" and prediction.probabilities
    assert "The not-food check is off" in app.status(served)


def test_a_mismatched_score_is_a_clear_error_on_the_page(checkpoint_copy, torch_home):
    tensors = load_file(checkpoint_copy / WEIGHTS_FILE)
    save_file(tensors | {"outliers.class_precision": torch.eye(384)}, checkpoint_copy / WEIGHTS_FILE)
    served = serving.load(str(checkpoint_copy), "cpu")
    assert isinstance(served, serving.NoModel)
    assert "outliers.class_precision has shape (384, 384)" in served.problem and "train_head.py" in served.problem
    assert "No model is serving" in app.status(served)


def test_a_nan_outlier_score_warns_instead_of_passing_as_food():
    """NaN is never above a threshold: with `>` a photo whose features came out NaN showed no warning at all."""
    probabilities = {"pizza": 0.5, "steak": 0.3, "sushi": 0.2}
    verdicts = [serving.OutlierVerdict(score, threshold=5.0) for score in (float("nan"), 4.0, 5.0, 6.0)]
    assert [verdict.is_outlier for verdict in verdicts] == [True, False, False, True]
    nan = serving.Prediction(probabilities, torch.zeros(3, 1, 1), [], 1.0, verdicts[0])
    assert nan.warning().startswith("This does not look like pizza, steak or sushi (score nan, threshold 5.0)")
