"""Search spaces: YAML parsing and validation, knob forms, Optuna suggestions, restrict/describe/diff."""

from __future__ import annotations

import re
from pathlib import Path

import optuna
import pytest
import yaml

from autotune.exceptions import ConfigError, SearchSpaceError
from autotune.knobs._config import KNOB_NAMES, TrainConfig
from autotune.knobs._space import SearchSpace, diff_spaces, load_space, parse_space, shipped_spaces

SPACES = Path(__file__).resolve().parents[1] / "search_spaces"

# What a CPU cannot run (device.unsupported_values for a CPU, spelled out so this file tests space.py alone).
CPU_UNSUPPORTED = {
    "precision": {"tf32": "TF32 matmuls need a CUDA device", "fp16": "fp16 training uses a CUDA GradScaler"},
    "pin_memory": {True: "pinned memory only speeds up copies to a CUDA device"},
    "compile": {"reduce-overhead": "reduce-overhead relies on CUDA graphs"},
}


@pytest.fixture(autouse=True)
def _quiet_optuna():
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    yield
    optuna.logging.set_verbosity(verbosity)


def space_from(text: str) -> SearchSpace:
    return parse_space(yaml.safe_load(text), source="test.yaml")


def study() -> optuna.Study:
    return optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(seed=0))


# --- shipped spaces ------------------------------------------------------------------------------


def test_load_space_none_has_every_knob():
    space = load_space(None)
    assert list(space.knobs) == list(KNOB_NAMES)
    assert space.source == "search_spaces/default.yaml"


def test_default_yaml_covers_every_knob_explicitly():
    document = yaml.safe_load((SPACES / "default.yaml").read_text())
    assert list(document) == ["knobs"]
    assert set(document["knobs"]) == set(KNOB_NAMES)


def test_load_space_none_is_the_default_file():
    assert load_space(None).describe() == load_space("default").describe()
    assert load_space(None).describe() == load_space(SPACES / "default.yaml").describe()
    assert load_space(str(SPACES / "default.yaml")).source == str(SPACES / "default.yaml")


def test_load_space_default_describe():
    assert load_space(None).describe() == {
        "batch_size": {"low": 8, "high": 512, "log": True, "step": None},
        "accumulation_steps": 1,
        "num_workers": [0, 1, 2, 4, 8],
        "prefetch_factor": [2, 4],
        "pin_memory": [False, True],
        "persistent_workers": [False, True],
        "precision": ["fp32", "tf32", "bf16", "fp16"],
        "channels_last": [False, True],
        "compile": ["off", "default", "reduce-overhead", "max-autotune"],
        "gradient_checkpointing": [False, True],
        "optimizer_impl": ["default", "foreach", "fused"],
        "max_lr": "baseline",
    }


def test_load_space_default_searched_knobs():
    assert load_space(None).searched == [
        "batch_size",
        "num_workers",
        "prefetch_factor",
        "pin_memory",
        "persistent_workers",
        "precision",
        "channels_last",
        "compile",
        "gradient_checkpointing",
        "optimizer_impl",
    ]


def test_shipped_spaces_lists_default_and_demo():
    names = shipped_spaces()
    assert "default" in names
    assert "demo" in names
    assert names == sorted(names)


def test_load_space_demo():
    space = load_space("demo")
    assert space.source == "search_spaces/demo.yaml"
    described = space.describe()
    assert described["compile"] == "off"
    assert "compile" not in space.searched
    assert described["batch_size"] == {"low": 8, "high": 256, "log": True, "step": None}
    assert described["precision"] == ["fp32", "bf16", "fp16"]
    assert described["max_lr"] == "baseline"
    assert set(described) == set(KNOB_NAMES)


@pytest.mark.parametrize("name", ["default", "demo"])
def test_load_space_shipped_name_equals_its_file(name):
    assert load_space(name).describe() == load_space(SPACES / f"{name}.yaml").describe()


# --- validation errors: each names the file and the key -----------------------------------------


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("knobs:\n  batchsize: 4\n", "unknown knob 'batchsize' (did you mean 'batch_size'?)"),
        ("knobs:\n  warp_speed: 9\n", "unknown knob 'warp_speed'"),
        ("knobs:\n  batch_size: 4\nknob: 1\n", "unknown top-level key 'knob' (did you mean 'knobs'?)"),
        ("knobs:\n  batch_size: {lo: 4, high: 8}\n", "knobs.batch_size: unknown key 'lo' (did you mean 'low'?)"),
        ("knobs:\n  batch_size: {choices: []}\n", "knobs.batch_size.choices must be a non-empty list, got []"),
        ("knobs:\n  batch_size: []\n", "knobs.batch_size.choices must be a non-empty list, got []"),
        ("knobs:\n  batch_size: {choices: 8}\n", "knobs.batch_size.choices must be a non-empty list, got 8"),
        ("knobs:\n  batch_size: {low: 64, high: 8}\n", "knobs.batch_size: low (64) must be <= high (8)"),
        ("knobs:\n  batch_size: {low: 0, high: 8}\n", "knobs.batch_size.low must be >= 1, got 0"),
        ("knobs:\n  num_workers: {low: -1, high: 8}\n", "knobs.num_workers.low must be >= 0, got -1"),
        ("knobs:\n  max_lr: {low: 0, high: 1}\n", "knobs.max_lr.low must be > 0, got 0"),
        ("knobs:\n  batch_size: {low: 1.5, high: 8}\n", "knobs.batch_size.low must be an integer, got 1.5"),
        ("knobs:\n  batch_size: {low: 8, high: 64.0}\n", "knobs.batch_size.high must be an integer, got 64.0"),
        ("knobs:\n  batch_size: {low: 8, high: 64, step: 2.5}\n", "knobs.batch_size.step must be an integer, got 2.5"),
        ("knobs:\n  max_lr: {low: a, high: 1}\n", "knobs.max_lr.low must be a number, got 'a'"),
        ("knobs:\n  num_workers: {low: 0, high: 4, log: true}\n", "knobs.num_workers: log scale needs low > 0, got 0"),
        (
            "knobs:\n  batch_size: {low: 8, high: 64, log: true, step: 8}\n",
            "knobs.batch_size.step must be > 0 and cannot be combined with log, got 8",
        ),
        (
            "knobs:\n  max_lr: {low: 0.0001, high: 0.1, log: true, step: 0.001}\n",
            "knobs.max_lr.step must be > 0 and cannot be combined with log, got 0.001",
        ),
        (
            "knobs:\n  batch_size: {low: 8, high: 64, step: 0}\n",
            "knobs.batch_size.step must be > 0 and cannot be combined with log, got 0",
        ),
        ("knobs:\n  batch_size: {low: 8, high: 64, log: 1}\n", "knobs.batch_size.log must be true or false, got 1"),
        ("knobs:\n  batch_size: {high: 64}\n", "knobs.batch_size.low is missing"),
        ("knobs:\n  batch_size: {low: 8}\n", "knobs.batch_size.high is missing"),
        ("knobs:\n  precision: {low: 1, high: 2}\n", "knobs.precision: precision takes choices, not a low/high range"),
        (
            "knobs:\n  precision: fp8\n",
            "knobs.precision: precision must be one of fp32, tf32, bf16, fp16; got 'fp8'",
        ),
        (
            "knobs:\n  precision: [fp32, fp8]\n",
            "knobs.precision.choices[1]: precision must be one of fp32, tf32, bf16, fp16; got 'fp8'",
        ),
        (
            "knobs:\n  pin_memory: [0, 1]\n",
            "knobs.pin_memory.choices[0]: pin_memory must be true or false, got 0",
        ),
        ("knobs:\n  batch_size: 0\n", "knobs.batch_size: batch_size must be >= 1, got 0"),
        (
            "knobs:\n  batch_size: {low: 8, high: 64, default: 128}\n",
            "knobs.batch_size.default 128 is not in the knob's range",
        ),
        (
            "knobs:\n  batch_size: {low: 8, high: 64, step: 8, default: 12}\n",
            "knobs.batch_size.default 12 is not in the knob's range",
        ),
        (
            "knobs:\n  precision: {choices: [fp32, bf16], default: fp16}\n",
            "knobs.precision.default fp16 is not in the knob's range",
        ),
        (
            "knobs:\n  batch_size: {low: 8, high: 64, default: 16.0}\n",
            "knobs.batch_size.default: batch_size must be an integer, got 16.0",
        ),
        (
            "knobs:\n  batch_size: {choices: [8, 16], low: 4}\n",
            "knobs.batch_size: give either 'choices' or 'low'/'high', not both ('low')",
        ),
        (
            "knobs:\n  batch_size: {default: 8}\n",
            "knobs.batch_size: expected a value, a list of choices, or 'low'/'high'",
        ),
    ],
)
def test_load_space_invalid_knob_names_file_and_key(space_file, text, message):
    path = space_file(text)
    with pytest.raises(SearchSpaceError) as excinfo:
        load_space(path)
    assert str(excinfo.value) == f"{path}: {message}"


@pytest.mark.parametrize(
    "text", ["- 1\n- 2\n", "", "just text\n", "knob:\n  batch_size: 4\n", "knobs: 5\n", "knobs:\n"]
)
def test_load_space_not_a_mapping_with_knobs(space_file, text):
    path = space_file(text)
    with pytest.raises(SearchSpaceError) as excinfo:
        load_space(path)
    assert str(excinfo.value) == f"{path}: expected a mapping with a 'knobs:' section"


def test_load_space_invalid_yaml_syntax(space_file):
    path = space_file("knobs:\n  batch_size: [8, 16\n")
    with pytest.raises(SearchSpaceError) as excinfo:
        load_space(path)
    message = str(excinfo.value)
    assert message.startswith(f"{path}: not valid YAML: ")
    assert "\n" not in message  # one line, as the CLI prints it


def test_load_space_missing_file(tmp_path):
    path = tmp_path / "nope.yaml"
    with pytest.raises(SearchSpaceError) as excinfo:
        load_space(path)
    assert str(excinfo.value) == f"{path}: cannot read (No such file or directory)"


def test_load_space_reports_several_errors_together(space_file):
    path = space_file("knobs:\n  batchsize: 4\n  precision: fp8\n  batch_size: {low: 0, high: 3}\nextra: 1\n")
    with pytest.raises(SearchSpaceError) as excinfo:
        load_space(path)
    assert str(excinfo.value) == (
        f"{path}: unknown top-level key 'extra'; "
        "unknown knob 'batchsize' (did you mean 'batch_size'?); "
        "knobs.precision: precision must be one of fp32, tf32, bf16, fp16; got 'fp8'; "
        "knobs.batch_size.low must be >= 1, got 0"
    )


def test_parse_space_source_defaults_to_placeholder():
    with pytest.raises(SearchSpaceError, match=re.escape("<space>: unknown knob 'batchsize'")):
        parse_space({"knobs": {"batchsize": 4}})


# --- `compile: off` and the knob forms -------------------------------------------------------------


def test_load_space_compile_off_unquoted_is_off(space_file):
    space = load_space(space_file("knobs:\n  compile: off\n"))
    assert space.knobs["compile"].fixed == "off"
    assert space.describe()["compile"] == "off"


def test_load_space_compile_off_unquoted_in_choices_and_default(space_file):
    space = load_space(space_file("knobs:\n  compile: {choices: [off, max-autotune], default: off}\n"))
    assert space.knobs["compile"].choices == ("off", "max-autotune")
    assert space.knobs["compile"].default == "off"
    assert load_space(space_file("knobs:\n  compile: [off, default]\n")).describe()["compile"] == ["off", "default"]


def test_knob_fixed_value():
    space = space_from("knobs:\n  batch_size: 64\n")
    knob = space.knobs["batch_size"]
    assert knob.fixed == 64
    assert knob.default == 64
    assert not knob.is_searched
    assert space.describe()["batch_size"] == 64
    assert knob.contains(64) and not knob.contains(32)


def test_knob_baseline_form():
    space = space_from("knobs:\n  max_lr: baseline\n  precision: baseline\n")
    for name in ("max_lr", "precision"):
        knob = space.knobs[name]
        assert knob.from_baseline
        assert not knob.is_searched
        assert space.describe()[name] == "baseline"


def test_knob_absent_from_file_is_baseline():
    space = space_from("knobs:\n  batch_size: 64\n")
    assert list(space.knobs) == list(KNOB_NAMES)
    assert all(space.knobs[name].from_baseline for name in KNOB_NAMES if name != "batch_size")
    assert space.searched == []


def test_knob_list_is_choices():
    space = space_from("knobs:\n  num_workers: [0, 2, 4]\n")
    knob = space.knobs["num_workers"]
    assert knob.choices == (0, 2, 4)
    assert knob.is_searched
    assert space.describe()["num_workers"] == [0, 2, 4]
    assert knob.contains(2) and not knob.contains(3)


def test_knob_choices_mapping_equals_list():
    as_list = space_from("knobs:\n  precision: [fp32, bf16]\n")
    as_mapping = space_from("knobs:\n  precision: {choices: [fp32, bf16], default: bf16}\n")
    assert as_list.describe() == as_mapping.describe()
    assert as_mapping.knobs["precision"].default == "bf16"
    assert as_list.knobs["precision"].default is None


def test_knob_choices_deduplicated():
    assert space_from("knobs:\n  batch_size: [8, 8, 16]\n").knobs["batch_size"].choices == (8, 16)


def test_knob_single_choice_is_fixed():
    knob = space_from("knobs:\n  batch_size: [8]\n").knobs["batch_size"]
    assert knob.fixed == 8
    assert not knob.is_searched


def test_knob_bool_choices_keep_true_apart_from_one():
    knob = space_from("knobs:\n  pin_memory: [false, true]\n").knobs["pin_memory"]
    assert knob.contains(True) and knob.contains(False)
    assert not knob.contains(1)
    assert not knob.contains(0)


def test_knob_int_range():
    space = space_from("knobs:\n  batch_size: {low: 16, high: 512, log: true}\n")
    knob = space.knobs["batch_size"]
    assert (knob.low, knob.high, knob.log, knob.step) == (16, 512, True, None)
    assert knob.is_searched
    assert space.describe()["batch_size"] == {"low": 16, "high": 512, "log": True, "step": None}
    assert knob.contains(16) and knob.contains(512) and knob.contains(100)
    assert not knob.contains(8) and not knob.contains(1024) and not knob.contains(True)


def test_knob_int_range_with_step():
    knob = space_from("knobs:\n  batch_size: {low: 8, high: 64, step: 8}\n").knobs["batch_size"]
    assert knob.contains(8) and knob.contains(16) and knob.contains(64)
    assert not knob.contains(12)


def test_knob_float_range():
    knob = space_from("knobs:\n  max_lr: {low: 0.0001, high: 0.1, log: true}\n").knobs["max_lr"]
    assert (knob.low, knob.high, knob.log) == (0.0001, 0.1, True)
    assert knob.contains(0.01) and not knob.contains(0.5)


def test_knob_equal_low_high_collapses_to_fixed():
    space = space_from("knobs:\n  batch_size: {low: 32, high: 32}\n  max_lr: {low: 0.01, high: 0.01}\n")
    assert space.describe()["batch_size"] == 32
    assert space.describe()["max_lr"] == 0.01
    assert space.searched == []
    config = space.suggest(study().ask(), TrainConfig(batch_size=8))
    assert config.batch_size == 32
    assert config.max_lr == 0.01


def test_knob_float_range_with_step_contains_grid_values(space_file):
    path = space_file("knobs:\n  max_lr: {low: 0.1, high: 1.0, step: 0.1, default: 0.7}\n")
    knob = load_space(path).knobs["max_lr"]
    assert knob.default == 0.7
    assert all(knob.contains(round(0.1 * k, 10)) for k in range(1, 11))


# --- suggest -----------------------------------------------------------------------------------------


def test_searchspace_suggest_values_lie_in_domains():
    space = load_space(None)
    baseline = space.baseline({"max_lr": 0.02})
    optuna_study = study()
    seen_workers = set()
    for _ in range(25):
        trial = optuna_study.ask()
        config = space.suggest(trial, baseline)
        assert isinstance(config, TrainConfig)
        for name in space.searched:
            if name in ("prefetch_factor", "persistent_workers") and config.num_workers == 0:
                continue
            assert space.knobs[name].contains(getattr(config, name)), (name, getattr(config, name))
            assert trial.params[name] == getattr(config, name)
        assert config.accumulation_steps == 1
        assert config.max_lr == 0.02
        seen_workers.add(config.num_workers > 0)
        optuna_study.tell(trial, float(config.batch_size))
    assert seen_workers == {True, False}  # both cases were exercised


WORKER_SPACE = (
    "knobs:\n"
    "  num_workers: [0, 2]\n"
    "  prefetch_factor: [2, 4]\n"
    "  persistent_workers: [false, true]\n"
    "  batch_size: {low: 8, high: 64}\n"
)


def test_searchspace_suggest_no_worker_params_without_workers():
    space = space_from(WORKER_SPACE)
    optuna_study = study()
    optuna_study.enqueue_trial({"num_workers": 0})
    trial = optuna_study.ask()
    config = space.suggest(trial, TrainConfig(num_workers=2, prefetch_factor=4, persistent_workers=True))
    assert set(trial.params) == {"num_workers", "batch_size"}
    assert config.num_workers == 0
    assert config.prefetch_factor is None
    assert config.persistent_workers is False


def test_searchspace_suggest_worker_params_with_workers():
    space = space_from(WORKER_SPACE)
    optuna_study = study()
    optuna_study.enqueue_trial({"num_workers": 2, "prefetch_factor": 4, "persistent_workers": True})
    trial = optuna_study.ask()
    config = space.suggest(trial, TrainConfig())
    assert set(trial.params) == {"num_workers", "prefetch_factor", "persistent_workers", "batch_size"}
    assert (config.num_workers, config.prefetch_factor, config.persistent_workers) == (2, 4, True)


def test_searchspace_suggest_absent_knobs_keep_baseline_values():
    space = space_from("knobs:\n  batch_size: {low: 8, high: 64}\n")
    baseline = TrainConfig(
        batch_size=16,
        accumulation_steps=2,
        num_workers=1,
        prefetch_factor=3,
        persistent_workers=True,
        precision="bf16",
        channels_last=True,
        compile="default",
        gradient_checkpointing=True,
        max_lr=0.05,
    )
    optuna_study = study()
    for _ in range(5):
        trial = optuna_study.ask()
        config = space.suggest(trial, baseline)
        assert set(trial.params) == {"batch_size"}
        assert 8 <= config.batch_size <= 64
        assert config.to_dict() | {"batch_size": 16} == baseline.to_dict()


def test_searchspace_suggest_fixed_knob_overrides_baseline():
    space = space_from("knobs:\n  accumulation_steps: 1\n  precision: bf16\n")
    trial = study().ask()
    config = space.suggest(trial, TrainConfig(accumulation_steps=4, precision="fp32"))
    assert config.accumulation_steps == 1
    assert config.precision == "bf16"
    assert trial.params == {}


# --- baseline / fixed_params -------------------------------------------------------------------------


def test_searchspace_baseline_workload_values_first_then_default():
    space = space_from(
        "knobs:\n"
        "  batch_size: {low: 8, high: 64, default: 16}\n"
        "  precision: {choices: [fp32, bf16], default: bf16}\n"
        "  channels_last: [false, true]\n"
    )
    assert space.baseline({}) == TrainConfig(batch_size=16, precision="bf16")
    assert space.baseline({"precision": "fp32", "max_lr": 0.5}) == TrainConfig(batch_size=16, max_lr=0.5)
    assert space.baseline({"batch_size": 128}).batch_size == 128  # the user's run, even outside the range


def test_searchspace_baseline_demo_workload():
    from autotune.workload.demo import workload

    baseline = load_space("demo").baseline(workload().baseline_overrides())
    assert baseline == TrainConfig(batch_size=8, num_workers=0, precision="fp32", max_lr=1e-3, compile="off")


def test_searchspace_baseline_is_normalized():
    space = load_space(None)
    assert space.baseline({}).prefetch_factor is None  # default: 2, but no workers
    with_workers = space.baseline({"num_workers": 2})
    assert (with_workers.prefetch_factor, with_workers.persistent_workers) == (2, False)


def test_searchspace_baseline_invalid_override():
    with pytest.raises(ConfigError, match="^" + re.escape("baseline: batch_size must be >= 1, got 0") + "$"):
        load_space(None).baseline({"batch_size": 0})


def test_searchspace_fixed_params_only_searched_knobs_in_space():
    space = load_space(None)
    baseline = space.baseline({"batch_size": 8, "max_lr": 0.01})
    assert space.fixed_params(baseline) == {
        "batch_size": 8,
        "num_workers": 0,
        "pin_memory": False,
        "precision": "fp32",
        "channels_last": False,
        "compile": "off",
        "gradient_checkpointing": False,
        "optimizer_impl": "default",
    }


def test_searchspace_fixed_params_leaves_out_values_outside_the_space():
    space = load_space(None)
    config = TrainConfig(batch_size=4, num_workers=3, prefetch_factor=3, persistent_workers=True, precision="bf16")
    params = space.fixed_params(config)
    assert "batch_size" not in params  # 4 < low 8
    assert "num_workers" not in params  # 3 not a choice
    assert "prefetch_factor" not in params  # 3 not a choice
    assert params["persistent_workers"] is True
    assert params["precision"] == "bf16"
    assert "accumulation_steps" not in params and "max_lr" not in params


def test_searchspace_fixed_params_enqueued_reproduces_the_config():
    space = load_space(None)
    baseline = space.baseline({"batch_size": 24, "num_workers": 2, "precision": "bf16", "max_lr": 0.003})
    optuna_study = study()
    optuna_study.enqueue_trial(space.fixed_params(baseline))
    assert space.suggest(optuna_study.ask(), baseline) == baseline


# --- restrict ------------------------------------------------------------------------------------------


def test_searchspace_restrict_drops_unsupported_values_with_notes():
    space = load_space(None)
    restricted, notes = space.restrict(CPU_UNSUPPORTED)
    assert notes == [
        "precision=tf32 dropped from the search: TF32 matmuls need a CUDA device",
        "precision=fp16 dropped from the search: fp16 training uses a CUDA GradScaler",
        "pin_memory=true dropped from the search: pinned memory only speeds up copies to a CUDA device",
        "compile=reduce-overhead dropped from the search: reduce-overhead relies on CUDA graphs",
    ]
    described = restricted.describe()
    assert described["precision"] == ["fp32", "bf16"]
    assert described["pin_memory"] is False
    assert described["compile"] == ["off", "default", "max-autotune"]
    assert "pin_memory" not in restricted.searched
    assert restricted.source == space.source
    # The original is unchanged.
    assert space.describe()["precision"] == ["fp32", "tf32", "bf16", "fp16"]


def test_searchspace_restrict_fixed_unsupported_value_replaced_by_field_default():
    space = space_from("knobs:\n  compile: reduce-overhead\n  pin_memory: true\n")
    restricted, notes = space.restrict(CPU_UNSUPPORTED)
    assert notes == [
        "pin_memory=true replaced by false: pinned memory only speeds up copies to a CUDA device",
        "compile=reduce-overhead replaced by off: reduce-overhead relies on CUDA graphs",
    ]
    assert restricted.describe()["compile"] == "off"
    assert restricted.describe()["pin_memory"] is False
    assert restricted.baseline({}).compile == "off"
    assert restricted.suggest(study().ask(), TrainConfig(pin_memory=True)).pin_memory is False


def test_searchspace_restrict_all_choices_dropped_falls_back_to_default():
    space = space_from("knobs:\n  precision: [tf32, fp16]\n")
    restricted, notes = space.restrict(CPU_UNSUPPORTED)
    assert len(notes) == 2
    assert restricted.describe()["precision"] == "fp32"
    assert restricted.searched == []
    assert restricted.suggest(study().ask(), TrainConfig(precision="fp16")).precision == "fp32"


def test_searchspace_restrict_clears_a_dropped_default():
    space = space_from("knobs:\n  precision: {choices: [fp32, fp16], default: fp16}\n")
    restricted, _ = space.restrict(CPU_UNSUPPORTED)
    assert restricted.knobs["precision"].default is None
    assert restricted.baseline({}).precision == "fp32"


def test_searchspace_restrict_value_not_in_space_gives_no_note():
    space = space_from("knobs:\n  precision: [fp32, bf16]\n  compile: 'off'\n")
    restricted, notes = space.restrict(CPU_UNSUPPORTED)
    assert notes == []
    assert restricted.describe() == space.describe()


# --- describe / diff_spaces ------------------------------------------------------------------------------


def test_diff_spaces_names_changed_knobs():
    lines = diff_spaces(load_space("default").describe(), load_space("demo").describe())
    assert lines == [
        "batch_size: {'low': 8, 'high': 512, 'log': True, 'step': None} -> "
        "{'low': 8, 'high': 256, 'log': True, 'step': None}",
        "compile: ['off', 'default', 'reduce-overhead', 'max-autotune'] -> 'off'",
        "num_workers: [0, 1, 2, 4, 8] -> [0, 1, 2, 3]",
        "precision: ['fp32', 'tf32', 'bf16', 'fp16'] -> ['fp32', 'bf16', 'fp16']",
    ]


def test_diff_spaces_single_knob_change(space_file):
    old = load_space(space_file("knobs:\n  batch_size: [8, 16]\n", name="old.yaml")).describe()
    new = load_space(space_file("knobs:\n  batch_size: [8, 32]\n", name="new.yaml")).describe()
    assert diff_spaces(old, new) == ["batch_size: [8, 16] -> [8, 32]"]


def test_diff_spaces_identical_is_empty():
    assert diff_spaces(load_space(None).describe(), load_space("default").describe()) == []


def test_diff_spaces_absent_knob():
    assert diff_spaces({"batch_size": 8}, {}) == ["batch_size: 8 -> '(absent)'"]
    assert diff_spaces({}, {"batch_size": 8}) == ["batch_size: '(absent)' -> 8"]
