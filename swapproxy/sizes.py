"""Memory sizes as people write them (``24GiB``, ``512 MB``, ``6g``, plain bytes) and as we print them."""

from __future__ import annotations

import re

__all__ = ["parse_size", "format_size", "plain_number"]

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(i?)(b?)\s*$", re.IGNORECASE)
_POWER = {"": 0, "k": 1, "m": 2, "g": 3, "t": 4}


def parse_size(value: int | float | str) -> int:
    """Bytes from ``value``: a number of bytes, or a number with a unit.

    ``KiB``/``MiB``/``GiB``/``TiB`` (and the bare letters ``K``/``M``/``G``/``T``, as
    llama.cpp and most tools mean them) are powers of 1024; ``KB``/``MB``/``GB``/``TB``
    powers of 1000. Raises ValueError for anything else, or a negative size.
    """
    number = plain_number(value, "size")
    if number is not None:
        return int(number)
    assert isinstance(value, str)
    match = _SIZE.match(value)
    if match is None:
        raise ValueError(f"not a size: {value!r} (write e.g. 24GiB, 512MiB or a number of bytes)")
    number, unit, binary, byte = match.groups()
    base = 1000 if unit and byte and not binary else 1024
    return int(float(number) * base ** _POWER[unit.lower()])


def plain_number(value: int | float | str, what: str) -> float | None:
    """``value`` when it is a plain number, None when it is text to parse; ValueError for a
    negative number or a bool (YAML's ``yes``), naming ``what`` was expected."""
    if isinstance(value, bool):
        raise ValueError(f"not a {what}: {value!r}")
    if isinstance(value, (int, float)):
        if value < 0:
            raise ValueError(f"a {what} cannot be negative: {value!r}")
        return value
    return None


def format_size(n: int | None) -> str:
    """``n`` bytes for people: ``1.5 GiB``, ``640 MiB``; None as ``unknown``."""
    if n is None:
        return "unknown"
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024:
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} TiB"
