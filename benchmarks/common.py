"""What every benchmark shares: interleaved timing, the machine's description, result files, and
the offline stand-ins for the pretrained backbone and a trained head.

Timing: the variants of one comparison run in turns (A, B, C, then B, C, A, ...) in one process, so a
neighbour's load on a shared machine slows all of them alike; each figure is a median and each
comparison a ratio of medians from the same run.
"""

import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import torchvision

ROOT = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).resolve().parent / "results"
sys.path.insert(0, str(ROOT))  # the project's modules, run from anywhere


def interleaved_ms(variants: dict, repeats: int, warmup: int = 1) -> dict[str, list[float]]:
    """Wall-clock milliseconds of each zero-argument callable, `repeats` times each, in turns. Each round starts one
    variant later, so that none always follows the same one (whose threads or caches may still be busy)."""
    for run in variants.values():
        for _ in range(warmup):
            run()
    times = {name: [] for name in variants}
    names = list(variants)
    for round_ in range(repeats):
        shift = round_ % len(names)
        for name in names[shift:] + names[:shift]:
            started = time.perf_counter()
            variants[name]()
            times[name].append((time.perf_counter() - started) * 1000)
    return times


def median(values: list[float]) -> float:
    return statistics.median(values)


def p95(values: list[float]) -> float:
    """The 95th percentile, interpolated between the values measured: with fewer than 20 of them, the default
    ("exclusive") method would extrapolate past the slowest."""
    return statistics.quantiles(values, n=20, method="inclusive")[-1]


# The speed targets BENCHMARKS.md states, printed by the benchmarks that measure them. The model time the app reports,
# against a bare fp32 torchvision forward, by how the CPU's int8 kernels add their products (inference.int8_sums):
MODEL_TIME_TARGET = {"int32": 0.35, "int16": 0.55}  # AVX-512 VNNI or AMX; AVX2
SERVER_TARGET = 1.1  # that model time against the same pass in the benchmark's process
REQUEST_TARGET = 1.3  # a request less a bare Gradio page's, against the work the app reports (prediction + pictures)
BROWSER_TARGETS = {  # in a real browser, from the drop
    "label ms": 250,
    "label less the bare page's, against a bare fp32 forward": 0.9,
    'whole "Inside the ViT" ms': 1500,
}


def against(value: float, target: float | None, unit: str = "x") -> str:
    """A figure beside its target (at most), and whether it meets it; the figure alone where there is no target."""
    shown = f"{value:.2f}x" if unit == "x" else f"{value:,.1f} ms"
    if target is None:
        return shown
    return f"{shown} ({'met' if value <= target else 'MISSED'}: at most {target:g}{unit})"


def bare_forward_ms(foodvision, pixels: torch.Tensor) -> float:
    """One fp32 pass of the served head's torchvision model on preprocessed `pixels` (1, 3, H, W), without the
    attention maps: the yardstick of the speed targets."""
    with torch.inference_mode():
        started = time.perf_counter()
        foodvision.model(pixels)
        return (time.perf_counter() - started) * 1000


def print_table(headers: list[str], rows: list[list]) -> None:
    """A Markdown table, numbers rounded for reading."""
    cells = [[f"{v:,.1f}" if isinstance(v, float) else str(v) for v in row] for row in rows]
    widths = [max(len(str(h)), *(len(r[i]) for r in cells)) for i, h in enumerate(headers)]
    print("| " + " | ".join(str(h).ljust(w) for h, w in zip(headers, widths)) + " |")
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for row in cells:
        print("| " + " | ".join(c.ljust(w) for c, w in zip(row, widths)) + " |")
    print()


# The instruction sets that decide the CPU paths' speed (int8's sums, bf16): the CPU's kind beside every figure
INSTRUCTION_SETS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_tile", "asimd")


def cpu_info() -> tuple[str, list[str]]:
    """(the CPU's model name, which of INSTRUCTION_SETS it has), from /proc/cpuinfo on Linux, else lscpu or
    platform."""
    try:
        fields = dict(line.split(":", 1) for line in Path("/proc/cpuinfo").read_text().splitlines()[:40] if ":" in line)
        fields = {key.strip(): value.strip() for key, value in fields.items()}
        flags = set((fields.get("flags") or fields.get("Features", "")).split())
        name = fields.get("model name", platform.processor())
        if "cpu family" in fields and "model" in fields:  # tells apart CPUs sold under one name (EPYCs of two kinds)
            name += f", family {fields['cpu family']} model {fields['model']}"
        return name, [flag for flag in INSTRUCTION_SETS if flag in flags]
    except OSError:
        try:
            lscpu = subprocess.run(["lscpu"], capture_output=True, text=True, env={**os.environ, "LC_ALL": "C"})
            lines = lscpu.stdout.splitlines()
            return next(line.split(":", 1)[1].strip() for line in lines if line.startswith("Model name")), []
        except (OSError, StopIteration):
            return platform.processor(), []


def code_version() -> str:
    """The checkout's commit, "+changes" where files differ from it: which code the figures are of."""
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
        status = subprocess.run(["git", "status", "--porcelain"], cwd=ROOT, capture_output=True, text=True)
    except OSError:
        return "unknown (no git)"
    if commit.returncode != 0:
        return "unknown (not a git checkout)"
    return commit.stdout.strip() + ("+changes" if status.stdout.strip() else "")


def machine() -> dict:
    """Where the figures come from: CPU model and instruction sets, cores, the code, versions and the load average."""
    from devices import available_cpus

    cpu, instruction_sets = cpu_info()
    return {
        "cpu": cpu,
        "instruction_sets": instruction_sets,
        "cores": available_cpus(),
        "torch_threads": torch.get_num_threads(),
        "code": code_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "load_average_1_5_15": [round(x, 2) for x in os.getloadavg()],
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }


def print_machine() -> dict:
    info = machine()
    print(
        f"{info['cpu']} ({', '.join(info['instruction_sets']) or 'none of ' + ', '.join(INSTRUCTION_SETS)}), "
        f"{info['cores']} cores ({info['torch_threads']} torch threads), code {info['code']}, torch {info['torch']}, "
        f"torchvision {info['torchvision']}, load {info['load_average_1_5_15']}, {info['date']}\n"
    )
    return info


def save_results(name: str, results: dict) -> Path:
    """benchmarks/results/<name>.json (not committed: figures go into BENCHMARKS.md by hand)."""
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps({"machine": machine(), **results}, indent=2) + "\n")
    return path


def random_backbone_home(directory: Path) -> Path:
    """A TORCH_HOME whose hub cache holds standins' seeded random vit_b_16 under the real weights' file name (the
    real weights cannot be downloaded here); os.environ["TORCH_HOME"] points at it from now on, for subprocesses
    too."""
    from tests.standins import write_random_backbone

    os.environ["TORCH_HOME"] = str(write_random_backbone(directory))
    return directory


def generated_head_checkpoint(directory: Path) -> Path:
    """A head trained by train_head.py (its defaults) on standins' generated pizza/steak/sushi images over the
    random backbone: confident, non-uniform probabilities to compare paths with. TORCH_HOME points at that
    backbone from now on."""
    from tests.standins import train_head_checkpoint, write_food_dataset

    torch_home = random_backbone_home(directory / "torch_home")  # TORCH_HOME for this process and the servers
    checkpoint = directory / "foodvision-mini"
    if (checkpoint / "config.json").is_file():
        return checkpoint
    dataset = directory / "pizza_steak_sushi"
    if not dataset.exists():
        write_food_dataset(dataset, train_per_class=20, test_per_class=10)
    return train_head_checkpoint(dataset, checkpoint, torch_home)


WORK_DIR = ROOT / "data" / "benchmarks"  # the cached backbone, dataset and head (data/ is git-ignored)


def load_benchmark_classifier():
    """(model, transforms, config) of the generated head over the random backbone."""
    from classifier import load_classifier

    return load_classifier(generated_head_checkpoint(WORK_DIR))
