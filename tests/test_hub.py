"""hub.py: what counts as a Hub repo id, the rule classifier.py and deploy.py share."""

import pytest

from hub import CONFIG_FILE, HEAD_FILES, WEIGHTS_FILE, is_repo_id


@pytest.mark.parametrize("name", ["alice/foodvision-mini", "org.name/model_v2.1", "a/b"])
def test_user_or_org_slash_name_is_a_repo_id(name):
    assert is_repo_id(name)


@pytest.mark.parametrize(
    "name", ["foodvision-mini", "alice/food/vision", "alice/", "/checkpoints/x", "alice/food vision"]
)
def test_a_path_or_a_bare_name_is_not(name):
    """(A relative path such as ./checkpoints has a repo id's shape: checkpoint_files looks on disk first.)"""
    assert not is_repo_id(name)


def test_a_head_checkpoint_is_its_weights_and_its_config():
    assert HEAD_FILES == (WEIGHTS_FILE, CONFIG_FILE) and WEIGHTS_FILE.endswith(".safetensors")
