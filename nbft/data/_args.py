"""Argument checks shared by the data functions: a bad number becomes a :class:`~nbft.errors.DataError`."""

from __future__ import annotations

from typing import Any

from nbft.errors import DataError


def _number_arg(where: str, value: Any, fix: str) -> float:
    from nbft.config import check_number

    try:
        return check_number(where, value, fix)
    except ValueError as exc:
        raise DataError(str(exc)) from None


def _int_arg(where: str, value: Any, minimum: int, fix: str, *, optional: bool = False) -> Any:
    from nbft.config import check_int

    try:
        return check_int(where, value, minimum, fix, optional=optional)
    except ValueError as exc:
        raise DataError(str(exc)) from None
