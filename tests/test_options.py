"""options.py: the command-line options app.py and predict.py share refuse what cannot run with argparse's one-line
usage error, whether typed or set in the environment."""

import pytest
import torch

import predict
from app import parse_args


@pytest.mark.parametrize("device", ["tpu9", "cuda"])
def test_unusable_device_is_refused_with_a_clear_message(device, capsys):
    if device == "cuda" and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(SystemExit):
        parse_args(["--device", device])
    assert f"argument --device: '{device}' is not a usable torch device here" in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv, env, message",
    [
        ([], {"FOODVISION_PRECISION": "garbage"}, "precision must be one of auto, fp32, int8, bf16, got 'garbage'"),
        # a device other than the CPU (meta allocates nothing; the same rule refuses cuda)
        (["--device", "meta", "--precision", "int8"], {}, "precision 'int8' is a CPU path; the model is on meta"),
    ],
    ids=["unknown-from-env", "int8-off-cpu"],
)
@pytest.mark.parametrize("parse", [parse_args, lambda argv: predict.main(["photo.jpg", *argv])], ids=["app", "predict"])
def test_precision_that_cannot_run_is_refused_with_a_clear_message(parse, argv, env, message, monkeypatch, capsys):
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(SystemExit) as refused:
        parse(argv)
    assert refused.value.code == 2
    assert f"argument --precision (or env FOODVISION_PRECISION): {message}" in capsys.readouterr().err
