"""Where the code runs: a torch device name checked against this machine, and the CPU cores really granted."""

import os
from pathlib import Path

import torch


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def resolve_device(name: str | None) -> torch.device:
    """The device `name` names (None: CUDA when available, else the CPU), checked by allocating on it, so a typo,
    an absent GPU or a build without that backend is a ValueError naming it instead of a failure at model load."""
    if name is None:
        return default_device()
    try:
        device = torch.device(name)
        torch.empty(0, device=device)
    except (RuntimeError, NotImplementedError, AssertionError) as error:  # torch raises all three for absent devices
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise ValueError(
            f"{name!r} is not a usable torch device here ({reason}); use cpu, cuda or cuda:<index>"
        ) from None
    return device


def available_cpus() -> int:
    """Cores this process may really use: the affinity mask, capped by a cgroup CPU quota (containers such as
    Hugging Face Spaces report the host's cores but grant only a few)."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()
        if quota != "max":
            cpus = min(cpus, max(1, int(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return cpus
