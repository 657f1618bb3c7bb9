"""The knobs: the TrainConfig, the knob table (each knob declared once), search spaces, what the device
can run, and the units sizes and durations are written in."""

from autotune.knobs._config import FIELD_NAMES, KNOB_NAMES, TrainConfig
from autotune.knobs._device import DeviceInfo, detect_device, unsupported_values
from autotune.knobs._space import SearchSpace, diff_spaces, load_space, parse_space, shipped_spaces
from autotune.knobs._table import KNOBS, Effect, Knob, Knobs, Requirement
from autotune.knobs._units import format_duration, format_size, parse_duration, parse_fraction, parse_size

__all__ = [
    "FIELD_NAMES",
    "KNOBS",
    "KNOB_NAMES",
    "Effect",
    "Knob",
    "Knobs",
    "Requirement",
    "DeviceInfo",
    "SearchSpace",
    "TrainConfig",
    "detect_device",
    "diff_spaces",
    "format_duration",
    "format_size",
    "load_space",
    "parse_duration",
    "parse_fraction",
    "parse_size",
    "parse_space",
    "shipped_spaces",
    "unsupported_values",
]
