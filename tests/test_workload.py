"""Loading a workload from `file.py:attr` or `package.module:attr`, its validation, and its name."""

from __future__ import annotations

import sys
import textwrap

import pytest
from conftest import WORKLOADS, workload_spec

from autotune.exceptions import WorkloadError
from autotune.knobs._config import TrainConfig
from autotune.workload import DEMO_SPEC, Workload, load_workload, workload_name


def refused(spec: str) -> str:
    """The one-line message load_workload(spec) refuses with."""
    with pytest.raises(WorkloadError) as excinfo:
        load_workload(spec)
    message = str(excinfo.value)
    assert "\n" not in message
    return message


def write_workload(tmp_path, name: str, body: str) -> str:
    """A workload file in tmp_path; ``name`` is unique per test so modules do not collide."""
    path = tmp_path / f"{name}.py"
    path.write_text(textwrap.dedent(body))
    return str(path)


def simple_workload(**overrides) -> Workload:
    values = {"model": lambda: None, "dataset": lambda: [], "loss": lambda model, batch: 0.0}
    return Workload(**{**values, **overrides})


# --- load_workload -----------------------------------------------------------------------------------


def test_load_workload_file_spec(tiny_spec):
    workload = load_workload(tiny_spec)
    assert isinstance(workload, Workload)
    assert workload.base_lr == 1e-2
    assert workload.baseline == {"batch_size": 8}
    assert workload.epochs == 2
    assert len(workload.dataset()) == 512


def test_load_workload_module_spec():
    from autotune.workload import demo

    workload = load_workload("autotune.workload.demo:workload")
    assert isinstance(workload, Workload)
    assert workload.model is demo.SmallCNN
    assert workload.dataset is demo.PatternImages
    assert workload.space == "demo"
    assert workload.unit == "images"


def test_load_workload_demo_spec_constant():
    assert DEMO_SPEC == "autotune.workload.demo:workload"
    assert isinstance(load_workload(DEMO_SPEC), Workload)


def test_load_workload_instance_attribute_is_returned_as_is(tmp_path):
    spec_file = write_workload(
        tmp_path,
        "instance_workload",
        """
        from autotune import Workload
        calls = []
        workload = Workload(model=lambda: None, dataset=lambda: [], loss=lambda m, b: 0.0, base_lr=0.5)
        """,
    )
    workload = load_workload(f"{spec_file}:workload")
    module = sys.modules["autotune_workload_instance_workload"]
    assert workload is module.workload
    assert workload.base_lr == 0.5


def test_load_workload_callable_attribute_is_called(tmp_path):
    spec_file = write_workload(
        tmp_path,
        "callable_workload",
        """
        from autotune import Workload
        calls = []
        def make():
            calls.append(1)
            return Workload(model=lambda: None, dataset=lambda: [], loss=lambda m, b: 0.0, base_lr=0.25)
        """,
    )
    workload = load_workload(f"{spec_file}:make")
    module = sys.modules["autotune_workload_callable_workload"]
    assert module.calls == [1]
    assert isinstance(workload, Workload)
    assert workload.base_lr == 0.25


def test_load_workload_relative_file_spec(monkeypatch):
    monkeypatch.chdir(WORKLOADS.parent)
    assert isinstance(load_workload("workloads/tiny.py:workload"), Workload)


def test_load_workload_missing_file(tmp_path):
    path = tmp_path / "nope.py"
    spec = f"{path}:workload"
    assert refused(spec) == f"workload {spec!r}: no such file {str(path)!r}"


@pytest.mark.parametrize(
    "spec", ["tests/workloads/tiny.py", "tests/workloads/tiny.py:", ":workload", "autotune.workload.demo"]
)
def test_load_workload_no_attribute_part(spec):
    assert refused(spec) == f"workload {spec!r}: expected 'path/to/file.py:name' or 'package.module:name'"


def test_load_workload_attribute_not_an_identifier():
    spec = "autotune.workload.demo:not-a-name"
    assert refused(spec) == f"workload {spec!r}: expected 'path/to/file.py:name' or 'package.module:name'"


def test_load_workload_attribute_missing():
    spec = workload_spec("nothing_here")
    module_part = str(WORKLOADS / "tiny.py")
    assert refused(spec) == f"workload {spec!r}: {module_part!r} has no attribute 'nothing_here'"


def test_load_workload_module_attribute_missing():
    spec = "autotune.workload.demo:nothing_here"
    assert (
        refused(spec)
        == "workload 'autotune.workload.demo:nothing_here': 'autotune.workload.demo' has no attribute 'nothing_here'"
    )


def test_load_workload_attribute_wrong_type():
    spec = workload_spec("not_a_workload")
    assert refused(spec) == (f"workload {spec!r}: expected an autotune.Workload or a function returning one, got int")


def test_load_workload_callable_returning_wrong_type():
    spec = "autotune.workload.demo:SmallCNN"  # a class: callable, but returns a module, not a Workload
    assert refused(spec) == (
        f"workload {spec!r}: expected an autotune.Workload or a function returning one, got SmallCNN"
    )


def test_load_workload_callable_raises():
    spec = workload_spec("raises_on_call")
    source = (WORKLOADS / "tiny.py").read_text().splitlines()
    line = next(n for n, text in enumerate(source, 1) if 'raise RuntimeError("dataset path' in text)
    message = refused(spec)
    assert "RuntimeError: dataset path /data/imagenet does not exist" in message
    assert message == (
        f"workload {spec!r}: calling raises_on_call() raised "
        f"RuntimeError: dataset path /data/imagenet does not exist (tiny.py:{line})"
    )


def test_load_workload_callable_raises_workload_error(tmp_path):
    spec_file = write_workload(
        tmp_path,
        "bad_lr_workload",
        """
        from autotune import Workload
        def workload():
            return Workload(model=lambda: None, dataset=lambda: [], loss=lambda m, b: 0.0, base_lr=0)
        """,
    )
    spec = f"{spec_file}:workload"
    assert refused(spec) == f"workload {spec!r}: Workload.base_lr must be a finite number > 0, got 0"


def test_load_workload_baseline_with_unknown_knob(tmp_path):
    spec_file = write_workload(
        tmp_path,
        "typo_workload",
        """
        from autotune import Workload
        def workload():
            return Workload(model=lambda: None, dataset=lambda: [], loss=lambda m, b: 0.0,
                            baseline={"batchsize": 32})
        """,
    )
    spec = f"{spec_file}:workload"
    assert refused(spec) == (
        f"workload {spec!r}: Workload.baseline: unknown knob 'batchsize' (did you mean 'batch_size'?)"
    )


def test_load_workload_import_fails():
    spec = workload_spec("workload", file="broken_import.py")
    module_part = str(WORKLOADS / "broken_import.py")
    message = refused(spec)
    assert "No module named 'not_installed_anywhere'" in message
    assert message == f"workload {spec!r}: cannot import {module_part!r}: No module named 'not_installed_anywhere'"
    assert "autotune_workload_broken_import" not in sys.modules


def test_load_workload_import_raises(tmp_path):
    spec_file = write_workload(tmp_path, "raising_import", 'raise ValueError("no GPU config found")\n')
    spec = f"{spec_file}:workload"
    assert refused(spec) == (
        f"workload {spec!r}: importing {spec_file!r} failed: ValueError: no GPU config found (raising_import.py:1)"
    )
    assert "autotune_workload_raising_import" not in sys.modules


def test_load_workload_import_exits(tmp_path):
    spec_file = write_workload(tmp_path, "exiting_import", "import sys\nsys.exit(2)\n")
    spec = f"{spec_file}:workload"
    assert refused(spec) == f"workload {spec!r}: importing {spec_file!r} failed: SystemExit: 2 (exiting_import.py:2)"


@pytest.mark.parametrize(
    ("spec", "module"),
    [("no_such_module_xyz:workload", "no_such_module_xyz"), ("autotune.no_such:workload", "autotune.no_such")],
)
def test_load_workload_module_does_not_exist(spec, module):
    assert refused(spec) == f"workload {spec!r}: cannot import {module!r}: No module named {module!r}"


# --- Workload validation --------------------------------------------------------------------------------


def test_workload_defaults():
    workload = simple_workload()
    assert workload.base_lr == 1e-3
    assert workload.baseline == {}
    assert workload.epochs == 1
    assert workload.unit == "samples"
    assert workload.optimizer is None and workload.space is None


@pytest.mark.parametrize("field", ["model", "dataset", "loss"])
def test_workload_non_callable_factory(field):
    with pytest.raises(WorkloadError) as excinfo:
        simple_workload(**{field: 42})
    assert str(excinfo.value) == f"Workload.{field} must be callable, got 42"


@pytest.mark.parametrize("field", ["optimizer", "collate_fn", "count", "gradient_checkpointing"])
def test_workload_optional_hook_not_callable(field):
    with pytest.raises(WorkloadError) as excinfo:
        simple_workload(**{field: "yes"})
    assert str(excinfo.value) == f"Workload.{field} must be callable or None, got 'yes'"


@pytest.mark.parametrize("value", [0, -1e-3, float("nan"), True, "1e-3", None])
def test_workload_base_lr_not_positive_number(value):
    with pytest.raises(WorkloadError) as excinfo:
        simple_workload(base_lr=value)
    assert str(excinfo.value) == f"Workload.base_lr must be a finite number > 0, got {value!r}"


def test_workload_base_lr_infinite():
    with pytest.raises(WorkloadError) as excinfo:
        simple_workload(base_lr=float("inf"))
    assert str(excinfo.value).startswith("Workload.base_lr ")


@pytest.mark.parametrize("value", [0, -1, True, "2"])
def test_workload_epochs_not_positive_number(value):
    with pytest.raises(WorkloadError) as excinfo:
        simple_workload(epochs=value)
    assert str(excinfo.value) == f"Workload.epochs must be a number > 0, got {value!r}"


def test_workload_baseline_not_a_mapping():
    with pytest.raises(WorkloadError) as excinfo:
        simple_workload(baseline=[("batch_size", 8)])
    assert str(excinfo.value) == "Workload.baseline must be a mapping of knobs, got [('batch_size', 8)]"


def test_workload_baseline_unknown_knob():
    with pytest.raises(WorkloadError) as excinfo:
        simple_workload(baseline={"batchsize": 8})
    assert str(excinfo.value) == "Workload.baseline: unknown knob 'batchsize' (did you mean 'batch_size'?)"


@pytest.mark.parametrize(
    ("baseline", "message"),
    [
        ({"precision": "fp8"}, "precision must be one of fp32, tf32, bf16, fp16; got 'fp8'"),
        ({"batch_size": 0}, "batch_size must be >= 1, got 0"),
        ({"pin_memory": "yes"}, "pin_memory must be true or false, got 'yes'"),
        ({"max_lr": -1}, "max_lr must be a finite number > 0, got -1"),
    ],
)
def test_workload_baseline_invalid_value(baseline, message):
    with pytest.raises(WorkloadError) as excinfo:
        simple_workload(baseline=baseline)
    assert str(excinfo.value) == f"Workload.baseline: {message}"


def test_workload_baseline_overrides_max_lr_from_base_lr():
    workload = simple_workload(base_lr=3e-4, baseline={"batch_size": 64})
    assert workload.baseline_overrides() == {"max_lr": 3e-4, "batch_size": 64}
    assert TrainConfig.from_dict(workload.baseline_overrides()) == TrainConfig(batch_size=64, max_lr=3e-4)


def test_workload_baseline_overrides_explicit_max_lr_wins():
    workload = simple_workload(base_lr=3e-4, baseline={"max_lr": 0.1})
    assert workload.baseline_overrides() == {"max_lr": 0.1}


# --- workload_name ----------------------------------------------------------------------------------------


def test_workload_name_demo():
    assert workload_name("autotune.workload.demo:workload") == "demo"


def test_workload_name_file_spec():
    assert workload_name(workload_spec("workload")) == "tiny"
    assert workload_name(workload_spec("misbehaving")) == "tiny.misbehaving"
    assert workload_name("tiny.py:workload") == "tiny"


def test_workload_name_module_spec():
    assert workload_name("mypkg.train:workload") == "mypkg.train"
    assert workload_name("mypkg.train:big_model") == "mypkg.train.big_model"
    assert workload_name("autotune.workload.demo:other") == "autotune.workload.demo.other"


def test_workload_name_invalid_spec():
    with pytest.raises(WorkloadError) as excinfo:
        workload_name("no-colon-here")
    assert str(excinfo.value) == ("workload 'no-colon-here': expected 'path/to/file.py:name' or 'package.module:name'")
