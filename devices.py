"""Where the code runs: a torch device name checked against this machine, the CPU cores really granted, and the one
thread a server runs torch on."""

import contextvars
import os
import threading
from concurrent.futures import Future, ThreadPoolExecutor
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


def available_cpus(cgroup: Path = Path("/sys/fs/cgroup")) -> int:
    """Cores this process may really use: the affinity mask, capped by a cgroup CPU quota (containers such as
    Hugging Face Spaces report the host's cores but grant only a few)."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    quota = cgroup_cpu_quota(cgroup)
    return cpus if quota is None else min(cpus, max(1, int(quota)))


def cgroup_cpu_quota(cgroup: Path) -> float | None:
    """The cores a cgroup's CPU quota grants (cgroup v2's cpu.max, else v1's CFS files), None without a quota."""
    try:
        quota, period = (cgroup / "cpu.max").read_text().split()  # "<quota> <period>", the quota "max" for none
    except (OSError, ValueError):
        try:
            quota, period = ((cgroup / "cpu" / f"cpu.cfs_{name}_us").read_text() for name in ("quota", "period"))
        except OSError:
            return None
    try:
        return int(quota) / int(period) if int(quota) > 0 else None  # v1's quota is -1 for none
    except ValueError:
        return None


class TorchThread:
    """One long-lived thread for every torch computation of a server, whichever thread asks.

    libgomp gives each thread that starts a parallel region its own team of worker threads, kept until that thread
    ends. Once a process holds more of them than it has cores (the thread that loaded the model, then each of
    Gradio's worker threads that ran it), libgomp stops its workers spinning between regions, and every one of the
    model's hundreds of regions waits for a sleeping thread to wake: the same pass ran slower on Gradio's threads
    than on the thread that loaded it (BENCHMARKS.md, "The server against the process"). Run here, there is one
    team. A forked child (ZeroGPU runs each GPU call in one) starts its own thread."""

    def __init__(self):
        self._lock = threading.Lock()
        self._executor = None
        self._ident = None
        os.register_at_fork(after_in_child=self._forget)

    def _forget(self) -> None:
        self._lock, self._executor, self._ident = threading.Lock(), None, None

    def run(self, function, *args, **kwargs):
        """function(*args, **kwargs), computed on the torch thread; its exception is raised here."""
        if threading.get_ident() == self._started():  # already on it: a queued call would wait for itself
            return function(*args, **kwargs)
        return self.later(function, *args, **kwargs).result()

    def later(self, function, *args, **kwargs) -> Future:
        """function(*args, **kwargs) queued on the torch thread, without waiting for it."""
        self._started()
        # in the caller's context: Gradio keeps what an event knows (its request, its progress) in context variables
        return self._executor.submit(contextvars.copy_context().run, function, *args, **kwargs)

    def _started(self) -> int:
        """The torch thread's identity, started at the first call."""
        with self._lock:
            if self._executor is None:
                self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="torch")
                self._ident = self._executor.submit(threading.get_ident).result()
            return self._ident


torch_thread = TorchThread()
