"""The booking rules on SQLite and on the real PostgreSQL: a patient books, cancels and reschedules;
a slot is never double-booked."""

from __future__ import annotations

import threading
from datetime import date, timedelta
from typing import List

import pytest
from sqlalchemy import select

from bot import clock
from bot.crm import booking, patients
from bot.crm.models import Appointment, AppointmentStatus, AuditEntry, ScheduleSlot
from bot.db import session_scope
from bot.errors import AppointmentNotFound, DuplicateBooking, SlotInPast, SlotTaken


def _patient(url: str, name: str = "王小明", phone: str = "+8613800138000") -> int:
    with session_scope(url) as session:
        return patients.match_or_register(session, name, phone)[0].id


def _first_free(url: str, department: str = "cardiology", **kwargs) -> booking.SlotOffer:
    with session_scope(url) as session:
        return booking.free_slots(session, department_code=department, **kwargs)[0]


def test_offers_up_to_three_future_free_slots_in_the_department(crm_url: str) -> None:
    with session_scope(crm_url) as session:
        offers = booking.free_slots(session, department_code="cardiology")
    assert len(offers) == 3
    assert all(offer.department_code == "cardiology" for offer in offers)
    assert all(offer.start > clock.now() for offer in offers)
    assert offers == sorted(offers, key=lambda offer: offer.start)


def test_booked_slot_is_no_longer_offered_and_cancel_frees_it(crm_url: str) -> None:
    patient_id = _patient(crm_url)
    slot = _first_free(crm_url)
    with session_scope(crm_url) as session:
        appointment = booking.book_slot(session, patient_id=patient_id, slot_id=slot.slot_id)
        appointment_id = appointment.id
    with session_scope(crm_url) as session:
        offered = [offer.slot_id for offer in booking.free_slots(session, department_code="cardiology", limit=50)]
        assert slot.slot_id not in offered
        upcoming = booking.upcoming_appointments(session, [patient_id])
        assert [view.appointment_id for view in upcoming] == [appointment_id]
        assert upcoming[0].doctor_name == slot.doctor_name
    with session_scope(crm_url) as session:
        booking.cancel_appointment(session, appointment_id=appointment_id, patient_ids=[patient_id])
    with session_scope(crm_url) as session:
        assert booking.upcoming_appointments(session, [patient_id]) == []
        assert _first_free(crm_url).slot_id == slot.slot_id


def test_a_second_booking_of_the_same_slot_is_refused_by_the_database(crm_url: str) -> None:
    first, second = _patient(crm_url, "张三", "+8613911112222"), _patient(crm_url, "李四", "+8613933334444")
    slot = _first_free(crm_url)
    with session_scope(crm_url) as session:
        booking.book_slot(session, patient_id=first, slot_id=slot.slot_id)
    with pytest.raises(SlotTaken), session_scope(crm_url) as session:
        booking.book_slot(session, patient_id=second, slot_id=slot.slot_id)
    with session_scope(crm_url) as session:
        assert booking.count_booked(session, slot.slot_id) == 1


def test_the_constraint_holds_even_when_application_checks_are_bypassed(crm_url: str) -> None:
    """Raw inserts, as a buggy second service might do: the partial unique index still refuses."""
    from sqlalchemy.exc import IntegrityError

    first, second = _patient(crm_url, "张三", "+8613911112222"), _patient(crm_url, "李四", "+8613933334444")
    slot = _first_free(crm_url)
    with session_scope(crm_url) as session:
        session.add(Appointment(patient_id=first, slot_id=slot.slot_id, status=AppointmentStatus.BOOKED))
    with pytest.raises(IntegrityError), session_scope(crm_url) as session:
        session.add(Appointment(patient_id=second, slot_id=slot.slot_id, status=AppointmentStatus.BOOKED))
    # a cancelled appointment does not hold the slot
    with session_scope(crm_url) as session:
        held = session.execute(select(Appointment).where(Appointment.slot_id == slot.slot_id)).scalar_one()
        held.status = AppointmentStatus.CANCELLED
    with session_scope(crm_url) as session:
        session.add(Appointment(patient_id=second, slot_id=slot.slot_id, status=AppointmentStatus.BOOKED))


def test_reschedule_takes_the_new_slot_and_frees_the_old_one_together(crm_url: str) -> None:
    patient_id = _patient(crm_url)
    with session_scope(crm_url) as session:
        old_slot, new_slot = booking.free_slots(session, department_code="orthopedics", limit=2)
        old = booking.book_slot(session, patient_id=patient_id, slot_id=old_slot.slot_id).id
    with session_scope(crm_url) as session:
        new = booking.reschedule_appointment(
            session, appointment_id=old, new_slot_id=new_slot.slot_id, patient_ids=[patient_id]
        ).id
    with session_scope(crm_url) as session:
        assert booking.count_booked(session, old_slot.slot_id) == 0
        assert booking.count_booked(session, new_slot.slot_id) == 1
        assert session.get(Appointment, old).status == AppointmentStatus.RESCHEDULED
        assert session.get(Appointment, new).replaces_appointment_id == old


def test_failed_reschedule_keeps_the_original_appointment(crm_url: str) -> None:
    patient_id, other = _patient(crm_url), _patient(crm_url, "李四", "+8613933334444")
    with session_scope(crm_url) as session:
        mine, taken = booking.free_slots(session, department_code="orthopedics", limit=2)
        appointment_id = booking.book_slot(session, patient_id=patient_id, slot_id=mine.slot_id).id
        booking.book_slot(session, patient_id=other, slot_id=taken.slot_id)
    with pytest.raises(SlotTaken), session_scope(crm_url) as session:
        booking.reschedule_appointment(
            session, appointment_id=appointment_id, new_slot_id=taken.slot_id, patient_ids=[patient_id]
        )
    with session_scope(crm_url) as session:
        assert session.get(Appointment, appointment_id).status == AppointmentStatus.BOOKED
        assert booking.count_booked(session, mine.slot_id) == 1


def test_same_department_same_day_twice_is_a_duplicate(crm_url: str) -> None:
    patient_id = _patient(crm_url)
    with session_scope(crm_url) as session:
        first, second = booking.free_slots(
            session,
            department_code="cardiology",
            limit=2,
            window_start=clock.local_now() + timedelta(days=1),
            window_end=clock.local_now() + timedelta(days=1, hours=8),
        )
        assert first.start.date() == second.start.date()
        existing = booking.book_slot(session, patient_id=patient_id, slot_id=first.slot_id).id
    with pytest.raises(DuplicateBooking) as refused, session_scope(crm_url) as session:
        booking.book_slot(session, patient_id=patient_id, slot_id=second.slot_id)
    assert refused.value.existing_appointment_id == existing


def test_a_slot_that_has_started_cannot_be_booked(crm_url: str) -> None:
    patient_id = _patient(crm_url)
    slot = _first_free(crm_url)
    clock.now_override = slot.start  # time passes: the slot is now starting
    with pytest.raises(SlotInPast), session_scope(crm_url) as session:
        booking.book_slot(session, patient_id=patient_id, slot_id=slot.slot_id)


def test_a_patient_cannot_cancel_someone_elses_appointment(crm_url: str) -> None:
    owner, stranger = _patient(crm_url), _patient(crm_url, "李四", "+8613933334444")
    slot = _first_free(crm_url)
    with session_scope(crm_url) as session:
        appointment_id = booking.book_slot(session, patient_id=owner, slot_id=slot.slot_id).id
    with pytest.raises(AppointmentNotFound), session_scope(crm_url) as session:
        booking.cancel_appointment(session, appointment_id=appointment_id, patient_ids=[stranger])


def test_family_booking_is_visible_to_the_family_member_who_booked_it(crm_url: str) -> None:
    me, mother = _patient(crm_url), _patient(crm_url, "张桂兰", "+8613800138000")  # same phone, own record
    assert me != mother
    slot = _first_free(crm_url, "general_internal")
    with session_scope(crm_url) as session:
        booking.book_slot(session, patient_id=mother, slot_id=slot.slot_id, booked_by_patient_id=me)
    with session_scope(crm_url) as session:
        views = booking.upcoming_appointments(session, [me])
        assert [view.patient_name for view in views] == ["张桂兰"]


def test_every_read_and_change_is_audited_without_personal_data(crm_url: str) -> None:
    patient_id = _patient(crm_url)
    slot = _first_free(crm_url)
    with session_scope(crm_url) as session:
        booking.book_slot(session, patient_id=patient_id, slot_id=slot.slot_id)
        booking.upcoming_appointments(session, [patient_id], actor="nurse:li")
    with session_scope(crm_url) as session:
        entries = session.execute(select(AuditEntry).where(AuditEntry.patient_id == patient_id)).scalars().all()
    actions = {(entry.actor, entry.action, entry.entity) for entry in entries}
    assert ("assistant", "create", "patient") in actions
    assert ("assistant", "create", "appointment") in actions
    assert ("nurse:li", "read", "appointment") in actions
    assert not any("王小明" in str(entry.detail) or "138" in str(entry.detail) for entry in entries)


def test_no_slots_on_public_holidays_and_slots_on_make_up_working_days() -> None:
    from bot.seed import clinic_days

    days = clinic_days(date(2026, 9, 28), 14)
    assert date(2026, 9, 30) in days  # a normal Wednesday
    assert not any(date(2026, 10, 1) <= day <= date(2026, 10, 7) for day in days)  # National Day week
    assert date(2026, 10, 10) in days  # Saturday make-up working day (调休)
    assert date(2026, 10, 11) not in days  # an ordinary Sunday


def test_seed_creates_about_thirty_doctors_and_two_weeks_of_slots(crm_url: str) -> None:
    from bot.crm.models import Department, Doctor

    with session_scope(crm_url) as session:
        doctors = session.execute(select(Doctor)).scalars().all()
        departments = session.execute(select(Department.code)).scalars().all()
        starts = session.execute(select(ScheduleSlot.start_at)).scalars().all()
    assert 28 <= len(doctors) <= 40
    assert {"cardiology", "pediatrics", "emergency", "andrology"} <= set(departments)
    local_days = {clock.from_db(start).date() for start in starts}
    today = clock.local_now().date()
    assert min(local_days) >= today and max(local_days) < today + timedelta(days=14)
    assert all(day.weekday() < 5 for day in local_days)  # no make-up Saturdays in this fortnight


@pytest.mark.postgres
def test_many_concurrent_bookings_race_for_the_last_slot_and_exactly_one_wins(postgres_url: str) -> None:
    from tests.conftest import migrate_and_seed

    url = migrate_and_seed(postgres_url, days=2)
    racers = [_patient(url, f"患者{i:02d}", f"+86139{i:08d}") for i in range(24)]
    slot = _first_free(url, "general_internal")
    barrier = threading.Barrier(len(racers))
    outcomes: List[str] = []
    lock = threading.Lock()

    def race(patient_id: int) -> None:
        barrier.wait()
        try:
            with session_scope(url) as session:
                booking.book_slot(session, patient_id=patient_id, slot_id=slot.slot_id)
            result = "won"
        except SlotTaken:
            result = "taken"
        with lock:
            outcomes.append(result)

    threads = [threading.Thread(target=race, args=(patient_id,)) for patient_id in racers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(outcomes).count("won") == 1
    assert outcomes.count("taken") == len(racers) - 1
    with session_scope(url) as session:
        assert booking.count_booked(session, slot.slot_id) == 1


def test_a_doctor_named_anywhere_in_a_message_is_found(crm_url: str) -> None:
    with session_scope(crm_url) as session:
        found = {
            text: getattr(booking.doctor_named_in(session, text), "name", None)
            for text in ("我想约王建国医生明天的号", "宋文博主任", "挂个号", "")
        }
    assert found == {"我想约王建国医生明天的号": "王建国", "宋文博主任": "宋文博", "挂个号": None, "": None}
