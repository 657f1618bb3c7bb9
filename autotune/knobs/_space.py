"""Search spaces: YAML -> validated knobs -> Optuna suggestions -> TrainConfig.

A space file has a ``knobs:`` mapping. Each knob is one of::

    accumulation_steps: 1                           # fixed
    max_lr: baseline                                # fixed at the workload's current value
    num_workers: [0, 2, 4]                          # choices
    precision: {choices: [fp32, bf16], default: fp32}
    batch_size: {low: 16, high: 512, log: true}     # int or float range, by the knob's type

``prefetch_factor`` and ``persistent_workers`` are searched only when ``num_workers > 0``.

The workload's own knobs are named after the factory that takes them, and are searched only
when listed; one that changes what is learned says so::

    dataset.max_length: {choices: [1024, 2048, 4096], default: 1024, changes_recipe: true}
    optimizer.fused: [false, true]
"""

from __future__ import annotations

import dataclasses
import difflib
import itertools
import math
from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from autotune.exceptions import ConfigError, SearchSpaceError
from autotune.knobs._config import WORKLOAD_KNOB, TrainConfig
from autotune.knobs._table import FLOAT_KNOBS, INT_KNOBS, KNOB_NAMES, WORKER_KNOBS

if TYPE_CHECKING:
    import optuna

BASELINE = "baseline"
FREE = "free"  # effective_batch: free, in a space file
_KNOB_KEYS = ("choices", "low", "high", "log", "step", "default")
_WORKLOAD_KNOB_KEYS = (*_KNOB_KEYS, "changes_recipe")
_TOP_KEYS = ("knobs", "effective_batch")


@dataclasses.dataclass(frozen=True)
class Knob:
    """One knob's domain: fixed value, choices, or an int/float range."""

    name: str
    fixed: Any = None
    choices: tuple[Any, ...] | None = None
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    default: Any = None
    from_baseline: bool = False
    integer: bool = False  # a range of integers (the int knobs, and workload knobs given int bounds)
    changes_recipe: bool = False  # a workload knob that changes what is learned (sequence length, ...)

    @property
    def is_workload_knob(self) -> bool:
        return "." in self.name

    @property
    def is_searched(self) -> bool:
        return self.choices is not None and len(self.choices) > 1 or self.low is not None

    def contains(self, value: Any) -> bool:
        if self.from_baseline:
            return True
        if self.choices is not None:
            return any(_same(value, choice) for choice in self.choices)
        if self.low is not None:
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                return False
            if self.high is None or not self.low <= value <= self.high:
                return False
            if self.step is None:
                return True
            steps = (value - self.low) / self.step
            return math.isclose(steps, round(steps), abs_tol=1e-9)
        return _same(value, self.fixed)

    def shown(self) -> str:
        """The domain as a message shows it: ``[8, 16, 32]``, ``8..512 (log)`` or the fixed value."""
        if self.choices is not None:
            return f"[{', '.join(_show(c) for c in self.choices)}]"
        if self.low is not None:
            low, high = (int(v) if float(v).is_integer() else v for v in (self.low, self.high or self.low))
            return f"{low}..{high}" + (" (log)" if self.log else "") + (f" step {self.step:g}" if self.step else "")
        return "baseline" if self.from_baseline else _show(self.fixed)

    def describe(self) -> Any:
        """A plain, comparable form (stored with the study to detect a changed space)."""
        if self.changes_recipe:
            return {"values": dataclasses.replace(self, changes_recipe=False).describe(), "changes_recipe": True}
        if self.from_baseline:
            return BASELINE
        if self.choices is not None:
            return list(self.choices) if len(self.choices) > 1 else self.choices[0]
        if self.low is not None:
            return {"low": self.low, "high": self.high, "log": self.log, "step": self.step}
        return self.fixed

    def suggest(self, trial: optuna.trial.BaseTrial) -> Any:
        if self.choices is not None:
            return trial.suggest_categorical(self.name, list(self.choices))
        assert self.low is not None and self.high is not None
        if self.name in INT_KNOBS or self.integer:
            return trial.suggest_int(self.name, int(self.low), int(self.high), step=int(self.step or 1), log=self.log)
        return trial.suggest_float(self.name, self.low, self.high, step=self.step, log=self.log)


@dataclasses.dataclass(frozen=True)
class SearchSpace:
    """Every TrainConfig knob with its domain. Knobs a file leaves out are fixed at the baseline."""

    knobs: Mapping[str, Knob]
    source: str = "<space>"
    # batch_size x accumulation_steps every trial keeps; "free" (a file's): any, as --effective-batch free;
    # None: not set by the file (the search then keeps the recipe's).
    effective_batch: int | Literal["free"] | None = None

    @property
    def searched(self) -> list[str]:
        return [name for name, knob in self.knobs.items() if knob.is_searched]

    @property
    def recipe_knobs(self) -> list[str]:
        """The workload knobs marked as changing what is learned."""
        return [name for name, knob in self.knobs.items() if knob.changes_recipe]

    def describe(self) -> dict[str, Any]:
        described = {name: knob.describe() for name, knob in self.knobs.items()}
        if self.effective_batch is not None:
            described["effective_batch"] = self.effective_batch
        return described

    def with_effective_batch(self, effective_batch: int | Literal["free"] | None) -> tuple[SearchSpace, list[str]]:
        """Fix batch_size x accumulation_steps: only batch sizes dividing it remain, and
        accumulation_steps is derived from the batch size. ``None`` keeps the file's setting."""
        effective_batch = effective_batch or self.effective_batch
        if effective_batch is None or effective_batch == FREE:
            return self, []
        if isinstance(effective_batch, bool) or not isinstance(effective_batch, int) or effective_batch < 1:
            raise SearchSpaceError(f"effective batch must be an integer >= 1, got {effective_batch!r}")
        batch = self.knobs["batch_size"]
        divisors = [d for d in range(1, effective_batch + 1) if effective_batch % d == 0]
        allowed = divisors if batch.from_baseline else [d for d in divisors if batch.contains(d)]
        if not allowed:
            raise SearchSpaceError(
                f"{self.source}: no batch_size in {batch.shown()} divides the effective batch {effective_batch}"
            )
        knobs = dict(self.knobs)
        default = batch.default if batch.default in allowed else None
        knobs["batch_size"] = dataclasses.replace(
            batch,
            choices=tuple(allowed),
            fixed=allowed[0] if len(allowed) == 1 else None,
            low=None,
            high=None,
            log=False,
            step=None,
            default=default,
            from_baseline=False,
        )
        knobs["accumulation_steps"] = Knob("accumulation_steps", from_baseline=True)
        notes = [f"effective batch {effective_batch}: batch_size from {allowed}, accumulation_steps derived"]
        if self.knobs["accumulation_steps"].is_searched:
            notes.append("accumulation_steps is no longer searched: the effective batch fixes it")
        return dataclasses.replace(self, knobs=knobs, effective_batch=effective_batch), notes

    def pinned(self, name: str, value: Any) -> SearchSpace:
        """The space with knob ``name`` fixed at ``value``."""
        return dataclasses.replace(self, knobs={**self.knobs, name: Knob(name, fixed=value, default=value)})

    def derive_accumulation(self, values: dict[str, Any]) -> None:
        """``values``' accumulation_steps, where the space holds the effective batch: what its batch_size leaves."""
        if isinstance(self.effective_batch, int):
            values["accumulation_steps"] = self.effective_batch // values["batch_size"]

    def baseline(self, overrides: Mapping[str, Any]) -> TrainConfig:
        """The user's current run: their knobs, the rest from the space's defaults."""
        values = {name: value for name, value in overrides.items() if name not in self.knobs}  # model.*, ...
        for name, knob in self.knobs.items():
            if name in overrides:
                values[name] = overrides[name]
            elif knob.default is not None and not knob.from_baseline:
                values[name] = knob.default
        if isinstance(self.effective_batch, int):
            allowed = self.knobs["batch_size"].choices or ()
            requested = values.get("batch_size", TrainConfig.batch_size)
            # The user's micro-batch when it divides the effective batch, else the largest one below it that does.
            values["batch_size"] = max((d for d in allowed if d <= requested), default=min(allowed))
            self.derive_accumulation(values)
        return TrainConfig.from_dict(values, source="baseline").normalized()

    def suggest(self, trial: optuna.trial.BaseTrial, baseline: TrainConfig) -> TrainConfig:
        """Sample a config. Knobs fixed in the space (or at the baseline) are not Optuna params."""
        values = baseline.to_dict()
        for name, knob in self.knobs.items():
            if name in WORKER_KNOBS and values["num_workers"] == 0:
                continue
            if knob.is_searched:
                values[name] = knob.suggest(trial)
            elif not knob.from_baseline:
                values[name] = knob.fixed if knob.choices is None else knob.choices[0]
        self.derive_accumulation(values)
        return TrainConfig.from_dict(values, source=f"trial {trial.number}").normalized()

    def grid_points(self, baseline: TrainConfig) -> list[dict[str, Any]]:
        """Every distinct config of the space as Optuna params, for an exhaustive sweep. Each searched
        knob must be a list of choices; the worker knobs only vary where num_workers > 0."""
        ranges = [name for name in self.searched if self.knobs[name].choices is None]
        if ranges:
            raise SearchSpaceError(
                f"{self.source}: an exhaustive grid needs a list of choices for every searched knob; "
                f"{', '.join(ranges)} {'is a range' if len(ranges) == 1 else 'are ranges'}"
            )
        names = self.searched
        points: list[dict[str, Any]] = []
        for values in itertools.product(*(self.knobs[name].choices or () for name in names)):
            point = dict(zip(names, values, strict=True))
            if point.get("num_workers", baseline.num_workers) == 0:
                point = {name: value for name, value in point.items() if name not in WORKER_KNOBS}
            if point not in points:
                points.append(point)
        return points

    def cap_batch(self, dataset_size: int, accumulation_steps: int = 1) -> tuple[SearchSpace, list[str]]:
        """No batch_size larger than one epoch of the dataset allows: a batch that cannot fill one optimizer
        step (batch_size x accumulation_steps > the dataset's samples) is never sampled."""
        batch = self.knobs["batch_size"]
        largest = dataset_size // max(1, accumulation_steps)
        if batch.from_baseline or not batch.is_searched:
            return self, []
        if batch.choices is not None:
            kept = tuple(c for c in batch.choices if c <= largest)
            if len(kept) == len(batch.choices):
                return self, []
            if not kept:
                raise SearchSpaceError(
                    f"{self.source}: the dataset has {dataset_size} samples, fewer than every "
                    f"batch_size in {batch.shown()} (x{accumulation_steps} accumulation)"
                )
            capped = dataclasses.replace(batch, choices=kept, default=batch.default if batch.default in kept else None)
        else:
            assert batch.low is not None and batch.high is not None
            if batch.high <= largest:
                return self, []
            if batch.low > largest:
                raise SearchSpaceError(
                    f"{self.source}: the dataset has {dataset_size} samples, fewer than the "
                    f"smallest batch_size {int(batch.low)} (x{accumulation_steps} accumulation)"
                )
            capped = dataclasses.replace(batch, high=largest)
        note = f"batch_size up to {largest}: the dataset has {dataset_size} samples" + (
            f" and the recipe accumulates {accumulation_steps} micro-batches" if accumulation_steps > 1 else ""
        )
        return dataclasses.replace(self, knobs={**self.knobs, "batch_size": capped}), [note]

    def fixed_params(self, config: TrainConfig) -> dict[str, Any]:
        """The Optuna params that make the sampler record ``config`` (for enqueueing the baseline)."""
        params = {}
        for name in self.searched:
            if name in WORKER_KNOBS and config.num_workers == 0:
                continue
            value = config.workload_knobs.get(name) if self.knobs[name].is_workload_knob else getattr(config, name)
            if self.knobs[name].contains(value):
                params[name] = value
        return params

    def restrict(self, unsupported: Mapping[str, Mapping[Any, str]]) -> tuple[SearchSpace, list[str]]:
        """Drop the knob values this device or workload cannot run; one note per dropped value."""
        knobs = dict(self.knobs)
        notes = []
        for name, values in unsupported.items():
            knob = knobs[name]
            for value, reason in values.items():
                if knob.choices is not None and any(_same(value, c) for c in knob.choices):
                    kept = tuple(c for c in knob.choices if not _same(value, c))
                    fallback = kept or (_default_for(name),)
                    default = knob.default if knob.default is not None and not _same(knob.default, value) else None
                    knob = dataclasses.replace(knob, choices=fallback, default=default)
                    notes.append(f"{name}={_show(value)} dropped from the search: {reason}")
                elif knob.choices is None and knob.low is None and not knob.from_baseline and _same(knob.fixed, value):
                    knob = dataclasses.replace(knob, fixed=_default_for(name), default=None)
                    notes.append(f"{name}={_show(value)} replaced by {_show(_default_for(name))}: {reason}")
            knobs[name] = knob
        return dataclasses.replace(self, knobs=knobs), notes


def load_space(path: str | Path | Mapping[str, Any] | None = None) -> SearchSpace:
    """Read and validate a space file. ``None`` is the shipped ``default.yaml``; a bare name
    such as ``demo`` is a shipped space (``search_spaces/demo.yaml``); a mapping is a space document
    itself (a study's recorded space)."""
    import yaml

    path = "default" if path is None else path
    if isinstance(path, Mapping):
        return parse_space(path, source="the study's recorded space")
    if isinstance(path, str) and path in shipped_spaces():
        source = f"search_spaces/{path}.yaml"
        text = resources.files("autotune.search_spaces").joinpath(f"{path}.yaml").read_text()
    else:
        source = str(path)
        try:
            text = Path(path).read_text()
        except OSError as exc:
            raise SearchSpaceError(f"{source}: cannot read ({exc.strerror})") from None
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise SearchSpaceError(f"{source}: not valid YAML: {' '.join(str(exc).split())}") from None
    return parse_space(document, source=source)


def shipped_spaces() -> list[str]:
    """Names of the spaces shipped with autotune (``default``, ``demo``, ...)."""
    folder = resources.files("autotune.search_spaces")
    return sorted(entry.name.removesuffix(".yaml") for entry in folder.iterdir() if entry.name.endswith(".yaml"))


def parse_space(document: Any, *, source: str = "<space>") -> SearchSpace:
    """Validate a whole space document; every problem is reported, with the file and the key."""
    errors: list[str] = []
    if not isinstance(document, Mapping) or not isinstance(document.get("knobs"), Mapping):
        raise SearchSpaceError(f"{source}: expected a mapping with a 'knobs:' section")
    for key in document:
        if key not in _TOP_KEYS:
            errors.append(f"unknown top-level key {key!r}{_suggest(key, _TOP_KEYS)}")
    knobs: dict[str, Knob] = {}
    for name, spec in document["knobs"].items():
        if name not in KNOB_NAMES and not (isinstance(name, str) and WORKLOAD_KNOB.match(name)):
            hint = _suggest(str(name), KNOB_NAMES)
            if not hint and isinstance(name, str) and "." in name:
                hint = " (a workload's own knob is named model.NAME, dataset.NAME or optimizer.NAME)"
            errors.append(f"unknown knob {name!r}{hint}")
            continue
        try:
            knobs[name] = _parse_knob(name, spec)
        except SearchSpaceError as exc:
            errors.append(str(exc))
    effective_batch = document.get("effective_batch")
    if (
        effective_batch is not None
        and effective_batch != FREE
        and (isinstance(effective_batch, bool) or not isinstance(effective_batch, int) or effective_batch < 1)
    ):
        errors.append(f"effective_batch must be an integer >= 1 or 'free', got {effective_batch!r}")
    if errors:
        raise SearchSpaceError(f"{source}: " + "; ".join(errors))
    for name in KNOB_NAMES:
        knobs.setdefault(name, Knob(name, from_baseline=True))
    order = [*KNOB_NAMES, *(name for name in knobs if name not in KNOB_NAMES)]
    space = SearchSpace({name: knobs[name] for name in order}, source, effective_batch)
    return space.with_effective_batch(None)[0]


def _parse_knob(name: str, spec: Any) -> Knob:
    where = f"knobs.{name}"
    if name == "compile":  # YAML 1.1 reads a bare `off` as false
        spec = _off_as_string(spec)
    if spec == BASELINE:
        return Knob(name, from_baseline=True)
    if isinstance(spec, list):
        spec = {"choices": spec}
    if not isinstance(spec, Mapping):
        _check_value(name, spec, where)
        return Knob(name, fixed=spec, default=spec)
    keys = _WORKLOAD_KNOB_KEYS if "." in name else _KNOB_KEYS
    for key in spec:
        if key not in keys:
            raise SearchSpaceError(f"{where}: unknown key {key!r}{_suggest(str(key), keys)}")
    changes_recipe = spec.get("changes_recipe", False)
    if not isinstance(changes_recipe, bool):
        raise SearchSpaceError(f"{where}.changes_recipe must be true or false, got {changes_recipe!r}")
    if "choices" in spec:
        extra = [key for key in ("low", "high", "log", "step") if key in spec]
        if extra:
            raise SearchSpaceError(f"{where}: give either 'choices' or 'low'/'high', not both ({extra[0]!r})")
        choices = spec["choices"]
        if not isinstance(choices, list) or not choices:
            raise SearchSpaceError(f"{where}.choices must be a non-empty list, got {choices!r}")
        for index, value in enumerate(choices):
            _check_value(name, value, f"{where}.choices[{index}]")
        unique = tuple(_dedupe(choices))
        knob = Knob(name, choices=unique, fixed=unique[0] if len(unique) == 1 else None)
    elif "low" in spec or "high" in spec:
        knob = _parse_range(name, spec, where)
    else:
        raise SearchSpaceError(f"{where}: expected a value, a list of choices, or 'low'/'high'")
    if "default" in spec:
        _check_value(name, spec["default"], f"{where}.default")
        if not knob.contains(spec["default"]):
            raise SearchSpaceError(f"{where}.default {_show(spec['default'])} is not in the knob's range")
        knob = dataclasses.replace(knob, default=spec["default"])
    return dataclasses.replace(knob, changes_recipe=changes_recipe)


def _parse_range(name: str, spec: Mapping[str, Any], where: str) -> Knob:
    workload_knob = "." in name
    if name not in INT_KNOBS + FLOAT_KNOBS and not workload_knob:
        raise SearchSpaceError(f"{where}: {name} takes choices, not a low/high range")
    for key in ("low", "high"):
        if key not in spec:
            raise SearchSpaceError(f"{where}.{key} is missing")
    if workload_knob:  # an integer range when both bounds are integers
        is_int = all(isinstance(spec[key], int) and not isinstance(spec[key], bool) for key in ("low", "high"))
    else:
        is_int = name in INT_KNOBS
    numbers = {key: spec[key] for key in ("low", "high", "step") if spec.get(key) is not None}
    for key, value in numbers.items():
        ok_type = isinstance(value, int) if is_int else isinstance(value, (int, float))
        if isinstance(value, bool) or not ok_type:
            kind = "an integer" if is_int else "a number"
            raise SearchSpaceError(f"{where}.{key} must be {kind}, got {value!r}")
    low, high, step = numbers["low"], numbers["high"], numbers.get("step")
    minimum = {"num_workers": 0}.get(name, 1) if is_int else 0
    # A workload's own knob takes any numbers (a log scale still needs low > 0, checked below).
    if not workload_knob and (low < minimum or (not is_int and low <= 0)):
        bound = f">= {minimum}" if is_int else "> 0"
        raise SearchSpaceError(f"{where}.low must be {bound}, got {low}")
    if low > high:
        raise SearchSpaceError(f"{where}: low ({low}) must be <= high ({high})")
    log = spec.get("log", False)
    if not isinstance(log, bool):
        raise SearchSpaceError(f"{where}.log must be true or false, got {log!r}")
    if log and low <= 0:
        raise SearchSpaceError(f"{where}: log scale needs low > 0, got {low}")
    if step is not None and (step <= 0 or log):
        raise SearchSpaceError(f"{where}.step must be > 0 and cannot be combined with log, got {step!r}")
    if low == high:
        return Knob(name, choices=(low,), fixed=low)
    return Knob(name, low=low, high=high, log=log, step=step, integer=is_int)


def _off_as_string(spec: Any) -> Any:
    if spec is False:
        return "off"
    if isinstance(spec, list):
        return [_off_as_string(value) for value in spec]
    if isinstance(spec, Mapping):
        return {key: _off_as_string(value) if key in ("choices", "default") else value for key, value in spec.items()}
    return spec


def _check_value(name: str, value: Any, where: str) -> None:
    try:
        TrainConfig.from_dict({name: value})
    except ConfigError as exc:
        raise SearchSpaceError(f"{where}: {str(exc).removeprefix('config: ')}") from None


def _default_for(name: str) -> Any:
    return TrainConfig.__dataclass_fields__[name].default


def _suggest(key: str, options: tuple[str, ...]) -> str:
    hint = difflib.get_close_matches(key, options, n=1)
    return f" (did you mean {hint[0]!r}?)" if hint else ""


def _same(a: Any, b: Any) -> bool:
    """Equality that keeps True apart from 1 and False from 0."""
    return (
        type(a) is type(b)
        and a == b
        or (
            not isinstance(a, bool)
            and not isinstance(b, bool)
            and isinstance(a, (int, float))
            and isinstance(b, (int, float))
            and a == b
        )
    )


def _dedupe(values: list[Any]) -> list[Any]:
    unique: list[Any] = []
    for value in values:
        if not any(_same(value, seen) for seen in unique):
            unique.append(value)
    return unique


def _show(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return "null" if value is None else str(value)


def diff_spaces(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """Lines naming each knob whose domain differs between two described spaces."""
    lines = []
    for name in sorted(set(old) | set(new)):
        if old.get(name) != new.get(name):
            lines.append(f"{name}: {old.get(name, '(absent)')!r} -> {new.get(name, '(absent)')!r}")
    return lines
