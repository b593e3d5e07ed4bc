"""Symptoms: an emergency first (any message, any form), then the right department and a booking.

The NLU pipeline's RedFlagDetector turns an emergency into the `emergency` intent; action_emergency answers it:
call 120 / come to the emergency department (address and phone from data/hospital/hospital.yml), crisis wording
and the psychological-aid hotline for suicide and self-harm, a top-priority escalation, and no booking. A
description of symptoms without red flags goes to action_triage: a department (ranked top 3), one clarifying
question when the first two are close, then an offer to book with the department filled in.
"""

from __future__ import annotations

import logging
from typing import Any, Dict, List, Optional

from rasa_sdk import Action, Tracker
from rasa_sdk.events import EventType, SlotSet
from rasa_sdk.executor import CollectingDispatcher
from rasa_sdk.types import DomainDict

from actions import names
from actions.common import in_db, latest_text, parse_choice, previous_action
from actions.escalation import escalate, leave_form
from bot import lexicon
from bot.catalog import departments, find_department, hospital
from bot.crm.models import TriageRecord
from bot.triage import Assessment, assess
from bot.triage.departments import warm_up_in_background

logger = logging.getLogger(__name__)
warm_up_in_background()  # the action server loads the department model at start, not on a patient's message


def _department_name(code: str) -> str:
    info = departments().get(code)
    return info.name if info else code


async def _record(tracker: Tracker, result: Assessment) -> None:
    patient_id = tracker.get_slot(names.PATIENT_ID)
    categories = [f.category for f in result.findings if f.status == "current"]
    categories += [r.measure for r in result.reading_findings]
    departments_ = [{"code": d.code, "score": d.score} for d in result.departments]

    def write(session) -> None:  # type: ignore[no-untyped-def]
        session.add(
            TriageRecord(
                patient_id=int(patient_id) if patient_id else None,
                sender_id=tracker.sender_id,
                level=result.level,
                categories=categories,
                departments=departments_,
            )
        )

    await in_db(write)


def emergency_facts() -> Dict[str, str]:
    facts = hospital()
    er = departments().get("emergency")
    return {
        "emergency_phone": str(facts.get("emergency_phone", "120")),
        "address": str(facts.get("address", "")),
        "er_location": er.location if er else "",
        "hotline": str(facts.get("hotline", "")),
        "crisis_hotline": str(facts.get("crisis_hotline", "12356")),
    }


def _reasons(result: Assessment, count: int) -> str:
    return "；".join(text for _, text in result.described()[:count])


async def answer_emergency(dispatcher: CollectingDispatcher, tracker: Tracker, result: Assessment) -> List[EventType]:
    """Level 1-2: tell the patient what to do now, alert a nurse at top priority, leave any form."""
    reasons = _reasons(result, 3) or "危险信号"
    facts = emergency_facts()
    if result.crisis:
        dispatcher.utter_message(response="utter_crisis", **facts)
    elif result.subject:
        dispatcher.utter_message(response="utter_emergency_family", subject=result.subject, reasons=reasons, **facts)
    else:
        dispatcher.utter_message(response="utter_emergency", reasons=reasons, **facts)
    reason = "crisis" if result.crisis else "red_flag"
    ticket = await escalate(tracker, reason, detail=f"level {result.level}: {reasons}")
    await _record(tracker, result)
    logger.info("emergency answered: level %s, crisis %s", result.level, result.crisis)
    return [
        *leave_form(tracker),
        SlotSet(names.TRIAGE_DEPARTMENT, None),
        SlotSet(names.TRIAGE_OPTIONS, None),
        *ticket.paused(),  # a nurse follows up in this chat; everything the patient writes meanwhile is kept
    ]


class Emergency(Action):
    """The `emergency` intent (nlu.components.RedFlagDetector), in any flow."""

    def name(self) -> str:
        return "action_emergency"

    async def run(self, dispatcher: CollectingDispatcher, tracker: Tracker, domain: DomainDict) -> List[EventType]:
        # urgency only: an emergency gets no department, so the ranking model is not run
        return await answer_emergency(dispatcher, tracker, assess(latest_text(tracker), departments=False))


class Triage(Action):
    """Symptoms without red flags: urgency advice when it is urgent, then a department and an offer to book."""

    def name(self) -> str:
        return "action_triage"

    async def run(self, dispatcher: CollectingDispatcher, tracker: Tracker, domain: DomainDict) -> List[EventType]:
        text = latest_text(tracker)
        if previous_action(tracker) is None and tracker.get_slot(names.TRIAGE_OPTIONS):
            # the answer to our clarifying question describes more: read both messages together
            text = f"{tracker.get_slot(names.TRIAGE_TEXT) or ''}。{text}"
        result = assess(text)
        if result.red_flag:  # the clarifying answer read together with the first message is an emergency
            return await answer_emergency(dispatcher, tracker, result)
        await _record(tracker, result)
        if result.level == 3:
            dispatcher.utter_message(response="utter_triage_urgent", reasons=_reasons(result, 2), **emergency_facts())
        codes = [d.code for d in result.departments]
        if not codes:
            dispatcher.utter_message(response="utter_triage_no_department")
            return [SlotSet(names.TRIAGE_TEXT, text[:500])]
        if result.clarify and not tracker.get_slot(names.TRIAGE_OPTIONS):
            options = codes[:3]
            listing = "；".join(f"{i + 1}. {_department_name(code)}" for i, code in enumerate(options))
            buttons = [{"title": _department_name(code), "payload": str(i + 1)} for i, code in enumerate(options)]
            dispatcher.utter_message(response="utter_triage_clarify", options=listing, buttons=buttons)
            return [SlotSet(names.TRIAGE_OPTIONS, options), SlotSet(names.TRIAGE_TEXT, text[:500])]
        return _recommend(dispatcher, codes[0], codes[1:3], text)


class TriageChoose(Action):
    """The answer to the clarifying question: a number, a department's name, or more symptoms."""

    def name(self) -> str:
        return "action_triage_choose"

    async def run(self, dispatcher: CollectingDispatcher, tracker: Tracker, domain: DomainDict) -> List[EventType]:
        options: List[str] = list(tracker.get_slot(names.TRIAGE_OPTIONS) or [])
        text = latest_text(tracker)
        index = parse_choice(text, len(options))
        code: Optional[str] = options[index] if index is not None else find_department(text)
        if code is None:
            return await Triage().run(dispatcher, tracker, domain)
        return _recommend(dispatcher, code, [c for c in options if c != code][:2], tracker.get_slot(names.TRIAGE_TEXT))


def _recommend(dispatcher: CollectingDispatcher, code: str, others: List[str], text: Optional[str]) -> List[Any]:
    alternatives = "（也可考虑：" + "、".join(_department_name(c) for c in others) + "）" if others else ""
    dispatcher.utter_message(
        response="utter_triage_recommend", department=_department_name(code), alternatives=alternatives
    )
    relation = lexicon.find_relation(text or "")
    return [
        SlotSet(names.TRIAGE_DEPARTMENT, code),
        SlotSet(names.TRIAGE_RELATION, relation),
        SlotSet(names.TRIAGE_OPTIONS, None),
        SlotSet(names.TRIAGE_TEXT, None),
    ]
