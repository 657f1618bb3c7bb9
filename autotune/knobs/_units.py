"""Sizes (``640MiB``), durations (``10m``) and fractions (``10%``) as users write them."""

from __future__ import annotations

import re

from autotune.exceptions import UsageError

_SIZE_UNITS = {
    "": 1,
    "b": 1,
    "k": 1000,
    "kb": 1000,
    "m": 1000**2,
    "mb": 1000**2,
    "g": 1000**3,
    "gb": 1000**3,
    "t": 1000**4,
    "tb": 1000**4,
    "kib": 1024,
    "mib": 1024**2,
    "gib": 1024**3,
    "tib": 1024**4,
}
_DURATION_UNITS = {"": 1.0, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_NUMBER_UNIT = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*$")


def parse_size(text: str | int, *, what: str = "size") -> int:
    """``'24GiB'`` -> bytes. Plain numbers are bytes."""
    if isinstance(text, bool):
        raise UsageError(f"{what}: cannot read {text!r} as a size (examples: 640MiB, 24GiB, 2GB)")
    if isinstance(text, int):
        if text <= 0:
            raise UsageError(f"{what}: must be more than 0 bytes, got {text!r}")
        return text
    match = _NUMBER_UNIT.match(str(text))
    unit = match.group(2).lower() if match else None
    if match is None or unit not in _SIZE_UNITS:
        raise UsageError(f"{what}: cannot read {text!r} as a size (examples: 640MiB, 24GiB, 2GB)")
    value = int(float(match.group(1)) * _SIZE_UNITS[unit])
    if value <= 0:
        raise UsageError(f"{what}: must be more than 0 bytes, got {text!r}")
    return value


def parse_duration(text: str | float, *, what: str = "duration", allow_zero: bool = False) -> float:
    """``'90s'``, ``'10m'``, ``'2h'`` -> seconds. Plain numbers are seconds."""
    if isinstance(text, bool):
        raise UsageError(f"{what}: cannot read {text!r} as a duration (examples: 90s, 10m, 2h, 1h30m)")
    if isinstance(text, (int, float)):
        if not (text > 0 or allow_zero and text == 0):
            raise UsageError(f"{what}: must be more than 0 seconds, got {text!r}")
        return float(text)
    total = 0.0
    parts = re.findall(r"([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)", str(text))
    rest = re.sub(r"([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)", "", str(text)).strip()
    if not parts or rest:
        raise UsageError(f"{what}: cannot read {text!r} as a duration (examples: 90s, 10m, 2h, 1h30m)")
    for number, unit in parts:
        if unit.lower() not in _DURATION_UNITS:
            raise UsageError(f"{what}: unknown unit {unit!r} in {text!r} (use s, m, h or d)")
        total += float(number) * _DURATION_UNITS[unit.lower()]
    if total < 0 or total == 0 and not allow_zero:
        raise UsageError(f"{what}: must be more than 0 seconds, got {text!r}")
    return total


def parse_fraction(text: str | float, *, what: str = "fraction") -> float:
    """``'10%'`` or ``'0.1'`` -> 0.1: a share in [0, 1), as a percentage or a plain fraction."""
    if isinstance(text, bool):
        raise UsageError(f"{what}: cannot read {text!r} as a fraction (examples: 10%, 0.1)")
    if isinstance(text, (int, float)):
        value = float(text)
    else:
        match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*(%?)\s*", str(text))
        if match is None:
            raise UsageError(f"{what}: cannot read {text!r} as a fraction (examples: 10%, 0.1)")
        value = float(match.group(1)) / (100 if match.group(2) else 1)
    if not 0 <= value < 1:
        raise UsageError(f"{what}: must be in [0, 1) or a percentage below 100%, got {text!r}")
    return value


def format_size(num_bytes: float | None) -> str:
    """Bytes in binary units, as sizes are written on the command line ("640.0 MiB"); "-" for None."""
    if num_bytes is None:
        return "-"
    value = float(num_bytes)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(value) < 1024:
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TiB"


def format_duration(seconds: float | None) -> str:
    """Seconds as a short duration ("42.0s", "3.5m", "2.1h"); "-" for None."""
    if seconds is None:
        return "-"
    if seconds < 90:
        return f"{seconds:.1f}s"
    if seconds < 5400:
        return f"{seconds / 60:.1f}m"
    return f"{seconds / 3600:.1f}h"


def format_value(value: object) -> str:
    """A knob's value as the notes write it: false, off (a loader knob without workers), 8."""
    if value is None:
        return "off"
    return str(value).lower() if isinstance(value, bool) else str(value)
