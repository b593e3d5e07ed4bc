"""Plumbing shared by the action modules: database calls off the event loop, who is writing,
reading answers (choices, yes/no), and the identity steps every patient-data form starts with."""

from __future__ import annotations

import asyncio
import logging
import re
from abc import abstractmethod
from typing import Any, Callable, Dict, List, Optional, TypeVar

from rasa_sdk import Tracker
from rasa_sdk.events import EventType, SlotSet
from rasa_sdk.executor import CollectingDispatcher
from rasa_sdk.forms import FormValidationAction
from rasa_sdk.types import DomainDict
from sqlalchemy.orm import Session

from actions import names
from bot import addresses, lexicon
from bot.crm import patients
from bot.db import session_scope
from bot.errors import InvalidName, InvalidPhone

logger = logging.getLogger(__name__)
T = TypeVar("T")

# Submit actions that send the patient back into their form instead of ending it.
RESUMING_ACTIONS = {"action_book_appointment", "action_reschedule_appointment"}

_CN_DIGITS = {"一": 1, "二": 2, "两": 2, "三": 3, "四": 4, "五": 5, "六": 6, "七": 7, "八": 8, "九": 9, "十": 10}
_ORDINAL = re.compile(
    r"^(?:第|选|要|就|我选|选择)?\s*([0-9０-９]{1,2}|[一二两三四五六七八九十])\s*(?:个|号|项|种)?(?:吧|吧。|。)?$"
)
_AFFIRM_WORDS = re.compile(r"^(好|好的|是|是的|对|对的|确认|确定|可以|行|嗯|嗯嗯|ok|OK|yes|没问题|就这个|要得|中)")
_DENY_WORDS = re.compile(r"^(不|否|no|No|NO|别|算了|不用|不要|不行|换)")


async def in_db(work: Callable[[Session], T]) -> T:
    """Run `work(session)` in one transaction on a worker thread, so the event loop never blocks."""

    def _run() -> T:
        with session_scope() as session:
            return work(session)

    return await asyncio.get_running_loop().run_in_executor(None, _run)


def channel_of(tracker: Tracker) -> str:
    """The channel the patient writes on ('webchat', 'wechat', 'sms', ...); 'rest' when unknown."""
    return tracker.get_latest_input_channel() or "rest"


def address_of(tracker: Tracker) -> str:
    """The patient's address on this channel (openid, phone): what identities and consent are keyed by."""
    return addresses.address_of(channel_of(tracker), tracker.sender_id)


async def known_patient_id(tracker: Tracker) -> Optional[int]:
    """The patient writing: from the conversation's slot, else from the channel identity linked earlier."""
    slot = tracker.get_slot(names.PATIENT_ID)
    if slot:
        return int(slot)
    channel, address = channel_of(tracker), address_of(tracker)

    def lookup(session: Session) -> Optional[int]:
        patient = patients.find_by_identity(session, channel, address)
        return patient.id if patient else None

    return await in_db(lookup)


def latest_text(tracker: Tracker) -> str:
    return (tracker.latest_message.get("text") or "").strip()


def latest_intent(tracker: Tracker) -> Optional[str]:
    return (tracker.latest_message.get("intent") or {}).get("name")


def latest_entity(tracker: Tracker, entity: str) -> Optional[Dict[str, Any]]:
    for item in tracker.latest_message.get("entities") or []:
        if item.get("entity") == entity:
            return item
    return None


def parse_choice(text: str, count: int) -> Optional[int]:
    """0-based index from '2', '第二个', '选3', '最后一个'; None when the text is not a choice."""
    text = text.strip().translate(str.maketrans("０１２３４５６７８９", "0123456789"))
    if text in ("最后一个", "最后那个", "最后一项"):
        return count - 1 if count else None
    match = _ORDINAL.match(text)
    if not match:
        return None
    token = match.group(1)
    number = int(token) if token.isdigit() else _CN_DIGITS[token]
    return number - 1 if 1 <= number <= count else None


def read_yes_no(tracker: Tracker) -> Optional[bool]:
    """True/False for a yes/no answer (by intent first, then by wording), None when unclear."""
    intent = latest_intent(tracker)
    if intent == names.AFFIRM:
        return True
    if intent in (names.DENY, names.STOP):
        return False
    text = latest_text(tracker).lstrip("/")
    if _DENY_WORDS.match(text):
        return False
    if _AFFIRM_WORDS.match(text):
        return True
    return None


class PatientFormValidation(FormValidationAction):
    """Base of forms that touch a patient's records.

    - On activation it clears what earlier flows left in form slots and recognises a sender whose
      channel identity is already linked to a patient.
    - Form slots use custom mappings: the requested slot is filled here from the patient's reply,
      so an interruption (a question mid-form) never leaves raw text in a slot.
    - Unknown senders are asked for name and mobile first, then matched or registered (开卡).
    """

    @abstractmethod
    def name(self) -> str:
        """validate_<form name>; abstract so that the action server does not register this base."""

    async def run(self, dispatcher: CollectingDispatcher, tracker: Tracker, domain: DomainDict) -> List[EventType]:
        events: List[EventType] = []
        # Rasa's tracker may already name this form as the active loop during activation; an empty
        # requested_slot is the reliable sign that the form is starting rather than continuing.
        activating = tracker.get_slot(names.REQUESTED_SLOT) is None and not self.is_resuming(tracker)
        if not activating and previous_action(tracker, skip=self.form_name()) is None:
            if self.wants_to_stop(tracker):
                dispatcher.utter_message(response="utter_form_stopped")
                return [SlotSet(names.REQUESTED_SLOT, None), *reset_form_slots(tracker)]
            if self.is_digression(tracker):
                return []  # nothing extracted: the form rejects and a rule answers (rules.yml)
        if activating:
            for slot in names.FORM_SLOTS:
                if tracker.slots.get(slot) is not None:
                    tracker.slots[slot] = None
                    events.append(SlotSet(slot, None))
            events.extend(await self._recognise_sender(tracker))
            for slot, value in (await self.prefill(dispatcher, tracker, domain)).items():
                tracker.slots[slot] = value
                events.append(SlotSet(slot, value))
        logger.debug("%s: activating=%s prefilled=%s", self.name(), activating, [event["name"] for event in events])
        return events + await super().run(dispatcher, tracker, domain)

    def wants_to_stop(self, tracker: Tracker) -> bool:
        """算了 / 不挂了 (or 取消 while booking): abandon this flow, changing nothing."""
        intent = latest_intent(tracker)
        if intent == names.STOP:
            return True
        if intent == names.FLOW_INTENTS[names.CANCEL_FORM] and self.form_name() == names.BOOKING_FORM:
            return True
        return lexicon.means_stop(latest_text(tracker))

    def is_digression(self, tracker: Tracker) -> bool:
        """A confident question or request that is not an answer to what the form asked (an emergency: always,
        the red-flag detector gives it confidence 1.0)."""
        intent = tracker.latest_message.get("intent") or {}
        if (intent.get("confidence") or 0.0) < names.DIGRESSION_CONFIDENCE:
            return False
        name = intent.get("name")
        other_flows = set(names.FLOW_INTENTS.values()) - {names.FLOW_INTENTS[self.form_name()]}
        return name in names.DIGRESSION_INTENTS or name in other_flows

    def is_resuming(self, tracker: Tracker) -> bool:
        """True when a submit action sent the patient back into the form (e.g. the slot was taken)."""
        return previous_action(tracker, skip=self.form_name()) in RESUMING_ACTIONS

    async def _recognise_sender(self, tracker: Tracker) -> List[EventType]:
        if tracker.get_slot(names.PATIENT_ID):
            return []
        channel, sender = channel_of(tracker), address_of(tracker)

        def lookup(session: Session) -> Optional[int]:
            patient = patients.find_by_identity(session, channel, sender)
            return patient.id if patient else None

        patient_id = await in_db(lookup)
        if patient_id is None:
            return []
        tracker.slots[names.PATIENT_ID] = patient_id
        return [SlotSet(names.PATIENT_ID, patient_id)]

    async def prefill(self, dispatcher: CollectingDispatcher, tracker: Tracker, domain: DomainDict) -> Dict[str, Any]:
        """Slots that the opening message already answers (e.g. 挂明天的心内科)."""
        return {}

    async def required_slots(
        self, domain_slots: List[str], dispatcher: CollectingDispatcher, tracker: Tracker, domain: DomainDict
    ) -> List[str]:
        form_slots = list(domain_slots)  # this form's slots (see domain_slots below)
        if tracker.get_slot(names.PATIENT_ID):
            form_slots = [slot for slot in form_slots if slot not in names.IDENTITY_SLOTS]
        return self.adjust_required_slots(form_slots, tracker)

    def adjust_required_slots(self, slots: List[str], tracker: Tracker) -> List[str]:
        return slots

    async def extract_requested(self, slot: str, tracker: Tracker) -> Dict[str, Any]:
        return reply_to_requested(tracker, slot, self.form_name())

    async def get_extraction_events(
        self, dispatcher: CollectingDispatcher, tracker: Tracker, domain: DomainDict
    ) -> List[EventType]:
        requested = tracker.get_slot(names.REQUESTED_SLOT)
        slots = await self.required_slots(self.domain_slots(domain), dispatcher, tracker, domain)
        if not requested or requested not in slots:
            return []
        extracted = await self.extract_requested(requested, tracker)
        tracker.slots.update(extracted)
        return [SlotSet(slot, value) for slot, value in extracted.items()]

    def domain_slots(self, domain: DomainDict) -> List[str]:
        return list(domain["forms"][self.form_name()]["required_slots"])

    # identity ---------------------------------------------------------------------------------
    def validate_id_name(
        self, value: Any, dispatcher: CollectingDispatcher, tracker: Tracker, domain: DomainDict
    ) -> Dict[str, Any]:
        try:
            return {names.ID_NAME: patients.normalize_name(str(value))}
        except InvalidName:
            dispatcher.utter_message(response="utter_invalid_name")
            return {names.ID_NAME: None}

    async def validate_id_phone(
        self, value: Any, dispatcher: CollectingDispatcher, tracker: Tracker, domain: DomainDict
    ) -> Dict[str, Any]:
        try:
            phone = patients.normalize_mobile(str(value))
        except InvalidPhone:
            dispatcher.utter_message(response="utter_invalid_phone")
            return {names.ID_PHONE: None}
        name = tracker.get_slot(names.ID_NAME)
        channel, sender = channel_of(tracker), address_of(tracker)

        def register(session: Session) -> tuple:
            patient, created = patients.match_or_register(session, name, phone)
            patients.link_identity(session, patient, channel, sender)
            return patient.id, created, patient.card_no

        patient_id, created, card_no = await in_db(register)
        if created:
            dispatcher.utter_message(response="utter_patient_registered", card_no=card_no)
        else:
            dispatcher.utter_message(response="utter_patient_recognized", name=name)
        logger.info("sender identified as patient %s (new=%s)", patient_id, created)
        return {names.ID_PHONE: phone, names.PATIENT_ID: patient_id}


def previous_action(tracker: Tracker, skip: str = "") -> Optional[str]:
    """The action that ran in this turn before `skip` (the form itself); None if the patient's message
    is the latest thing that happened."""
    for event in reversed(tracker.events):
        if event.get("event") == "user":
            return None
        if event.get("event") == "action" and event.get("name") not in (skip, "action_listen"):
            return event.get("name")
    return None


def reply_to_requested(tracker: Tracker, slot: str, form: str) -> Dict[str, Any]:
    """{slot: the patient's reply} when `slot` was asked and the reply answers it (not a return from an
    interruption); {} otherwise. Forms use custom mappings and fill their requested slot with this."""
    if tracker.get_slot(names.REQUESTED_SLOT) != slot:
        return {}
    if previous_action(tracker, skip=form) is not None:  # back from an interruption
        return {}
    text = latest_text(tracker)
    return {slot: text} if text else {}


def bot_action_before_message(tracker: Tracker) -> Optional[str]:
    """The last action (other than listening) before the patient's latest message: what they answer."""
    seen_user = False
    for event in reversed(tracker.events):
        if event.get("event") == "user":
            if seen_user:
                return None
            seen_user = True
        elif seen_user and event.get("event") == "action" and event.get("name") != "action_listen":
            return event.get("name")
    return None


def reset_form_slots(tracker: Tracker) -> List[EventType]:
    return [SlotSet(slot, None) for slot in names.FORM_SLOTS if tracker.get_slot(slot) is not None]
