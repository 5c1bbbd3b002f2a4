"""The project's shape: modules import only the layers below them, and no file names a path of one machine."""

import subprocess

import deploy
from standins import REPO

# Lowest first. A module imports only modules of lower layers, so the code reads from the bottom up without cycles:
# the shared names, the paper and the building blocks, then the served classifier and its training, then the page
# and the tools.
LAYERS = (
    {"hub"},  # the names the app, its training and deploy.py share (deploy.py imports no torch)
    {"model", "images", "devices", "outputs", "outliers", "fewshot"},
    {"onnx_engine"},
    {"figures", "classifier", "data"},
    {"inference"},
    {"serving", "options", "train_head"},
    {"views"},
    {"app", "predict", "deploy", "train_vit"},
)


def test_every_module_has_a_layer_and_imports_only_lower_ones():
    modules = {path.stem for path in REPO.glob("*.py")}
    assert modules == set().union(*LAYERS), "a new module: place it in LAYERS"
    layer_of = {module: depth for depth, layer in enumerate(LAYERS) for module in layer}
    upward = [
        f"{module} imports {imported}"
        for module in sorted(modules)
        for imported in sorted(deploy.imports_of(REPO, f"{module}.py") & modules)
        if layer_of[imported] >= layer_of[module]
    ]
    assert upward == []


def test_no_committed_file_names_a_path_of_one_machine():
    files = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True).stdout.split()
    machine_paths = ("/work/", "/home/", "/Users/", "/tmp/fresh")
    named = [
        name
        for name in files
        if (REPO / name).suffix in {".py", ".md", ".txt", ".toml", ".ini", ".json", ".yaml", ""}
        and (REPO / name).is_file()
        and any(path in (REPO / name).read_text(errors="ignore") for path in machine_paths)
        and name != "tests/test_project.py"
    ]
    assert named == []


def test_every_benchmark_script_parses_its_arguments():
    """`python benchmarks/x.py --help` prints the usage instead of running (and overwriting its results)."""
    scripts = [path for path in (REPO / "benchmarks").glob("*.py") if 'if __name__ == "__main__"' in path.read_text()]
    assert len(scripts) > 10
    assert [path.name for path in scripts if "parse_args(" not in path.read_text()] == []
