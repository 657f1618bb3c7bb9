"""autotune.exceptions: the errors autotune reports as one line, and ParameterError's renaming of the
parameter it names to the CLI option that set it."""

from __future__ import annotations

import pytest

from autotune import exceptions
from autotune.exceptions import AutotuneError, ParameterError, Terminated, UsageError

REPORTED = [
    exceptions.ConfigError,
    exceptions.SearchSpaceError,
    exceptions.WorkloadError,
    exceptions.StorageError,
    exceptions.StudyError,
    exceptions.NoFeasibleTrialError,
    exceptions.UsageError,
    exceptions.CheckpointError,
    exceptions.TrainingError,
]


@pytest.mark.parametrize("error", REPORTED, ids=lambda error: error.__name__)
def test_every_reported_error_is_an_autotune_error_with_its_message(error):
    with pytest.raises(AutotuneError) as info:
        raise error("batch_size must be an integer >= 1, got 0")
    assert type(info.value) is error
    assert str(info.value) == "batch_size must be an integer >= 1, got 0"
    assert isinstance(info.value, Exception)


def test_parameter_error_is_a_usage_error_keeping_its_parameters():
    error = ParameterError("safety_margin_seconds must be shorter than deadline_seconds", "a", "b")
    assert isinstance(error, UsageError) and isinstance(error, AutotuneError)
    assert error.parameters == ("a", "b")
    assert str(error) == "safety_margin_seconds must be shorter than deadline_seconds"
    assert ParameterError("no parameter named").parameters == ()


def test_terminated_stops_as_ctrl_c_does_and_no_except_exception_catches_it():
    assert issubclass(Terminated, KeyboardInterrupt)
    assert not issubclass(Terminated, Exception) and not issubclass(Terminated, AutotuneError)
    with pytest.raises(KeyboardInterrupt):
        try:
            raise Terminated()
        except Exception:  # noqa: BLE001 - what a caller's broad handler would be
            pytest.fail("except Exception caught the SIGTERM stop")


# --- ParameterError.renamed ---------------------------------------------------------------------------


def test_renamed_replaces_each_named_parameter_by_its_option():
    error = ParameterError(
        "safety_margin_seconds (10.0s) must be shorter than deadline_seconds (5.0s)",
        "safety_margin_seconds",
        "deadline_seconds",
    )
    assert error.renamed({"safety_margin_seconds": "--safety-margin", "deadline_seconds": "--deadline"}) == (
        "--safety-margin (10.0s) must be shorter than --deadline (5.0s)"
    )
    assert str(error).startswith("safety_margin_seconds")  # the error itself is unchanged


def test_renamed_leaves_parameters_without_an_option_and_words_it_does_not_name():
    error = ParameterError("window_seconds must be > 0, got 0 (window_seconds: the timed windows)", "window_seconds")
    assert error.renamed({}) == str(error)
    assert error.renamed({"windows": "--windows"}) == str(error)  # not a parameter of this error


def test_renamed_replaces_only_the_first_mention():
    error = ParameterError("windows must be >= 1, got 0; windows counts timed windows", "windows")
    assert error.renamed({"windows": "--windows"}) == "--windows must be >= 1, got 0; windows counts timed windows"


@pytest.mark.parametrize(
    "message",
    [
        "max_steps must be an integer >= 1, got 0",  # steps inside a longer name
        "steps_per_epoch must be an integer >= 1, got 0",
        "--steps must be an integer >= 1, got 0",  # already an option
        "warmup-steps must be an integer >= 0, got -1",
    ],
)
def test_renamed_replaces_whole_names_only(message):
    assert ParameterError(message, "steps").renamed({"steps": "--steps"}) == message


def test_renamed_finds_the_name_after_words_that_contain_it():
    error = ParameterError("max_steps and steps must not both be set", "steps")
    assert error.renamed({"steps": "--steps"}) == "max_steps and --steps must not both be set"


def test_renamed_takes_the_name_literally_not_as_a_pattern():
    error = ParameterError("a.b must be > 0, got 0 (axb is another)", "a.b")
    assert error.renamed({"a.b": "--a-b"}) == "--a-b must be > 0, got 0 (axb is another)"
    assert ParameterError("axb must be > 0", "a.b").renamed({"a.b": "--a-b"}) == "axb must be > 0"
