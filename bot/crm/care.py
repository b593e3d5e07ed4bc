"""Medication doses and measurement readings: what care plans ask for and what patients answer.

Doses are rows created when a reminder goes out; "吃了" marks the nearest one taken, and a dose nobody
confirmed within a grace period counts as missed. Readings sent in chat are stored with their unit and the
urgency the thresholds of data/triage/readings.yml give them. Adherence and readings are queryable per patient.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Dict, List, Optional, Sequence, Tuple

from sqlalchemy import func, select
from sqlalchemy.orm import Session
from zoneinfo import ZoneInfo

from bot.crm import audit
from bot.crm.models import MeasurementReading, MedicationDose, Prescription

TAKEN_WINDOW = timedelta(hours=12)  # "吃了" counts for a dose due up to this long ago...
EARLY_WINDOW = timedelta(hours=1)  # ...or due within the next hour
MISSED_AFTER = timedelta(hours=12)  # a dose still unconfirmed this long after its time is missed
READING_KINDS = {"blood_pressure", "glucose", "heart_rate", "spo2", "temperature", "weight"}


_UTC = ZoneInfo("UTC")


def _naive(moment: datetime) -> datetime:
    """Naive UTC, as the CRM stores times (a naive input is taken as UTC already)."""
    return moment if moment.tzinfo is None else moment.astimezone(_UTC).replace(tzinfo=None)


def due_dose(session: Session, prescription_id: int, patient_id: int, scheduled_at: datetime) -> MedicationDose:
    """The dose row for a reminder (created once; a repeated reminder finds it)."""
    scheduled = _naive(scheduled_at)
    dose = session.execute(
        select(MedicationDose).where(
            MedicationDose.prescription_id == prescription_id, MedicationDose.scheduled_at == scheduled
        )
    ).scalar_one_or_none()
    if dose is None:
        dose = MedicationDose(prescription_id=prescription_id, patient_id=patient_id, scheduled_at=scheduled)
        session.add(dose)
        session.flush()
    return dose


def record_taken(session: Session, patient_id: int, now: datetime) -> Optional[MedicationDose]:
    """Mark the dose the patient most likely means ("吃了") as taken: the latest unconfirmed dose due in the last
    12 hours, else one due within the next hour. None when no dose is open."""
    moment = _naive(now)
    candidates = session.execute(
        select(MedicationDose)
        .where(
            MedicationDose.patient_id == patient_id,
            MedicationDose.status != "taken",
            MedicationDose.scheduled_at >= moment - TAKEN_WINDOW,
            MedicationDose.scheduled_at <= moment + EARLY_WINDOW,
        )
        .order_by(MedicationDose.scheduled_at.desc())
    ).scalars()
    dose = next(iter(candidates), None)
    if dose is None:
        return None
    dose.status, dose.taken_at = "taken", moment
    audit.record(session, "assistant", "dose_taken", "medication_dose", dose.id, patient_id)
    return dose


def mark_missed(session: Session, now: datetime) -> int:
    """Doses still unconfirmed `MISSED_AFTER` their time become missed; returns how many."""
    moment = _naive(now)
    overdue = MedicationDose.scheduled_at < moment - MISSED_AFTER
    late = session.execute(select(MedicationDose).where(MedicationDose.status == "due", overdue)).scalars()
    count = 0
    for dose in late:
        dose.status = "missed"
        count += 1
    return count


def missed_days_in_a_row(session: Session, prescription_id: int, tz: ZoneInfo, today: datetime) -> int:
    """Consecutive local days, ending yesterday, on which every dose of the prescription was missed."""
    rows = session.execute(
        select(MedicationDose.scheduled_at, MedicationDose.status).where(
            MedicationDose.prescription_id == prescription_id,
            MedicationDose.scheduled_at < _naive(today),
        )
    ).all()
    by_day: Dict[object, List[str]] = {}
    for scheduled, status in rows:
        day = scheduled.replace(tzinfo=_UTC).astimezone(tz).date()
        by_day.setdefault(day, []).append(status)
    streak = 0
    day = today.astimezone(tz).date() - timedelta(days=1)
    while by_day.get(day) and all(status == "missed" for status in by_day[day]):
        streak += 1
        day -= timedelta(days=1)
    return streak


@dataclass(frozen=True)
class Adherence:
    taken: int
    missed: int
    open: int

    @property
    def rate(self) -> Optional[float]:
        decided = self.taken + self.missed
        return self.taken / decided if decided else None


def adherence(session: Session, patient_id: int, since: datetime) -> Adherence:
    counts = dict(
        session.execute(
            select(MedicationDose.status, func.count(MedicationDose.id))
            .where(MedicationDose.patient_id == patient_id, MedicationDose.scheduled_at >= _naive(since))
            .group_by(MedicationDose.status)
        ).all()
    )
    return Adherence(taken=counts.get("taken", 0), missed=counts.get("missed", 0), open=counts.get("due", 0))


def active_prescriptions(session: Session, patient_id: int) -> List[Prescription]:
    return list(session.execute(select(Prescription).where(Prescription.patient_id == patient_id)).scalars())


def record_reading(
    session: Session,
    patient_id: int,
    kind: str,
    values: Dict[str, float],
    unit: str,
    taken_at: datetime,
    *,
    level: Optional[int] = None,
    source: str = "chat",
) -> MeasurementReading:
    if kind not in READING_KINDS:
        raise ValueError(f"unknown reading kind {kind!r}: expected one of {', '.join(sorted(READING_KINDS))}")
    reading = MeasurementReading(
        patient_id=patient_id, kind=kind, value=dict(values), unit=unit, taken_at=_naive(taken_at), source=source,
        level=level,
    )  # fmt: skip
    session.add(reading)
    session.flush()
    audit.record(session, "assistant", "create", "reading", reading.id, patient_id, {"kind": kind})
    return reading


def readings_of(
    session: Session, patient_id: int, kind: str, since: Optional[datetime] = None
) -> List[Tuple[datetime, Dict[str, float]]]:
    """(taken_at as aware UTC, values) oldest first: what a chart or a nurse reads."""
    query = select(MeasurementReading.taken_at, MeasurementReading.value).where(
        MeasurementReading.patient_id == patient_id, MeasurementReading.kind == kind
    )
    if since is not None:
        query = query.where(MeasurementReading.taken_at >= _naive(since))
    rows: Sequence = session.execute(query.order_by(MeasurementReading.taken_at)).all()
    return [(taken.replace(tzinfo=_UTC), dict(value)) for taken, value in rows]
