"""Booking conversations: book, cancel, reschedule and look up appointments.

Each flow is a form (domain.yml) whose validation lives here; the booking rules themselves are in
bot.crm.booking. Forms start by identifying the patient (actions.common.PatientFormValidation).
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from typing import Any, Dict, List, Optional, Tuple

from rasa_sdk import Action, Tracker
from rasa_sdk.events import ActiveLoop, EventType, FollowupAction, SlotSet
from rasa_sdk.executor import CollectingDispatcher
from rasa_sdk.types import DomainDict
from sqlalchemy.orm import Session

from actions import names
from actions.common import (
    PatientFormValidation,
    bot_action_before_message,
    channel_of,
    in_db,
    latest_entity,
    latest_text,
    parse_choice,
    read_yes_no,
    reset_form_slots,
)
from bot import clock, formatting, lexicon, timeparse
from bot.catalog import departments, find_department
from bot.crm import booking, patients
from bot.crm.booking import AppointmentView, SlotOffer
from bot.crm.models import Patient
from bot.errors import AppointmentNotFound, DuplicateBooking, InvalidName, InvalidPhone, SlotInPast, SlotTaken
from scheduler import plans

logger = logging.getLogger(__name__)

BOOKING_HORIZON_DAYS = 14
NO_APPOINTMENT = "none"


# ---------------------------------------------------------------------------------------------
# reading the patient's words
# ---------------------------------------------------------------------------------------------
def _date_pref_from(text: str, span: Optional[timeparse.TimeSpan]) -> Tuple[Optional[str], Optional[str]]:
    """(date_pref value, response name of the problem) for a message and the time span it names.
    date_pref is 'start|end' or EARLIEST."""
    if timeparse.wants_earliest(text):
        return names.EARLIEST, None
    if span is None:
        return None, "utter_date_not_understood"
    if span.is_past:
        return None, "utter_date_in_past"
    if span.start > clock.local_now() + timedelta(days=BOOKING_HORIZON_DAYS):
        return None, "utter_date_too_far"
    return f"{span.start.isoformat()}|{span.end.isoformat()}", None


def _time_span(text: str, tracker: Tracker) -> Optional[timeparse.TimeSpan]:
    """The time the NLU pipeline resolved for this message, else parse the text here."""
    entity = latest_entity(tracker, "time")
    if entity and latest_text(tracker) == text and entity.get("additional_info"):
        info = entity["additional_info"]
        try:
            return timeparse.TimeSpan(
                entity.get("text", ""), datetime.fromisoformat(info["start"]), datetime.fromisoformat(info["end"])
            )
        except (KeyError, ValueError):
            pass
    return timeparse.first_time(text)


def _window(date_pref: Optional[str]) -> Tuple[Optional[datetime], Optional[datetime]]:
    if not date_pref or date_pref in (names.EARLIEST, NO_APPOINTMENT):
        return None, None
    start, end = date_pref.split("|")
    return datetime.fromisoformat(start), datetime.fromisoformat(end)


def _describe_window(date_pref: Optional[str]) -> str:
    start, end = _window(date_pref)
    if start is None:
        return "近期"
    day = formatting.short_date(start.date())
    if end - start < timedelta(hours=20):
        return day + ("上午" if start.hour < 12 else "下午")
    return day


def _offer_title(index: int, offer: SlotOffer) -> str:
    return (
        f"{index}. {formatting.short_date(offer.start.date())} {formatting.visit_time(offer.start)} "
        f"{offer.doctor_name}（{offer.doctor_title}）"
    )


def _appointment_summary(view: AppointmentView) -> str:
    who = f"{view.patient_name}，" if view.patient_name else ""
    return f"{who}{formatting.visit_datetime(view.start)} {view.department_name} {view.doctor_name}（{view.place}）"


def _numbered(views: List[AppointmentView]) -> str:
    """'1. 王小明，2026年11月24日星期二 08:00 …' one line per appointment, for choosing by number."""
    return "\n".join(f"{i + 1}. {_appointment_summary(view)}" for i, view in enumerate(views))


def _department_and_doctor(session: Session, text: str, tracker: Tracker) -> Dict[str, Any]:
    """Department code and doctor id named in a message, via NLU entities and the hospital's names."""
    found: Dict[str, Any] = {}
    doctor_entity = latest_entity(tracker, "doctor")
    doctor = booking.doctor_named_in(session, (doctor_entity or {}).get("value") or "") or booking.doctor_named_in(
        session, text
    )
    if doctor is not None:
        found[names.DOCTOR_ID] = doctor.id
        found[names.DEPARTMENT] = doctor.department_code
        return found
    department_entity = latest_entity(tracker, "department")
    code = find_department((department_entity or {}).get("value")) or find_department(text)
    if code:
        found[names.DEPARTMENT] = code
    return found


# ---------------------------------------------------------------------------------------------
# booking form
# ---------------------------------------------------------------------------------------------
class _ChoosesASlot:
    """Validators shared by the forms that pick a date and a free slot, then confirm (book, reschedule)."""

    def validate_date_pref(
        self, value: Any, dispatcher: CollectingDispatcher, tracker: Tracker, domain: DomainDict
    ) -> Dict[str, Any]:
        return _validate_date_pref(str(value), _time_span(str(value), tracker), dispatcher)

    async def validate_slot_choice(
        self, value: Any, dispatcher: CollectingDispatcher, tracker: Tracker, domain: DomainDict
    ) -> Dict[str, Any]:
        return await _validate_slot_choice(str(value), dispatcher, tracker)

    def validate_confirmed(
        self, value: Any, dispatcher: CollectingDispatcher, tracker: Tracker, domain: DomainDict
    ) -> Dict[str, Any]:
        return _validate_confirmed_choice(dispatcher, tracker)


class ValidateBookingForm(_ChoosesASlot, PatientFormValidation):
    def name(self) -> str:
        return "validate_booking_form"

    async def prefill(self, dispatcher: CollectingDispatcher, tracker: Tracker, domain: DomainDict) -> Dict[str, Any]:
        text = latest_text(tracker)
        slots: Dict[str, Any] = await in_db(lambda session: _department_and_doctor(session, text, tracker))
        relation = lexicon.find_relation(text)
        if bot_action_before_message(tracker) in names.TRIAGE_ACTIONS:  # 好 to "需要帮您预约心内科吗？"
            if names.DEPARTMENT not in slots and tracker.get_slot(names.TRIAGE_DEPARTMENT):
                slots[names.DEPARTMENT] = tracker.get_slot(names.TRIAGE_DEPARTMENT)
            relation = relation or tracker.get_slot(names.TRIAGE_RELATION)
        if tracker.get_slot(names.TRIAGE_DEPARTMENT):
            slots[names.TRIAGE_DEPARTMENT] = None
        if relation:
            slots[names.RELATION] = relation
        date_pref, _ = _date_pref_from(text, _time_span(text, tracker))
        if date_pref:
            slots[names.DATE_PREF] = date_pref
        return slots

    def adjust_required_slots(self, slots: List[str], tracker: Tracker) -> List[str]:
        if tracker.get_slot(names.RELATION):
            position = 0 if tracker.get_slot(names.PATIENT_ID) else 2
            slots = slots[:position] + names.FAMILY_SLOTS + slots[position:]
        return slots

    def validate_family_name(
        self, value: Any, dispatcher: CollectingDispatcher, tracker: Tracker, domain: DomainDict
    ) -> Dict[str, Any]:
        try:
            return {names.FAMILY_NAME: patients.normalize_name(str(value))}
        except InvalidName:
            dispatcher.utter_message(response="utter_invalid_name")
            return {names.FAMILY_NAME: None}

    async def validate_family_phone(
        self, value: Any, dispatcher: CollectingDispatcher, tracker: Tracker, domain: DomainDict
    ) -> Dict[str, Any]:
        text = str(value)
        if lexicon.means_same_phone(text):
            patient_id = tracker.get_slot(names.PATIENT_ID)
            phone = await in_db(lambda session: session.get(Patient, patient_id).phone)
            return {names.FAMILY_PHONE: phone}
        try:
            return {names.FAMILY_PHONE: patients.normalize_mobile(text)}
        except InvalidPhone:
            dispatcher.utter_message(response="utter_invalid_phone")
            return {names.FAMILY_PHONE: None}

    async def validate_department(
        self, value: Any, dispatcher: CollectingDispatcher, tracker: Tracker, domain: DomainDict
    ) -> Dict[str, Any]:
        text = str(value)
        found = await in_db(lambda session: _department_and_doctor(session, text, tracker))
        if names.DEPARTMENT in found:
            found.setdefault(names.DOCTOR_ID, None)
            date_pref, _ = _date_pref_from(text, _time_span(text, tracker))
            if date_pref:
                found[names.DATE_PREF] = date_pref
            return found
        dispatcher.utter_message(response="utter_unknown_department", name=text[:20])
        return {names.DEPARTMENT: None}


def _validate_date_pref(
    text: str, span: Optional[timeparse.TimeSpan], dispatcher: CollectingDispatcher
) -> Dict[str, Any]:
    date_pref, problem = _date_pref_from(text, span)
    if problem == "utter_date_too_far":
        last_day = clock.local_now().date() + timedelta(days=BOOKING_HORIZON_DAYS)
        dispatcher.utter_message(response=problem, days=BOOKING_HORIZON_DAYS, last_day=formatting.short_date(last_day))
    elif problem:
        dispatcher.utter_message(response=problem)
    return {names.DATE_PREF: date_pref}


async def _validate_slot_choice(text: str, dispatcher: CollectingDispatcher, tracker: Tracker) -> Dict[str, Any]:
    offered = tracker.get_slot(names.OFFERED_SLOTS) or []
    index = parse_choice(text, len(offered))
    if index is not None:
        return {names.SLOT_CHOICE: offered[index]}
    if lexicon.asks_other_date(text):
        return {names.SLOT_CHOICE: None, names.DATE_PREF: None}
    span = _time_span(text, tracker)
    if timeparse.wants_earliest(text) or span is not None:
        chosen = await _offer_at_named_time(span, offered)
        if chosen is not None:
            return {names.SLOT_CHOICE: chosen}
        result = _validate_date_pref(text, span, dispatcher)
        if result[names.DATE_PREF]:
            return {names.SLOT_CHOICE: None, names.DATE_PREF: result[names.DATE_PREF]}
        return {names.SLOT_CHOICE: None}
    code = find_department(text)
    if code and tracker.active_loop.get("name") == names.BOOKING_FORM:
        return {names.SLOT_CHOICE: None, names.DEPARTMENT: code, names.DOCTOR_ID: None}
    dispatcher.utter_message(response="utter_choose_offer")
    return {names.SLOT_CHOICE: None}


async def _offer_at_named_time(span: Optional[timeparse.TimeSpan], offered: List[int]) -> Optional[int]:
    """'9点半那个' picks the offered slot starting at that time."""
    if span is None or span.is_whole_day or not offered:
        return None

    def find(session: Session) -> Optional[int]:
        for slot_id in offered:
            offer = booking.slot_offer(session, slot_id)
            if offer and span.start <= offer.start <= span.end and (span.end - span.start) <= timedelta(hours=1):
                return slot_id
        return None

    return await in_db(find)


def _validate_confirmed_choice(dispatcher: CollectingDispatcher, tracker: Tracker) -> Dict[str, Any]:
    answer = read_yes_no(tracker)
    if answer is True:
        return {names.CONFIRMED: True}
    if answer is False:
        dispatcher.utter_message(response="utter_booking_declined")
        return {names.CONFIRMED: None, names.SLOT_CHOICE: None}
    dispatcher.utter_message(response="utter_yes_or_no")
    return {names.CONFIRMED: None}


class AskSlotChoice(Action):
    """Offer up to three real free slots for the department/doctor and date, or the nearest days."""

    def name(self) -> str:
        return "action_ask_slot_choice"

    async def run(self, dispatcher: CollectingDispatcher, tracker: Tracker, domain: DomainDict) -> List[EventType]:
        department = tracker.get_slot(names.DEPARTMENT)
        doctor_id = tracker.get_slot(names.DOCTOR_ID)
        date_pref = tracker.get_slot(names.DATE_PREF)
        start, end = _window(date_pref)

        def load(session: Session) -> Tuple[List[SlotOffer], List[Any]]:
            offers = booking.free_slots(
                session, department_code=department, doctor_id=doctor_id, window_start=start, window_end=end
            )
            days = (
                []
                if offers
                else booking.nearest_days_with_free_slots(
                    session, department_code=department, doctor_id=doctor_id, around=start
                )
            )
            return offers, days

        offers, days = await in_db(load)
        label = _department_label(department, offers)
        if offers:
            dispatcher.utter_message(
                response="utter_slot_offers",
                when=_describe_window(date_pref),
                department=label,
                buttons=[
                    {"title": _offer_title(i + 1, offer), "payload": str(i + 1)} for i, offer in enumerate(offers)
                ],
            )
            return [SlotSet(names.OFFERED_SLOTS, [offer.slot_id for offer in offers])]
        if days:
            dispatcher.utter_message(
                response="utter_no_slots_that_day",
                when=_describe_window(date_pref),
                department=label,
                days="、".join(formatting.short_date(day) for day in days),
                buttons=[{"title": formatting.short_date(day), "payload": f"{day.month}月{day.day}日"} for day in days],
            )
        else:
            dispatcher.utter_message(response="utter_no_slots_at_all", department=label)
        return [SlotSet(names.OFFERED_SLOTS, [])]


def _department_label(code: Optional[str], offers: List[SlotOffer]) -> str:
    info = departments().get(code or "")
    return info.name if info else (offers[0].department_name if offers else "")


class AskConfirmed(Action):
    """Summarise what will happen (book / cancel / reschedule) and ask the patient to confirm."""

    def name(self) -> str:
        return "action_ask_confirmed"

    async def run(self, dispatcher: CollectingDispatcher, tracker: Tracker, domain: DomainDict) -> List[EventType]:
        form = tracker.active_loop.get("name")
        slot_id = tracker.get_slot(names.SLOT_CHOICE)
        appointment_id = tracker.get_slot(names.APPOINTMENT_CHOICE)

        def load(session: Session) -> Tuple[Optional[SlotOffer], Optional[AppointmentView]]:
            offer = booking.slot_offer(session, int(slot_id)) if slot_id not in (None, NO_APPOINTMENT) else None
            view = (
                booking.appointment_view(session, int(appointment_id))
                if appointment_id not in (None, NO_APPOINTMENT)
                else None
            )
            return offer, view

        offer, view = await in_db(load)
        if form == names.CANCEL_FORM and view:
            dispatcher.utter_message(response="utter_confirm_cancel", summary=_appointment_summary(view))
        elif form == names.RESCHEDULE_FORM and view and offer:
            dispatcher.utter_message(
                response="utter_confirm_reschedule", old=_appointment_summary(view), new=_offer_summary(offer)
            )
        elif offer:
            dispatcher.utter_message(
                response="utter_confirm_booking",
                patient=_patient_label(tracker),
                when=formatting.visit_datetime(offer.start),
                department=offer.department_name,
                doctor=offer.doctor_name,
                title=offer.doctor_title,
                place=offer.place,
            )
        else:
            dispatcher.utter_message(response="utter_yes_or_no")
        return []


def _offer_summary(offer: SlotOffer) -> str:
    return f"{formatting.visit_datetime(offer.start)} {offer.department_name} {offer.doctor_name}（{offer.place}）"


def _patient_label(tracker: Tracker) -> str:
    if tracker.get_slot(names.RELATION):
        return f"{tracker.get_slot(names.FAMILY_NAME)}（{tracker.get_slot(names.RELATION)}）"
    return tracker.get_slot(names.ID_NAME) or "本人"


class BookAppointment(Action):
    """Write the appointment once the form is complete, and confirm it in Chinese."""

    def name(self) -> str:
        return "action_book_appointment"

    async def run(self, dispatcher: CollectingDispatcher, tracker: Tracker, domain: DomainDict) -> List[EventType]:
        slot_id = tracker.get_slot(names.SLOT_CHOICE)
        if tracker.get_slot(names.CONFIRMED) is not True or slot_id is None:
            return reset_form_slots(tracker)
        account_holder = int(tracker.get_slot(names.PATIENT_ID))
        family = (
            (tracker.get_slot(names.FAMILY_NAME), tracker.get_slot(names.FAMILY_PHONE))
            if tracker.get_slot(names.RELATION)
            else None
        )
        channel = channel_of(tracker)

        def book(session: Session) -> Tuple[str, Dict[str, Any]]:
            patient_id = account_holder
            if family and all(family):
                patient_id = patients.match_or_register(session, family[0], family[1])[0].id
            try:
                appointment = booking.book_slot(
                    session,
                    patient_id=patient_id,
                    slot_id=int(slot_id),
                    booked_by_patient_id=account_holder,
                    channel=channel,
                )
            except DuplicateBooking as exc:
                view = booking.appointment_view(session, exc.existing_appointment_id)
                return "duplicate", {"summary": _appointment_summary(view) if view else ""}
            except (SlotTaken, SlotInPast):
                return "taken", {}
            plans.follow_appointment(session, appointment.id)  # reminders 24 h and 2 h before
            view = booking.appointment_view(session, appointment.id)
            return "booked", {"view": view}

        outcome, detail = await in_db(book)
        if outcome == "taken":
            dispatcher.utter_message(response="utter_slot_taken")
            return [
                SlotSet(names.SLOT_CHOICE, None),
                SlotSet(names.CONFIRMED, None),
                FollowupAction(names.BOOKING_FORM),
            ]
        if outcome == "duplicate":
            dispatcher.utter_message(response="utter_duplicate_booking", summary=detail["summary"])
            return reset_form_slots(tracker)
        view: AppointmentView = detail["view"]
        logger.info("appointment %s booked", view.appointment_id)
        dispatcher.utter_message(
            response="utter_booking_confirmed",
            patient=_patient_label(tracker),
            when=formatting.visit_datetime(view.start),
            department=view.department_name,
            doctor=view.doctor_name,
            title=view.doctor_title,
            place=view.place,
        )
        return reset_form_slots(tracker)


# ---------------------------------------------------------------------------------------------
# cancel, reschedule, query
# ---------------------------------------------------------------------------------------------
async def _upcoming(tracker: Tracker) -> List[AppointmentView]:
    patient_id = tracker.get_slot(names.PATIENT_ID)
    if not patient_id:
        return []
    return await in_db(lambda session: booking.upcoming_appointments(session, [int(patient_id)]))


async def _appointment_slots(tracker: Tracker) -> Dict[str, Any]:
    """After identification: pick the only appointment, or note that there is none to choose."""
    views = await _upcoming(tracker)
    if not views:
        return {names.APPOINTMENT_CHOICE: NO_APPOINTMENT}
    slots: Dict[str, Any] = {names.OFFERED_APPOINTMENTS: [view.appointment_id for view in views]}
    if len(views) == 1:
        slots[names.APPOINTMENT_CHOICE] = views[0].appointment_id
        slots[names.DEPARTMENT] = views[0].department_code
    return slots


class _ExistingAppointmentForm(PatientFormValidation):
    """Forms that act on one of the patient's upcoming appointments."""

    async def prefill(self, dispatcher: CollectingDispatcher, tracker: Tracker, domain: DomainDict) -> Dict[str, Any]:
        return await _appointment_slots(tracker) if tracker.get_slot(names.PATIENT_ID) else {}

    def adjust_required_slots(self, slots: List[str], tracker: Tracker) -> List[str]:
        if tracker.get_slot(names.APPOINTMENT_CHOICE) == NO_APPOINTMENT:
            return []  # nothing to act on: the form ends and the submit action says so
        return slots

    async def validate_id_phone(
        self, value: Any, dispatcher: CollectingDispatcher, tracker: Tracker, domain: DomainDict
    ) -> Dict[str, Any]:
        slots = await super().validate_id_phone(value, dispatcher, tracker, domain)
        if slots.get(names.PATIENT_ID):
            tracker.slots[names.PATIENT_ID] = slots[names.PATIENT_ID]
            slots.update(await _appointment_slots(tracker))
        return slots

    async def validate_appointment_choice(
        self, value: Any, dispatcher: CollectingDispatcher, tracker: Tracker, domain: DomainDict
    ) -> Dict[str, Any]:
        offered = tracker.get_slot(names.OFFERED_APPOINTMENTS) or []
        index = parse_choice(str(value), len(offered))
        if index is None:
            dispatcher.utter_message(response="utter_choose_offer")
            return {names.APPOINTMENT_CHOICE: None}
        chosen = offered[index]
        view = await in_db(lambda session: booking.appointment_view(session, chosen))
        return {names.APPOINTMENT_CHOICE: chosen, names.DEPARTMENT: view.department_code if view else None}


class ValidateCancelForm(_ExistingAppointmentForm):
    def name(self) -> str:
        return "validate_cancel_form"

    def validate_confirmed(
        self, value: Any, dispatcher: CollectingDispatcher, tracker: Tracker, domain: DomainDict
    ) -> Dict[str, Any]:
        answer = read_yes_no(tracker)
        if answer is None:
            dispatcher.utter_message(response="utter_yes_or_no")
        return {names.CONFIRMED: answer}


class ValidateRescheduleForm(_ChoosesASlot, _ExistingAppointmentForm):
    def name(self) -> str:
        return "validate_reschedule_form"


class ValidateQueryForm(PatientFormValidation):
    def name(self) -> str:
        return "validate_query_form"


class AskAppointmentChoice(Action):
    def name(self) -> str:
        return "action_ask_appointment_choice"

    async def run(self, dispatcher: CollectingDispatcher, tracker: Tracker, domain: DomainDict) -> List[EventType]:
        views = await _upcoming(tracker)
        lines = _numbered(views)
        dispatcher.utter_message(
            response="utter_choose_appointment",
            lines=lines,
            buttons=[{"title": str(i + 1), "payload": str(i + 1)} for i in range(len(views))],
        )
        return [SlotSet(names.OFFERED_APPOINTMENTS, [view.appointment_id for view in views])]


class CancelAppointment(Action):
    def name(self) -> str:
        return "action_cancel_appointment"

    async def run(self, dispatcher: CollectingDispatcher, tracker: Tracker, domain: DomainDict) -> List[EventType]:
        appointment_id = tracker.get_slot(names.APPOINTMENT_CHOICE)
        confirmed = tracker.get_slot(names.CONFIRMED)
        if appointment_id == NO_APPOINTMENT:
            dispatcher.utter_message(response="utter_no_upcoming_appointments")
            return reset_form_slots(tracker)
        if confirmed is False:
            dispatcher.utter_message(response="utter_cancel_kept")
        if confirmed is not True or appointment_id is None:  # kept, or the patient stopped the flow
            return reset_form_slots(tracker)
        patient_id = int(tracker.get_slot(names.PATIENT_ID))

        def cancel(session: Session) -> Optional[AppointmentView]:
            view = booking.appointment_view(session, int(appointment_id))
            try:
                booking.cancel_appointment(session, appointment_id=int(appointment_id), patient_ids=[patient_id])
            except AppointmentNotFound:
                return None
            plans.stop_following_appointment(session, int(appointment_id))
            return view

        view = await in_db(cancel)
        if view is None:
            dispatcher.utter_message(response="utter_appointment_gone")
        else:
            logger.info("appointment %s cancelled", view.appointment_id)
            dispatcher.utter_message(response="utter_cancelled", summary=_appointment_summary(view))
        return reset_form_slots(tracker)


class RescheduleAppointment(Action):
    def name(self) -> str:
        return "action_reschedule_appointment"

    async def run(self, dispatcher: CollectingDispatcher, tracker: Tracker, domain: DomainDict) -> List[EventType]:
        appointment_id = tracker.get_slot(names.APPOINTMENT_CHOICE)
        if appointment_id == NO_APPOINTMENT:
            dispatcher.utter_message(response="utter_no_upcoming_appointments")
            return reset_form_slots(tracker)
        slot_id = tracker.get_slot(names.SLOT_CHOICE)
        if tracker.get_slot(names.CONFIRMED) is not True or slot_id is None or appointment_id is None:
            return reset_form_slots(tracker)  # the patient stopped the flow
        patient_id = int(tracker.get_slot(names.PATIENT_ID))
        channel = channel_of(tracker)

        def move(session: Session) -> Tuple[str, Optional[AppointmentView]]:
            try:
                new = booking.reschedule_appointment(
                    session,
                    appointment_id=int(appointment_id),
                    new_slot_id=int(slot_id),
                    patient_ids=[patient_id],
                    channel=channel,
                )
            except AppointmentNotFound:
                return "gone", None
            except (SlotTaken, SlotInPast):
                return "taken", None
            except DuplicateBooking as exc:
                return "duplicate", booking.appointment_view(session, exc.existing_appointment_id)
            plans.stop_following_appointment(session, int(appointment_id))
            plans.follow_appointment(session, new.id)
            return "moved", booking.appointment_view(session, new.id)

        outcome, view = await in_db(move)
        if outcome == "taken":
            dispatcher.utter_message(response="utter_slot_taken")
            return [
                SlotSet(names.SLOT_CHOICE, None),
                SlotSet(names.CONFIRMED, None),
                FollowupAction(names.RESCHEDULE_FORM),
            ]
        if outcome == "gone" or view is None:
            dispatcher.utter_message(response="utter_appointment_gone")
        elif outcome == "duplicate":
            dispatcher.utter_message(response="utter_duplicate_booking", summary=_appointment_summary(view))
        else:
            logger.info("appointment %s rescheduled to %s", appointment_id, view.appointment_id)
            dispatcher.utter_message(response="utter_rescheduled", summary=_appointment_summary(view))
        return reset_form_slots(tracker)


class ListAppointments(Action):
    def name(self) -> str:
        return "action_list_appointments"

    async def run(self, dispatcher: CollectingDispatcher, tracker: Tracker, domain: DomainDict) -> List[EventType]:
        if not tracker.get_slot(names.PATIENT_ID):  # the patient stopped before identifying
            return reset_form_slots(tracker)
        views = await _upcoming(tracker)
        if not views:
            dispatcher.utter_message(response="utter_no_upcoming_appointments")
        else:
            lines = _numbered(views)
            dispatcher.utter_message(response="utter_appointments_list", lines=lines)
        return reset_form_slots(tracker)


class LeaveForm(Action):
    """The patient switched to another flow mid-form (改约 while booking): leave quietly, change nothing."""

    def name(self) -> str:
        return "action_leave_form"

    async def run(self, dispatcher: CollectingDispatcher, tracker: Tracker, domain: DomainDict) -> List[EventType]:
        return [ActiveLoop(None), SlotSet(names.REQUESTED_SLOT, None), *reset_form_slots(tracker)]
