"""The autotune command through click's CliRunner: help, one-line errors, a real search and export."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import click
import pytest
from conftest import WORKLOADS, error_line, run_cli, workload_spec

from autotune.cli import SharedOption, main

FAST_OPTIONS = ["--window-seconds", "0.2", "--windows", "2", "--warmup-steps", "1", "--no-lr-find"]
COMMANDS = sorted(main.commands)


@pytest.fixture(scope="module")
def searched(tmp_path_factory):
    """`autotune search` of tiny with three trials, and the storage it wrote."""
    folder = tmp_path_factory.mktemp("cli")
    space = folder / "space.yaml"
    space.write_text("effective_batch: free\nknobs: {batch_size: [32, 64]}\n")
    storage = f"sqlite:///{folder / 'studies' / 'cli.db'}"
    result = run_cli(
        "search",
        "--sampler",
        "tpe",  # its draws reach the larger batches whose recipe check the tests read
        "--workload",
        workload_spec(),
        "--space",
        str(space),
        "--trials",
        "3",
        "--storage",
        storage,
        "--seed",
        "0",
        "--slow-fraction",
        "0",
        *FAST_OPTIONS,
    )
    return {"result": result, "storage": storage, "folder": folder, "space": space}


def test_cli_has_the_search_and_export_commands():
    assert {"search", "export-best"} <= set(COMMANDS)


@pytest.mark.parametrize("command", COMMANDS)
def test_cli_command_help_has_examples(command):
    result = run_cli(command, "--help")
    assert result.exit_code == 0
    assert result.output.startswith(f"Usage: autotune {command} [OPTIONS]")
    assert re.search(r"^\s*Examples:$", result.output, re.MULTILINE)
    examples = [line.strip() for line in result.output.split("Examples:")[1].splitlines() if line.strip()]
    assert examples and all(line.startswith(f"autotune {command}") for line in examples)


def test_cli_main_help_lists_the_commands():
    result = run_cli("--help")
    assert result.exit_code == 0
    for command in COMMANDS:
        assert re.search(rf"^\s+{command}\s", result.output, re.MULTILINE), command


@pytest.mark.parametrize("args", [["--help"]] + [[command, "--help"] for command in COMMANDS])
def test_cli_help_does_not_import_torch_or_optuna(args):
    code = (
        "import sys\n"
        "from autotune.cli import main\n"
        "try:\n"
        f"    main({args!r})\n"
        "except SystemExit as exc:\n"
        "    assert exc.code == 0, exc.code\n"
        "heavy = sorted(m for m in ('torch', 'optuna', 'sqlalchemy') if m in sys.modules)\n"
        "print('HEAVY', heavy)\n"
    )
    output = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert output.splitlines()[-1] == "HEAVY []"


# Options several commands take, and which commands: each is declared once in autotune.cli (a SharedOption).
SHARED = {
    "--study": {"search", "worker", "export-best", "lr-find", "report"},
    "--storage": {"search", "worker", "export-best", "lr-find", "dashboard", "report", "train", "proxy"},
    "--workload": {"search", "worker", "train"},
    "--timeout": {"search", "worker"},
    "--epochs": {"search", "train"},
    "--steps": {"search", "train"},
    "--seed": {"search", "train"},
    "--device": {"search", "train"},
    "--lr-scaling": {"search", "lr-find"},
    "--nproc-per-trial": {"search", "train"},
    "--devices": {"search", "worker"},
}
# A name that means something else in one command (the sweep's length, the file written): its own option.
# A worker's --trials and --device default to the study's target and device, not to search's 20 and auto.
OWN = {
    ("lr-find", "--steps"),
    ("export-best", "--out"),
    ("train", "--out"),
    ("worker", "--trials"),
    ("worker", "--device"),
    ("proxy", "--host"),
    ("proxy", "--port"),
}
# Where a command words a shared option's help for what it means there (same name, type and default).
REWORDED = {
    ("train", "--workload"),
    ("train", "--storage"),
    ("train", "--epochs"),
    ("train", "--steps"),
    ("train", "--seed"),
    ("train", "--nproc-per-trial"),
    ("lr-find", "--lr-scaling"),
    ("worker", "--study"),
    ("worker", "--workload"),
    ("worker", "--timeout"),
}


def command_options() -> dict[tuple[str, str], click.Option]:
    """(command, option name) -> the option, for every command's options."""
    return {
        (command, param.opts[0]): param
        for command in COMMANDS
        for param in main.commands[command].params
        if isinstance(param, click.Option)
    }


def test_cli_every_option_of_several_commands_is_a_shared_one_taken_where_listed():
    taken: dict[str, set[str]] = {}
    for command, name in command_options():
        if (command, name) not in OWN:
            taken.setdefault(name, set()).add(command)
    assert {name: commands for name, commands in taken.items() if len(commands) > 1} == SHARED


@pytest.mark.parametrize("name", sorted(SHARED))
def test_cli_shared_option_is_one_declaration_with_one_help_text(name):
    options = {command: option for (command, option_name), option in command_options().items() if option_name == name}
    first = options[min(SHARED[name])]
    for command, option in options.items():
        if (command, name) in OWN:
            continue
        assert isinstance(option, SharedOption), f"{command} {name} is declared on its own"
        assert (option.opts, option.secondary_opts, option.name) == (first.opts, first.secondary_opts, first.name)
        assert option.type is first.type, f"{command} {name}"
        assert (option.default, option.metavar, option.show_default) == (
            first.default,
            first.metavar,
            first.show_default,
        )
        assert option.declared_help == first.declared_help
        if (command, name) in REWORDED:
            assert option.help != option.declared_help, f"{command} {name} is no longer reworded: drop it from REWORDED"
        else:
            assert option.help == option.declared_help, f"{command} {name}"
        help_text = run_cli(command, "--help").output
        assert re.search(rf"^\s+{re.escape(name)}\b", help_text, re.MULTILINE), f"{command} --help lacks {name}"


def test_cli_search_unknown_workload_file_is_oneerror_line(tmp_path):
    assert error_line(
        run_cli("search", "--workload", "nope.py:workload", "--storage", f"sqlite:///{tmp_path}/x.db")
    ) == ("Error: workload 'nope.py:workload': no such file 'nope.py'")
    assert not (tmp_path / "x.db").exists()


def test_cli_search_missing_workload_attribute_is_oneerror_line(tmp_path):
    spec = workload_spec("nope")
    line = error_line(run_cli("search", "--workload", spec, "--storage", f"sqlite:///{tmp_path}/x.db"))
    assert line == f"Error: workload {spec!r}: {str(WORKLOADS / 'tiny.py')!r} has no attribute 'nope'"


def test_cli_search_broken_space_names_the_knob_and_a_suggestion(tmp_path):
    space = tmp_path / "space.yaml"
    space.write_text("knobs:\n  batch_sise: [8, 16]\n")
    line = error_line(
        run_cli(
            "search", "--workload", workload_spec(), "--space", str(space), "--storage", f"sqlite:///{tmp_path}/x.db"
        )
    )
    assert line == f"Error: {space}: unknown knob 'batch_sise' (did you mean 'batch_size'?)"
    assert not (tmp_path / "x.db").exists()


def test_cli_search_bad_max_memory_is_oneerror_line():
    assert error_line(run_cli("search", "--max-memory", "lots")) == (
        "Error: --max-memory: cannot read 'lots' as a size (examples: 640MiB, 24GiB, 2GB)"
    )


def test_cli_search_bad_timeout_is_oneerror_line():
    assert error_line(run_cli("search", "--timeout", "soon")) == (
        "Error: --timeout: cannot read 'soon' as a duration (examples: 90s, 10m, 2h, 1h30m)"
    )


def test_cli_search_unreachable_storage_cannot_connect(tmp_path):
    space = tmp_path / "space.yaml"
    space.write_text("effective_batch: free\nknobs: {batch_size: [8, 16]}\n")
    url = "postgresql://nobody:hunter2@127.0.0.1:1/none"
    line = error_line(run_cli("search", "--workload", workload_spec(), "--space", str(space), "--storage", url))
    assert line.startswith("Error: storage postgresql://nobody:***@127.0.0.1:1/none: cannot connect: ")
    assert "hunter2" not in line


def test_cli_export_best_plain_postgresql_url_unreachable_cannot_connect():
    line = error_line(run_cli("export-best", "--storage", "postgresql://nobody@127.0.0.1:1/none"))
    assert line.startswith("Error: storage postgresql://nobody@127.0.0.1:1/none: cannot connect: ")


def test_cli_search_prints_one_line_per_trial_and_the_best(searched):
    result = searched["result"]
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0] == "checking the workload: its first training step at the baseline (batch_size 8) ..."
    assert lines[1].startswith(f"study tiny in {searched['storage']} on cpu")
    trial_lines = [line for line in lines if line.startswith("#")]
    assert len(trial_lines) == 3
    for number, line in enumerate(trial_lines):
        assert re.match(rf"#{number}\s+ok\s+\d+\.\d samples/s\s+peak\s+\d+\.\d MiB\s+bs ", line), line
    assert trial_lines[0].endswith(" baseline")
    assert "3 trial(s) run; study tiny now has: 3 ok" in lines
    best = [line for line in lines if line.startswith("best: ")]
    assert len(best) == 1
    # Batches 32 and 64 change the recipe's 8: the best is the one the recipe check keeps, else the baseline.
    # A best other than the baseline is re-measured beside it: the line then gives the rounds' figure first.
    alone = r"best: trial #[012] at \d+\.\d samples/s, \d+\.\d\dx the baseline \(trial #0\)"
    side_by_side = (
        r"best: trial #[12] at \d+\.\d samples/s side by side, \d+\.\d\dx the baseline \(trial #0\); "
        r"its own trial read \d+\.\d"
    )
    assert re.fullmatch(alone, best[0]) or re.fullmatch(side_by_side, best[0]), best[0]
    # A changed batch that ranks first is checked against the recipe; where the baseline ranks first (its
    # gradient noise scale charges the larger batches more samples than they gain here), nothing is.
    checked = any(line.startswith("note: recipe check (sqrt max_lr ") for line in lines)
    assert checked or best[0].startswith("best: trial #0 "), result.output
    assert lines[-1] == "export it with: autotune export-best --study tiny"


def test_cli_export_best_writes_json_with_its_sections(searched):
    out = searched["folder"] / "best.json"
    result = run_cli("export-best", "--storage", searched["storage"], "--study", "tiny", "--out", str(out))
    assert result.exit_code == 0, result.output
    document = json.loads(out.read_text())
    assert {"config", "measured", "provenance"} <= set(document)
    assert document["provenance"]["study"] == "tiny"
    assert document["config"]["batch_size"] in (8, 32, 64)
    assert f"written to {out}" in result.output.splitlines()
    assert re.search(
        rf"^trial #{document['provenance']['trial']} of study tiny: \d+\.\d samples/s", result.output, re.MULTILINE
    )


def test_cli_export_best_without_study_picks_the_only_study(searched):
    out = searched["folder"] / "only.yaml"
    result = run_cli("export-best", "--storage", searched["storage"], "--out", str(out))
    assert result.exit_code == 0, result.output
    assert "study: tiny" in out.read_text()


def test_cli_export_best_format_option_wins_over_the_suffix(searched):
    out = searched["folder"] / "best.yaml"
    result = run_cli("export-best", "--storage", searched["storage"], "--out", str(out), "--format", "json")
    assert result.exit_code == 0, result.output
    assert json.loads(out.read_text())["provenance"]["study"] == "tiny"


def test_cli_export_best_unknown_study_lists_the_studies(searched):
    line = error_line(run_cli("export-best", "--storage", searched["storage"], "--study", "nope"))
    assert line == f"Error: no study named 'nope' in {searched['storage']} (studies: tiny)"


def test_cli_export_best_empty_storage_is_oneerror_line(tmp_path):
    from autotune.store._storage import open_storage

    storage = f"sqlite:///{tmp_path}/empty.db"
    open_storage(storage)  # a database without studies
    line = error_line(run_cli("export-best", "--storage", storage, "--out", str(tmp_path / "best.yaml")))
    assert line == f"Error: storage {storage} has no studies; run 'autotune search' first"
    assert not (tmp_path / "best.yaml").exists()


def test_cli_search_zero_safety_margin_in_other_units_is_accepted():
    # --device tpu fails after every option is read: the margin must not be the error.
    assert error_line(run_cli("search", "--safety-margin", "0m", "--device", "tpu")) == (
        "Error: --device: expected auto, cpu, cuda or cuda:N, got 'tpu'"
    )


def test_cli_search_warmup_steps_default_matches_the_library_and_readme():
    from autotune.runner import MeasureSettings

    option = next(p for p in main.commands["search"].params if p.name == "warmup_steps")
    assert option.default == MeasureSettings().warmup_steps == 1


def test_cli_export_best_format_hf_writes_training_arguments(searched):
    transformers = pytest.importorskip("transformers", reason="the hf extra (transformers) is not installed")
    pytest.importorskip("accelerate", reason="TrainingArguments needs accelerate (the hf extra)")
    import yaml

    out = searched["folder"] / "x.yaml"
    result = run_cli("export-best", "--storage", searched["storage"], "--format", "hf", "--out", str(out))
    assert result.exit_code == 0, result.output
    assert f"written to {out}" in result.output.splitlines()
    exported = yaml.safe_load(out.read_text())
    args = transformers.TrainingArguments(
        output_dir=str(searched["folder"] / "hf"), report_to="none", **exported["TrainingArguments"]
    )
    plain = searched["folder"] / "plain.json"
    assert run_cli("export-best", "--storage", searched["storage"], "--out", str(plain)).exit_code == 0
    document = json.loads(plain.read_text())
    assert exported["autotune"]["trial"] == document["provenance"]["trial"]
    assert args.per_device_train_batch_size == document["config"]["batch_size"]
    assert args.learning_rate == document["one_cycle"]["max_lr"]
    assert args.use_cpu is True and exported["autotune"]["study"] == "tiny"
    assert any(line.startswith("scheduler = torch.optim.lr_scheduler.OneCycleLR(") for line in exported["code"])


@pytest.mark.parametrize(("fmt", "name"), [("lightning", "best_lightning.yaml"), ("torch", "best_train.py")])
def test_cli_export_best_framework_format_without_out_names_its_own_file(searched, tmp_path, monkeypatch, fmt, name):
    monkeypatch.chdir(tmp_path)
    result = run_cli("export-best", "--storage", searched["storage"], "--format", fmt)
    assert result.exit_code == 0, result.output
    assert sorted(path.name for path in tmp_path.iterdir()) == [name]


def test_cli_export_best_format_torch_with_a_yaml_out_is_one_error_line(tmp_path):
    out = tmp_path / "train.yaml"
    line = error_line(
        run_cli("export-best", "--storage", f"sqlite:///{tmp_path}/none.db", "--format", "torch", "--out", str(out))
    )
    assert line == f"Error: --format torch writes a Python script: --out must end in .py, got '{out}'"
    assert not out.exists() and not (tmp_path / "none.db").exists()
