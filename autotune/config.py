"""TrainConfig: the speed knobs of one training run, validated, with a YAML/JSON round trip."""

from __future__ import annotations

import dataclasses
import difflib
import json
from pathlib import Path
from typing import Any, Literal, get_args

from autotune.exceptions import ConfigError

Precision = Literal["fp32", "tf32", "bf16", "fp16"]
CompileMode = Literal["off", "default", "reduce-overhead", "max-autotune"]

PRECISIONS: tuple[str, ...] = get_args(Precision)
COMPILE_MODES: tuple[str, ...] = get_args(CompileMode)


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
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any], *, source: str = "config") -> TrainConfig:
        unknown = [key for key in values if key not in FIELD_NAMES]
        if unknown:
            key = unknown[0]
            hint = difflib.get_close_matches(key, FIELD_NAMES, n=1)
            suggestion = f" (did you mean {hint[0]!r}?)" if hint else ""
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
