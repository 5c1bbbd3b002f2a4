"""The app as a Hugging Face Space on every tier: the function bound to the prediction event is a ZeroGPU task (a
stand-in `spaces` module records what is decorated) and still predicts on the CPU; the Space's Python versions
compile every module; README's front matter asks for what ZeroGPU runs."""

import importlib
import inspect
import re
import shutil
import subprocess
import sys
import types
from pathlib import Path

import gradio as gr
import pytest
from huggingface_hub import metadata_load

import deploy
from standins import EXAMPLE_PHOTOS, REPO
from views import views_in

MODULES = sorted(str(path) for path in REPO.glob("*.py"))


class StandInZeroGpu:
    """What the stand-in `spaces` module's GPU decorator did: the tasks it made (with their durations), the calls
    they ran, and a switch for ZeroGPU refusing a GPU before the task's first update (a visitor's quota used up)."""

    def __init__(self):
        self.tasks: dict = {}
        self.ran: list = []
        self.quota_left = True

    def GPU(self, function=None, duration=None):
        def wrap(task):
            if inspect.isgeneratorfunction(task):  # as the real decorator, which streams a generator's updates

                def on_a_gpu(*args, **kwargs):
                    self.lend(on_a_gpu)
                    yield from task(*args, **kwargs)

            else:

                def on_a_gpu(*args, **kwargs):
                    self.lend(on_a_gpu)
                    return task(*args, **kwargs)

            self.tasks[on_a_gpu] = duration
            return on_a_gpu

        return wrap(function) if callable(function) else wrap

    def lend(self, task) -> None:
        if not self.quota_left:
            raise gr.Error("You have exceeded your GPU quota", title="ZeroGPU quota exceeded")
        self.ran.append(task)


@pytest.fixture
def app_with_stand_in_spaces(monkeypatch):
    """app.py imported with a stand-in `spaces` module (StandInZeroGpu)."""
    zero_gpu = StandInZeroGpu()
    monkeypatch.setitem(sys.modules, "spaces", types.SimpleNamespace(GPU=zero_gpu.GPU))
    import app

    yield importlib.reload(app), zero_gpu
    monkeypatch.undo()
    importlib.reload(app)  # back to the real `spaces` package (or none)


def prediction_event(demo):
    [predict] = [function for function in demo.fns.values() if function.api_name == "predict"]
    return predict.fn


def test_the_prediction_event_is_a_short_zerogpu_task_and_predicts_on_cpu(app_with_stand_in_spaces, foodvision):
    app, zero_gpu = app_with_stand_in_spaces
    demo = app.build_demo(foodvision)
    cleared, first, last = (
        {block.elem_id: value for block, value in update.items()}
        for update in prediction_event(demo)({"path": str(EXAMPLE_PHOTOS[0])})
    )
    [task] = zero_gpu.ran  # the event's updates came from a @spaces.GPU task, called once
    assert 0 < zero_gpu.tasks[task] <= 60  # ZeroGPU's default is 60 s; shorter queues sooner
    assert cleared["prediction"] is None and cleared["timing"] == ""  # before ZeroGPU lends a GPU (see below)
    probabilities, timing = last["prediction"], last["timing"]
    assert (first["prediction"], first["timing"]) == (probabilities, timing.split(" · **pictures")[0])  # label first
    assert sum(probabilities.values()) == pytest.approx(1)
    assert "ms" in timing and all(Path(last[view.name]).is_file() for view in views_in("photo"))
    assert list(zero_gpu.tasks) == [task]  # the one GPU task


def test_a_gpu_zerogpu_refuses_still_clears_the_previous_photos_answer(app_with_stand_in_spaces, foodvision):
    """ZeroGPU's refusals (a visitor's quota used up, its worker failing) come before the task's first update, so
    Page.predict never runs to clear the answer: without the event's own first update, the previous photo's label
    would stay beside the new photo under the error."""
    app, zero_gpu = app_with_stand_in_spaces
    zero_gpu.quota_left = False
    updates = prediction_event(app.build_demo(foodvision))({"path": str(EXAMPLE_PHOTOS[1])})
    cleared = {block.elem_id: value for block, value in next(updates).items()}
    assert cleared["prediction"] is None and cleared["verdict"] == "" and cleared["timing"] == ""
    assert all(cleared[view.name] is None for view in views_in("photo"))
    with pytest.raises(gr.Error, match="exceeded your GPU quota"):
        next(updates)
    assert zero_gpu.ran == []


def test_the_real_spaces_package_leaves_the_function_as_it_is():
    spaces = pytest.importorskip("spaces")  # requirements-dev.txt installs it, as Spaces do

    def task():
        return 42

    assert spaces.GPU(duration=10)(task) is task  # outside ZeroGPU (no SPACES_ZERO_GPU)


def space_pythons() -> dict[str, Path]:
    """The pyenv interpreters of the Python versions ZeroGPU runs (README front matter), where installed."""
    if shutil.which("pyenv") is None:
        return {}
    root = Path(subprocess.run(["pyenv", "root"], capture_output=True, text=True).stdout.strip() or "/nonexistent")
    found = {}
    for version in deploy.ZERO_GPU_PYTHON_VERSIONS:
        minor = ".".join(version.split(".")[:2])
        candidates = sorted(root.glob(f"versions/{minor}.*/bin/python"))
        exact = root / "versions" / version / "bin" / "python"
        if exact.exists() or candidates:
            found[version] = exact if exact.exists() else candidates[-1]
    return found


@pytest.mark.parametrize("version", deploy.ZERO_GPU_PYTHON_VERSIONS)
def test_every_module_compiles_under_the_spaces_python(version):
    python = space_pythons().get(version)
    if python is None:
        pytest.skip(f"no Python {version} here (pyenv install {version})")
    compile_all = "import sys\nfor path in sys.argv[1:]:\n    compile(open(path).read(), path, 'exec')\n"
    result = subprocess.run([str(python), "-c", compile_all, *MODULES], capture_output=True, text=True)
    assert result.returncode == 0, f"{python}: {result.stderr}"


def test_readme_front_matter_is_a_space_zerogpu_runs():
    settings = metadata_load(REPO / "README.md")  # as the Hub and deploy.check_front_matter read it
    assert settings["sdk"] == "gradio" and settings["app_file"] == "app.py"
    assert settings["python_version"] in deploy.ZERO_GPU_PYTHON_VERSIONS
    gradio_pin = re.search(r"^gradio==(\S+)$", (REPO / "requirements.txt").read_text(), re.MULTILINE).group(1)
    assert settings["sdk_version"] == gradio_pin


# The newest PyTorch versions ZeroGPU's docs list (https://huggingface.co/docs/hub/spaces-zerogpu, "Supported
# versions"): the test's own copy, so that a pin deploy.py moves to is checked against the docs, not against itself.
ZERO_GPU_TORCH = {"2.8.0", "2.9.1", "2.10.0", "2.11.0"}


def test_the_spaces_requirements_pin_a_torch_zerogpu_supports():
    requirements = deploy.space_requirements(REPO).decode()
    pins = dict(re.findall(r"^(torch|torchvision)==(\S+)$", requirements, re.MULTILINE))
    assert pins == deploy.SPACE_TORCH_PINS
    assert pins["torch"] in ZERO_GPU_TORCH
    major, minor, patch = map(int, pins["torch"].split("."))
    assert pins["torchvision"] == f"0.{minor + 15}.{patch}"  # torchvision's release for that torch (2.11.0: 0.26.0)
    local = (REPO / "requirements.txt").read_text().splitlines()
    others = [line for line in local if not re.match(r"^(torch|torchvision)==", line)]
    assert [line for line in requirements.splitlines() if not re.match(r"^(torch|torchvision)==", line)] == others
