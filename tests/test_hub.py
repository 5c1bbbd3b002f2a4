"""hub.py: what counts as a Hub repo id, the rule classifier.py, train_head.py and deploy.py share."""

import argparse
import re

import pytest

from hub import is_repo_id, repo_id_argument


@pytest.mark.parametrize("name", ["alice/foodvision-mini", "org.name/model_v2.1", "a/b"])
def test_user_or_org_slash_name_is_a_repo_id(name):
    assert is_repo_id(name)


@pytest.mark.parametrize(
    "name", ["foodvision-mini", "alice/food/vision", "alice/", "/checkpoints/x", "alice/food vision", "./checkpoints"]
)
def test_a_path_or_a_bare_name_is_not(name):
    """(A relative path such as checkpoints/foodvision-mini has a repo id's shape: checkpoint_files looks on disk
    first.)"""
    assert not is_repo_id(name)


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("alice/food--vision", "Cannot have -- or .."),
        ("alice/foodvision.git", "cannot end by '.git'"),
        ("alice/-foodvision", "cannot start or end with '-' or '.'"),
        ("alice/" + "x" * 97, "the maximum length is 96"),
    ],
)
def test_names_the_hub_refuses_are_refused_here_with_its_reason(name, reason):
    """The Hub's own rules (huggingface_hub's validate_repo_id), at the command line before any work is done."""
    assert not is_repo_id(name)
    with pytest.raises(argparse.ArgumentTypeError, match=re.escape(reason)):
        repo_id_argument(name)
