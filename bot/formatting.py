"""Dates, times and lists formatted for the patient's locale with Babel (zh_CN first, en too)."""

from __future__ import annotations

from datetime import date, datetime

from babel.dates import format_date, format_skeleton, format_time


def visit_date(day: date, locale: str = "zh_CN") -> str:
    """'2026年11月24日星期二' / 'Tuesday, November 24, 2026'."""
    return format_date(day, format="full", locale=locale)


def visit_time(moment: datetime, locale: str = "zh_CN") -> str:
    """'09:30' in zh_CN, '9:30 AM' in en (the moment is already in the patient's zone)."""
    return format_time(moment, format="short", tzinfo=moment.tzinfo, locale=locale)


def visit_datetime(moment: datetime, locale: str = "zh_CN") -> str:
    return f"{visit_date(moment.date(), locale)} {visit_time(moment, locale)}"


def short_date(day: date, locale: str = "zh_CN") -> str:
    """'11月24日 周二' for compact lists."""
    return format_skeleton("MMMEd", datetime(day.year, day.month, day.day), locale=locale)
