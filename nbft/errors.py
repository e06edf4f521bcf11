"""nbft's data errors, in a module that imports nothing, so light modules (prompt encoding) can raise them.

Both are also importable from :mod:`nbft.data`, where they were defined first.

Example::

    from nbft.errors import DataError
    raise DataError("column 'text' is missing: pass columns={'text': 'review'}")
"""

from __future__ import annotations

__all__ = ["DataError", "OfflineError"]


class DataError(ValueError):
    """The data cannot become an instruction dataset as asked; the message says why and how to fix it."""


class OfflineError(ConnectionError):
    """A Hugging Face Hub resource was asked for while the Hub is unreachable."""
