"""Booking rules: find free slots, book, cancel, reschedule, list upcoming appointments.

Double booking is prevented by the database (a partial unique index over booked appointments), so these
functions stay correct with many action servers and many patients racing for one slot.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Iterable, List, Optional, Sequence

from sqlalchemy import and_, func, literal, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, aliased, joinedload

from bot import clock
from bot.catalog import departments
from bot.crm import audit
from bot.crm.models import Appointment, AppointmentStatus, Doctor, ScheduleSlot
from bot.errors import AppointmentNotFound, DuplicateBooking, SlotInPast, SlotTaken

# A slot starting sooner than this cannot be booked online: the patient could not get there in time.
BOOKING_LEAD_TIME = timedelta(minutes=30)


@dataclass(frozen=True)
class SlotOffer:
    """A free slot as the patient sees it (times are local and aware)."""

    slot_id: int
    start: datetime
    doctor_id: int
    doctor_name: str
    doctor_title: str
    department_code: str
    department_name: str
    place: str


@dataclass(frozen=True)
class AppointmentView:
    """A booked appointment as the patient sees it."""

    appointment_id: int
    patient_id: int
    patient_name: str
    start: datetime
    doctor_name: str
    doctor_title: str
    department_code: str
    department_name: str
    place: str


def _place(doctor: Doctor) -> str:
    info = departments().get(doctor.department_code)
    location = info.location if info else ""
    return f"{location} {doctor.room}".strip()


def _offer(slot: ScheduleSlot, tz_name: Optional[str]) -> SlotOffer:
    doctor = slot.doctor
    info = departments().get(doctor.department_code)
    return SlotOffer(
        slot_id=slot.id,
        start=clock.from_db(slot.start_at, tz_name),
        doctor_id=doctor.id,
        doctor_name=doctor.name,
        doctor_title=doctor.title,
        department_code=doctor.department_code,
        department_name=info.name if info else doctor.department_code,
        place=_place(doctor),
    )


def _view(appointment: Appointment, tz_name: Optional[str]) -> AppointmentView:
    offer = _offer(appointment.slot, tz_name)
    return AppointmentView(
        appointment_id=appointment.id,
        patient_id=appointment.patient_id,
        patient_name=appointment.patient.name,
        start=offer.start,
        doctor_name=offer.doctor_name,
        doctor_title=offer.doctor_title,
        department_code=offer.department_code,
        department_name=offer.department_name,
        place=offer.place,
    )


def _free_slot_query(department_code: Optional[str], doctor_id: Optional[int], start: datetime, end: datetime):  # type: ignore[no-untyped-def]
    held = aliased(Appointment)
    query = (
        select(ScheduleSlot)
        .join(Doctor, ScheduleSlot.doctor_id == Doctor.id)
        .outerjoin(held, and_(held.slot_id == ScheduleSlot.id, held.status == AppointmentStatus.BOOKED))
        .where(held.id.is_(None), ScheduleSlot.start_at >= start, ScheduleSlot.start_at <= end)
    )
    if doctor_id is not None:
        query = query.where(ScheduleSlot.doctor_id == doctor_id)
    if department_code is not None:
        query = query.where(Doctor.department_code == department_code)
    return query


def bookable_from() -> datetime:
    """The earliest start a booking made now may have (naive UTC)."""
    return clock.to_db(clock.now() + BOOKING_LEAD_TIME)


def free_slots(
    session: Session,
    *,
    department_code: Optional[str] = None,
    doctor_id: Optional[int] = None,
    window_start: Optional[datetime] = None,
    window_end: Optional[datetime] = None,
    limit: int = 3,
    tz_name: Optional[str] = None,
) -> List[SlotOffer]:
    """Up to `limit` free slots in the window (aware datetimes; default: from now on), earliest first,
    spread over different doctors and half-days where the window allows."""
    start = max(clock.to_db(window_start) if window_start else bookable_from(), bookable_from())
    end = clock.to_db(window_end) if window_end else start + timedelta(days=60)
    candidates = (
        session.execute(
            _free_slot_query(department_code, doctor_id, start, end)
            .options(joinedload(ScheduleSlot.doctor))
            .order_by(ScheduleSlot.start_at, ScheduleSlot.doctor_id)
            .limit(limit * 20)
        )
        .scalars()
        .all()
    )
    return [_offer(slot, tz_name) for slot in _spread(candidates, limit)]


def _spread(slots: Sequence[ScheduleSlot], limit: int) -> List[ScheduleSlot]:
    """Prefer offering different doctors or half-days over three consecutive 30-minute slots."""
    chosen: List[ScheduleSlot] = []
    seen = set()
    for slot in slots:
        local = clock.from_db(slot.start_at)
        key = (slot.doctor_id, local.date(), local.hour < 12)
        if key not in seen:
            seen.add(key)
            chosen.append(slot)
        if len(chosen) == limit:
            return sorted(chosen, key=lambda s: s.start_at)
    for slot in slots:  # not enough variety: fill with the earliest remaining
        if len(chosen) == limit:
            break
        if slot not in chosen:
            chosen.append(slot)
    return sorted(chosen, key=lambda s: s.start_at)


def nearest_days_with_free_slots(
    session: Session,
    *,
    department_code: Optional[str] = None,
    doctor_id: Optional[int] = None,
    around: Optional[datetime] = None,
    count: int = 3,
    tz_name: Optional[str] = None,
) -> List[date]:
    """Local dates with at least one free slot, nearest to `around` first (default: soonest)."""
    start = bookable_from()
    starts = (
        session.execute(
            _free_slot_query(department_code, doctor_id, start, start + timedelta(days=60))
            .with_only_columns(ScheduleSlot.start_at)
            .order_by(ScheduleSlot.start_at)
        )
        .scalars()
        .all()
    )
    days = sorted({clock.from_db(moment, tz_name).date() for moment in starts})
    if around is not None:
        target = around.astimezone(clock.local_tz(tz_name)).date()
        days.sort(key=lambda day: (abs((day - target).days), day))
    return days[:count]


def book_slot(
    session: Session,
    *,
    patient_id: int,
    slot_id: int,
    booked_by_patient_id: Optional[int] = None,
    channel: Optional[str] = None,
    actor: str = "assistant",
    replaces: Optional[Appointment] = None,
) -> Appointment:
    """Book `slot_id` for the patient. Raises SlotTaken, SlotInPast or DuplicateBooking."""
    slot = session.get(ScheduleSlot, slot_id, options=[joinedload(ScheduleSlot.doctor)])
    if slot is None:
        raise SlotTaken(f"slot {slot_id} does not exist")
    if slot.start_at < bookable_from():
        raise SlotInPast(f"slot {slot_id} starts too soon or has passed")
    _refuse_duplicate(session, patient_id, slot, ignore_id=replaces.id if replaces else None)
    appointment = Appointment(
        patient_id=patient_id,
        booked_by_patient_id=booked_by_patient_id or patient_id,
        slot_id=slot_id,
        status=AppointmentStatus.BOOKED,
        channel=channel,
        replaces_appointment_id=replaces.id if replaces else None,
    )
    try:
        with session.begin_nested():
            session.add(appointment)
            session.flush()
    except IntegrityError as exc:
        raise SlotTaken(f"slot {slot_id} was booked by someone else") from exc
    audit.record(
        session,
        actor,
        "create",
        "appointment",
        appointment.id,
        patient_id,
        {"slot_id": slot_id, "replaces": replaces.id if replaces else None},
    )
    return appointment


def _refuse_duplicate(session: Session, patient_id: int, slot: ScheduleSlot, ignore_id: Optional[int]) -> None:
    local_day = clock.from_db(slot.start_at).date()
    day_start = clock.to_db(datetime.combine(local_day, datetime.min.time(), tzinfo=clock.local_tz()))
    query = (
        select(Appointment.id)
        .join(ScheduleSlot, Appointment.slot_id == ScheduleSlot.id)
        .join(Doctor, ScheduleSlot.doctor_id == Doctor.id)
        .where(
            Appointment.patient_id == patient_id,
            Appointment.status == AppointmentStatus.BOOKED,
            Doctor.department_code == slot.doctor.department_code,
            ScheduleSlot.start_at >= day_start,
            ScheduleSlot.start_at < day_start + timedelta(days=1),
        )
    )
    if ignore_id is not None:
        query = query.where(Appointment.id != ignore_id)
    existing = session.execute(query.limit(1)).scalar_one_or_none()
    if existing is not None:
        raise DuplicateBooking(existing)


def _active_appointment(session: Session, appointment_id: int, patient_ids: Iterable[int]) -> Appointment:
    appointment = session.execute(
        select(Appointment)
        .where(Appointment.id == appointment_id, Appointment.status == AppointmentStatus.BOOKED)
        .where(Appointment.patient_id.in_(list(patient_ids)) | Appointment.booked_by_patient_id.in_(list(patient_ids)))
        .with_for_update()
    ).scalar_one_or_none()
    if appointment is None:
        raise AppointmentNotFound(f"no active appointment {appointment_id} for this patient")
    return appointment


def cancel_appointment(
    session: Session, *, appointment_id: int, patient_ids: Iterable[int], actor: str = "assistant"
) -> Appointment:
    """Cancel an active appointment the patient (or the family member who booked it) holds; frees the slot."""
    appointment = _active_appointment(session, appointment_id, patient_ids)
    appointment.status = AppointmentStatus.CANCELLED
    appointment.cancelled_at = clock.utc_now_naive()
    session.flush()
    audit.record(session, actor, "cancel", "appointment", appointment.id, appointment.patient_id)
    return appointment


def reschedule_appointment(
    session: Session,
    *,
    appointment_id: int,
    new_slot_id: int,
    patient_ids: Iterable[int],
    channel: Optional[str] = None,
    actor: str = "assistant",
) -> Appointment:
    """Move an appointment to a new slot in one transaction: the new slot is taken and the old one freed
    together, or neither happens (SlotTaken / SlotInPast leave the old appointment as it was)."""
    old = _active_appointment(session, appointment_id, patient_ids)
    with session.begin_nested():
        old.status = AppointmentStatus.RESCHEDULED
        old.cancelled_at = clock.utc_now_naive()
        session.flush()
        new = book_slot(
            session,
            patient_id=old.patient_id,
            slot_id=new_slot_id,
            booked_by_patient_id=old.booked_by_patient_id,
            channel=channel,
            actor=actor,
            replaces=old,
        )
    return new


def upcoming_appointments(
    session: Session, patient_ids: Iterable[int], *, tz_name: Optional[str] = None, actor: str = "assistant"
) -> List[AppointmentView]:
    """Booked appointments still ahead, for the patients and those they booked for; the read is audited."""
    ids = list(patient_ids)
    rows = (
        session.execute(
            select(Appointment)
            .join(ScheduleSlot, Appointment.slot_id == ScheduleSlot.id)
            .options(joinedload(Appointment.slot).joinedload(ScheduleSlot.doctor), joinedload(Appointment.patient))
            .where(Appointment.status == AppointmentStatus.BOOKED, ScheduleSlot.start_at >= clock.utc_now_naive())
            .where(Appointment.patient_id.in_(ids) | Appointment.booked_by_patient_id.in_(ids))
            .order_by(ScheduleSlot.start_at)
        )
        .scalars()
        .unique()
        .all()
    )
    for row in rows:
        audit.record(session, actor, "read", "appointment", row.id, row.patient_id)
    return [_view(row, tz_name) for row in rows]


def count_booked(session: Session, slot_id: int) -> int:
    return session.execute(
        select(func.count())
        .select_from(Appointment)
        .where(Appointment.slot_id == slot_id, Appointment.status == AppointmentStatus.BOOKED)
    ).scalar_one()


def doctor_named_in(session: Session, text: str) -> Optional[Doctor]:
    """The doctor whose full name appears in the text (王建国医生, 约李秀英), or None."""
    if not text:
        return None
    # One query on the hot path: the text LIKE '%' || name || '%', longest name first.
    return session.execute(
        select(Doctor).where(literal(text).contains(Doctor.name)).order_by(func.length(Doctor.name).desc()).limit(1)
    ).scalar_one_or_none()


def appointment_view(session: Session, appointment_id: int, tz_name: Optional[str] = None) -> Optional[AppointmentView]:
    appointment = session.get(Appointment, appointment_id)
    return _view(appointment, tz_name) if appointment else None


def slot_offer(session: Session, slot_id: int, tz_name: Optional[str] = None) -> Optional[SlotOffer]:
    slot = session.get(ScheduleSlot, slot_id)
    return _offer(slot, tz_name) if slot else None
