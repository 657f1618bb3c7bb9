"""The workload contract: the user's training job, described once in plain Python."""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import math
import sys
import traceback
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from autotune.exceptions import ConfigError, WorkloadError
from autotune.knobs._config import TrainConfig

DEMO_SPEC = "autotune.workload.demo:workload"
# Specs of built-in workloads as studies written before the package layout recorded them.
MOVED_SPECS = {"autotune.demo:workload": DEMO_SPEC}
CLOSURE_FP16 = (
    "an optimizer stepped with a closure (Workload.step_closure) cannot run in fp16: "
    "torch.amp.GradScaler.step does not take closures; use bf16 or fp32"
)


@dataclasses.dataclass
class Workload:
    """What autotune needs to run short measured trials of a training job.

    ``model`` and ``dataset`` are factories: every trial builds its own, in its own process.
    ``loss(model, batch)`` receives the batch already on the device and returns a scalar tensor.
    """

    model: Callable[[], Any]
    dataset: Callable[[], Any]
    loss: Callable[[Any, Any], Any]
    optimizer: Callable[[Any, float], Any] | None = None
    base_lr: float = 1e-3
    baseline: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    epochs: int = 1
    effective_batch: int | None = None  # the recipe's samples per optimizer step; the search keeps it
    collate_fn: Callable[[list[Any]], Any] | None = None
    count: Callable[[Any], int] | None = None
    unit: str = "samples"
    gradient_checkpointing: Callable[[Any], None] | None = None
    space: str | None = None  # the search space to use when --space is not given (a file or a shipped name)
    # The optimizer's step takes a closure that re-evaluates the loss (SAM, LBFGS): see training.TrainStep.
    step_closure: bool = False
    after_step: Callable[[Any, Any], None] | None = None  # (model, optimizer) after each step: EMA, SWA, ...
    # The full run's validation: model -> a metric or {name: metric}; run by `autotune train` every
    # `evaluate_every` epochs (and at the end), in eval mode under no_grad and the config's autocast.
    evaluate: Callable[[Any], Any] | None = None
    evaluate_every: float = 1.0

    def __post_init__(self) -> None:
        for name in ("model", "dataset", "loss"):
            if not callable(getattr(self, name)):
                raise WorkloadError(f"Workload.{name} must be callable, got {getattr(self, name)!r}")
        for name in ("optimizer", "collate_fn", "count", "gradient_checkpointing", "after_step", "evaluate"):
            value = getattr(self, name)
            if value is not None and not callable(value):
                raise WorkloadError(f"Workload.{name} must be callable or None, got {value!r}")
        if (
            isinstance(self.base_lr, bool)
            or not isinstance(self.base_lr, (int, float))
            or not 0 < self.base_lr < math.inf
        ):
            raise WorkloadError(f"Workload.base_lr must be a finite number > 0, got {self.base_lr!r}")
        if isinstance(self.epochs, bool) or not isinstance(self.epochs, (int, float)) or not self.epochs > 0:
            raise WorkloadError(f"Workload.epochs must be a number > 0, got {self.epochs!r}")
        if (
            isinstance(self.evaluate_every, bool)
            or not isinstance(self.evaluate_every, (int, float))
            or not 0 < self.evaluate_every < math.inf
        ):
            raise WorkloadError(f"Workload.evaluate_every must be a number of epochs > 0, got {self.evaluate_every!r}")
        if self.effective_batch is not None and (
            isinstance(self.effective_batch, bool)
            or not isinstance(self.effective_batch, int)
            or self.effective_batch < 1
        ):
            raise WorkloadError(f"Workload.effective_batch must be an integer >= 1, got {self.effective_batch!r}")
        if not isinstance(self.step_closure, bool):
            raise WorkloadError(f"Workload.step_closure must be true or false, got {self.step_closure!r}")
        if not isinstance(self.baseline, Mapping):
            raise WorkloadError(f"Workload.baseline must be a mapping of knobs, got {self.baseline!r}")
        if self.step_closure and self.baseline.get("precision") == "fp16":
            raise WorkloadError(f"Workload.baseline: {CLOSURE_FP16}")
        try:
            TrainConfig.from_dict({"max_lr": self.base_lr, **self.baseline}, source="Workload.baseline")
        except ConfigError as exc:
            raise WorkloadError(str(exc)) from None

    def baseline_overrides(self) -> dict[str, Any]:
        """The knobs of the user's current run; ``max_lr`` defaults to ``base_lr``."""
        return {"max_lr": float(self.base_lr), **dict(self.baseline)}


def load_workload(spec: str) -> Workload:
    """Load ``path/to/file.py:attr`` or ``package.module:attr``.

    The attribute may be a Workload or a zero-argument callable returning one.
    """
    spec = MOVED_SPECS.get(spec, spec)
    module_part, attr = _split_spec(spec)
    module = _import(module_part, spec)
    try:
        value = getattr(module, attr)
    except AttributeError:
        raise WorkloadError(f"workload {spec!r}: {module_part!r} has no attribute {attr!r}") from None
    if not isinstance(value, Workload) and callable(value):
        try:
            value = value()
        except WorkloadError as exc:
            raise WorkloadError(f"workload {spec!r}: {exc}") from None
        except Exception as exc:
            raise WorkloadError(f"workload {spec!r}: calling {attr}() raised {_one_line(exc)}") from None
    if not isinstance(value, Workload):
        raise WorkloadError(
            f"workload {spec!r}: expected an autotune.Workload or a function returning one, got {type(value).__name__}"
        )
    return value


def workload_name(spec: str) -> str:
    """A short, stable name for a workload spec, used as the default study name."""
    if MOVED_SPECS.get(spec, spec) == DEMO_SPEC:
        return "demo"
    module_part, attr = _split_spec(spec)
    if module_part.endswith(".py"):
        module_part = Path(module_part).stem
    return module_part if attr == "workload" else f"{module_part}.{attr}"


def file_module_name(path: str | Path) -> str:
    """The module name a workload file is loaded under: stable, so that objects defined there
    pickle by reference in DataLoader workers."""
    return "autotune_workload_" + "".join(ch if ch.isalnum() else "_" for ch in Path(path).stem)


def _split_spec(spec: str) -> tuple[str, str]:
    module_part, sep, attr = spec.rpartition(":")
    if not sep or not module_part or not attr.isidentifier():
        raise WorkloadError(f"workload {spec!r}: expected 'path/to/file.py:name' or 'package.module:name'")
    return module_part, attr


def _import(module_part: str, spec: str) -> Any:
    try:
        if module_part.endswith(".py"):
            path = Path(module_part).resolve()
            if not path.is_file():
                raise WorkloadError(f"workload {spec!r}: no such file {module_part!r}")
            # A stable module name, so objects defined there pickle by reference in DataLoader workers.
            name = file_module_name(module_part)
            module_spec = importlib.util.spec_from_file_location(name, path)
            assert module_spec is not None and module_spec.loader is not None
            module = importlib.util.module_from_spec(module_spec)
            sys.modules[name] = module
            if str(path.parent) not in sys.path:  # the file's own imports of its neighbours
                sys.path.insert(0, str(path.parent))
            try:
                module_spec.loader.exec_module(module)
            except BaseException:
                del sys.modules[name]
                raise
            return module
        return importlib.import_module(module_part)
    except WorkloadError:
        raise
    except ModuleNotFoundError as exc:
        raise WorkloadError(f"workload {spec!r}: cannot import {module_part!r}: {exc}") from None
    except (Exception, SystemExit) as exc:
        raise WorkloadError(f"workload {spec!r}: importing {module_part!r} failed: {_one_line(exc)}") from None


def _one_line(exc: BaseException) -> str:
    """``ExcType: message`` with the innermost frame of user code, on one line."""
    frames = traceback.extract_tb(exc.__traceback__)
    where = f" ({Path(frames[-1].filename).name}:{frames[-1].lineno})" if frames else ""
    message = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {message}{where}" if message else f"{type(exc).__name__}{where}"


__all__ = ["DEMO_SPEC", "Workload", "load_workload", "workload_name"]
