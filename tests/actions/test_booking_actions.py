"""Booking actions against the CRM on SQLite and PostgreSQL: what the patient is told and what is stored."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import select
from zoneinfo import ZoneInfo

from actions.booking import (
    AskSlotChoice,
    BookAppointment,
    CancelAppointment,
    RescheduleAppointment,
    ValidateBookingForm,
)
from bot.crm import booking, patients
from bot.crm.models import Appointment, AppointmentStatus, ChannelIdentity, Patient
from bot.db import session_scope
from tests.actions.conftest import make_tracker, run_action


def _slots_from(events: list) -> dict:
    return {event["name"]: event["value"] for event in events if event.get("event") == "slot"}


def _patient(url: str, name: str = "王小明", phone: str = "+8613800138000") -> int:
    with session_scope(url) as session:
        return patients.match_or_register(session, name, phone)[0].id


def test_new_sender_gives_name_and_phone_and_is_registered_and_linked(crm, domain) -> None:
    import asyncio

    from rasa_sdk.executor import CollectingDispatcher

    form = ValidateBookingForm()
    tracker = make_tracker(
        slots={"id_name": "王小明", "requested_slot": "id_phone"}, text="138 0013 8000", active_loop="booking_form"
    )
    dispatcher = CollectingDispatcher()
    result = asyncio.run(form.validate_id_phone("138 0013 8000", dispatcher, tracker, domain))
    assert result["id_phone"] == "+8613800138000"
    assert dispatcher.messages[0]["response"] == "utter_patient_registered"
    with session_scope(crm) as session:
        patient = session.get(Patient, result["patient_id"])
        identity = session.execute(select(ChannelIdentity)).scalar_one()
    assert patient.name == "王小明" and patient.card_no.startswith("MZ")
    assert (identity.channel, identity.external_id, identity.patient_id) == ("webchat", "web-test", patient.id)


def test_offers_three_slots_with_numbered_buttons(crm, domain) -> None:
    tracker = make_tracker(slots={"department": "cardiology", "date_pref": "earliest"}, active_loop="booking_form")
    events, messages = run_action(AskSlotChoice(), tracker, domain)
    offered = _slots_from(events)["offered_slots"]
    assert len(offered) == 3
    assert [button["payload"] for button in messages[0]["buttons"]] == ["1", "2", "3"]
    assert all("（" in button["title"] for button in messages[0]["buttons"])  # doctor and title shown


def test_a_day_without_clinics_offers_the_nearest_days(crm, domain) -> None:
    saturday = "2026-11-28T00:00:00+08:00|2026-11-28T23:59:59+08:00"
    tracker = make_tracker(slots={"department": "cardiology", "date_pref": saturday}, active_loop="booking_form")
    events, messages = run_action(AskSlotChoice(), tracker, domain)
    assert _slots_from(events)["offered_slots"] == []
    assert messages[0]["response"] == "utter_no_slots_that_day"
    assert "11月27日" in messages[0]["days"] and "11月30日" in messages[0]["days"]


def test_confirmed_booking_is_written_and_confirmed_in_chinese(crm, domain) -> None:
    patient_id = _patient(crm)
    with session_scope(crm) as session:
        slot = booking.free_slots(session, department_code="ophthalmology")[0]
    tracker = make_tracker(
        slots={
            "patient_id": patient_id,
            "id_name": "王小明",
            "slot_choice": slot.slot_id,
            "confirmed": True,
            "department": "ophthalmology",
        }
    )
    events, messages = run_action(BookAppointment(), tracker, domain)
    assert messages[0]["response"] == "utter_booking_confirmed"
    assert messages[0]["doctor"] == slot.doctor_name and "星期" in messages[0]["when"]
    assert "门诊楼7层" in messages[0]["place"]
    assert _slots_from(events).get("slot_choice", "cleared") is None  # form slots cleared for the next flow
    with session_scope(crm) as session:
        stored = session.execute(select(Appointment)).scalar_one()
    assert (stored.patient_id, stored.slot_id, stored.status) == (patient_id, slot.slot_id, AppointmentStatus.BOOKED)


def test_cancel_then_reschedule_act_on_the_crm(crm, domain) -> None:
    patient_id = _patient(crm)
    with session_scope(crm) as session:
        first, second, third = booking.free_slots(session, department_code="orthopedics", limit=3)
        to_cancel = booking.book_slot(session, patient_id=patient_id, slot_id=first.slot_id).id
    tracker = make_tracker(slots={"patient_id": patient_id, "appointment_choice": to_cancel, "confirmed": True})
    _, messages = run_action(CancelAppointment(), tracker, domain)
    assert messages[0]["response"] == "utter_cancelled"
    with session_scope(crm) as session:
        to_move = booking.book_slot(session, patient_id=patient_id, slot_id=second.slot_id).id
    tracker = make_tracker(
        slots={"patient_id": patient_id, "appointment_choice": to_move, "slot_choice": third.slot_id, "confirmed": True}
    )
    _, messages = run_action(RescheduleAppointment(), tracker, domain)
    assert messages[0]["response"] == "utter_rescheduled"
    with session_scope(crm) as session:
        statuses = dict(session.execute(select(Appointment.slot_id, Appointment.status)).all())
    assert statuses == {
        first.slot_id: AppointmentStatus.CANCELLED,
        second.slot_id: AppointmentStatus.RESCHEDULED,
        third.slot_id: AppointmentStatus.BOOKED,
    }


def test_patient_who_stopped_is_told_nothing_and_nothing_changes(crm, domain) -> None:
    patient_id = _patient(crm)
    with session_scope(crm) as session:
        slot = booking.free_slots(session, department_code="dermatology")[0]
        appointment = booking.book_slot(session, patient_id=patient_id, slot_id=slot.slot_id).id
    for action in (CancelAppointment(), RescheduleAppointment(), BookAppointment()):
        _, messages = run_action(action, make_tracker(slots={"patient_id": patient_id}), domain)
        assert messages == []
    with session_scope(crm) as session:
        assert session.get(Appointment, appointment).status == AppointmentStatus.BOOKED


def test_booking_schedules_reminders_and_cancelling_or_moving_withdraws_them(crm, domain) -> None:
    from bot.crm.models import OutboxMessage, OutboxStatus

    patient_id = _patient(crm)
    from bot import clock

    with session_scope(crm) as session:  # two days ahead: both reminders are still to come
        first, second = booking.free_slots(
            session, department_code="dermatology", limit=2, window_start=clock.now() + timedelta(days=2)
        )
    tracker = make_tracker(slots={"patient_id": patient_id, "id_name": "王小明", "slot_choice": first.slot_id,
                                  "confirmed": True, "department": "dermatology"})  # fmt: skip
    run_action(BookAppointment(), tracker, domain)

    def reminders() -> list:
        with session_scope(crm) as session:
            rows = session.execute(select(OutboxMessage).order_by(OutboxMessage.due_at)).scalars()
            return [(row.step, row.due_at, row.status, row.params.get("department")) for row in rows]

    start = first.start.astimezone(ZoneInfo("UTC")).replace(tzinfo=None)
    assert reminders() == [
        ("before_24h", start - timedelta(hours=24), OutboxStatus.PENDING, "皮肤科"),
        ("before_2h", start - timedelta(hours=2), OutboxStatus.PENDING, "皮肤科"),
    ]
    with session_scope(crm) as session:
        booked = session.execute(select(Appointment.id)).scalar_one()
    tracker = make_tracker(slots={"patient_id": patient_id, "appointment_choice": booked, "slot_choice": second.slot_id,
                                  "confirmed": True})  # fmt: skip
    run_action(RescheduleAppointment(), tracker, domain)
    statuses = [status for _, _, status, _ in reminders()]
    assert statuses.count(OutboxStatus.CANCELLED) == 2 and statuses.count(OutboxStatus.PENDING) == 2
