"""Building instruction datasets (moved from nbft/data.py; split by job in the next commit)."""

from __future__ import annotations

from nbft.data.loading import *  # noqa: F403
from nbft.data.loading import (  # noqa: F401
    COLUMNS,
    FILE_FORMATS,
    Source,
    __all__,
    _largest_remainder,
    check_examples,
    example_id,
    resolve_mode,
)
