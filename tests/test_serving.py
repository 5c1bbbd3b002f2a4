"""serving.py: which precision serves and why. The int8 path serves only where it has proven itself on the weights
being served (a passing record for exactly this setup, or a self-check on the bundled photos), and the page says
which weights file is serving: torchvision checks the SHA-256 in its file name only when it downloads."""

import hashlib
import json
import shutil

import pytest
import torch

import classifier
import inference
import serving
from classifier import CONFIG_FILE, check_weights_file
from figures import mean_attention_distance
from images import example_photos

needs_int8_engine = pytest.mark.skipif(
    inference.int8_sums() is None, reason="torch has no int8 kernels (fbgemm) for this CPU"
)


@pytest.fixture
def checkpoint_copy(trained_head_checkpoint, tmp_path):
    return shutil.copytree(trained_head_checkpoint, tmp_path / "checkpoint")


def edit_record(checkpoint, **setup_changes) -> None:
    config = json.loads((checkpoint / CONFIG_FILE).read_text())
    config["int8"]["setup"] |= setup_changes
    (checkpoint / CONFIG_FILE).write_text(json.dumps(config))


@needs_int8_engine
def test_a_passing_record_for_this_setup_serves_int8(trained_head_checkpoint, torch_home):
    record = json.loads((trained_head_checkpoint / CONFIG_FILE).read_text())["int8"]
    assert record["measured"] and record["agreement"]["passed"] and record["agreement"]["inputs"] == 24
    foodvision = serving.load(str(trained_head_checkpoint), "cpu")
    assert foodvision.predictor.precision == "int8"
    reason = foodvision.precision_reason
    assert "train_head.py measured it against fp32 on the test split for exactly this setup" in reason


@needs_int8_engine
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


def test_without_an_int8_engine_fp32_serves_and_the_page_says_why(trained_head_checkpoint, torch_home, monkeypatch):
    """An ARM build of torch (no fbgemm, no AMX), simulated: the app starts and serves fp32, and says why."""
    monkeypatch.setattr(torch.backends.quantized, "engine", "qnnpack")
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    foodvision = serving.load(str(trained_head_checkpoint), "cpu")
    assert foodvision.predictor.precision == "fp32"
    assert "fp32: torch has no int8 kernels for this CPU" in foodvision.precision_reason
    assert foodvision.classify(str(example_photos()[0])).probabilities


def test_an_asked_precision_is_served_as_asked(trained_head_checkpoint, torch_home):
    foodvision = serving.load(str(trained_head_checkpoint), "cpu", "fp32")
    assert foodvision.predictor.precision == "fp32" and "as asked (--precision fp32)" in foodvision.precision_reason


def test_stand_in_weights_are_named_on_the_page_and_the_verdict_is_remembered(torch_home, monkeypatch):
    verdict = check_weights_file("IMAGENET1K_V1")
    assert not verdict.published and verdict.expected_prefix == "c867db91"
    assert "these are not the published IMAGENET1K_V1 weights" in verdict.describe()
    file = verdict.file
    assert hashlib.sha256(file.read_bytes()).hexdigest() == verdict.sha256

    def no_hashing(*args):
        raise AssertionError("hashed again although size and modification time are unchanged")

    monkeypatch.setattr(classifier.hashlib, "sha256", no_hashing)
    assert check_weights_file("IMAGENET1K_V1") == verdict


def test_a_file_matching_its_name_is_the_published_one(tmp_path, monkeypatch):
    content = b"stand-in weights"
    prefix = hashlib.sha256(content).hexdigest()[:8]
    file = tmp_path / f"vit_b_16-{prefix}.pth"
    file.write_bytes(content)
    monkeypatch.setattr(classifier, "cache_file", lambda weights: file)
    assert check_weights_file("IMAGENET1K_V1").published
    file.write_bytes(b"something else")  # a different size: hashed again
    assert not check_weights_file("IMAGENET1K_V1").published


@needs_int8_engine
def test_the_record_names_everything_it_depends_on(trained_head_checkpoint, torch_home):
    setup = json.loads((trained_head_checkpoint / CONFIG_FILE).read_text())["int8"]["setup"]
    assert setup == inference.int8_setup(check_weights_file("IMAGENET1K_V1").sha256)
    assert setup["torch"] == torch.__version__ and setup["method"] == inference.INT8_METHOD


def test_the_examples_reference_distances_are_computed_at_load_from_each_example(trained_head_checkpoint, torch_home):
    """Figure 7 (right)'s reference comes with the loaded model, before any prediction (a ZeroGPU call runs in a
    forked process, so a reference it computed would be lost), and is the examples' average, photo by photo."""
    foodvision = serving.load(str(trained_head_checkpoint), "cpu", "fp32")
    per_photo = [
        mean_attention_distance([maps[None] for maps in foodvision.classify(str(photo)).attention_maps], 16)
        for photo in example_photos()
    ]
    assert len(per_photo) >= 2 and not torch.allclose(per_photo[0], per_photo[1])  # an average of differing photos
    assert torch.allclose(foodvision.reference_distances, torch.stack(per_photo).mean(dim=0), atol=1e-3)
