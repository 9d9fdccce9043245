"""jobworkerd.units: sizes (powers of 1024) and durations as people write them."""

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from jobworkerd.units import MAX_SIZE, format_size, parse_duration, parse_size


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("0", 0),
        ("512", 512),
        ("64K", 64 << 10),
        ("64k", 64 << 10),
        ("64KB", 64 << 10),
        ("64KiB", 64 << 10),
        ("256M", 256 << 20),
        ("256 M", 256 << 20),
        (" 2G ", 2 << 30),
        ("1.5G", 3 << 29),
        ("1T", 1 << 40),
        ("0.5K", 512),
        (4096, 4096),
    ],
)
def test_parse_size_accepts(text, expected):
    assert parse_size(text) == expected


@pytest.mark.parametrize("text", ["", "abc", "12X", "-1", "-1M", "1.2.3", "M", "1 0", "1e6", "0x10", "True"])
def test_parse_size_rejects_with_a_message_saying_what_is_accepted(text):
    with pytest.raises(ValueError) as info:
        parse_size(text, "memory")
    message = str(info.value)
    assert message.startswith("memory ")
    assert repr(text) in message
    assert "K, M, G or T" in message and "powers of 1024" in message


def test_parse_size_rejects_a_bool():
    # True is an int to Python; a config value `memory: yes` must not become 1 byte.
    with pytest.raises(ValueError, match="not a size"):
        parse_size(True)


def test_parse_size_rejects_negative_int():
    with pytest.raises(ValueError, match="must not be negative"):
        parse_size(-5, "output_cap")


def test_parse_size_rejects_too_large():
    with pytest.raises(ValueError, match="too large"):
        parse_size("10000000000T", "memory")
    with pytest.raises(ValueError, match="too large"):
        parse_size(MAX_SIZE + 1)
    assert parse_size(MAX_SIZE) == MAX_SIZE


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("10", 10.0),
        ("2.5", 2.5),
        ("10s", 10.0),
        ("500ms", 0.5),
        ("2m", 120.0),
        ("1h", 3600.0),
        ("7d", 604800.0),
        (" 3 s ", 3.0),
        (7, 7.0),
        (0.25, 0.25),
        (0, 0.0),
    ],
)
def test_parse_duration_accepts(text, expected):
    assert parse_duration(text) == pytest.approx(expected)


@pytest.mark.parametrize("text", ["", "soon", "10x", "-1", "-1s", "ms", "True"])
def test_parse_duration_rejects(text):
    with pytest.raises(ValueError) as info:
        parse_duration(text, "stop_grace")
    message = str(info.value)
    assert message.startswith("stop_grace ")
    assert "500ms" in message  # says what is accepted


@pytest.mark.parametrize("value", [-1, -0.5, math.nan, math.inf, -math.inf])
def test_parse_duration_rejects_non_finite_or_negative_numbers(value):
    with pytest.raises(ValueError, match="finite, non-negative"):
        parse_duration(value, "grace")


def test_parse_duration_rejects_bool():
    with pytest.raises(ValueError):
        parse_duration(True)


@pytest.mark.parametrize(
    ("value", "text"),
    [(0, "0"), (1, "1"), (1000, "1000"), (1024, "1K"), (1536, "1536"), (64 << 20, "64M"), (3 << 30, "3G"), (1 << 40, "1T")],
)
def test_format_size(value, text):
    assert format_size(value) == text


@given(st.integers(min_value=0, max_value=MAX_SIZE))
def test_format_size_round_trips_through_parse_size(value):
    assert parse_size(format_size(value)) == value


@given(st.integers(min_value=0, max_value=1 << 20), st.sampled_from(["", "K", "M", "G"]))
def test_parse_size_whole_numbers_with_suffix(number, suffix):
    factor = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}[suffix]
    assert parse_size(f"{number}{suffix}") == number * factor


def test_fractional_bytes_are_refused_but_fractional_units_are_not():
    from jobworkerd.units import parse_size

    assert parse_size("0.5K") == 512
    with pytest.raises(ValueError, match="not a whole number of bytes"):
        parse_size("1.5")
