"""autotune.study._options: SearchOptions checks every value before anything is loaded, opened or run, each
error naming the parameter (the CLI renames it to its option); the objective's name as the dashboard shows it."""

from __future__ import annotations

import pytest

from autotune.exceptions import ParameterError, UsageError
from autotune.study._options import METRIC_NAME, TIME_METRIC_NAME, SearchOptions, metric_name


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"epochs": 0}, "epochs must be a finite number > 0, got 0"),
        ({"epochs": float("inf")}, "epochs must be a finite number > 0, got inf"),
        ({"effective_batch": 0}, "effective_batch must be an integer >= 1, got 0"),
        ({"n_trials": 0}, "n_trials must be an integer >= 1, got 0"),
        ({"memory_headroom": 0.1 * 10}, "memory_headroom must be in [0, 1), got 1.0"),
        ({"timeout_seconds": -5.0}, "timeout_seconds must be a finite number > 0, got -5.0"),
    ],
)
def test_search_options_out_of_range_name_the_parameter_not_a_cli_option(options, message):
    with pytest.raises(UsageError) as info:
        SearchOptions(**options)
    assert str(info.value) == message


@pytest.mark.parametrize(
    ("options", "message", "parameters"),
    [
        ({"n_trials": True}, "n_trials must be an integer >= 1, got True", ("n_trials",)),
        ({"steps": 0}, "steps must be an integer >= 1, got 0", ("steps",)),
        ({"effective_batch": "any"}, "effective_batch must be an integer >= 1, got 'any'", ("effective_batch",)),
        ({"max_memory_bytes": 0}, "max_memory_bytes must be a finite number > 0, got 0", ("max_memory_bytes",)),
        (
            {"trial_timeout_seconds": float("nan")},
            "trial_timeout_seconds must be a finite number > 0, got nan",
            ("trial_timeout_seconds",),
        ),
        ({"slow_fraction": 1.0}, "slow_fraction must be in [0, 1), got 1.0", ("slow_fraction",)),
        ({"slow_fraction": -0.1}, "slow_fraction must be in [0, 1), got -0.1", ("slow_fraction",)),
        ({"objective": "speed"}, "objective must be time or throughput, got 'speed'", ("objective",)),
        ({"sampler": "cmaes"}, "sampler must be one of guided, tpe, random, grid, got 'cmaes'", ("sampler",)),
        (
            {"lr_scaling": "cubic"},
            "lr_scaling must be one of auto, adascale, linear, sqrt, none, got 'cubic'",
            ("lr_scaling",),
        ),
        (
            {"deadline_seconds": 60, "safety_margin_seconds": 60},
            "safety_margin_seconds (60.0s) must be shorter than deadline_seconds (60.0s)",
            ("safety_margin_seconds", "deadline_seconds"),
        ),
    ],
)
def test_search_options_refuse_each_bad_value_naming_its_parameters(options, message, parameters):
    with pytest.raises(ParameterError) as info:
        SearchOptions(**options)
    assert (str(info.value), info.value.parameters) == (message, parameters)


def test_search_options_take_the_values_each_check_allows():
    options = SearchOptions(
        effective_batch="free",
        n_trials=None,
        slow_fraction=0.0,
        objective="throughput",
        sampler="grid",
        lr_scaling="sqrt",
        deadline_seconds=60.0,
        safety_margin_seconds=59.0,
        steps=1,
        memory_headroom=0.0,
    )
    assert (options.effective_batch, options.n_trials, options.sampler) == ("free", None, "grid")
    assert SearchOptions(effective_batch=1).effective_batch == 1


def test_metric_name_is_the_full_runs_time_or_the_workloads_unit_per_second():
    assert metric_name("time", "tokens") == TIME_METRIC_NAME == "full run (s)"
    assert metric_name("throughput", "tokens") == "tokens/s"
    assert metric_name("throughput", "samples") == METRIC_NAME
