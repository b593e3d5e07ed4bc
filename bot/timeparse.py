"""Chinese time expressions (明天下午, 下周一上午, 3月5号, 后天9点) resolved to concrete local datetimes.

Parsing is done by JioNLP's time parser; this module only adapts it to booking: the reference time is
the patient's "now" in the hospital's time zone, a month-day without a year that already passed means
next year, and "随便/最早/越快越好" means "as soon as possible".
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import List, Optional

from bot import clock

logger = logging.getLogger(__name__)

_ANY_TIME = re.compile(r"随便|都行|都可以|最早|最近|越快越好|尽快|尽早|马上|哪天都|什么时候都|无所谓|最快")
_EXPLICIT_MONTH_DAY = re.compile(r"\d{1,2}\s*月|[一二三四五六七八九十]+月")
_HAS_YEAR = re.compile(r"年")


@dataclass(frozen=True)
class TimeSpan:
    """A span of local time a patient named; `text` is the words they used."""

    text: str
    start: datetime  # aware, local
    end: datetime  # aware, local, inclusive end of the span
    start_offset: int = 0
    end_offset: int = 0

    @property
    def is_whole_day(self) -> bool:
        return self.start.hour == 0 and self.start.minute == 0 and (self.end - self.start) >= timedelta(hours=23)

    @property
    def is_past(self) -> bool:
        return self.end < clock.now()


def wants_earliest(text: str) -> bool:
    """True when the patient leaves the date open (随便哪天, 越快越好)."""
    return bool(_ANY_TIME.search(text))


def _jio():  # type: ignore[no-untyped-def]
    import jionlp  # imported lazily: it loads dictionaries (~0.5 s)

    return jionlp


def extract_times(text: str, tz_name: Optional[str] = None, reference: Optional[datetime] = None) -> List[TimeSpan]:
    """Every time point in `text`, resolved against `reference` (default: now in the hospital's zone)."""
    if not text or not text.strip():
        return []
    ref = (reference or clock.local_now(tz_name)).astimezone(clock.local_tz(tz_name))
    try:
        found = _jio().ner.extract_time(text, time_base=_wall_clock(ref), with_parsing=True)
    except Exception:  # JioNLP raises on some odd inputs; a message without a time is not an error
        logger.debug("time extraction failed", exc_info=True)
        return []
    spans: List[TimeSpan] = []
    for item in found:
        detail = item.get("detail") or {}
        if detail.get("type") not in ("time_point", "time_span"):
            continue
        times = detail.get("time") or []
        if len(times) != 2 or not all(isinstance(t, str) for t in times):
            continue  # open-ended spans ('inf') are not bookable dates
        try:
            start = datetime.strptime(times[0], "%Y-%m-%d %H:%M:%S").replace(tzinfo=ref.tzinfo)
            end = datetime.strptime(times[1], "%Y-%m-%d %H:%M:%S").replace(tzinfo=ref.tzinfo)
        except ValueError:
            continue
        words = item.get("text", "")
        if end < ref and _EXPLICIT_MONTH_DAY.search(words) and not _HAS_YEAR.search(words):
            start, end = _next_year(start), _next_year(end)
        offset = item.get("offset") or [0, 0]
        spans.append(TimeSpan(words, start, end, int(offset[0]), int(offset[1])))
    return spans


def _wall_clock(ref: datetime) -> dict:
    """JioNLP takes the reference as wall-clock fields, which keeps the process's own zone out of it."""
    return {
        "year": ref.year,
        "month": ref.month,
        "day": ref.day,
        "hour": ref.hour,
        "minute": ref.minute,
        "second": ref.second,
    }


def _next_year(moment: datetime) -> datetime:
    try:
        return moment.replace(year=moment.year + 1)
    except ValueError:  # 2月29日
        return moment.replace(year=moment.year + 1, day=28)


def first_time(text: str, tz_name: Optional[str] = None, reference: Optional[datetime] = None) -> Optional[TimeSpan]:
    spans = extract_times(text, tz_name, reference)
    return spans[0] if spans else None
