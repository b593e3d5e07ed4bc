"""Questionnaires as a form: one item at a time, every answer stored at once (bot.crm.surveys).

A survey starts when the patient asks (我想做个抑郁自测) or from outside through Rasa's trigger_intent with
`EXTERNAL_start_survey` and a `survey_instrument` entity (the scheduler does this after a visit); the patient's
next reply continues it. The form has one requested slot, survey_answer, asked again until the questionnaire
is done; which item comes next lives in the CRM, so a paused survey resumes days later where it stopped.
跳过 skips an item, 暂停 pauses, 不做了 refuses; a question or an emergency in between is answered first.
PHQ-9 item 9 above 0: crisis wording, the hotline and a top-priority escalation, whatever the total.
"""

from __future__ import annotations

import logging
from typing import Any, Dict, List, Optional

from rasa_sdk import Action, FormValidationAction, Tracker
from rasa_sdk.events import EventType, SlotSet
from rasa_sdk.executor import CollectingDispatcher
from rasa_sdk.types import DomainDict

from actions import names
from actions.common import channel_of, in_db, latest_intent, latest_text, previous_action, reply_to_requested
from actions.escalation import escalate
from actions.triage import emergency_facts
from bot.crm import patients, surveys
from bot.crm.models import SurveyResponse, SurveyStatus
from bot.surveys import answers, instruments

logger = logging.getLogger(__name__)

DONE = "done"  # survey_answer's value when the questionnaire ended (completed, paused or refused)
KEYWORDS = {
    "phq9": ("抑郁", "phq", "情绪", "心情", "郁"),
    "gad7": ("焦虑", "gad", "紧张", "担心"),
    "satisfaction": ("满意", "评价", "评分", "打分", "反馈", "回访", "调查"),
}
CONTINUE_WORDS = ("继续", "接着", "恢复")
# Intents that answer nothing in a questionnaire: handled by rules, then the survey goes on (or ends).
SURVEY_DIGRESSIONS = names.DIGRESSION_INTENTS


def instrument_in(text: str, entities: List[Dict[str, Any]]) -> Optional[str]:
    for entity in entities:
        if entity.get("entity") == "survey_instrument" and entity.get("value") in instruments.instruments():
            return str(entity["value"])
    lowered = text.lower()
    for key, words in KEYWORDS.items():
        if any(word in lowered for word in words):
            return key
    return None


class StartSurvey(Action):
    """Start (or resume) a questionnaire; ask which one when the request does not say."""

    def name(self) -> str:
        return "action_start_survey"

    async def run(self, dispatcher: CollectingDispatcher, tracker: Tracker, domain: DomainDict) -> List[EventType]:
        text = latest_text(tracker)
        external = latest_intent(tracker) == "EXTERNAL_start_survey"
        key = instrument_in(text, tracker.latest_message.get("entities") or [])
        sender, channel = tracker.sender_id, channel_of(tracker)
        patient_id = tracker.get_slot(names.PATIENT_ID)

        def begin(session) -> Optional[int]:  # type: ignore[no-untyped-def]
            known = patient_id or getattr(patients.find_by_identity(session, channel, sender), "id", None)
            if key is None:
                paused = surveys.open_response(session, sender)
                if paused is None:
                    return None
                return surveys.start(session, sender_id=sender, instrument=paused.instrument, patient_id=known).id
            response = surveys.start(
                session,
                sender_id=sender,
                instrument=key,
                channel=channel,
                patient_id=known,
                trigger="scheduler" if external else "patient",
            )
            return response.id

        response_id = await in_db(begin)
        if response_id is None:
            if any(word in text for word in CONTINUE_WORDS):
                dispatcher.utter_message(response="utter_survey_nothing_to_resume")
            dispatcher.utter_message(response="utter_survey_which")
            return [SlotSet(names.SURVEY_READY, False)]
        return [SlotSet(names.SURVEY_ID, response_id), SlotSet(names.SURVEY_READY, True)]


def _response(session, response_id: Any) -> Optional[SurveyResponse]:  # type: ignore[no-untyped-def]
    return session.get(SurveyResponse, int(response_id)) if response_id else None


class AskSurveyAnswer(Action):
    """Ask the next unanswered item (with the questionnaire's intro and stem before the first one)."""

    def name(self) -> str:
        return "action_ask_survey_answer"

    async def run(self, dispatcher: CollectingDispatcher, tracker: Tracker, domain: DomainDict) -> List[EventType]:
        response_id = tracker.get_slot(names.SURVEY_ID)

        def question(session) -> Optional[Dict[str, Any]]:  # type: ignore[no-untyped-def]
            response = _response(session, response_id)
            item = surveys.next_item(response) if response else None
            if item is None:
                return None
            instrument = instruments.get(response.instrument)
            number = surveys.position(response, item)
            return {
                "first": not response.answers,
                "intro": instrument.intro,
                "stem": instrument.stem,
                "text": f"（{number}/{len(instrument.items)}）{item.text}",
                "options": instruments.options_line(instrument, item),
                "buttons": [
                    {"title": option.label, "payload": option.label}
                    for option in instrument.options.get(item.scale, ())
                    if item.scale != instruments.NPS
                ],
            }

        asked = await in_db(question)
        if asked is None:
            return []
        if asked["first"] and asked["intro"]:
            dispatcher.utter_message(response="utter_survey_text", text=asked["intro"])
        lines = [asked["stem"], asked["text"], asked["options"]] if asked["stem"] else [asked["text"], asked["options"]]
        dispatcher.utter_message(
            response="utter_survey_text", text="\n".join(line for line in lines if line), buttons=asked["buttons"]
        )
        return []


class ValidateSurveyForm(FormValidationAction):
    def name(self) -> str:
        return "validate_survey_form"

    async def required_slots(
        self, domain_slots: List[str], dispatcher: CollectingDispatcher, tracker: Tracker, domain: DomainDict
    ) -> List[str]:
        return [names.SURVEY_ANSWER]

    async def run(self, dispatcher: CollectingDispatcher, tracker: Tracker, domain: DomainDict) -> List[EventType]:
        intent = tracker.latest_message.get("intent") or {}
        answering = tracker.get_slot(names.REQUESTED_SLOT) == names.SURVEY_ANSWER
        if answering and previous_action(tracker, skip=names.SURVEY_FORM) is None:
            if intent.get("name") == names.EMERGENCY:
                return []  # even when it also reads as an answer (几乎每天都想死): the emergency rule answers
            digression = (
                intent.get("name") in SURVEY_DIGRESSIONS
                and (intent.get("confidence") or 0.0) >= names.DIGRESSION_CONFIDENCE
            )
            if digression and await self._not_an_answer(tracker):  # 停车场在哪 mid-survey; 还行 is an answer
                return []
        return await super().run(dispatcher, tracker, domain)

    async def _not_an_answer(self, tracker: Tracker) -> bool:
        response_id = tracker.get_slot(names.SURVEY_ID)

        def scale(session) -> Optional[str]:  # type: ignore[no-untyped-def]
            response = _response(session, response_id)
            item = surveys.next_item(response) if response else None
            return item.scale if item else None

        found = await in_db(scale)
        return found is not None and answers.read(found, latest_text(tracker)).kind == answers.INVALID

    async def extract_survey_answer(
        self, dispatcher: CollectingDispatcher, tracker: Tracker, domain: DomainDict
    ) -> Dict[str, Any]:
        return reply_to_requested(tracker, names.SURVEY_ANSWER, names.SURVEY_FORM)

    async def validate_survey_answer(
        self, value: Any, dispatcher: CollectingDispatcher, tracker: Tracker, domain: DomainDict
    ) -> Dict[str, Any]:
        if value is None:  # the slot was cleared, not answered (rasa_sdk validates every slot set this turn)
            return {}
        response_id = tracker.get_slot(names.SURVEY_ID)

        def apply(session) -> Dict[str, Any]:  # type: ignore[no-untyped-def]
            response = _response(session, response_id)
            item = surveys.next_item(response) if response else None
            if response is None or item is None or response.status not in surveys.OPEN:
                return {"state": "gone"}
            reply = answers.read(item.scale, str(value))
            if reply.kind == answers.INVALID:
                hint = instruments.options_line(instruments.get(response.instrument), item)
                return {"state": "invalid", "hint": hint}
            if reply.kind == answers.PAUSE:
                surveys.pause(session, response)
                return {"state": "paused"}
            if reply.kind == answers.REFUSE:
                surveys.refuse(session, response)
                return {"state": "refused"}
            skipped = reply.kind == answers.SKIP
            surveys.record(session, response, item, value=reply.value, text=reply.text, skipped=skipped)
            safety = item.safety and (reply.value or 0) > 0
            if surveys.next_item(response) is not None:
                return {"state": "next", "skipped": reply.kind == answers.SKIP, "safety": safety}
            return {"state": "finished", "safety": safety}

        result = await in_db(apply)
        state = result["state"]
        if state == "invalid":
            dispatcher.utter_message(response="utter_survey_invalid_answer", hint=result["hint"])
            return {names.SURVEY_ANSWER: None}
        if result.get("safety"):
            await self._safety_alert(dispatcher, tracker)
        if state == "next":
            if result.get("skipped"):
                dispatcher.utter_message(response="utter_survey_skipped")
            return {names.SURVEY_ANSWER: None}  # ask the next item
        if state == "paused":
            dispatcher.utter_message(response="utter_survey_paused")
        elif state == "refused":
            dispatcher.utter_message(response="utter_survey_refused")
        return {names.SURVEY_ANSWER: DONE}

    async def _safety_alert(self, dispatcher: CollectingDispatcher, tracker: Tracker) -> None:
        dispatcher.utter_message(response="utter_crisis", **emergency_facts())
        await escalate(tracker, "survey_safety", detail="PHQ-9 第9题（自伤念头）回答大于0")


class FinishSurvey(Action):
    """After the form: score a completed questionnaire, tell the patient, and alert staff when needed."""

    def name(self) -> str:
        return "action_finish_survey"

    async def run(self, dispatcher: CollectingDispatcher, tracker: Tracker, domain: DomainDict) -> List[EventType]:
        response_id = tracker.get_slot(names.SURVEY_ID)

        def close(session) -> Optional[surveys.Outcome]:  # type: ignore[no-untyped-def]
            response = _response(session, response_id)
            if response is None or response.status != SurveyStatus.IN_PROGRESS or surveys.next_item(response):
                return None  # paused or refused: already said so
            return surveys.finish(session, response)

        outcome = await in_db(close)
        events: List[EventType] = [SlotSet(names.SURVEY_ANSWER, None), SlotSet(names.SURVEY_READY, None)]
        if outcome is None:
            return events
        instrument = instruments.get(outcome.instrument)
        if instrument.scored:
            dispatcher.utter_message(
                response="utter_survey_scored",
                title=instrument.title,
                score=outcome.total,
                max=instrument.max_score,
                band=outcome.band_label or "",
            )
            if outcome.positive and not outcome.safety_alert:
                await escalate(tracker, "survey_positive", detail=f"{instrument.title} {outcome.total}分")
                dispatcher.utter_message(response="utter_survey_positive")
        else:
            dispatcher.utter_message(response="utter_survey_thanks")
            if outcome.low_ratings:
                await escalate(tracker, "survey_detractor", detail=f"{instrument.title}：有低分项")
                dispatcher.utter_message(response="utter_survey_followup_low")
        logger.info("survey %s completed (%s)", outcome.response_id, outcome.instrument)
        return [*events, SlotSet(names.SURVEY_ID, None)]
