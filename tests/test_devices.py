"""devices.py: device names checked against the machine, and the one thread a server runs torch on."""

import contextvars
import os
import signal
import threading
import time

import pytest
import torch

from devices import TorchThread, available_cpus, resolve_device


def test_a_device_this_machine_lacks_is_a_clear_error():
    with pytest.raises(ValueError, match="'nonsense' is not a usable torch device here"):
        resolve_device("nonsense")
    assert resolve_device("cpu") == torch.device("cpu")


@pytest.mark.parametrize(
    ("files", "granted"),
    [
        ({"cpu.max": "150000 100000\n"}, 1),  # cgroup v2, 1.5 cores: one whole
        ({"cpu.max": "max 100000\n"}, None),
        ({"cpu/cpu.cfs_quota_us": "100000\n", "cpu/cpu.cfs_period_us": "100000\n"}, 1),  # cgroup v1
        ({"cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n"}, None),
        ({"cpu.max": "garbled"}, None),
        ({}, None),
    ],
)
def test_available_cpus_are_capped_by_a_cgroup_quota(tmp_path, files, granted):
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    assert available_cpus(tmp_path) == (min(granted, affinity) if granted else affinity)


def test_every_caller_runs_on_the_same_thread_and_gets_its_result_or_its_error():
    torch_thread = TorchThread()
    seen = []

    def ask():
        seen.append(torch_thread.run(threading.get_ident))

    callers = [threading.Thread(target=ask) for _ in range(4)]
    for caller in callers:
        caller.start()
    for caller in callers:
        caller.join()
    ask()
    assert len(seen) == 5 and len(set(seen)) == 1 and seen[0] != threading.get_ident()
    with pytest.raises(ZeroDivisionError):
        torch_thread.run(lambda: 1 / 0)
    assert torch_thread.run(sum, [1, 2, 3]) == 6  # still serving after an error


def test_a_call_from_the_torch_thread_itself_runs_at_once_instead_of_waiting_for_itself():
    torch_thread = TorchThread()
    # a call queued behind itself never ends: waited for with a limit, that fails this test instead of hanging it
    inner = torch_thread.later(lambda: torch_thread.run(threading.get_ident)).result(timeout=30)
    assert inner == torch_thread.run(threading.get_ident)


def test_the_callers_context_variables_travel_with_the_call():
    """Gradio keeps an event's request and progress in context variables."""
    torch_thread = TorchThread()
    event = contextvars.ContextVar("event", default=None)
    event.set("visitor 1")
    assert torch_thread.run(event.get) == "visitor 1"


@pytest.mark.skipif(not hasattr(os, "fork"), reason="no fork on this platform")
def test_a_forked_child_gets_a_thread_of_its_own():
    """ZeroGPU runs each GPU call in a forked process, where the parent's torch thread does not exist."""
    torch_thread = TorchThread()
    torch_thread.run(threading.get_ident)  # the parent's thread exists before the fork
    read, write = os.pipe()
    child = os.fork()
    if child == 0:  # the child reports through the pipe and leaves without running pytest's exit handlers
        try:
            os.write(write, str(torch_thread.run(lambda: torch.ones(2).sum().item())).encode())
        finally:
            os._exit(0)
    os.close(write)
    deadline = time.monotonic() + 30
    while os.waitpid(child, os.WNOHANG) == (0, 0):  # a child waiting for the parent's thread would wait forever
        if time.monotonic() > deadline:
            os.kill(child, signal.SIGKILL)
            os.waitpid(child, 0)
            pytest.fail("the forked child's call never returned")
        time.sleep(0.05)
    assert os.read(read, 100).decode() == "2.0"
