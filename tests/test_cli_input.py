"""Bad input to the autotune command: one line naming the option, a non-zero exit, nothing created or lost."""

from __future__ import annotations

import pytest
from conftest import error_line, run_cli, workload_spec

import autotune.study._loop
from autotune.exceptions import AutotuneError


@pytest.fixture
def in_empty_folder(tmp_path, monkeypatch):
    """The commands run where the default storage (studies/autotune.db) does not exist."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("--epochs", "0", "--epochs must be a finite number > 0, got 0.0"),
        ("--epochs", "-2", "--epochs must be a finite number > 0, got -2.0"),
        ("--epochs", "inf", "--epochs must be a finite number > 0, got inf"),
        ("--effective-batch", "0", "--effective-batch must be an integer >= 1, got 0"),
        ("--memory-headroom", "100%", "--memory-headroom: must be in [0, 1) or a percentage below 100%, got '100%'"),
        ("--memory-headroom", "10", "--memory-headroom: must be in [0, 1) or a percentage below 100%, got '10'"),
        ("--device", "tpu", "--device: expected auto, cpu, cuda or cuda:N, got 'tpu'"),
    ],
)
def test_cli_search_out_of_range_value_names_its_option_and_creates_nothing(in_empty_folder, option, value, message):
    line = error_line(run_cli("search", "--workload", workload_spec(), option, value))
    assert line == f"Error: {message}"
    assert list(in_empty_folder.iterdir()) == []  # no studies/ folder, no database


class _Captured(AutotuneError):
    """Raised by the stand-in search, with the options it was given."""


@pytest.mark.parametrize("value", ["10%", "0.1", " 10 % "])
def test_cli_search_memory_headroom_as_percentage_or_fraction(monkeypatch, value):
    def capture(options, listener=None):
        raise _Captured(f"headroom {options.memory_headroom!r}")

    monkeypatch.setattr(autotune.study._loop, "search", capture)
    assert error_line(run_cli("search", "--memory-headroom", value)) == "Error: headroom 0.1"


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
