"""Job options: checked at the door, kept apart from the function's own keywords, stored as
the job hash fields a worker acts on (``Options.stored``); the bounds of every number."""
from __future__ import annotations

import math
import operator
import reprlib
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Optional, Union

from .errors import EnqueueError
from .schema import (
    DEFAULT_FAILURE_TTL,
    DEFAULT_LOST_RETRIES,
    DEFAULT_RESULT_TTL,
    DEFAULT_RETRY_DELAY,
    DEFAULT_TIMEOUT,
    encode_option,
)
from .seconds import as_seconds

YEAR = 365 * 24 * 3600
MAX_TIMEOUT = YEAR  # a job may run at most this long; longer: timeout=None
MAX_TTL = 10 * YEAR  # fits Redis EXPIRE with room to spare; longer: None (kept forever)
MAX_DELAY = 10 * YEAR  # due times in ms stay far below 2**53, where a sorted-set score is exact
MAX_RETRY_DELAY = 3600  # finish.lua waits at most an hour between retries
MAX_RETRIES = 1000


def check_seconds(name: str, value: Any, maximum: float, *, zero: bool = False, none: str = "") -> Optional[float]:
    """``value`` as float seconds, if it is a number of seconds (or a timedelta) above 0 (or 0 with
    ``zero``) and at most ``maximum``; None if ``none`` says what None means. Else ``EnqueueError``."""
    if value is None and none:
        return None
    seconds = as_seconds(value)
    if seconds is None or seconds > maximum or (seconds < 0 if zero else seconds <= 0):
        low = "0 or more" if zero else "more than 0"
        alternative = f", or None {none}" if none else ""
        raise EnqueueError(
            f"{name}={reprlib.repr(value)} is not valid: give a number of seconds (or a timedelta), {low} and "
            f"at most {maximum:.0f} ({_span(maximum)}){alternative}. Nothing was enqueued.")
    return seconds


def _is_bool(value: Any) -> bool:
    """A bool, or a numpy bool (which numpy < 2.1 still lets pass as an index, with a warning)."""
    return isinstance(value, bool) or getattr(getattr(value, "dtype", None), "kind", "") == "b"


def check_count(name: str, value: Any, maximum: int = MAX_RETRIES) -> int:
    """``value`` as an int from 0 to ``maximum`` (ints and numpy integers; not bools), else ``EnqueueError``."""
    try:
        count = None if _is_bool(value) else int(operator.index(value))  # exactly an int
    except TypeError:
        count = None
    if count is None or not 0 <= count <= maximum:
        raise EnqueueError(f"{name}={reprlib.repr(value)} is not valid: give a whole number from 0 to {maximum}. "
                           f"Nothing was enqueued.")
    return count


def _span(seconds: float) -> str:
    """``YEAR`` -> "a year", ``3600`` -> "an hour": a bound for people."""
    for unit, size, one in (("years", YEAR, "a year"), ("days", 86400, "a day"), ("hours", 3600, "an hour")):
        if seconds >= size and seconds % size == 0:
            return one if seconds == size else f"{seconds // size:g} {unit}"
    return f"{seconds:g} s"


@dataclass(frozen=True)
class Options:
    """Job options, kept apart from the function's own keywords; checked when made.

    ``timeout``: seconds the job may run, more than 0 and at most a year (None: no limit).
    ``result_ttl`` / ``failure_ttl``: seconds a finished / failed job is kept, more than 0 and at
    most 10 years, rounded up to whole seconds (None: forever). ``retries``: re-runs after the job
    raises (0 to 1000), ``retry_delay`` seconds (0 to 3600) after the first failure, doubling each
    time (with jitter, at most an hour). ``lost_retries``: re-runs after the worker running it was
    lost (killed, hung, cut off), 0 to 1000. Seconds may be any real number (int, float, Decimal,
    Fraction, numpy) or a timedelta; NaN, infinities and bools are refused (``inf`` is no way to
    say "no limit": None is). A bad value raises ``EnqueueError`` naming the option.
    """

    timeout: Optional[float] = DEFAULT_TIMEOUT
    result_ttl: Optional[float] = DEFAULT_RESULT_TTL
    failure_ttl: Optional[float] = DEFAULT_FAILURE_TTL
    retries: int = 0
    retry_delay: float = DEFAULT_RETRY_DELAY
    lost_retries: int = DEFAULT_LOST_RETRIES

    def __post_init__(self) -> None:
        for name, check in _CHECKS.items():
            value = getattr(self, name)
            if value is not getattr(Options, name):  # a default is good as it is
                object.__setattr__(self, name, check(name, value))

    @classmethod
    def from_keywords(cls, options: dict) -> Options:
        if not options:
            return _DEFAULTS
        unknown = options.keys() - _CHECKS.keys()
        if unknown:
            raise EnqueueError(
                f"Unknown job option(s) {', '.join(sorted(unknown))}: the options are "
                f"{', '.join(_CHECKS)}. To pass keywords to the function, use "
                f"enqueue(f, ...) or the kwargs= argument."
            )
        return cls(**options)

    def stored(self) -> list:
        """Field/value pairs for the job hash: only options that differ from the defaults."""
        if self is _DEFAULTS:
            return []
        pairs: list = []
        for name in _CHECKS:
            value = getattr(self, name)
            if value != getattr(Options, name):
                pairs += [name, encode_option(value)]  # "none": no limit / forever
        return pairs


def _plain(seconds: Optional[float]) -> Union[int, float, None]:
    """Whole seconds as an int (stored as "30", not "30.0"), others as a float."""
    return int(seconds) if seconds is not None and seconds.is_integer() else seconds


def _ttl(name: str, value: Any) -> Optional[int]:
    seconds = check_seconds(name, value, MAX_TTL, none="to keep it forever")
    return None if seconds is None else math.ceil(seconds)  # EXPIRE counts whole seconds


_CHECKS: dict = {  # option -> its check, which returns the value to keep (in the order of Options' fields)
    "timeout": lambda name, value: _plain(check_seconds(name, value, MAX_TIMEOUT, none="for no limit")),
    "result_ttl": _ttl,
    "failure_ttl": _ttl,
    "retries": check_count,
    "retry_delay": lambda name, value: _plain(check_seconds(name, value, MAX_RETRY_DELAY, zero=True)),
    "lost_retries": check_count,
}
_DEFAULTS = Options()


def _delay_ms(delay: Union[float, timedelta, None]) -> int:
    """A delay in whole milliseconds (rounded up, so any delay schedules the job); checked."""
    if delay is None:
        return 0
    return math.ceil((check_seconds("delay", delay, MAX_DELAY, zero=True) or 0.0) * 1000)


def _until(when: Any) -> timedelta:
    """The delay until ``when`` (0 if it is past), or ``EnqueueError``."""
    if not isinstance(when, datetime):
        raise EnqueueError(f"when={reprlib.repr(when)} is not valid: give a datetime, e.g. "
                           f"datetime.now(timezone.utc) + timedelta(hours=1) (a naive one means local time). "
                           f"Nothing was enqueued.")
    now = datetime.now(when.tzinfo) if when.tzinfo else datetime.now()
    delay = max(when - now, timedelta(0))
    if delay.total_seconds() > MAX_DELAY:
        raise EnqueueError(f"when={when!r} is more than {_span(MAX_DELAY)} ahead. Nothing was enqueued.")
    return delay
