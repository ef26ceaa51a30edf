"""Synthetic data in the official layouts, deterministic by seed, small, learnable by a CNN."""

from medsight.errors import DataError


def whole(name: str, value, minimum: int = 1) -> int:
    """A synth option (a string from the command line, or a number) as a whole number >= ``minimum``."""
    try:
        number = int(str(value).strip())
    except ValueError:
        number = None
    if number is None or number < minimum:
        raise DataError(f"{name} must be a whole number of at least {minimum}, got {value!r}", "synth")
    return number


def triple(name: str, value, kind: type, minimum: float) -> tuple:
    """Three comma-separated numbers (``"96,96,64"``) or a sequence of three, each at least ``minimum``
    (spacings: more than 0)."""
    parts = value.split(",") if isinstance(value, str) else list(value)
    try:
        numbers = tuple(kind(str(p).strip()) for p in parts)
    except ValueError:
        numbers = ()
    fine = len(numbers) == 3 and all(n > 0 if minimum == 0 else n >= minimum for n in numbers)
    if not fine:
        bound = "more than 0" if minimum == 0 else f"at least {minimum}"
        raise DataError(f"{name} needs three comma-separated {'whole ' if kind is int else ''}numbers, each "
                        f"{bound}, got {value!r}", "synth")
    return numbers
