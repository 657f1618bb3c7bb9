"""TrainConfig: the speed knobs of one training run, validated, with a YAML/JSON round trip."""

from __future__ import annotations

import dataclasses
import difflib
import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, get_args

from autotune.exceptions import ConfigError

Precision = Literal["fp32", "tf32", "bf16", "fp16"]
CompileMode = Literal["off", "default", "reduce-overhead", "max-autotune"]

PRECISIONS: tuple[str, ...] = get_args(Precision)
COMPILE_MODES: tuple[str, ...] = get_args(CompileMode)

# The workload's own knobs are named after the factory they are passed to: ``dataset.max_length``
# becomes ``Workload.dataset(max_length=...)``, ``optimizer.fused`` ``Workload.optimizer(params, lr, fused=...)``.
FACTORIES = ("model", "dataset", "optimizer")
WORKLOAD_KNOB = re.compile(r"^(model|dataset|optimizer)\.([A-Za-z_][A-Za-z0-9_]*)$")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """The knobs autotune searches. Field names are public: export and space files use them."""

    batch_size: int = 32
    accumulation_steps: int = 1
    num_workers: int = 0
    prefetch_factor: int | None = None
    pin_memory: bool = False
    persistent_workers: bool = False
    precision: Precision = "fp32"
    channels_last: bool = False
    compile: CompileMode = "off"
    gradient_checkpointing: bool = False
    max_lr: float = 1e-3
    # The workload's own knobs ({"dataset.max_length": 2048, ...}), passed to its factories.
    workload_knobs: Mapping[str, Any] = dataclasses.field(default_factory=dict, hash=False)

    def __post_init__(self) -> None:
        _check_int(self, "batch_size", low=1)
        _check_int(self, "accumulation_steps", low=1)
        _check_int(self, "num_workers", low=0)
        if self.prefetch_factor is not None:
            _check_int(self, "prefetch_factor", low=1)
        for name in ("pin_memory", "persistent_workers", "channels_last", "gradient_checkpointing"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"{name} must be true or false, got {getattr(self, name)!r}")
        _check_choice(self, "precision", PRECISIONS)
        _check_choice(self, "compile", COMPILE_MODES)
        if isinstance(self.max_lr, bool) or not isinstance(self.max_lr, (int, float)):
            raise ConfigError(f"max_lr must be a number, got {self.max_lr!r}")
        if not self.max_lr > 0 or self.max_lr == float("inf"):
            raise ConfigError(f"max_lr must be a finite number > 0, got {self.max_lr!r}")
        object.__setattr__(self, "max_lr", float(self.max_lr))
        if not isinstance(self.workload_knobs, Mapping):
            raise ConfigError(f"workload_knobs must be a mapping, got {self.workload_knobs!r}")
        for name, value in self.workload_knobs.items():
            check_workload_knob(name, value)
        object.__setattr__(self, "workload_knobs", dict(sorted(self.workload_knobs.items())))

    def factory_kwargs(self, factory: str) -> dict[str, Any]:
        """The workload knobs for one factory (``model``, ``dataset`` or ``optimizer``), by keyword."""
        prefix = factory + "."
        return {name[len(prefix) :]: value for name, value in self.workload_knobs.items() if name.startswith(prefix)}

    @property
    def effective_batch_size(self) -> int:
        """Samples per optimizer step: batch_size x accumulation_steps."""
        return self.batch_size * self.accumulation_steps

    def normalized(self) -> TrainConfig:
        """The same run with knobs that cannot act cleared: prefetch and persistence need workers."""
        if self.num_workers > 0:
            return self
        return dataclasses.replace(self, prefetch_factor=None, persistent_workers=False)

    def to_dict(self) -> dict[str, Any]:
        values = dataclasses.asdict(self)
        values["workload_knobs"] = dict(self.workload_knobs)
        return values

    @classmethod
    def from_dict(cls, values: Mapping[str, Any], *, source: str = "config") -> TrainConfig:
        """Knobs by name; the workload's own knobs under ``workload_knobs`` or as dotted names."""
        values = dict(values)
        dotted = {key: values.pop(key) for key in list(values) if isinstance(key, str) and WORKLOAD_KNOB.match(key)}
        if dotted:
            nested = values.get("workload_knobs") or {}
            values["workload_knobs"] = {**nested, **dotted} if isinstance(nested, Mapping) else nested
        unknown = [key for key in values if key not in FIELD_NAMES]
        if unknown:
            key = unknown[0]
            hint = difflib.get_close_matches(key, FIELD_NAMES, n=1)
            suggestion = f" (did you mean {hint[0]!r}?)" if hint else ""
            if isinstance(key, str) and "." in key:
                suggestion += " (a workload's own knob is named model.NAME, dataset.NAME or optimizer.NAME)"
            raise ConfigError(f"{source}: unknown knob {key!r}{suggestion}")
        try:
            return cls(**values)
        except ConfigError as exc:
            raise ConfigError(f"{source}: {exc}") from None

    def save(self, path: str | Path) -> None:
        """Write the config alone (``config:`` mapping) as YAML or JSON, by the file's suffix."""
        path = Path(path)
        document = {"config": self.to_dict()}
        if path.suffix == ".json":
            path.write_text(json.dumps(document, indent=2) + "\n")
        else:
            import yaml

            path.write_text(yaml.safe_dump(document, sort_keys=False))

    @classmethod
    def load(cls, path: str | Path) -> TrainConfig:
        """Read a config from a YAML or JSON file: a bare mapping or an export's ``config:``."""
        path = Path(path)
        try:
            text = path.read_text()
        except OSError as exc:
            raise ConfigError(f"{path}: cannot read ({exc.strerror})") from None
        import yaml

        try:
            document = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
        except (ValueError, yaml.YAMLError) as exc:
            kind = "JSON" if path.suffix == ".json" else "YAML"
            raise ConfigError(f"{path}: not valid {kind}: {' '.join(str(exc).split())}") from None
        if isinstance(document, dict) and isinstance(document.get("config"), dict):
            document = document["config"]
        if not isinstance(document, dict):
            raise ConfigError(f"{path}: expected a mapping of knobs, got {type(document).__name__}")
        if document.get("compile") is False:  # YAML 1.1 reads a bare `off` as false
            document = {**document, "compile": "off"}
        return cls.from_dict(document, source=str(path))


FIELD_NAMES: tuple[str, ...] = tuple(field.name for field in dataclasses.fields(TrainConfig))
KNOB_NAMES: tuple[str, ...] = tuple(name for name in FIELD_NAMES if name != "workload_knobs")


def check_workload_knob(name: Any, value: Any) -> None:
    """A workload knob's name says which factory takes it; its value is a plain scalar."""
    if not isinstance(name, str) or not WORKLOAD_KNOB.match(name):
        raise ConfigError(
            f"workload knob {name!r} must be named model.NAME, dataset.NAME or optimizer.NAME "
            "(the factory it is passed to, and its keyword)"
        )
    if value is not None and not isinstance(value, (bool, int, float, str)):
        raise ConfigError(f"workload knob {name}: expected a number, a string or true/false, got {value!r}")


def _check_int(config: TrainConfig, name: str, *, low: int) -> None:
    value = getattr(config, name)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{name} must be an integer, got {value!r}")
    if value < low:
        raise ConfigError(f"{name} must be >= {low}, got {value}")


def _check_choice(config: TrainConfig, name: str, choices: tuple[str, ...]) -> None:
    value = getattr(config, name)
    if value not in choices:
        raise ConfigError(f"{name} must be one of {', '.join(choices)}; got {value!r}")
