"""Shared fixtures: tiny CPU workloads, throwaway storage, short measurements."""

from __future__ import annotations

import contextlib
from pathlib import Path

import pytest

from autotune.knobs._config import TrainConfig
from autotune.runner import MeasureSettings

WORKLOADS = Path(__file__).parent / "workloads"


def workload_spec(name: str = "workload", file: str = "tiny.py") -> str:
    """``tests/workloads/<file>:<name>`` as a --workload value."""
    return f"{WORKLOADS / file}:{name}"


@pytest.fixture(scope="session", autouse=True)
def _own_device_locks(tmp_path_factory):
    """This test run's device locks (autotune's cache folder) are its own: trials of another test
    run on this machine neither wait for nor block this run's trials."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("AUTOTUNE_CACHE_DIR", str(tmp_path_factory.mktemp("autotune-cache")))
        yield


@pytest.fixture
def tiny_spec() -> str:
    return workload_spec()


@pytest.fixture
def storage_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'studies' / 'test.db'}"


@pytest.fixture
def fast_measure() -> MeasureSettings:
    """One warm-up step and two short windows: a trial takes about as long as its process start."""
    return MeasureSettings(warmup_steps=1, windows=2, window_seconds=0.2, max_window_steps=20)


@pytest.fixture
def space_file(tmp_path: Path):
    """Write a search-space YAML text to a file and return its path."""

    def write(text: str, name: str = "space.yaml") -> Path:
        path = tmp_path / name
        path.write_text(text)
        return path

    return write


def run_cli(*args: str):
    """Invoke ``autotune ARGS`` in-process (click's CliRunner)."""
    from click.testing import CliRunner

    from autotune.cli import main

    return CliRunner().invoke(main, list(args), prog_name="autotune")


def error_line(result) -> str:
    """The command failed with exactly one line of output, 'Error: ...', and no traceback."""
    assert result.exit_code != 0, result.output
    assert isinstance(result.exception, SystemExit), repr(result.exception)
    lines = result.output.splitlines()
    assert len(lines) == 1, result.output
    assert lines[0].startswith("Error: ")
    assert "Traceback" not in result.output
    return lines[0]


@contextlib.contextmanager
def recipe_checks_keep():
    """Inside: the search's recipe checks keep every changed recipe without running it, for tests of what
    follows a kept check (the check itself runs for real in test_recipe_check.py)."""
    from autotune.study import _recipe_check as recipe_check

    def kept(setup, trial, recipe, max_lr, budgets, *, deadline=None, seeds=recipe_check.SEEDS):
        config = TrainConfig.from_dict(trial.user_attrs["config"])
        return recipe_check.RecipeCheck(
            trial=trial.number,
            config={**trial.user_attrs["config"], "max_lr": max_lr},
            recipe_config={**recipe.user_attrs["config"], "max_lr": float(setup["baseline"]["max_lr"])},
            effective_batch=config.effective_batch_size,
            recipe_effective_batch=budgets.baseline_effective_batch,
            noise_scale=budgets.noise_scale,
            samples_factor=1.0,
            steps=1,
            recipe_steps=1,
            seeds=[1],
            losses=[0.1],
            recipe_losses=[0.1],
            kept=True,
            reason=f"trial #{trial.number}: kept (a test's stand-in)",
            seconds=0.0,
            recipe_trial=recipe.number,
        )

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(recipe_check, "run_check", kept)
        yield
