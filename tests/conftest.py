"""Shared fixtures. The pretrained backbone cannot be downloaded on the CI machines, so the
`torch_home` fixture writes a randomly initialised vit_b_16 state dict where torchvision's
weights loader looks first; everything downstream runs the real loading code."""

import os
from pathlib import Path

import pytest
import torch
import torchvision


@pytest.fixture(scope="session")
def torch_home(tmp_path_factory) -> Path:
    home = tmp_path_factory.mktemp("torch_home")
    weights_url = torchvision.models.ViT_B_16_Weights.IMAGENET1K_V1.url
    cache_file = home / "hub" / "checkpoints" / Path(weights_url).name
    cache_file.parent.mkdir(parents=True)
    torch.manual_seed(0)
    torch.save(torchvision.models.vit_b_16().state_dict(), cache_file)
    previous = os.environ.get("TORCH_HOME")
    os.environ["TORCH_HOME"] = str(home)
    yield home
    if previous is None:
        os.environ.pop("TORCH_HOME", None)
    else:
        os.environ["TORCH_HOME"] = previous
