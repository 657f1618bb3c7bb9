"""Sizes and durations as users write them on the command line, and how they are shown."""

from __future__ import annotations

import re

import pytest

from autotune.exceptions import UsageError
from autotune.knobs._units import format_duration, format_size, parse_duration, parse_size

GIB = 1024**3
MIB = 1024**2


def raises_exactly(message: str):
    return pytest.raises(UsageError, match=f"^{re.escape(message)}$")


# --- parse_size ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("640MiB", 640 * MIB),
        ("24GiB", 24 * GIB),
        ("2GB", 2_000_000_000),
        ("1.5GiB", int(1.5 * GIB)),
        ("512KiB", 512 * 1024),
        ("1TiB", 1024**4),
        ("3kb", 3000),
        ("2gb", 2_000_000_000),
        (" 2 GB ", 2_000_000_000),
        ("100B", 100),
        ("1024", 1024),
        (4096, 4096),
    ],
)
def test_parse_size_reads_units(text, expected):
    value = parse_size(text)
    assert value == expected
    assert type(value) is int


def test_parse_size_binary_and_decimal_units_differ():
    assert parse_size("1GiB") == 1_073_741_824
    assert parse_size("1GB") == 1_000_000_000


@pytest.mark.parametrize("text", ["lots", "-1GiB", "10XB", "", "GiB", "1.5.2GiB", "1 G i B"])
def test_parse_size_unreadable(text):
    with raises_exactly(f"size: cannot read {text!r} as a size (examples: 640MiB, 24GiB, 2GB)"):
        parse_size(text)


@pytest.mark.parametrize("text", ["0", "0GiB", "0.1"])
def test_parse_size_zero_bytes(text):
    with raises_exactly(f"size: must be more than 0 bytes, got {text!r}"):
        parse_size(text)


def test_parse_size_names_the_option():
    with raises_exactly("--max-memory: cannot read 'lots' as a size (examples: 640MiB, 24GiB, 2GB)"):
        parse_size("lots", what="--max-memory")


@pytest.mark.parametrize("value", [0, -1])
def test_parse_size_non_positive_int(value):
    with pytest.raises(UsageError):
        parse_size(value)


# --- parse_duration -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("90s", 90.0),
        ("10m", 600.0),
        ("2h", 7200.0),
        ("1h30m", 5400.0),
        ("1h 30m", 5400.0),
        ("1.5h", 5400.0),
        ("1d", 86400.0),
        ("2H", 7200.0),
        ("45", 45.0),
        (30.0, 30.0),
        (30, 30.0),
    ],
)
def test_parse_duration_reads_units(text, expected):
    value = parse_duration(text)
    assert value == expected
    assert type(value) is float


@pytest.mark.parametrize("text", ["soon", "", "h", "-5s", "10m-", "ten minutes"])
def test_parse_duration_unreadable(text):
    with raises_exactly(f"duration: cannot read {text!r} as a duration (examples: 90s, 10m, 2h, 1h30m)"):
        parse_duration(text)


def test_parse_duration_unknown_unit():
    with raises_exactly("duration: unknown unit 'x' in '10x' (use s, m, h or d)"):
        parse_duration("10x")


def test_parse_duration_unknown_unit_in_compound():
    with raises_exactly("duration: unknown unit 'y' in '1h2y' (use s, m, h or d)"):
        parse_duration("1h2y")


@pytest.mark.parametrize("text", ["0", "0s", "0h0m"])
def test_parse_duration_zero(text):
    with raises_exactly(f"duration: must be more than 0 seconds, got {text!r}"):
        parse_duration(text)


def test_parse_duration_names_the_option():
    with raises_exactly("--timeout: cannot read 'soon' as a duration (examples: 90s, 10m, 2h, 1h30m)"):
        parse_duration("soon", what="--timeout")


@pytest.mark.parametrize("value", [0, -5.0])
def test_parse_duration_non_positive_number(value):
    with pytest.raises(UsageError):
        parse_duration(value)


# --- format_size / format_duration ----------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, "-"),
        (0, "0 B"),
        (512, "512 B"),
        (1023, "1023 B"),
        (1024, "1.0 KiB"),
        (1536, "1.5 KiB"),
        (640 * MIB, "640.0 MiB"),
        (24 * GIB, "24.0 GiB"),
        (1024**4, "1.0 TiB"),
        (3 * 1024**4, "3.0 TiB"),
        (1024**5, "1024.0 TiB"),
    ],
)
def test_format_size_output(value, expected):
    assert format_size(value) == expected


def test_format_size_inverts_parse_size():
    assert format_size(parse_size("640MiB")) == "640.0 MiB"
    assert format_size(parse_size("24GiB")) == "24.0 GiB"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, "-"),
        (0, "0.0s"),
        (1.25, "1.2s"),
        (89.9, "89.9s"),
        (90, "1.5m"),
        (600, "10.0m"),
        (5399, "90.0m"),
        (5400, "1.5h"),
        (7200, "2.0h"),
        (3 * 86400, "72.0h"),
    ],
)
def test_format_duration_output(value, expected):
    assert format_duration(value) == expected
