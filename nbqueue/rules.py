"""When a schedule's ticks fall: ``every`` N seconds, or a 5-field cron expression in a time zone.

Times are whole milliseconds since the epoch (Redis's clock, as the scripts read it). Cron is
parsed and walked by ``cronsim`` (the evaluator Healthchecks runs, no dependencies of its own):
numbers, ranges, lists, steps, ``*``, month and day names, ``L``. Its DST handling is cron's: a
time that a spring-forward gap skips runs once, right after the gap; a time that a fall-back
repeats runs once (hour-by-hour or finer expressions run in both hours, as each wall-clock minute
they name happens twice).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Optional

from cronsim import CronSim, CronSimError

from .errors import MalformedData, ScheduleError
from .seconds import as_seconds

MIN_EVERY = 1.0  # seconds: the workers look for due schedules once a heartbeat (1 s)
MAX_EVERY = 10 * 365 * 24 * 3600.0  # as delays: ms stay far below 2**53
_HORIZON = 20 * 366 * 24 * 3600 * 1000  # ms: a cron expression must match within 20 years
_WIDEST_SCAN = 100_000  # cron ticks walked at most to list missed ones


@dataclass(frozen=True)
class Rule:
    """``every_ms`` (ticks at the first due time plus whole multiples), or ``cron`` in ``timezone``."""

    every_ms: Optional[int] = None
    cron: Optional[str] = None
    timezone: str = "UTC"

    @classmethod
    def make(cls, every: Any = None, cron: Any = None, tz: Any = None) -> Rule:
        """The rule for ``schedule(every=...)`` or ``schedule(cron=..., timezone=...)``, or ``ScheduleError``."""
        if (every is None) == (cron is None):
            raise ScheduleError("Give a schedule either every= (seconds or a timedelta) or cron= "
                                "(e.g. cron='0 9 * * 1-5'), not both and not neither. Nothing was scheduled.")
        if every is not None:
            if tz is not None:
                raise ScheduleError(
                    "timezone= is for cron= schedules; every= ticks at fixed intervals. Nothing was scheduled.")
            seconds = as_seconds(every)
            if seconds is None or not MIN_EVERY <= seconds <= MAX_EVERY:
                raise ScheduleError(
                    f"every={every!r} is not valid: give a number of seconds (or a timedelta) from {MIN_EVERY:g} "
                    f"(workers look once a second) to {MAX_EVERY:.0f} (10 years). Nothing was scheduled.")
            return cls(every_ms=math.ceil(seconds * 1000))
        if not isinstance(cron, str) or len(cron) > 200:
            raise ScheduleError(f"cron={cron!r} is not valid: give a 5-field cron string such as '0 9 * * 1-5'. "
                                f"Nothing was scheduled.")
        rule = cls(cron=" ".join(cron.split()), timezone=_zone_name(tz))
        now = _ms(datetime.now(timezone.utc))
        try:
            first = rule.next_after(now)
        except (CronSimError, ValueError) as exc:
            raise ScheduleError(f"cron={cron!r} is not valid ({exc}): give 5 fields, minute hour day-of-month month "
                                f"day-of-week, e.g. '0 9 * * 1-5' (9:00 on weekdays). Nothing was scheduled.") from None
        if first - now > _HORIZON:
            raise ScheduleError(f"cron={cron!r} does not match any time in the next 20 years. Nothing was scheduled.")
        return rule

    # --- stored as one string in the schedule's hash ---
    def stored(self) -> str:
        return f"every:{self.every_ms}" if self.every_ms is not None else f"cron:{self.timezone}:{self.cron}"

    @classmethod
    def from_stored(cls, text: str) -> Rule:
        """The rule a schedule's hash holds; ``MalformedData`` (a ``ValueError``) for junk (written by hand)."""
        kind, _, rest = text.partition(":")
        if kind == "every":
            every = int(rest)
            if not MIN_EVERY * 1000 <= every <= MAX_EVERY * 1000:
                raise MalformedData(f"every {rest} ms is out of range")
            return cls(every_ms=every)
        if kind == "cron":
            zone, _, expr = rest.partition(":")
            rule = cls(cron=expr, timezone=_zone_name(zone))
            try:
                CronSim(expr, datetime.now(timezone.utc))  # parses it
            except CronSimError as exc:
                raise MalformedData(f"cron {expr[:40]!r}: {exc}") from None
            return rule
        raise MalformedData(f"unknown rule {text[:40]!r}")

    def describe(self) -> str:
        """``every 5m`` / ``cron 0 9 * * 1-5 (Europe/Berlin)``: for listings."""
        if self.every_ms is not None:
            return f"every {_span(self.every_ms / 1000)}"
        return f"cron {self.cron} ({self.timezone})"

    # --- tick arithmetic ---
    def next_after(self, ms: int, anchor: Optional[int] = None) -> int:
        """The first tick strictly after ``ms``; ``every`` ticks are ``anchor`` plus multiples (default: ``ms``)."""
        if self.every_ms is not None:
            if anchor is None:
                return ms + self.every_ms
            if anchor > ms:
                return anchor
            return anchor + ((ms - anchor) // self.every_ms + 1) * self.every_ms
        return _ms(next(CronSim(self.cron or "", self._at(ms))))

    def ticks(self, due: int, now: int, limit: int) -> list:
        """The ticks from ``due`` (a tick) to ``now``, both included, oldest first: the last ``limit`` of them."""
        if due > now or limit <= 0:
            return []
        if self.every_ms is not None:
            latest = due + (now - due) // self.every_ms * self.every_ms
            count = min(limit, (latest - due) // self.every_ms + 1)
            return [latest - i * self.every_ms for i in range(count)][::-1]
        found: list = []
        walk = CronSim(self.cron or "", self._at(now + 60_000 - now % 60_000), reverse=True)  # ticks <= now
        for _ in range(min(limit, _WIDEST_SCAN)):
            tick = _ms(next(walk))
            if tick < due:
                break
            found.append(tick)
        return found[::-1] or [due]

    def _at(self, ms: int) -> datetime:
        return datetime.fromtimestamp(ms / 1000, _zone(self.timezone))


def _zone_name(tz: Any) -> str:
    """An IANA zone name for ``timezone=`` (a name, a ZoneInfo, or None: UTC), or ``ScheduleError``."""
    if tz is None or tz is timezone.utc:
        return "UTC"
    name = getattr(tz, "key", tz)  # a ZoneInfo knows its name
    if isinstance(name, str):
        try:
            _zone(name)
            return name
        except Exception:  # ZoneInfoNotFoundError, ValueError for a path-like name
            pass
    raise ScheduleError(f"timezone={tz!r} is not valid: give an IANA time zone name such as 'Europe/Berlin' or "
                        f"'America/New_York' (or a zoneinfo.ZoneInfo); the tz database comes with the tzdata "
                        f"package. Nothing was scheduled.")


def _zone(name: str) -> Any:
    from zoneinfo import ZoneInfo

    return timezone.utc if name == "UTC" else ZoneInfo(name)


def _ms(moment: datetime) -> int:
    return int(moment.timestamp() * 1000)  # whole seconds or ms: exact in a double


def _span(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{seconds / size:g}{unit}"
    return f"{seconds:g}s"


def as_datetime(ms: Optional[int]) -> Optional[datetime]:
    """A time in ms as an aware UTC datetime (None stays None)."""
    return None if ms is None else datetime.fromtimestamp(ms / 1000, timezone.utc)


