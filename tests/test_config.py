"""TrainConfig: validation on construction, from_dict, normalized(), save()/load()."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import pytest
import yaml

from autotune.exceptions import AutotuneError, ConfigError
from autotune.knobs._config import COMPILE_MODES, FIELD_NAMES, KNOB_NAMES, PRECISIONS, TrainConfig


def raises_exactly(message: str):
    """pytest.raises(ConfigError) whose message must be exactly ``message``."""
    return pytest.raises(ConfigError, match=f"^{re.escape(message)}$")


# --- construction -----------------------------------------------------------------------


def test_trainconfig_defaults_are_valid():
    config = TrainConfig()
    assert config.batch_size == 32
    assert config.accumulation_steps == 1
    assert config.num_workers == 0
    assert config.prefetch_factor is None
    assert config.precision == "fp32"
    assert config.compile == "off"
    assert config.max_lr == 1e-3


def test_trainconfig_field_names_are_the_public_knobs():
    assert FIELD_NAMES == (*KNOB_NAMES, "workload_knobs")
    assert KNOB_NAMES == (
        "batch_size",
        "accumulation_steps",
        "num_workers",
        "prefetch_factor",
        "pin_memory",
        "persistent_workers",
        "precision",
        "channels_last",
        "compile",
        "gradient_checkpointing",
        "optimizer_impl",
        "max_lr",
    )


def test_trainconfig_closed_sets():
    assert PRECISIONS == ("fp32", "tf32", "bf16", "fp16")
    assert COMPILE_MODES == ("off", "default", "reduce-overhead", "max-autotune")


def test_trainconfig_is_frozen():
    config = TrainConfig()
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.batch_size = 64  # type: ignore[misc]


def test_trainconfig_config_error_is_an_autotune_error():
    with pytest.raises(AutotuneError):
        TrainConfig(batch_size=0)


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("batch_size", 0, "batch_size must be >= 1, got 0"),
        ("batch_size", -4, "batch_size must be >= 1, got -4"),
        ("accumulation_steps", 0, "accumulation_steps must be >= 1, got 0"),
        ("num_workers", -1, "num_workers must be >= 0, got -1"),
        ("prefetch_factor", 0, "prefetch_factor must be >= 1, got 0"),
    ],
)
def test_trainconfig_int_out_of_range(field, value, message):
    with raises_exactly(message):
        TrainConfig(**{field: value})


INT_FIELDS = ("batch_size", "accumulation_steps", "num_workers", "prefetch_factor")


@pytest.mark.parametrize(
    ("field", "value"),
    # None is prefetch_factor's valid "unset" value, so it is wrong only for the other three.
    [
        (field, value)
        for field in INT_FIELDS
        for value in (2.0, "8", [8], None)
        if (field, value) != ("prefetch_factor", None)
    ],
)
def test_trainconfig_int_wrong_type(field, value):
    with raises_exactly(f"{field} must be an integer, got {value!r}"):
        TrainConfig(**{field: value})


@pytest.mark.parametrize("field", INT_FIELDS)
@pytest.mark.parametrize("value", [True, False])
def test_trainconfig_int_bool_is_not_an_int(field, value):
    with raises_exactly(f"{field} must be an integer, got {value!r}"):
        TrainConfig(**{field: value})


def test_trainconfig_num_workers_zero_is_valid():
    assert TrainConfig(num_workers=0).num_workers == 0


def test_trainconfig_prefetch_factor_none_is_valid():
    assert TrainConfig(num_workers=2, prefetch_factor=None).prefetch_factor is None


@pytest.mark.parametrize("field", ["pin_memory", "persistent_workers", "channels_last", "gradient_checkpointing"])
@pytest.mark.parametrize("value", [1, 0, "true", None])
def test_trainconfig_bool_wrong_type(field, value):
    with raises_exactly(f"{field} must be true or false, got {value!r}"):
        TrainConfig(**{field: value})


@pytest.mark.parametrize("field", ["pin_memory", "persistent_workers", "channels_last", "gradient_checkpointing"])
def test_trainconfig_bool_accepts_true(field):
    assert getattr(TrainConfig(num_workers=1, **{field: True}), field) is True


@pytest.mark.parametrize("value", ["fp8", "FP32", "float32", "", None, False])
def test_trainconfig_precision_not_in_closed_set(value):
    with raises_exactly(f"precision must be one of fp32, tf32, bf16, fp16; got {value!r}"):
        TrainConfig(precision=value)


@pytest.mark.parametrize("value", PRECISIONS)
def test_trainconfig_precision_every_member_accepted(value):
    assert TrainConfig(precision=value).precision == value


@pytest.mark.parametrize("value", ["OFF", "on", "inductor", False, True, None])
def test_trainconfig_compile_not_in_closed_set(value):
    with raises_exactly(f"compile must be one of off, default, reduce-overhead, max-autotune; got {value!r}"):
        TrainConfig(compile=value)


@pytest.mark.parametrize("value", COMPILE_MODES)
def test_trainconfig_compile_every_member_accepted(value):
    assert TrainConfig(compile=value).compile == value


@pytest.mark.parametrize("value", [0, 0.0, -1e-3, float("inf"), float("-inf"), float("nan")])
def test_trainconfig_max_lr_not_finite_positive(value):
    with raises_exactly(f"max_lr must be a finite number > 0, got {value!r}"):
        TrainConfig(max_lr=value)


@pytest.mark.parametrize("value", [True, False, "0.1", None])
def test_trainconfig_max_lr_not_a_number(value):
    with raises_exactly(f"max_lr must be a number, got {value!r}"):
        TrainConfig(max_lr=value)


def test_trainconfig_max_lr_int_is_stored_as_float():
    config = TrainConfig(max_lr=1)
    assert config.max_lr == 1.0
    assert type(config.max_lr) is float


# --- effective_batch_size and normalized() ---------------------------------------------


def test_trainconfig_effective_batch_size_is_batch_times_accumulation():
    assert TrainConfig(batch_size=16, accumulation_steps=4).effective_batch_size == 64
    assert TrainConfig(batch_size=24).effective_batch_size == 24


def test_trainconfig_normalized_clears_worker_knobs_without_workers():
    config = TrainConfig(num_workers=0, prefetch_factor=4, persistent_workers=True, batch_size=8)
    normalized = config.normalized()
    assert normalized.prefetch_factor is None
    assert normalized.persistent_workers is False
    assert normalized == dataclasses.replace(config, prefetch_factor=None, persistent_workers=False)


def test_trainconfig_normalized_keeps_worker_knobs_with_workers():
    config = TrainConfig(num_workers=2, prefetch_factor=4, persistent_workers=True)
    normalized = config.normalized()
    assert normalized == config
    assert normalized.prefetch_factor == 4
    assert normalized.persistent_workers is True


# --- from_dict ---------------------------------------------------------------------------


def test_trainconfig_from_dict_builds_config():
    config = TrainConfig.from_dict({"batch_size": 64, "precision": "bf16"})
    assert config == TrainConfig(batch_size=64, precision="bf16")


def test_trainconfig_from_dict_unknown_key_suggests_close_match():
    with raises_exactly("config: unknown knob 'batchsize' (did you mean 'batch_size'?)"):
        TrainConfig.from_dict({"batchsize": 64})


def test_trainconfig_from_dict_unknown_key_with_source():
    with raises_exactly("best.yaml: unknown knob 'num_worker' (did you mean 'num_workers'?)"):
        TrainConfig.from_dict({"num_worker": 2}, source="best.yaml")


def test_trainconfig_from_dict_unknown_key_without_close_match():
    with raises_exactly("config: unknown knob 'zzz'"):
        TrainConfig.from_dict({"zzz": 1})


def test_trainconfig_from_dict_invalid_value_names_source():
    with raises_exactly("best.yaml: batch_size must be >= 1, got 0"):
        TrainConfig.from_dict({"batch_size": 0}, source="best.yaml")


def test_trainconfig_to_dict_from_dict_round_trip():
    config = TrainConfig(batch_size=7, num_workers=3, prefetch_factor=2, precision="fp16", max_lr=0.25)
    assert TrainConfig.from_dict(config.to_dict()) == config
    assert list(config.to_dict()) == list(FIELD_NAMES)


# --- save() / load() ---------------------------------------------------------------------

ROUND_TRIP = TrainConfig(
    batch_size=48,
    accumulation_steps=2,
    num_workers=4,
    prefetch_factor=3,
    pin_memory=True,
    persistent_workers=True,
    precision="bf16",
    channels_last=True,
    compile="max-autotune",
    gradient_checkpointing=True,
    max_lr=3e-4,
)


@pytest.mark.parametrize("config", [ROUND_TRIP, TrainConfig()], ids=["every-knob-set", "defaults"])
@pytest.mark.parametrize("suffix", [".yaml", ".yml", ".json"])
def test_trainconfig_save_load_round_trip(tmp_path, config, suffix):
    path = tmp_path / f"best{suffix}"
    config.save(path)
    assert TrainConfig.load(path) == config
    assert TrainConfig.load(str(path)) == config


def test_trainconfig_save_yaml_writes_config_section(tmp_path):
    path = tmp_path / "best.yaml"
    TrainConfig().save(path)
    document = yaml.safe_load(path.read_text())
    assert list(document) == ["config"]
    assert document["config"] == TrainConfig().to_dict()
    # `off` must survive YAML 1.1, which reads a bare off as false.
    assert document["config"]["compile"] == "off"


def test_trainconfig_save_json_writes_config_section(tmp_path):
    path = tmp_path / "best.json"
    ROUND_TRIP.save(path)
    assert json.loads(path.read_text()) == {"config": ROUND_TRIP.to_dict()}


def test_trainconfig_load_bare_mapping(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("batch_size: 64\nprecision: bf16\ncompile: 'off'\n")
    assert TrainConfig.load(path) == TrainConfig(batch_size=64, precision="bf16")


def test_trainconfig_load_export_document(tmp_path):
    path = tmp_path / "best.yaml"
    path.write_text(
        "config:\n"
        "  batch_size: 128\n"
        "  num_workers: 2\n"
        "  prefetch_factor: 4\n"
        "  precision: bf16\n"
        "measured:\n"
        "  samples_per_second: 1234.5\n"
        "  peak_memory_bytes: 1000000\n"
        "provenance:\n"
        "  study: demo\n"
        "  trial: 7\n"
    )
    assert TrainConfig.load(path) == TrainConfig(batch_size=128, num_workers=2, prefetch_factor=4, precision="bf16")


def test_trainconfig_load_export_document_json(tmp_path):
    path = tmp_path / "best.json"
    path.write_text(json.dumps({"config": {"batch_size": 16}, "measured": {"samples_per_second": 9.0}}))
    assert TrainConfig.load(path) == TrainConfig(batch_size=16)


def test_trainconfig_load_missing_file(tmp_path):
    path = tmp_path / "nope.yaml"
    with raises_exactly(f"{path}: cannot read (No such file or directory)"):
        TrainConfig.load(path)


def test_trainconfig_load_invalid_json(tmp_path):
    path = tmp_path / "best.json"
    path.write_text("{")
    with pytest.raises(ConfigError, match="^" + re.escape(f"{path}: not valid JSON: ")):
        TrainConfig.load(path)


def test_trainconfig_load_invalid_yaml(tmp_path):
    path = tmp_path / "best.yaml"
    path.write_text("config: [1,\n")
    with pytest.raises(ConfigError) as excinfo:
        TrainConfig.load(path)
    assert str(excinfo.value).startswith(f"{path}: not valid ")


@pytest.mark.parametrize(
    ("text", "kind"),
    [("- 1\n- 2\n", "list"), ("just a string\n", "str"), ("42\n", "int"), ("", "NoneType")],
)
def test_trainconfig_load_not_a_mapping(tmp_path, text, kind):
    path = tmp_path / "best.yaml"
    path.write_text(text)
    with raises_exactly(f"{path}: expected a mapping of knobs, got {kind}"):
        TrainConfig.load(path)


def test_trainconfig_load_json_not_a_mapping(tmp_path):
    path = tmp_path / "best.json"
    path.write_text("[1, 2]")
    with raises_exactly(f"{path}: expected a mapping of knobs, got list"):
        TrainConfig.load(path)


def test_trainconfig_load_unknown_knob_names_file(tmp_path):
    path = tmp_path / "best.yaml"
    path.write_text("config:\n  batchsize: 64\n")
    with raises_exactly(f"{path}: unknown knob 'batchsize' (did you mean 'batch_size'?)"):
        TrainConfig.load(path)


def test_trainconfig_load_invalid_value_names_file(tmp_path):
    path = tmp_path / "best.json"
    path.write_text(json.dumps({"config": {"precision": "fp8"}}))
    with raises_exactly(f"{path}: precision must be one of fp32, tf32, bf16, fp16; got 'fp8'"):
        TrainConfig.load(path)


def test_trainconfig_load_unquoted_compile_off(tmp_path):
    path = tmp_path / "best.yaml"
    path.write_text("config:\n  compile: off\n")
    assert TrainConfig.load(Path(path)).compile == "off"
