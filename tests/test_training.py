"""``from autotune import training``: the public API of the apply module, for a training loop of your own."""

from __future__ import annotations

import autotune.training._apply as apply
from autotune import training


def test_every_public_name_is_the_apply_modules_own():
    assert training.__all__, "autotune.training names its public API"
    for name in training.__all__:
        assert getattr(training, name) is getattr(apply, name), name


def test_the_public_names_are_unique_and_none_is_private():
    names = training.__all__
    assert len(set(names)) == len(names)
    assert not [name for name in names if name.startswith("_")]


def test_a_star_import_gives_exactly_the_public_names():
    namespace: dict = {}
    exec("from autotune.training import *", namespace)
    assert sorted(set(namespace) - {"__builtins__"}) == sorted(training.__all__)


def test_the_package_lists_its_names_and_refuses_others():
    assert dir(training) == sorted(training.__all__)
    assert not hasattr(training, "rebuilt_optimizer")  # the apply module's own helper, not the public API
