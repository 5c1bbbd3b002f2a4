"""deploy.py against a stand-in Hub: an HTTP server on 127.0.0.1 that answers the routes HfApi calls
the way huggingface.co does (as read from huggingface_hub 2.4.0's source) and records every request, so
the tests see exactly what would be created, uploaded and set, and in which order. No real network."""

import base64
import json
import os
import subprocess
import sys
from pathlib import Path

import huggingface_hub
import pytest

import deploy
from hub import HEAD_FILES
from standins import HUB_TOKEN, HUB_USER, REPO, StandInHub, free_port

TOKEN, USER = HUB_TOKEN, HUB_USER
SPACE = f"{USER}/foodvision"


@pytest.fixture
def hub(monkeypatch, tmp_path):
    """A running stand-in Hub that huggingface_hub talks to, with a fake token; and tmp_path as the working
    folder, so no relative path reaches the real project."""
    with StandInHub().serving() as stand_in:
        monkeypatch.setenv("HF_ENDPOINT", stand_in.url)  # deploy.py's --endpoint default
        monkeypatch.setenv("HF_TOKEN", TOKEN)
        monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
        monkeypatch.setenv("NO_PROXY", "127.0.0.1")
        monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
        monkeypatch.setattr(huggingface_hub.constants, "HF_TOKEN_PATH", str(tmp_path / "no-stored-token"))
        monkeypatch.chdir(tmp_path)
        yield stand_in
    assert stand_in.unserved == [], "deploy.py called routes the stand-in does not serve"


README = """---
title: FoodVision Mini
sdk: gradio
sdk_version: 6.31.0
python_version: "3.10.13"
app_file: app.py
---

# FoodVision Mini

![The app](docs/app.png) ![A picture not in the project](docs/gone.png) ![Elsewhere](https://example.com/a.png)
![Again](./docs/app.png "the same") ![Spaced](<docs/inside the vit.png>) ![Escaped](docs/inside%20the%20vit.png?raw=1)
![Above the project](../secret.png) ![The host's](%2Fetc%2Fpasswd) ![Local](checkpoints/foodvision-mini/config.json)
"""

APP_FILES = {  # the fake project: what a deploy must upload, and what must stay home
    "app.py": "import spaces\nimport model\n\n\n@spaces.GPU\ndef predict(): ...\n",
    "model.py": "VIT = 'vit_b_16'\n\ndef draw():\n    from figures import plot\n",  # reached through model.py
    "figures.py": "def plot(): ...\n",
    "new_script.py": "import model\n",  # imports the app's modules, but nothing the app runs imports it
    "requirements.txt": "torch==2.14.1\ngradio==6.31.0\n",
    "README.md": README,
    "examples/a.jpg": "not really a jpeg",
    "examples/SOURCE.md": "photo credits\n",
    "docs/app.png": "the app's screenshot",
    "docs/inside the vit.png": "another",
    "docs/notes.md": "not on the card",
    "standins.py": "# test stand-ins\n",
    "deploy.py": "# this script\n",
    "train_vit.py": "# from-scratch training\n",
    "predict.py": "# command line\n",
    "tests/test_x.py": "def test(): ...\n",
    "benchmarks/b.py": "# benchmark\n",
    "data/x.zip": "zip",
    "checkpoints/foodvision-mini/config.json": json.dumps(
        {
            "backbone": "vit_b_16",
            "weights": "IMAGENET1K_V1",
            "image_size": 224,
            "class_names": ["pizza", "steak", "sushi"],
        }
    ),
    "checkpoints/foodvision-mini/model.safetensors": "weights",
    "runs/log.txt": "training log",
}
SPACE_FILES = {
    "README.md",
    "app.py",
    "model.py",
    "figures.py",
    "requirements.txt",
    "examples/a.jpg",
    "examples/SOURCE.md",
    "docs/app.png",
    "docs/inside the vit.png",
}


@pytest.fixture
def app_dir(tmp_path) -> Path:
    folder = tmp_path / "project"
    for name, text in APP_FILES.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(text)
    (tmp_path / "secret.png").write_text("beside the project, not in it")
    return folder


def run_deploy(app_dir: Path, *args: str) -> int:
    return deploy.main([SPACE, "--app-dir", str(app_dir), *args])


def committed_files(commit: list[dict]) -> dict[str, bytes]:
    return {
        line["value"]["path"]: base64.b64decode(line["value"]["content"]) for line in commit if line["key"] == "file"
    }


def test_deploys_exactly_the_app_files_to_a_zero_gpu_space_after_pushing_the_head(hub, app_dir, capsys):
    checkpoint = app_dir / "checkpoints" / "foodvision-mini"
    assert run_deploy(app_dir, "--checkpoint", str(checkpoint)) == 0

    [create_space] = [
        call["body"] for call in hub.calls("POST", "^/api/repos/create$") if call["body"]["type"] == "space"
    ]
    assert create_space == {
        "name": "foodvision",
        "organization": USER,
        "type": "space",
        "sdk": "gradio",
        "hardware": "zero-a10g",
    }
    [space_commit] = hub.commits("spaces", SPACE)  # one commit, holding every file
    uploaded = committed_files(space_commit)
    assert set(uploaded) == SPACE_FILES
    assert uploaded["app.py"] == (app_dir / "app.py").read_bytes()

    [create_head] = [
        call["body"] for call in hub.calls("POST", "^/api/repos/create$") if call["body"]["type"] == "model"
    ]
    assert (create_head["organization"], create_head["name"]) == (USER, "foodvision-head")
    [head_commit] = hub.commits("models", f"{USER}/foodvision-head")
    assert set(committed_files(head_commit)) == {"config.json", "model.safetensors"}

    [variable] = [call["body"] for call in hub.calls("POST", f"^/api/spaces/{SPACE}/variables$")]
    assert (variable["key"], variable["value"]) == ("FOODVISION_CHECKPOINT", f"{USER}/foodvision-head")
    # The head and the variable exist before the app's commit starts the Space's first build.
    [head_at] = hub.call_indices("POST", f"^/api/models/{USER}/foodvision-head/commit/")
    [variable_at] = hub.call_indices("POST", "/variables$")
    [space_at] = hub.call_indices("POST", f"^/api/spaces/{SPACE}/commit/")
    assert head_at < variable_at < space_at
    assert {call["auth"] for call in hub.requests} == {f"Bearer {TOKEN}"}
    out = capsys.readouterr().out
    assert f"{hub.url}/spaces/{SPACE}" in out and "First start" in out


def test_updating_a_gradio_space_requests_the_hardware_and_deletes_files_that_no_longer_belong(hub, app_dir):
    hub.add_repo("models", f"{USER}/head", files=HEAD_FILES)
    remote = [
        ".gitattributes",
        "LICENSE",
        "README.md",
        "app.py",
        "old_module.py",
        "examples/gone.jpg",
        "docs/old-screenshot.png",
        "tests/test_x.py",
    ]
    hub.add_repo("spaces", SPACE, sdk="gradio", files=remote, hardware="cpu-basic")

    assert run_deploy(app_dir, "--hardware", "cpu-upgrade", "--checkpoint", f"{USER}/head") == 0

    assert hub.calls("POST", "^/api/repos/create$") == []  # create_repo ignores hardware on an existing Space
    [hardware] = hub.calls("POST", f"^/api/spaces/{SPACE}/hardware$")
    assert hardware["body"] == {"flavor": "cpu-upgrade"}
    [commit] = hub.commits("spaces", SPACE)
    assert {line["value"]["path"] for line in commit if line["key"] == "deletedFile"} == {
        "old_module.py",
        "examples/gone.jpg",
        "docs/old-screenshot.png",
        "tests/test_x.py",
    }
    assert set(hub.repos[f"spaces/{SPACE}"]["files"]) == SPACE_FILES | {".gitattributes", "LICENSE"}
    assert hub.calls("POST", "^/api/models/") == []  # a repo id is used as it is: nothing pushed
    [variable] = hub.calls("POST", "/variables$")
    assert variable["body"]["value"] == f"{USER}/head"


def test_a_redeploy_without_hardware_keeps_the_hardware_the_space_runs_on(hub, app_dir, capsys):
    hub.add_repo("models", f"{USER}/head", files=HEAD_FILES)
    hub.add_repo("spaces", SPACE, sdk="gradio", files=["app.py"], hardware="cpu-upgrade")

    assert run_deploy(app_dir, "--checkpoint", f"{USER}/head") == 0

    assert hub.calls("POST", f"^/api/spaces/{SPACE}/hardware$") == []
    assert hub.repos[f"spaces/{SPACE}"]["hardware"] == "cpu-upgrade"
    out = capsys.readouterr().out
    assert "kept: pass --hardware to change it" in out and "First start, on cpu-upgrade" in out


def test_dry_run_prints_the_plan_and_contacts_nothing(hub, app_dir, capsys):
    (app_dir / "README.md").write_text(README.replace('"3.10.13"', '"3.11"'))

    assert run_deploy(app_dir, "--dry-run", "--checkpoint", str(app_dir / "checkpoints" / "foodvision-mini")) == 0

    assert hub.requests == []
    captured = capsys.readouterr()
    listed = {line.strip() for line in captured.out.splitlines() if line.startswith("  ")}
    assert listed == SPACE_FILES
    assert f"FOODVISION_CHECKPOINT={USER}/foodvision-head" in captured.out
    assert "python_version 3.11" in captured.err and "3.10.13" in captured.err  # ZeroGPU would not build it


GUARDED_IMPORT = "try:\n    import spaces\nexcept ImportError:\n    spaces = None\n"


@pytest.mark.parametrize(
    "app_source, warned",
    [
        ("import model\n", True),
        (GUARDED_IMPORT, True),  # imported, but no function asks for a GPU
        (GUARDED_IMPORT + "\ndef gpu(f):\n    return spaces.GPU(duration=60)(f) if spaces else f\n", False),  # app.py's
        ("from spaces import GPU\n\n\n@GPU\ndef predict(): ...\n", False),
    ],
    ids=["no spaces", "imported only", "spaces.GPU called", "GPU imported"],
)
def test_a_zero_gpu_app_that_never_uses_spaces_gpu_is_warned_about(hub, app_dir, capsys, app_source, warned):
    (app_dir / "app.py").write_text(app_source)

    assert run_deploy(app_dir, "--dry-run", "--checkpoint", str(app_dir / "checkpoints" / "foodvision-mini")) == 0

    assert ("No uploaded module uses `spaces.GPU`" in capsys.readouterr().err) == warned


def test_the_projects_app_asks_for_a_zero_gpu_gpu():
    assert deploy.uses_spaces_gpu(REPO, "app.py")


def assert_failed_cleanly(capsys, code: int, *phrases: str) -> str:
    captured = capsys.readouterr()
    assert code == 1
    assert "Traceback" not in captured.err
    for phrase in phrases:
        assert phrase in captured.err
    return captured.err


def test_a_rejected_token_asks_to_log_in_and_stops(hub, app_dir, capsys):
    hub.failures["whoami"] = 401

    code = run_deploy(app_dir, "--checkpoint", str(app_dir / "checkpoints" / "foodvision-mini"))

    assert_failed_cleanly(capsys, code, "401", "hf auth login", "HF_TOKEN takes precedence")
    assert [call["path"] for call in hub.requests] == ["/api/whoami-v2"]


def test_no_token_at_all_asks_to_log_in_without_contacting_the_hub(hub, app_dir, capsys, monkeypatch):
    monkeypatch.delenv("HF_TOKEN")
    monkeypatch.delenv("HUGGING_FACE_HUB_TOKEN", raising=False)

    assert_failed_cleanly(capsys, run_deploy(app_dir), "hf auth login")
    assert hub.requests == []


def test_a_token_passed_with_token_is_named_when_the_hub_rejects_it(hub, app_dir, capsys):
    hub.failures["whoami"] = 401

    assert_failed_cleanly(capsys, run_deploy(app_dir, "--token", "hf_expired"), "401", "--token takes precedence")
    assert [call["auth"] for call in hub.requests] == ["Bearer hf_expired"]


def test_a_card_the_hub_refuses_stops_the_deploy_before_anything_is_written(hub, app_dir, capsys):
    hub.failures["validate-yaml"] = 400

    code = run_deploy(app_dir, "--checkpoint", str(app_dir / "checkpoints" / "foodvision-mini"))

    assert_failed_cleanly(capsys, code, "refuses README.md's front matter", '"colorFrom" must be one of', "Nothing")
    [validated] = hub.calls("POST", "^/api/validate-yaml$")
    assert validated["body"] == {"content": (app_dir / "README.md").read_text(), "repoType": "space"}
    assert [call["method"] for call in hub.requests] == ["GET", "GET", "POST"]  # whoami, space info, the check


def test_front_matter_that_is_not_settings_is_refused_before_anything_runs(hub, app_dir, capsys):
    (app_dir / "README.md").write_text("---\n- sdk: gradio\n---\n# FoodVision Mini\n")

    assert_failed_cleanly(capsys, run_deploy(app_dir, "--dry-run"), "README.md's front matter is not a block")
    assert hub.requests == []


def test_a_failure_after_the_first_write_says_what_was_done(hub, app_dir, capsys):
    hub.add_repo("models", f"{USER}/head", files=HEAD_FILES)
    hub.failures["commit"] = 500

    error = assert_failed_cleanly(capsys, run_deploy(app_dir, "--checkpoint", f"{USER}/head"), "500")
    done = error.split("Done before this failed: ", 1)[1]
    assert f"created the Space {SPACE} on zero-a10g; set FOODVISION_CHECKPOINT={USER}/head on the Space." in done
    assert "Running deploy.py again finishes the deploy" in done


def test_a_head_repo_that_does_not_exist_stops_the_deploy_before_the_space_is_created(hub, app_dir, capsys):
    code = run_deploy(app_dir, "--checkpoint", f"{USER}/foodvison-mini")  # a typo of the head's repo

    error = assert_failed_cleanly(capsys, code, f"{USER}/foodvison-mini: no such model repo", "train_head.py")
    assert "Done before this failed" not in error
    assert hub.calls("POST", "^/api/repos/create$") == [] and f"spaces/{SPACE}" not in hub.repos


def test_a_model_repo_that_holds_no_head_is_refused_before_the_space_is_created(hub, app_dir, capsys):
    hub.add_repo("models", f"{USER}/empty", files=["README.md"])

    code = run_deploy(app_dir, "--checkpoint", f"{USER}/empty")

    assert_failed_cleanly(capsys, code, f"{USER}/empty holds no head", ", ".join(HEAD_FILES))
    assert hub.calls("POST", "^/api/repos/create$") == [] and f"spaces/{SPACE}" not in hub.repos


def test_a_connection_dropped_by_the_hubs_file_storage_says_what_was_done(hub, app_dir, capsys, monkeypatch):
    """Large files go to the Hub's Xet storage through hf_xet, whose network errors are Python's ConnectionError;
    the stand-in Hub stores every file inline, so the drop is raised where the head's commit would reach it."""

    def dropped(*args, **kwargs):
        raise ConnectionError("Network error: connection reset while uploading xorbs")

    monkeypatch.setattr(huggingface_hub.HfApi, "create_commit", dropped)
    code = run_deploy(app_dir, "--checkpoint", str(app_dir / "checkpoints" / "foodvision-mini"))

    error = assert_failed_cleanly(capsys, code, "Cannot reach the Hub", "while uploading the head", "connection reset")
    assert f"Done before this failed: created the Space {SPACE} on zero-a10g" in error


def test_a_head_repo_the_token_may_not_write_is_named_with_its_own_namespace(hub, app_dir, capsys):
    hub.failures["create models"] = 403

    code = run_deploy(
        app_dir, "--checkpoint", str(app_dir / "checkpoints" / "foodvision-mini"), "--head-repo", "someorg/head"
    )

    error = assert_failed_cleanly(capsys, code, "403", "the token may not write to someorg.")
    assert f"may not write to {USER}" not in error


def test_a_head_upload_that_fails_counts_its_model_repo_among_what_was_done(hub, app_dir, capsys):
    hub.failures["commit"] = 500

    code = run_deploy(app_dir, "--checkpoint", str(app_dir / "checkpoints" / "foodvision-mini"))

    done = assert_failed_cleanly(capsys, code, "500").split("Done before this failed: ", 1)[1]
    assert f"created the Space {SPACE} on zero-a10g; made the model repo {USER}/foodvision-head" in done


def test_a_rate_limit_says_how_long_to_wait(hub, app_dir, capsys, monkeypatch):
    answer = hub.answer

    def limited(method, path, body):
        if path == "/api/repos/create":  # the Hub's headers (IETF RateLimit draft), with no JSON error
            return 429, {}, {"RateLimit": '"api";r=0;t=280', "RateLimit-Policy": '"fixed window";"api";q=500;w=300'}
        return answer(method, path, body)

    monkeypatch.setattr(hub, "answer", limited)
    code = run_deploy(app_dir, "--checkpoint", str(app_dir / "checkpoints" / "foodvision-mini"))

    assert_failed_cleanly(capsys, code, "429", f"creating the Space {SPACE}", "280 s", "then run deploy.py again")


def test_private_asked_of_repos_that_exist_public_is_said_not_silently_ignored(hub, app_dir, capsys):
    hub.add_repo("spaces", SPACE, sdk="gradio", hardware="zero-a10g")
    hub.add_repo("models", f"{USER}/foodvision-head")

    code = run_deploy(app_dir, "--private", "--checkpoint", str(app_dir / "checkpoints" / "foodvision-mini"))

    assert code == 0
    err = capsys.readouterr().err
    assert f"The Space {SPACE} exists and is public: --private applies only to what deploy.py creates" in err
    assert f"The model repo {USER}/foodvision-head exists and is public" in err


def test_a_new_private_deploy_creates_both_repos_private(hub, app_dir, capsys):
    assert run_deploy(app_dir, "--private", "--checkpoint", str(app_dir / "checkpoints" / "foodvision-mini")) == 0

    assert {call["body"].get("visibility") for call in hub.calls("POST", "^/api/repos/create$")} == {"private"}
    assert all(repo["private"] for repo in hub.repos.values())
    err = capsys.readouterr().err
    assert "exists and is public" not in err
    assert f"fine-grained token with read access to {USER}/foodvision-head alone" in err  # not the deploy's token


def test_a_private_head_named_by_id_warns_that_the_space_needs_a_read_token(hub, app_dir, capsys):
    hub.add_repo("models", f"{USER}/head", private=True, files=HEAD_FILES)

    assert run_deploy(app_dir, "--checkpoint", f"{USER}/head") == 0

    err = capsys.readouterr().err
    assert f"The head {USER}/head is private" in err and "secret HF_TOKEN" in err
    assert "secrets add" not in err  # the CLI's bare -s HF_TOKEN would store the deploy's write token


def test_hardware_an_existing_space_is_refused_changes_nothing(hub, app_dir, capsys):
    hub.add_repo("models", f"{USER}/head", files=HEAD_FILES)
    hub.add_repo("spaces", SPACE, sdk="gradio", files=["app.py"], hardware="zero-a10g")
    hub.failures["hardware"] = 402

    code = run_deploy(app_dir, "--hardware", "cpu-upgrade", "--checkpoint", f"{USER}/head")

    error = assert_failed_cleanly(capsys, code, "402", f"requesting cpu-upgrade for the Space {SPACE}")
    assert "Done before this failed" not in error  # the refusal came first: nothing to undo
    assert hub.calls("POST", "/preupload/|/commit/|/variables$") == []
    assert hub.repos[f"spaces/{SPACE}"]["hardware"] == "zero-a10g"


def test_payment_required_in_an_organization_names_its_plan(hub, app_dir, capsys):
    hub.failures["create spaces"] = 402

    code = deploy.main(["acme/foodvision", "--app-dir", str(app_dir)])

    assert_failed_cleanly(capsys, code, "402", "acme is an organization", "Team or Enterprise", f"{USER}/...")


def test_payment_required_suggests_zero_gpu_and_uploads_nothing(hub, app_dir, capsys):
    hub.failures["create spaces"] = 402

    code = run_deploy(
        app_dir, "--hardware", "cpu-basic", "--checkpoint", str(app_dir / "checkpoints" / "foodvision-mini")
    )

    assert_failed_cleanly(capsys, code, "402", "free accounts: use --hardware zero")
    assert hub.calls("POST", "/preupload/|/commit/|/variables$") == []
    created = [call["body"]["type"] for call in hub.calls("POST", "^/api/repos/create$")]
    assert created == ["space"]  # refused before the head repo was created or anything uploaded


def test_an_existing_space_with_another_sdk_is_left_alone(hub, app_dir, capsys):
    hub.add_repo("spaces", SPACE, sdk="docker", files=["Dockerfile"])

    error = assert_failed_cleanly(capsys, run_deploy(app_dir), "'docker'", "another name", "hf repos delete")
    assert SPACE in error
    assert [call["method"] for call in hub.requests] == ["GET", "GET"]  # whoami, space info; nothing written


def test_a_module_the_app_comes_to_import_is_uploaded_with_it(hub, app_dir):
    (app_dir / "app.py").write_text("import spaces\n\ndef main():\n    from predict import run\n")

    assert run_deploy(app_dir) == 0
    [space_commit] = hub.commits("spaces", SPACE)
    assert set(committed_files(space_commit)) == SPACE_FILES - {"model.py", "figures.py"} | {"predict.py"}


def test_the_projects_space_is_the_app_and_what_it_imports_not_the_tools_around_it():
    """deploy.py's include rule on this very project: the modules behind the page, the first-run training
    included, and none of the command-line tools, tests or benchmarks."""
    modules = set(deploy.space_modules(REPO))
    assert {"app.py", "serving.py", "model.py", "classifier.py", "train_head.py", "data.py", "hub.py"} <= modules
    assert not modules & {"deploy.py", "predict.py", "train_vit.py"}
    assert all("/" not in name for name in modules)  # tests/ and benchmarks/ are never walked


def test_a_module_that_does_not_parse_stops_the_deploy(hub, app_dir, capsys):
    (app_dir / "model.py").write_text("def broken(:\n")

    assert_failed_cleanly(capsys, run_deploy(app_dir), "model.py line 1", "Fix it first")
    assert hub.requests == []


def test_a_token_without_write_access_gets_a_permission_message(hub, app_dir, capsys):
    hub.failures["commit"] = 403

    assert_failed_cleanly(capsys, run_deploy(app_dir), "403", "write access", USER)


def test_an_unreachable_hub_is_named(hub, app_dir, capsys):
    endpoint = f"http://127.0.0.1:{free_port()}"  # nothing listens there

    assert_failed_cleanly(capsys, run_deploy(app_dir, "--endpoint", endpoint), f"Cannot reach the Hub at {endpoint}")


def test_unknown_hardware_is_refused_before_anything_runs(hub, app_dir, capsys):
    with pytest.raises(SystemExit) as exit_info:
        run_deploy(app_dir, "--hardware", "a-big-gpu")
    assert exit_info.value.code == 2
    assert "zero" in capsys.readouterr().err and hub.requests == []


def test_a_space_name_the_hub_refuses_is_refused_before_anything_runs(hub, app_dir, capsys):
    with pytest.raises(SystemExit) as exit_info:
        deploy.main([f"{USER}/foodvision.git", "--app-dir", str(app_dir)])
    assert exit_info.value.code == 2
    assert "cannot end by '.git'" in capsys.readouterr().err and hub.requests == []


def test_a_head_repo_name_too_long_for_the_hub_asks_for_head_repo(hub, app_dir, capsys):
    """The head's repo defaults to SPACE-head: for a Space name near the Hub's 96 characters, that is too long."""
    space = f"{USER}/" + "x" * 93
    checkpoint = app_dir / "checkpoints" / "foodvision-mini"
    code = deploy.main([space, "--app-dir", str(app_dir), "--checkpoint", str(checkpoint)])
    assert_failed_cleanly(capsys, code, f"The head's model repo {space}-head", "--head-repo USER/NAME")
    assert hub.requests == []


def test_a_folder_that_is_no_head_checkpoint_is_refused_before_anything_runs(hub, app_dir, capsys):
    """train_vit.py's run has both file names, and a 1 GB optimizer state beside them: the Space would then fail to
    start on it."""
    run = app_dir / "runs" / "vit-from-scratch"
    run.mkdir(parents=True)
    (run / "model.safetensors").write_text("weights")
    (run / "config.json").write_text(json.dumps({"vit_config": {}, "class_names": ["pizza", "steak", "sushi"]}))
    code = deploy.main([SPACE, "--app-dir", str(app_dir), "--checkpoint", str(run)])
    assert_failed_cleanly(capsys, code, f"{run} is not a head checkpoint: its config.json does not name the vit_b_16")
    (run / "config.json").write_text('{"backbone": "vit_b_16", "class_names": ["pizza"')
    code = deploy.main([SPACE, "--app-dir", str(app_dir), "--checkpoint", str(run)])
    assert_failed_cleanly(capsys, code, f"{run} is not a head checkpoint: its config.json cannot be read")
    assert hub.requests == []


def test_the_command_line_exits_1_with_one_message_and_no_traceback(hub, app_dir):
    """The `python deploy.py` path, environment included: HF_ENDPOINT and HF_TOKEN are read from it."""
    hub.failures["whoami"] = 401
    script = Path(deploy.__file__)

    result = subprocess.run(
        [sys.executable, str(script), SPACE, "--app-dir", str(app_dir)],
        capture_output=True,
        text=True,
        env={
            **os.environ,
            "PYTHONPATH": os.pathsep.join(filter(None, [str(script.parent), os.environ.get("PYTHONPATH")])),
        },
        timeout=60,
    )

    assert result.returncode == 1
    assert "Traceback" not in result.stderr and "hf auth login" in result.stderr
    assert [call["path"] for call in hub.requests] == ["/api/whoami-v2"]
