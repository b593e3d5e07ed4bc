"""Time in one place: the CRM stores naive UTC, patients live in their hospital's time zone.

Tests move time by setting `bot.clock.now_override` in-process, or HOSPITAL_FAKE_NOW (an ISO datetime with
offset) for every process of a test run or a demo; never by sleeping.
"""

from __future__ import annotations

import os
from datetime import datetime, timezone
from typing import Optional

from zoneinfo import ZoneInfo

from bot.config import get_settings

now_override: Optional[datetime] = (
    datetime.fromisoformat(os.environ["HOSPITAL_FAKE_NOW"]) if os.environ.get("HOSPITAL_FAKE_NOW") else None
)  # aware datetime; for tests and demos


def now() -> datetime:
    """The current time, aware, in UTC."""
    if now_override is not None:
        return now_override.astimezone(timezone.utc)
    return datetime.now(timezone.utc)


def local_tz(name: Optional[str] = None) -> ZoneInfo:
    return ZoneInfo(name) if name else get_settings().tz


def local_now(tz_name: Optional[str] = None) -> datetime:
    return now().astimezone(local_tz(tz_name))


def to_db(moment: datetime) -> datetime:
    """Aware datetime -> naive UTC for storage."""
    if moment.tzinfo is None:
        raise ValueError("to_db needs an aware datetime; naive values are ambiguous")
    return moment.astimezone(timezone.utc).replace(tzinfo=None)


def from_db(stored: datetime, tz_name: Optional[str] = None) -> datetime:
    """Naive UTC from the database -> aware local time."""
    return stored.replace(tzinfo=timezone.utc).astimezone(local_tz(tz_name))


def utc_now_naive() -> datetime:
    return to_db(now())
