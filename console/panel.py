"""The patient panel beside a conversation: who the patient is and what the hospital knows of their care."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import Any, Dict, List, Optional

from sqlalchemy import select
from sqlalchemy.orm import Session

from bot.catalog import departments
from bot.crm import care
from bot.crm.models import (
    Appointment,
    CarePlan,
    Consent,
    MeasurementReading,
    Patient,
    PatientTag,
    ScheduleSlot,
    SurveyResponse,
    SurveyStatus,
    utcnow,
)
from bot.crm.patients import mask_phone


@dataclass
class Panel:
    patient_id: int
    name: str
    card_no: str
    phone: str  # masked: the nurse replies in the chat, not by phone
    age: Optional[int]
    timezone: str
    appointments: List[Dict[str, Any]] = field(default_factory=list)
    care_plans: List[Dict[str, Any]] = field(default_factory=list)
    adherence_30d: Optional[float] = None
    doses_30d: Dict[str, int] = field(default_factory=dict)
    readings: List[Dict[str, Any]] = field(default_factory=list)
    reading_kinds: List[str] = field(default_factory=list)
    surveys: List[Dict[str, Any]] = field(default_factory=list)
    tags: List[str] = field(default_factory=list)
    consents: List[Dict[str, Any]] = field(default_factory=list)


def _age(birth: Optional[date], today: date) -> Optional[int]:
    if birth is None:
        return None
    return today.year - birth.year - ((today.month, today.day) < (birth.month, birth.day))


def panel(session: Session, patient_id: int, now: Optional[datetime] = None) -> Optional[Panel]:
    now = now or utcnow()
    patient = session.get(Patient, patient_id)
    if patient is None:
        return None
    names = {code: info.name for code, info in departments().items()}
    result = Panel(
        patient_id=patient.id,
        name=patient.name,
        card_no=patient.card_no,
        phone=mask_phone(patient.phone),
        age=_age(patient.birth_date, now.date()),
        timezone=patient.timezone,
    )
    rows = session.execute(
        select(Appointment, ScheduleSlot)
        .join(ScheduleSlot, Appointment.slot_id == ScheduleSlot.id)
        .where(Appointment.patient_id == patient_id)
        .order_by(ScheduleSlot.start_at.desc())
        .limit(10)
    ).all()
    for appointment, slot in rows:
        doctor = slot.doctor
        result.appointments.append(
            {
                "id": appointment.id,
                "start_at": slot.start_at,
                "status": appointment.status.value,
                "doctor": doctor.name if doctor else "",
                "department": names.get(doctor.department_code, doctor.department_code) if doctor else "",
                "upcoming": slot.start_at >= now,
            }
        )
    for plan in session.execute(
        select(CarePlan).where(CarePlan.patient_id == patient_id).order_by(CarePlan.created_at.desc())
    ).scalars():
        result.care_plans.append({"template": plan.template, "anchor_at": plan.anchor_at, "active": plan.active})
    counts = care.adherence(session, patient_id, now - timedelta(days=30))
    result.adherence_30d = counts.rate
    result.doses_30d = {"taken": counts.taken, "missed": counts.missed, "due": counts.open}
    for reading in session.execute(
        select(MeasurementReading)
        .where(MeasurementReading.patient_id == patient_id)
        .order_by(MeasurementReading.taken_at.desc())
        .limit(10)
    ).scalars():
        result.readings.append(
            {
                "kind": reading.kind,
                "value": reading.value,
                "unit": reading.unit,
                "taken_at": reading.taken_at,
                "level": reading.level,
            }
        )
    result.reading_kinds = sorted({r["kind"] for r in result.readings})
    for response in session.execute(
        select(SurveyResponse)
        .where(SurveyResponse.patient_id == patient_id, SurveyResponse.status == SurveyStatus.COMPLETED)
        .order_by(SurveyResponse.completed_at.desc())
        .limit(10)
    ).scalars():
        result.surveys.append(
            {
                "instrument": response.instrument,
                "total": response.total_score,
                "band": response.band,
                "completed_at": response.completed_at,
            }
        )
    result.tags = list(
        session.execute(
            select(PatientTag.tag).where(PatientTag.patient_id == patient_id).order_by(PatientTag.created_at)
        ).scalars()
    )
    for consent in session.execute(select(Consent).where(Consent.patient_id == patient_id)).scalars():
        result.consents.append({"channel": consent.channel, "opted_in": consent.opted_in})
    return result


def add_tag(session: Session, patient_id: int, tag: str, actor: str) -> bool:
    tag = tag.strip()[:32]
    if not tag:
        return False
    exists = session.execute(
        select(PatientTag.id).where(PatientTag.patient_id == patient_id, PatientTag.tag == tag)
    ).scalar_one_or_none()
    if exists is None:
        session.add(PatientTag(patient_id=patient_id, tag=tag, created_by=actor))
    return exists is None
