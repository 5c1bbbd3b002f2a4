"""The command-line options app.py and predict.py share: which head to load (--checkpoint), where (--device) and
on which inference path (--precision)."""

import argparse
import os
import warnings

import torch

from devices import default_device, resolve_device
from hub import CHECKPOINT_VARIABLE
from inference import PRECISIONS, resolve_precision


def usable_device(name: str) -> torch.device:
    """argparse type: devices.resolve_device, its ValueError as argparse's one-line usage error."""
    try:
        return resolve_device(name)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """--checkpoint, --device and --precision; check the parsed values with check_model_arguments."""
    parser.add_argument(
        "--checkpoint",
        default=os.environ.get(CHECKPOINT_VARIABLE),
        help=f"head checkpoint folder or Hugging Face Hub repo id (env {CHECKPOINT_VARIABLE}; "
        "default checkpoints/foodvision-mini, trained first if missing)",
    )
    parser.add_argument(
        "--device", type=usable_device, default=default_device(), help="torch device (default: cuda if available)"
    )
    parser.add_argument(
        "--precision",
        choices=PRECISIONS,
        default=os.environ.get("FOODVISION_PRECISION", "auto"),
        help="inference path (env FOODVISION_PRECISION; default auto: the fastest path this CPU runs "
        "accurately, chosen by inference.choose_predictor; figures in BENCHMARKS.md)",
    )


def check_model_arguments(parser: argparse.ArgumentParser, args: argparse.Namespace) -> argparse.Namespace:
    """args, or a clear parser error for a precision that cannot run: argparse checks `choices` only for a value
    typed on the command line, not for a default from FOODVISION_PRECISION, and inference.resolve_precision is
    the one place that knows which precision runs on which device."""
    try:
        with warnings.catch_warnings():  # a CPU fallback to fp32 is reported once, when the model loads
            warnings.simplefilter("ignore")
            resolve_precision(args.precision, args.device)
    except ValueError as error:
        parser.error(f"argument --precision (or env FOODVISION_PRECISION): {error}")
    return args
