"""onnx_engine.py: ONNX Runtime gives torch's fp32 logits, maps and y, its export is cached by the weights' hash and
made again when unreadable, and inference.fastest_fp32 lets it serve only where it agrees with torch and pays
ENGINE_SPEED_UP; otherwise torch serves and the reason says why. Speed lives in benchmarks/engines.py."""

import sys

import pytest
import torch

import inference
import onnx_engine
from inference import Predictor, fastest_fp32, vit_from_torchvision
from onnx_engine import OnnxRuntimePredictor, OnnxRuntimeUnavailable
from standins import TINY_CALIBRATION, TINY_VIT, tiny_extractor

SHA = "ab" * 32


def test_onnx_runtime_gives_torchs_logits_maps_and_features(tmp_path):
    model = tiny_extractor()
    torch_fp32 = Predictor(model, "fp32")
    onnx = OnnxRuntimePredictor(vit_from_torchvision(model), tmp_path, SHA, threads=1)
    images = TINY_CALIBRATION[:3]  # a batch: the export's batch axis is free
    expected_maps, expected_features, maps, features = [], [], [], []
    expected = torch_fp32(images, expected_maps, expected_features)
    torch.testing.assert_close(onnx(images, maps, features), expected, rtol=0, atol=1e-5)
    assert len(maps) == len(expected_maps) == 2
    for got, want in zip(maps, expected_maps):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-5)
    torch.testing.assert_close(features[0], expected_features[0], rtol=0, atol=1e-5)
    torch.testing.assert_close(onnx.features(images), expected_features[0], rtol=0, atol=1e-5)
    torch.testing.assert_close(onnx(images), expected, rtol=0, atol=1e-5)  # without maps


def test_the_export_is_cached_by_the_weights_hash_and_made_again_when_unreadable(tmp_path):
    vit = vit_from_torchvision(tiny_extractor())
    by_older_code = tmp_path / f"vit-fp32-{SHA[:16]}-0123abcd.onnx"  # an older torch's or model.py's export
    by_older_code.write_bytes(b"an older export")
    first = OnnxRuntimePredictor(vit, tmp_path, SHA, threads=1)
    assert not first.cached and first.file.parent == tmp_path and SHA[:16] in first.file.name
    assert not by_older_code.exists()  # a copy of the weights nothing reads any more
    onnx_engine.export(vit, tmp_path / "vit-fp32-smoothed.onnx")  # another name (benchmarks/engines.py) removes none
    assert first.file.exists()
    (tmp_path / "vit-fp32-smoothed.onnx").unlink()
    written = first.file.stat().st_mtime_ns
    again = OnnxRuntimePredictor(vit, tmp_path, SHA, threads=1)
    assert again.cached and again.file.stat().st_mtime_ns == written
    other = OnnxRuntimePredictor(vit, tmp_path, "cd" * 32, threads=1)
    assert not other.cached and other.file != first.file
    first.file.write_bytes(first.file.read_bytes()[:1000])  # truncated, as by a full disk
    remade = OnnxRuntimePredictor(vit, tmp_path, SHA, threads=1)
    assert not remade.cached
    torch.testing.assert_close(remade.features(TINY_CALIBRATION), first.features(TINY_CALIBRATION))
    assert sorted(path.name for path in tmp_path.iterdir()) == sorted([first.file.name, other.file.name])


def test_a_read_only_cache_folder_gets_no_export_and_no_leftovers(tmp_path, monkeypatch):
    monkeypatch.setattr(onnx_engine.os, "access", lambda path, mode: False)
    onnx = OnnxRuntimePredictor(vit_from_torchvision(tiny_extractor()), tmp_path, SHA, threads=1)
    assert list(tmp_path.iterdir()) == [] and not onnx.file.exists()  # loaded, then its temporary folder deleted
    assert onnx.features(TINY_CALIBRATION).shape == (len(TINY_CALIBRATION), TINY_VIT["hidden_dim"])


def test_speed_up_is_torchs_median_time_over_onnx_runtimes_in_turns_after_a_warm_up(monkeypatch):
    """On a clock the runs themselves advance, so the figure is exact: warm-ups of 100 and 50 would move the
    medians (to 7 and 2) if they counted."""
    clock, order = [0.0], []
    monkeypatch.setattr(onnx_engine.time, "perf_counter", lambda: clock[0])

    def taking(name, durations):
        remaining = iter(durations)

        def run(images, maps):
            order.append(name)
            clock[0] += next(remaining)

        return run

    torch_run = taking("torch", [100, 4, 8, 6, 4, 8])
    onnx_run = taking("onnx", [50, 2, 2, 3, 1, 2])
    assert onnx_engine.speed_up(torch_run, onnx_run, TINY_CALIBRATION, repeats=5) == 6 / 2
    assert order == ["torch", "onnx"] * 6


@pytest.mark.parametrize("missing", ["onnxruntime", "onnx", "onnxscript"])
def test_without_onnx_runtime_or_the_exporter_it_says_what_to_install(tmp_path, monkeypatch, missing):
    monkeypatch.setitem(sys.modules, missing, None)
    with pytest.raises(OnnxRuntimeUnavailable, match=f"{missing} .*not installed .*pip install -r requirements.txt"):
        OnnxRuntimePredictor(vit_from_torchvision(tiny_extractor()), tmp_path, SHA, threads=1)


@pytest.mark.parametrize(
    ("measured", "serves", "reason"),
    [
        (1.6, "OnnxRuntimePredictor", "On ONNX Runtime: it ran the pass 1.60x as fast as torch at start-up"),
        (1.2, "Predictor", "On torch: ONNX Runtime ran the pass 1.20x as fast at start-up, under the 1.25x"),
    ],
)
def test_onnx_runtime_serves_fp32_only_where_it_pays(tiny_examples, tmp_path, monkeypatch, measured, serves, reason):
    model, images, reference, maps = tiny_examples
    monkeypatch.setattr(inference, "speed_up", lambda *args: measured)  # the rule, whatever this CPU measures
    predictor, why = fastest_fp32(model, images, reference, maps, tmp_path, SHA)
    assert type(predictor).__name__ == serves and predictor.precision == "fp32"
    assert why.startswith(reason)


def test_onnx_runtime_that_differs_from_torch_by_more_than_rounding_does_not_serve(
    tiny_examples, tmp_path, monkeypatch
):
    """0.001 would pass int8's bound; an fp32 engine must match torch to rounding."""
    model, images, reference, maps = tiny_examples
    monkeypatch.setattr(inference, "speed_up", lambda *args: 9.0)
    monkeypatch.setattr(inference, "agreement", lambda *args: inference.Agreement(4, 1.0, 0.0, 0.001, 0.0005, 1.0))
    predictor, why = fastest_fp32(model, images, reference, maps, tmp_path, SHA)
    assert isinstance(predictor, Predictor)
    assert why.startswith("On torch: ONNX Runtime disagreed with it on the bundled photos (top-1 100.0% the same")
    assert "an fp32 engine must match within 1e-04" in why


def test_onnx_runtime_failing_while_running_leaves_torch_serving(tiny_examples, tmp_path, monkeypatch):
    model, images, reference, maps = tiny_examples

    def failing(self, *args):
        raise RuntimeError("[ONNXRuntimeError] : 6 : RUNTIME_EXCEPTION : out of memory")

    monkeypatch.setattr(OnnxRuntimePredictor, "__call__", failing)
    predictor, why = fastest_fp32(model, images, reference, maps, tmp_path, SHA)
    assert isinstance(predictor, Predictor)
    assert why == (
        "On torch: ONNX Runtime failed running the model (RuntimeError: [ONNXRuntimeError] : 6 : RUNTIME_EXCEPTION : "
        "out of memory)."
    )


def test_without_onnx_runtime_torch_serves_fp32_and_says_why(tiny_examples, tmp_path, monkeypatch):
    model, images, reference, maps = tiny_examples
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    predictor, why = fastest_fp32(model, images, reference, maps, tmp_path, SHA)
    assert isinstance(predictor, Predictor) and predictor.precision == "fp32"
    assert why == (
        "On torch: ONNX Runtime cannot serve here (onnxruntime is not installed (pip install -r requirements.txt))."
    )
