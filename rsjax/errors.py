"""Exceptions raised on bad user input. Each message names the bad value and, where one
exists, the command that fixes it."""
from __future__ import annotations


class RsjaxError(Exception):
    """Base class of every error rsjax raises on purpose."""


class InputError(RsjaxError, ValueError):
    """A value given by the user is out of range, of the wrong shape, or unknown."""


class DataError(RsjaxError, ValueError):
    """A data file or directory is missing, truncated or inconsistent."""


class CheckpointError(RsjaxError, ValueError):
    """A checkpoint is missing, truncated, tampered with, or of another architecture."""


def check_positive(name: str, value: float) -> float:
    """Return ``value`` if it is a finite number > 0, else raise InputError naming it."""
    import math

    if not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise InputError(f"{name} must be a finite number > 0, got {value!r}")
    return value


def check_int_at_least(name: str, value: int, minimum: int) -> int:
    """Return ``value`` if it is an integer >= minimum, else raise InputError naming it."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise InputError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return value


def check_open_unit(name: str, value: float) -> float:
    """Return ``value`` if 0 < value < 1, else raise InputError naming it."""
    if not isinstance(value, (int, float)) or not (0.0 < value < 1.0):
        raise InputError(f"{name} must lie in the open interval (0, 1), got {value!r}")
    return value


MAX_NAMES_SHOWN = 12


def format_names(names) -> str:
    """Sorted names joined by commas, the first MAX_NAMES_SHOWN only, then "... (k more)"."""
    names = sorted(names)
    shown = ", ".join(names[:MAX_NAMES_SHOWN])
    more = len(names) - MAX_NAMES_SHOWN
    return shown + (f", ... ({more} more)" if more > 0 else "")


def name_problems(*groups: tuple[str, list]) -> list[str]:
    """``"<count> <label>: <names>"`` for each non-empty (label, names) group, in order; used to
    report every missing / unexpected / mis-shaped tensor of a weight conversion at once."""
    return [f"{len(names)} {label}: {format_names(names)}" for label, names in groups if names]
