"""Seconds as nbqueue takes them, for job options and for waits alike."""
from __future__ import annotations

import math
import numbers
import time
from datetime import timedelta
from decimal import Decimal
from typing import Any, Optional

from .errors import InvalidTimeout


def as_seconds(value: Any) -> Optional[float]:
    """``value`` as finite float seconds: a real number (int, float, Decimal, Fraction, numpy) or a
    timedelta; None for anything else (bools, strings, NaN, infinities)."""
    seconds: Any
    if type(value) is float or type(value) is int:  # the common case first: no ABC checks
        seconds = value
    elif isinstance(value, timedelta):
        seconds = value.total_seconds()
    elif isinstance(value, bool) or not isinstance(value, (numbers.Real, Decimal)):
        return None
    else:
        seconds = value
    try:
        seconds = float(seconds)
    except (ValueError, OverflowError):  # a signaling NaN, an int or Fraction beyond float range
        return None
    return seconds if math.isfinite(seconds) else None


def deadline(timeout: Any, name: str = "timeout") -> Optional[float]:
    """The monotonic time a wait of ``timeout`` seconds ends (None or ``inf``: never), or
    ``InvalidTimeout`` naming ``name`` for NaN, a negative number or no number at all."""
    if timeout is None or timeout == math.inf:
        return None
    seconds = as_seconds(timeout)
    if seconds is None or seconds < 0:
        raise InvalidTimeout(f"{name}={timeout!r} is not valid: give seconds to wait (0 or more), or None to wait "
                             f"as long as it takes.")
    return time.monotonic() + seconds
