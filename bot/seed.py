"""Demo data: departments, the doctor roster and 30-minute slots for the next 14 days.

Clinics run on China's working days: weekends are off except the official make-up working days (调休),
and public holidays are off; both come from the maintained `holidays` calendar, not a hand list.

    python -m bot.seed             # add departments, doctors and any missing slots
    python -m bot.seed --if-empty  # only when the database has no doctors yet (first run)
"""

from __future__ import annotations

import argparse
import logging
import sys
from datetime import date, datetime, time, timedelta
from typing import Iterable, Iterator, List, Optional, Tuple

import holidays
from sqlalchemy import select
from sqlalchemy.orm import Session

from bot import clock
from bot.catalog import departments, doctor_roster
from bot.crm.models import Department, Doctor, ScheduleSlot
from bot.db import session_scope

logger = logging.getLogger(__name__)

SESSIONS = {"am": (time(8, 0), time(12, 0)), "pm": (time(13, 30), time(17, 0))}
WEEKDAYS = {"mon": 0, "tue": 1, "wed": 2, "thu": 3, "fri": 4, "sat": 5, "sun": 6}
SLOT_MINUTES = 30


def clinic_days(start: date, days: int) -> List[date]:
    """Working days in China between start and start + days (exclusive)."""
    calendar = holidays.country_holidays("CN", years=range(start.year, (start + timedelta(days=days)).year + 1))
    return [day for day in (start + timedelta(n) for n in range(days)) if calendar.is_working_day(day)]


def _session_times(day: date, session: str, tz_name: Optional[str]) -> Iterator[Tuple[datetime, datetime]]:
    begin, end = SESSIONS[session]
    tz = clock.local_tz(tz_name)
    moment = datetime.combine(day, begin, tzinfo=tz)
    stop = datetime.combine(day, end, tzinfo=tz)
    while moment + timedelta(minutes=SLOT_MINUTES) <= stop:
        yield moment, moment + timedelta(minutes=SLOT_MINUTES)
        moment += timedelta(minutes=SLOT_MINUTES)


def _doctor_sessions(spec: Iterable[str], day: date) -> List[str]:
    """Sessions ('am'/'pm') a doctor runs on `day`. A make-up working Saturday follows Monday's rota."""
    weekday = day.weekday() if day.weekday() < 5 else 0
    return [s.split("_")[1] for s in spec if WEEKDAYS[s.split("_")[0]] == weekday]


def seed_departments_and_doctors(session: Session) -> int:
    existing = {d.code for d in session.execute(select(Department)).scalars()}
    for info in departments().values():
        if info.code not in existing:
            session.add(Department(code=info.code, name=info.name, location=info.location))
    session.flush()
    known = {(d.name, d.department_code) for d in session.execute(select(Doctor)).scalars()}
    added = 0
    for entry in doctor_roster():
        if (entry["name"], entry["department"]) not in known:
            session.add(
                Doctor(
                    name=entry["name"],
                    title=entry["title"],
                    department_code=entry["department"],
                    room=entry.get("room", ""),
                    specialty=entry.get("specialty", ""),
                )
            )
            added += 1
    session.flush()
    return added


def seed_slots(session: Session, start: date, days: int = 14, tz_name: Optional[str] = None) -> int:
    """Create every missing slot for the roster's sessions on clinic days; returns how many were added."""
    roster = {(e["name"], e["department"]): e.get("sessions", []) for e in doctor_roster()}
    doctors = session.execute(select(Doctor)).scalars().all()
    first = clock.to_db(datetime.combine(start, time.min, tzinfo=clock.local_tz(tz_name)))
    existing = set(
        session.execute(
            select(ScheduleSlot.doctor_id, ScheduleSlot.start_at).where(ScheduleSlot.start_at >= first)
        ).all()
    )
    added = 0
    for day in clinic_days(start, days):
        for doctor in doctors:
            for half in _doctor_sessions(roster.get((doctor.name, doctor.department_code), []), day):
                for begin, end in _session_times(day, half, tz_name):
                    key = (doctor.id, clock.to_db(begin))
                    if key not in existing:
                        session.add(ScheduleSlot(doctor_id=doctor.id, start_at=key[1], end_at=clock.to_db(end)))
                        added += 1
    return added


def seed(if_empty: bool = False, days: int = 14, url: Optional[str] = None) -> str:
    with session_scope(url) as session:
        if if_empty and session.execute(select(Doctor.id).limit(1)).first() is not None:
            return "database already seeded; nothing to do"
        doctors = seed_departments_and_doctors(session)
        slots = seed_slots(session, clock.local_now().date(), days)
    return f"seeded {len(departments())} departments, {doctors} new doctors, {slots} new slots over {days} days"


def main(argv: Optional[list] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bot.seed", description=__doc__.splitlines()[0])
    parser.add_argument("--if-empty", action="store_true", help="do nothing when doctors exist already")
    parser.add_argument("--days", type=int, default=14)
    args = parser.parse_args(argv)
    print(seed(if_empty=args.if_empty, days=args.days))
    return 0


if __name__ == "__main__":
    sys.exit(main())
