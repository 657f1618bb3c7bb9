"""TrainConfig: the speed knobs of one training run, validated, with a YAML/JSON round trip."""

from __future__ import annotations

import dataclasses
import difflib
import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from autotune.exceptions import ConfigError
from autotune.knobs._table import COMPILE_MODES, KNOB_NAMES, KNOBS, PRECISIONS, Knob, Knobs

__all__ = ["COMPILE_MODES", "FIELD_NAMES", "KNOB_NAMES", "PRECISIONS", "TrainConfig", "check_workload_knob"]

# The workload's own knobs are named after the factory they are passed to: ``dataset.max_length``
# becomes ``Workload.dataset(max_length=...)``, ``optimizer.fused`` ``Workload.optimizer(params, lr, fused=...)``.
FACTORIES = ("model", "dataset", "optimizer")
WORKLOAD_KNOB = re.compile(r"^(model|dataset|optimizer)\.([A-Za-z_][A-Za-z0-9_]*)$")


@dataclasses.dataclass(frozen=True)
class TrainConfig(Knobs):
    """The knobs autotune searches (the knob table's fields) and the workload's own. Field names are public:
    export and space files use them."""

    # The workload's own knobs ({"dataset.max_length": 2048, ...}), passed to its factories.
    workload_knobs: Mapping[str, Any] = dataclasses.field(default_factory=dict, hash=False)
    # Data-parallel processes (DistributedDataParallel ranks, one per device), each taking batch_size
    # samples a micro-step. Not searched: --nproc-per-trial sets it. Written only where it is above 1.
    world_size: int = 1

    def __post_init__(self) -> None:
        for entry in KNOBS.values():
            _check(self, entry)
        if isinstance(self.world_size, bool) or not isinstance(self.world_size, int) or self.world_size < 1:
            raise ConfigError(f"world_size must be an integer >= 1, got {self.world_size!r}")
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
        """Samples per optimizer step: batch_size x accumulation_steps x world_size (each rank's micro-batches)."""
        return self.batch_size * self.accumulation_steps * self.world_size

    def normalized(self) -> TrainConfig:
        """The same run with knobs that cannot act cleared: prefetch and persistence need workers."""
        if self.num_workers > 0:
            return self
        return dataclasses.replace(self, prefetch_factor=None, persistent_workers=False)

    def to_dict(self) -> dict[str, Any]:
        values = dataclasses.asdict(self)
        values["workload_knobs"] = dict(self.workload_knobs)
        if self.world_size == 1:  # a single process, as every config before data-parallel runs reads
            del values["world_size"]
        return values

    @classmethod
    def from_dict(cls, values: Mapping[str, Any], *, source: str = "config") -> TrainConfig:
        """Knobs by name; the workload's own knobs under ``workload_knobs`` or as dotted names."""
        values = dict(values)
        dotted = {key: values.pop(key) for key in list(values) if isinstance(key, str) and WORKLOAD_KNOB.match(key)}
        if dotted:
            nested = values.get("workload_knobs") or {}
            values["workload_knobs"] = {**nested, **dotted} if isinstance(nested, Mapping) else nested
        unknown = [key for key in values if key not in FIELD_NAMES and key not in LAUNCH_FIELDS]
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


# The knobs a config file writes; world_size, written only above 1, is read as well (LAUNCH_FIELDS).
LAUNCH_FIELDS = ("world_size",)
FIELD_NAMES: tuple[str, ...] = tuple(
    field.name for field in dataclasses.fields(TrainConfig) if field.name not in LAUNCH_FIELDS
)


def check_workload_knob(name: Any, value: Any) -> None:
    """A workload knob's name says which factory takes it; its value is a plain scalar."""
    if not isinstance(name, str) or not WORKLOAD_KNOB.match(name):
        raise ConfigError(
            f"workload knob {name!r} must be named model.NAME, dataset.NAME or optimizer.NAME "
            "(the factory it is passed to, and its keyword)"
        )
    if value is not None and not isinstance(value, (bool, int, float, str)):
        raise ConfigError(f"workload knob {name}: expected a number, a string or true/false, got {value!r}")


def _check(config: TrainConfig, entry: Knob) -> None:
    """One knob's value against its domain in the knob table."""
    value = getattr(config, entry.name)
    if value is None and entry.nullable:
        return
    if entry.is_int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{entry.name} must be an integer, got {value!r}")
        if entry.low is not None and value < entry.low:
            raise ConfigError(f"{entry.name} must be >= {int(entry.low)}, got {value}")
    elif entry.is_float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{entry.name} must be a number, got {value!r}")
        if not value > (entry.low or 0.0) or value == float("inf"):
            raise ConfigError(f"{entry.name} must be a finite number > {entry.low or 0:g}, got {value!r}")
    elif entry.is_bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{entry.name} must be true or false, got {value!r}")
    elif entry.choices is not None and value not in entry.choices:
        raise ConfigError(f"{entry.name} must be one of {', '.join(map(str, entry.choices))}; got {value!r}")
