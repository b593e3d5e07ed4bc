"""When the bot should not go on alone: repeated misunderstanding, a request for a person, a complaint;
and a patient's opt-out of messages."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import List, Optional

from rasa_sdk import Action, Tracker
from rasa_sdk.events import ActiveLoop, ConversationPaused, EventType, SlotSet
from rasa_sdk.executor import CollectingDispatcher
from rasa_sdk.types import DomainDict

from actions import names
from actions.common import address_of, channel_of, in_db, reset_form_slots
from bot.crm import consent, escalations

logger = logging.getLogger(__name__)

FALLBACKS_BEFORE_HUMAN = 2


def consecutive_fallbacks(tracker: Tracker) -> int:
    """How many of the latest user messages in a row fell below the NLU confidence threshold."""
    count = 0
    for event in reversed(tracker.events):
        if event.get("event") != "user":
            continue
        if ((event.get("parse_data") or {}).get("intent") or {}).get("name") != names.NLU_FALLBACK:
            break
        count += 1
    return count


def conversation_summary(tracker: Tracker, turns: int = 6) -> str:
    """The patient's last few messages, oldest first: what a nurse reads before answering."""
    texts = [e.get("text") or "" for e in tracker.events if e.get("event") == "user"][-turns:]
    return " / ".join(text for text in texts if text)


@dataclass(frozen=True)
class Ticket:
    """An escalation as the patient hears of it: queue position, expected wait, whether the bot now goes quiet."""

    id: int
    pauses_bot: bool
    ahead: int
    minutes: int

    def paused(self) -> List[EventType]:
        """The events that stop the bot for this conversation until a nurse hands it back."""
        return [ConversationPaused()] if self.pauses_bot else []


async def escalate(tracker: Tracker, reason: str, detail: str = "") -> Ticket:
    """Open (or add to) this conversation's escalation: why, how urgent (by reason) and what the patient said."""
    patient_id: Optional[int] = tracker.get_slot(names.PATIENT_ID)
    summary = (f"[{detail}] " if detail else "") + conversation_summary(tracker)
    channel = channel_of(tracker)
    department = tracker.get_slot(names.TRIAGE_DEPARTMENT) or tracker.get_slot(names.DEPARTMENT)

    def open_one(session: object) -> Ticket:
        escalation = escalations.open_escalation(
            session,  # type: ignore[arg-type]
            sender_id=tracker.sender_id,
            channel=channel,
            reason=reason,
            summary=summary,
            patient_id=int(patient_id) if patient_id else None,
            department_code=department if isinstance(department, str) else None,
        )
        wait = escalations.wait_estimate(session, escalation)  # type: ignore[arg-type]
        return Ticket(escalation.id, escalation.pauses_bot, wait.ahead, wait.minutes)

    ticket = await in_db(open_one)
    logger.info("escalation %s opened (%s, pauses bot: %s)", ticket.id, reason, ticket.pauses_bot)
    return ticket


def leave_form(tracker: Tracker) -> List[EventType]:
    if not tracker.active_loop.get("name"):
        return []
    return [ActiveLoop(None), SlotSet(names.REQUESTED_SLOT, None), *reset_form_slots(tracker)]


class HandleFallback(Action):
    """First miss: ask to rephrase. Second miss in a row: offer a human and record an escalation."""

    def name(self) -> str:
        return "action_handle_fallback"

    async def run(self, dispatcher: CollectingDispatcher, tracker: Tracker, domain: DomainDict) -> List[EventType]:
        if consecutive_fallbacks(tracker) >= FALLBACKS_BEFORE_HUMAN:
            await escalate(tracker, "repeated_fallback")
            dispatcher.utter_message(response="utter_offer_human_after_fallback")
        else:
            dispatcher.utter_message(response="utter_ask_rephrase")
        return []


class RequestHuman(Action):
    def name(self) -> str:
        return "action_request_human"

    async def run(self, dispatcher: CollectingDispatcher, tracker: Tracker, domain: DomainDict) -> List[EventType]:
        ticket = await escalate(tracker, "request_human")
        dispatcher.utter_message(response="utter_human_requested", ahead=ticket.ahead, minutes=ticket.minutes)
        return [*leave_form(tracker), *ticket.paused()]


class Complaint(Action):
    def name(self) -> str:
        return "action_complaint"

    async def run(self, dispatcher: CollectingDispatcher, tracker: Tracker, domain: DomainDict) -> List[EventType]:
        ticket = await escalate(tracker, "complaint")
        dispatcher.utter_message(response="utter_complaint_recorded", ahead=ticket.ahead, minutes=ticket.minutes)
        return [*leave_form(tracker), *ticket.paused()]


class OptOut(Action):
    def name(self) -> str:
        return "action_opt_out"

    async def run(self, dispatcher: CollectingDispatcher, tracker: Tracker, domain: DomainDict) -> List[EventType]:
        await _set_consent(tracker, opted_in=False)
        dispatcher.utter_message(response="utter_opted_out")
        return leave_form(tracker)


class OptIn(Action):
    def name(self) -> str:
        return "action_opt_in"

    async def run(self, dispatcher: CollectingDispatcher, tracker: Tracker, domain: DomainDict) -> List[EventType]:
        await _set_consent(tracker, opted_in=True)
        dispatcher.utter_message(response="utter_opted_in")
        return []


async def _set_consent(tracker: Tracker, opted_in: bool) -> None:
    patient_id = tracker.get_slot(names.PATIENT_ID)
    channel, address = channel_of(tracker), address_of(tracker)
    await in_db(
        lambda session: consent.set_consent(
            session,
            channel=channel,
            external_id=address,
            opted_in=opted_in,
            patient_id=int(patient_id) if patient_id else None,
        )
    )
