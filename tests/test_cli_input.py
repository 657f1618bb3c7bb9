"""Bad input to the autotune command: one line naming the option, a non-zero exit, nothing created or lost."""

from __future__ import annotations

from typing import get_args

import pytest
from conftest import error_line, run_cli, workload_spec

import autotune.study._loop
from autotune.cli import main
from autotune.exceptions import AutotuneError
from autotune.export._export import DEFAULT_OUT
from autotune.study._lr_find import SCALINGS
from autotune.study._options import SAMPLERS, ObjectiveKind
from autotune.study._selection import PREFERENCES


@pytest.fixture
def in_empty_folder(tmp_path, monkeypatch):
    """The commands run where the default storage (studies/autotune.db) does not exist."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("--memory-headroom", "100%", "--memory-headroom: must be in [0, 1) or a percentage below 100%, got '100%'"),
        ("--memory-headroom", "10", "--memory-headroom: must be in [0, 1) or a percentage below 100%, got '10'"),
        ("--device", "tpu", "--device: expected auto, cpu, cuda or cuda:N, got 'tpu'"),
    ],
)
def test_cli_search_out_of_range_value_names_its_option_and_creates_nothing(in_empty_folder, option, value, message):
    line = error_line(run_cli("search", "--workload", workload_spec(), option, value))
    assert line == f"Error: {message}"
    assert list(in_empty_folder.iterdir()) == []  # no studies/ folder, no database


def usage_error(result) -> str:
    """click refused a value before the command ran: exit 2, its usage hint, then exactly one line
    'Error: ...' (the one returned), and no traceback."""
    assert result.exit_code == 2, result.output
    assert isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in result.output
    lines = result.output.splitlines()
    assert lines[0].startswith("Usage: autotune ") and lines[1].startswith("Try 'autotune "), result.output
    errors = [line for line in lines if line.startswith("Error: ")]
    assert errors == [lines[-1]], result.output
    return lines[-1]


# Values each command's declarations refuse, mirroring the library's checks, and what click says after
# "Error: Invalid value for ".
REFUSED = [
    (["search", "--trials", "0"], "'--trials': 0 is not in the range x>=1."),
    (["search", "--sampler", "bogus"], "'--sampler': 'bogus' is not one of 'guided', 'tpe', 'random', 'grid'."),
    (["search", "--objective", "cost"], "'--objective': 'cost' is not one of 'time', 'throughput'."),
    (
        ["search", "--lr-scaling", "cubic"],
        "'--lr-scaling': 'cubic' is not one of 'auto', 'adascale', 'linear', 'sqrt', 'none'.",
    ),
    (["search", "--epochs", "0"], "'--epochs': 0.0 is not in the range 0<x<inf."),
    (["search", "--epochs", "-2"], "'--epochs': -2.0 is not in the range 0<x<inf."),
    (["search", "--epochs", "inf"], "'--epochs': inf is not in the range 0<x<inf."),
    (["search", "--epochs", "nan"], "'--epochs': nan is not in the range 0<x<inf."),
    (["search", "--steps", "0"], "'--steps': 0 is not in the range x>=1."),
    (["search", "--effective-batch", "0"], "'--effective-batch': '0' is not an integer >= 1 or 'free'."),
    (["search", "--effective-batch", "lots"], "'--effective-batch': 'lots' is not an integer >= 1 or 'free'."),
    (["search", "--slow-fraction", "1"], "'--slow-fraction': 1.0 is not in the range 0<=x<1."),
    (["search", "--slow-fraction", "-0.1"], "'--slow-fraction': -0.1 is not in the range 0<=x<1."),
    (["search", "--divergence-factor", "1"], "'--divergence-factor': 1.0 is not in the range x>1."),
    (["search", "--warmup-steps", "-1"], "'--warmup-steps': -1 is not in the range x>=0."),
    (["search", "--windows", "0"], "'--windows': 0 is not in the range x>=1."),
    (["search", "--max-windows", "0"], "'--max-windows': 0 is not in the range x>=1."),
    (["search", "--target-spread", "0"], "'--target-spread': 0.0 is not in the range 0<x<1."),
    (["search", "--target-spread", "1"], "'--target-spread': 1.0 is not in the range 0<x<1."),
    (["search", "--window-seconds", "0"], "'--window-seconds': 0.0 is not in the range 0<x<inf."),
    (["search", "--window-seconds", "inf"], "'--window-seconds': inf is not in the range 0<x<inf."),
    (["export-best", "--verify", "-1"], "'--verify': -1 is not in the range x>=0."),
    (["export-best", "--rounds", "0"], "'--rounds': 0 is not in the range x>=1."),
    (
        ["export-best", "--format", "xml"],
        "'--format': 'xml' is not one of 'yaml', 'json', 'hf', 'lightning', 'accelerate', 'torch'.",
    ),
    (
        ["export-best", "--prefer", "cheapest"],
        "'--prefer': 'cheapest' is not one of 'fastest', 'balanced', 'memory', 'recipe'.",
    ),
    (["lr-find", "--steps", "4"], "'--steps': 4 is not in the range x>=5."),
    (["dashboard", "--port", "-1"], "'--port': -1 is not in the range 0<=x<=65535."),
    (["train", "--steps", "0"], "'--steps': 0 is not in the range x>=1."),
    (["train", "--epochs", "inf"], "'--epochs': inf is not in the range 0<x<inf."),
]


@pytest.mark.parametrize(("arguments", "message"), REFUSED, ids=[" ".join(arguments) for arguments, _ in REFUSED])
def test_cli_value_outside_its_declared_range_or_choices_is_a_usage_error(in_empty_folder, arguments, message):
    assert usage_error(run_cli(*arguments)) == f"Error: Invalid value for {message}"
    assert list(in_empty_folder.iterdir()) == []  # refused before anything was opened or created


def test_cli_dashboard_port_out_of_range_is_one_error_line_not_a_traceback(in_empty_folder):
    result = run_cli("dashboard", "--port", "99999")
    assert usage_error(result) == "Error: Invalid value for '--port': 99999 is not in the range 0<=x<=65535."
    assert "OverflowError" not in result.output
    assert list(in_empty_folder.iterdir()) == []


@pytest.mark.parametrize(
    ("command", "option", "choices"),
    [
        ("search", "sampler", SAMPLERS),
        ("search", "lr_scaling", SCALINGS),
        ("search", "objective", get_args(ObjectiveKind)),
        ("lr-find", "lr_scaling", SCALINGS),
        ("export-best", "prefer", PREFERENCES),
        ("export-best", "fmt", tuple(DEFAULT_OUT)),
    ],
)
def test_cli_choices_are_the_librarys(command, option, choices):
    param = next(p for p in main.commands[command].params if p.name == option)
    assert tuple(param.type.choices) == tuple(choices)


class _Captured(AutotuneError):
    """Raised by the stand-in search, with the options it was given."""


@pytest.mark.parametrize("value", ["10%", "0.1", " 10 % "])
def test_cli_search_memory_headroom_as_percentage_or_fraction(monkeypatch, value):
    def capture(options, listener=None):
        raise _Captured(f"headroom {options.memory_headroom!r}")

    monkeypatch.setattr(autotune.study._loop, "search", capture)
    assert error_line(run_cli("search", "--memory-headroom", value)) == "Error: headroom 0.1"


def test_cli_search_values_at_the_librarys_bounds_reach_it(monkeypatch):
    """The declarations are no tighter than the library: its smallest accepted values get through."""

    def capture(options, listener=None):
        measure = options.measure
        raise _Captured(
            f"{options.slow_fraction} {options.effective_batch} {measure.warmup_steps} {measure.windows} "
            f"{measure.max_windows} {measure.divergence_factor}"
        )

    monkeypatch.setattr(autotune.study._loop, "search", capture)
    arguments = ["--slow-fraction", "0", "--effective-batch", "FREE", "--warmup-steps", "0", "--windows", "1"]
    arguments += ["--max-windows", "1", "--divergence-factor", "1.001"]
    assert error_line(run_cli("search", *arguments)) == "Error: 0.0 free 0 1 1 1.001"


def test_cli_search_max_windows_below_windows_is_the_librarys_error():
    """--max-windows >= --windows relates two options: MeasureSettings checks it, naming the option."""
    assert error_line(run_cli("search", "--windows", "3", "--max-windows", "2")) == (
        "Error: --max-windows must be an integer >= windows (3), got 2"
    )


def test_cli_search_bad_port_in_storage_url_is_one_line_without_the_password(in_empty_folder):
    line = error_line(
        run_cli("search", "--workload", workload_spec(), "--storage", "postgresql://tuner:hunter2@localhost:59x9/db")
    )
    assert line == (
        "Error: storage 'postgresql://***/db': not a database URL, its port is not a number "
        "(example: sqlite:///studies/autotune.db)"
    )
    assert list(in_empty_folder.iterdir()) == []


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("postgresql://tuner@127.0.0.1:1/none?password=hunter2", "postgresql://tuner@127.0.0.1:1/none?password=***"),
        ("postgresql://tuner:hunter2@127.0.0.1:1/none", "postgresql://tuner:***@127.0.0.1:1/none"),
    ],
)
def test_cli_unreachable_storage_hides_the_password_in_every_form(url, shown):
    for command in ("search", "export-best", "report"):
        arguments = ["--workload", workload_spec()] if command == "search" else []
        line = error_line(run_cli(command, *arguments, "--storage", url))
        assert line.startswith(f"Error: storage {shown}: cannot connect: "), line
        assert "hunter2" not in line


def test_cli_unparsable_storage_url_hides_its_user_and_host_part(in_empty_folder):
    line = error_line(run_cli("report", "--storage", "postgresql+psycopg 2://tuner:hunter2@db/autotune"))
    assert line == (
        "Error: storage 'postgresql+psycopg 2://***/autotune': not a database URL "
        "(example: sqlite:///studies/autotune.db)"
    )


@pytest.mark.parametrize(
    "arguments", [["export-best"], ["report"], ["dashboard", "--port", "0"], ["lr-find"]], ids=lambda a: a[0]
)
def test_cli_read_only_command_on_a_missing_storage_creates_nothing(in_empty_folder, arguments):
    line = error_line(run_cli(*arguments))
    assert line == (
        "Error: storage sqlite:///studies/autotune.db: no such database file 'studies/autotune.db'; "
        "nothing was searched there"
    )
    assert list(in_empty_folder.iterdir()) == []
