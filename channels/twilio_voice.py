"""Phone calls in Mandarin through Twilio: the bot's answers spoken, keys and speech as the patient's replies.

Rasa's built-in `twilio_voice` cannot speak Mandarin, ignores keys, never hangs up, validates nothing and keys
outbound calls to the hospital's own number. This channel answers every signed Twilio request with TwiML:

* an inbound call starts a `/greet` turn in the caller's voice conversation (`voice:` + their number);
* a call the hospital placed (`TwilioVoiceProvider`) fetches `/outbound?delivery=N` and hears that delivery's
  text, its choices read as keys; the conversation is the patient's (`To`), never the hospital's `From`;
* each answer is `<Say>` inside a `<Gather input="speech dtmf">`; a key is the numbered choice's payload,
  speech is text for the bot, key 0 or 再见 ends the call politely;
* silence gets one reprompt, a second silence a goodbye and a hang-up (the count travels in the URL);
* `/status` applies call status callbacks to the delivery rows.

Fixed phrases (reprompt, goodbye, "请按1…") are in `data/channels/voice.yml`, per locale.

Enable it in ``credentials.yml`` (keys optional, as for `channels.twilio_sms.TwilioSmsInput`, plus
``locale``)::

    channels.twilio_voice.TwilioVoiceInput:
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Dict, Optional, Tuple

import yaml
from rasa.core.channels.channel import CollectingOutputChannel, OutputChannel, UserMessage
from sanic import Blueprint, response
from sanic.request import Request
from sanic.response import HTTPResponse
from twilio.twiml.voice_response import VoiceResponse

from bot.addresses import sender_id_for
from bot.config import DATA_DIR, get_settings
from bot.crm.models import Delivery
from bot.db import session_scope
from bot.kv import KeyValueStore, get_store
from bot.observability import metered
from bot.outbound import Choice, OutboundMessage, record_status
from bot.outbound.providers import split_text
from channels.common import ChoiceMemory, mask, merge_messages, retrying
from channels.twilio_common import (
    OnNewMessage,
    TwilioWebhookChannel,
    WebhookRejected,
    in_thread,
    required,
    twiml,
)

logger = logging.getLogger(__name__)

CHANNEL = "voice"
PHRASES_FILE = DATA_DIR / "channels" / "voice.yml"
DEFAULT_LOCALE = "zh_CN"
SAY_LIMIT = 150  # characters per <Say>: long blocks are cut after a sentence end
MAX_KEYS = 9  # keys 1-9 are choices, 0 ends the call
HANG_UP_KEY = "0"
GOODBYE_INTENT = "/goodbye"
CALL_TTL = 4 * 3600.0  # a call's state outlives any call

# Emoji and pictographs (TTS reads them as noise or not at all), and characters XML 1.0 cannot carry.
_UNSPEAKABLE = re.compile(
    "[\U0001f000-\U0001faff\u2600-\u27bf\u2b00-\u2bff\ufe00-\ufe0f\u200d\u20e3\U000e0020-\U000e007f"
    "\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff\ud800-\udfff]"
)
_SENTENCE_END = "。！？!?；;，,：:"
_PUNCTUATION = re.compile(r"[\s\W_]+")
_NUMBER = re.compile(r"[0-9]{1,9}")


@dataclass(frozen=True)
class VoicePhrases:
    """One locale's entry of data/channels/voice.yml."""

    say_voice: str
    say_language: str
    gather_language: str
    choice_first: str
    choice_next: str
    choice_separator: str
    reprompt: str
    anything_else: str  # said when a turn produced nothing to say, so the caller is never left in silence
    goodbye: str
    hang_up_words: Tuple[str, ...]
    unknown_call: str
    unavailable: str

    def choices_sentence(self, choices: Tuple[Choice, ...]) -> str:
        """'请按1预约挂号；按2我的预约。'"""
        parts = [
            (self.choice_first if key == 1 else self.choice_next).format(key=key, title=speakable(choice.title))
            for key, choice in enumerate(choices[:MAX_KEYS], 1)
        ]
        return self.choice_separator.join(parts) + ("。" if self.say_language.startswith("cmn") else ".")

    def means_goodbye(self, speech: str) -> bool:
        """True for a short utterance that is a farewell ('好的，再见'), not a sentence that contains one."""
        spoken = _PUNCTUATION.sub("", speech).lower()
        return any(word in spoken and len(spoken) <= len(word) + 4 for word in self.hang_up_words)


@lru_cache(maxsize=None)
def voice_phrases(locale: str = DEFAULT_LOCALE) -> VoicePhrases:
    """The phrases of `locale` (zh_CN when the catalog has none for it), read once per process."""
    catalog = yaml.safe_load(PHRASES_FILE.read_text(encoding="utf-8"))
    entry = catalog.get(locale) or catalog[DEFAULT_LOCALE]
    return VoicePhrases(**{**entry, "hang_up_words": tuple(entry.get("hang_up_words") or ())})


def speakable(text: str) -> str:
    """Text for <Say>: no emoji or XML-breaking characters; line breaks become sentence pauses."""
    lines = [" ".join(line.split()) for line in _UNSPEAKABLE.sub("", text or "").splitlines()]
    lines = [line for line in lines if line]
    return "".join(line if line[-1] in _SENTENCE_END else line + "。" for line in lines[:-1]) + (
        lines[-1] if lines else ""
    )


# ----------------------------------------------------------------------------------------------
# TwiML
# ----------------------------------------------------------------------------------------------
def say_all(verb: Any, text: str, phrases: VoicePhrases) -> None:
    for part in split_text(speakable(text), SAY_LIMIT):
        verb.say(part, voice=phrases.say_voice, language=phrases.say_language)


def prompt_twiml(message: OutboundMessage, phrases: VoicePhrases, gather_url: str, silence: int, lead: str = "") -> str:
    """Say the message and its choices inside a Gather; on silence Twilio goes on to the Redirect."""
    twiml_response = VoiceResponse()
    options: Dict[str, Any] = {"num_digits": 1} if message.choices else {}
    gather = twiml_response.gather(
        input="speech dtmf",
        language=phrases.gather_language,
        action=gather_url,
        method="POST",
        timeout=5,
        speech_timeout="auto",
        **options,
    )
    say_all(gather, " ".join(part for part in (lead, message.text) if part), phrases)
    if message.choices:
        gather.say(phrases.choices_sentence(message.choices), voice=phrases.say_voice, language=phrases.say_language)
    twiml_response.redirect(f"{gather_url}?silence={silence + 1}", method="POST")
    return str(twiml_response)


def farewell_twiml(text: str, phrases: VoicePhrases) -> str:
    twiml_response = VoiceResponse()
    say_all(twiml_response, text, phrases)
    twiml_response.hangup()
    return str(twiml_response)


# ----------------------------------------------------------------------------------------------
# state of a call
# ----------------------------------------------------------------------------------------------
class CallState:
    """Per CallSid: whose conversation the call is, and the last prompt (repeated after a silence)."""

    def __init__(self, store: Optional[KeyValueStore] = None) -> None:
        self._store = store

    @property
    def store(self) -> KeyValueStore:
        return self._store or get_store()

    def start(self, call_sid: str, sender_id: str) -> None:
        self.store.set(f"voice:call:{call_sid}", sender_id, CALL_TTL)

    def sender_of(self, call_sid: str) -> Optional[str]:
        return self.store.get(f"voice:call:{call_sid}")

    def remember_prompt(self, call_sid: str, message: OutboundMessage) -> None:
        choices = [[choice.title, choice.payload] for choice in message.choices]
        value = json.dumps({"text": message.text, "choices": choices}, ensure_ascii=False)
        self.store.set(f"voice:prompt:{call_sid}", value, CALL_TTL)

    def last_prompt(self, call_sid: str) -> Optional[OutboundMessage]:
        stored = self.store.get(f"voice:prompt:{call_sid}")
        if not stored:
            return None
        value = json.loads(stored)
        return OutboundMessage(text=value["text"], choices=tuple(Choice(*pair) for pair in value["choices"]))


def call_message(delivery_id: int, patient_phone: str) -> Optional[OutboundMessage]:
    """What an outbound call says: delivery `delivery_id`, only if it is a call to this very number."""
    with session_scope() as session:
        row = session.get(Delivery, delivery_id)
        if row is None or row.channel != CHANNEL or row.address != patient_phone:
            return None
        choices = tuple(Choice(str(c.get("title", "")), str(c.get("payload", ""))) for c in row.choices or [])
        return OutboundMessage(text=row.body or "", choices=tuple(c for c in choices if c.title), purpose=row.purpose)


# ----------------------------------------------------------------------------------------------
# output channels
# ----------------------------------------------------------------------------------------------
class VoiceCollector(CollectingOutputChannel):
    """Collects one turn's messages for the TwiML answer; named "voice" for channel-specific responses."""

    @classmethod
    def name(cls) -> str:
        return CHANNEL

    async def send_text_message(self, recipient_id: str, text: str, **kwargs: Any) -> None:
        await self._persist_message(self._message(recipient_id, text=text.strip()))


class VoicePushUnsupported(RuntimeError):
    """Raised by TwilioVoiceOutput: outside a call there is nobody to speak to."""


class TwilioVoiceOutput(OutputChannel):
    """What `trigger_intent?output_channel=twilio_voice` gets: voice cannot push into a call that is not
    running. To phone a patient, use `bot.outbound.send_to_patient(..., policy=("voice",))`, which places a
    call through TwilioVoiceProvider; the call then fetches its words from `/outbound`."""

    @classmethod
    def name(cls) -> str:
        return CHANNEL

    async def send_response(self, recipient_id: str, message: Dict[str, Any]) -> None:
        logger.error("twilio_voice: push to %s refused: voice pushes go through the outbound API", mask(recipient_id))
        raise VoicePushUnsupported(
            "the voice channel cannot push a message outside a call: place a call with "
            "bot.outbound.send_to_patient(patient_id, message, policy=('voice',)) instead"
        )

    async def send_text_message(self, recipient_id: str, text: str, **kwargs: Any) -> None:
        await self.send_response(recipient_id, {"text": text})


# ----------------------------------------------------------------------------------------------
# the channel
# ----------------------------------------------------------------------------------------------
class TwilioVoiceInput(TwilioWebhookChannel):
    """Twilio Voice webhooks: inbound calls, outbound-call scripts, Gather results and call statuses."""

    def __init__(
        self,
        account_sid: Optional[str] = None,
        auth_token: Optional[str] = None,
        public_url: Optional[str] = None,
        locale: Optional[str] = None,
        *,
        store: Optional[KeyValueStore] = None,
    ) -> None:
        super().__init__(account_sid, auth_token, public_url)
        self.locale = locale
        self.choices = ChoiceMemory(CHANNEL, store)
        self.calls = CallState(store)

    @classmethod
    def name(cls) -> str:
        return "twilio_voice"

    @classmethod
    def from_credentials(cls, credentials: Optional[Dict[str, Any]]) -> TwilioVoiceInput:
        credentials = credentials or {}
        return cls(
            credentials.get("account_sid"),
            credentials.get("auth_token"),
            credentials.get("public_url"),
            credentials.get("locale"),
        )

    @property
    def phrases(self) -> VoicePhrases:
        return voice_phrases(self.locale or get_settings().locale)

    @property
    def gather_url(self) -> str:
        return f"{self.auth.public_url}/webhooks/{self.url_prefix()}/gather"

    def get_output_channel(self) -> OutputChannel:
        return TwilioVoiceOutput()

    async def turn(self, sender_id: str, text: str, call_sid: str, on_new_message: OnNewMessage) -> OutboundMessage:
        """One Rasa turn, its messages merged into what the caller hears next."""
        collector = VoiceCollector()
        metadata = {"channel": CHANNEL, "call_sid": call_sid}
        await on_new_message(UserMessage(text, collector, sender_id, input_channel=CHANNEL, metadata=metadata))
        return merge_messages(collector.messages)

    async def ask(self, call_sid: str, sender_id: str, message: OutboundMessage) -> HTTPResponse:
        """Speak `message` and listen; its choices become the keys of this conversation."""
        if not message.text and not message.choices:
            message = OutboundMessage(text=self.phrases.anything_else)
        await in_thread(self.choices.remember, sender_id, message.choices)
        await in_thread(self.calls.remember_prompt, call_sid, message)
        return twiml(prompt_twiml(message, self.phrases, self.gather_url, silence=0))

    async def answer_turn(
        self, call_sid: str, sender_id: str, text: str, on_new_message: OnNewMessage, *, hang_up: bool = False
    ) -> HTTPResponse:
        try:
            message = await self.turn(sender_id, text, call_sid, on_new_message)
        except Exception:
            logger.exception("twilio_voice: turn failed on call %s (%s)", call_sid, mask(sender_id))
            return twiml(farewell_twiml(self.phrases.unavailable, self.phrases))
        if hang_up:
            return twiml(farewell_twiml(message.text or self.phrases.goodbye, self.phrases))
        return await self.ask(call_sid, sender_id, message)

    async def after_silence(self, call_sid: str, silence: int) -> HTTPResponse:
        """The first silence repeats the question once; the next one ends the call politely."""
        if silence >= 2:
            return twiml(farewell_twiml(self.phrases.goodbye, self.phrases))
        prompt = await in_thread(self.calls.last_prompt, call_sid) or OutboundMessage(text="")
        xml = prompt_twiml(prompt, self.phrases, self.gather_url, silence=silence, lead=self.phrases.reprompt)
        return twiml(xml)

    async def caller_of(self, call_sid: str, form: Dict[str, str]) -> str:
        """The conversation of a running call: remembered when it started, else the patient's side of it."""
        sender_id = await in_thread(self.calls.sender_of, call_sid)
        if sender_id:
            return sender_id
        outbound = (form.get("Direction") or "").startswith("outbound")
        (patient,) = required(form, "To" if outbound else "From")
        return sender_id_for(CHANNEL, patient)

    def blueprint(self, on_new_message: OnNewMessage) -> Blueprint:
        # counted and timed; run again while a store restarts (the patient's message is not lost)
        on_new_message = metered(retrying(on_new_message, deadline=8.0), "voice")
        voice = Blueprint(f"custom_webhook_{type(self).__name__}")

        @voice.route("/health", methods=["GET"])
        async def health(request: Request) -> HTTPResponse:
            return response.json({"status": "ok"})

        @voice.route("/webhook", methods=["POST"])
        async def inbound_call(request: Request) -> HTTPResponse:
            try:
                call_sid, caller = required(self.auth.signed_form(request), "CallSid", "From")
            except WebhookRejected as rejected:
                logger.warning("twilio_voice: call rejected (%s): %s", rejected.status, rejected.reason)
                return rejected.as_response()
            sender_id = sender_id_for(CHANNEL, caller)
            await in_thread(self.calls.start, call_sid, sender_id)
            logger.info("twilio_voice: call %s from %s", call_sid, mask(caller))
            return await self.answer_turn(call_sid, sender_id, "/greet", on_new_message)

        @voice.route("/outbound", methods=["POST"])
        async def outbound_call(request: Request) -> HTTPResponse:
            try:
                call_sid, patient = required(self.auth.signed_form(request), "CallSid", "To")
            except WebhookRejected as rejected:
                logger.warning(
                    "twilio_voice: outbound script request rejected (%s): %s", rejected.status, rejected.reason
                )
                return rejected.as_response()
            delivery = request.args.get("delivery", "")
            try:
                message = await in_thread(call_message, int(delivery), patient) if _NUMBER.fullmatch(delivery) else None
            except Exception:  # the patient is on the line: apologise rather than let Twilio say "application error"
                logger.exception("twilio_voice: could not read delivery %s for call %s", delivery, call_sid)
                return twiml(farewell_twiml(self.phrases.unavailable, self.phrases))
            if message is None:
                logger.warning("twilio_voice: call %s asked for unknown delivery %r", call_sid, delivery[:20])
                return twiml(farewell_twiml(self.phrases.unknown_call, self.phrases))
            sender_id = sender_id_for(CHANNEL, patient)  # the patient is `To`: `From` is the hospital
            await in_thread(self.calls.start, call_sid, sender_id)
            logger.info("twilio_voice: call %s to %s reads delivery %s", call_sid, mask(patient), delivery)
            return await self.ask(call_sid, sender_id, message)

        @voice.route("/gather", methods=["POST"])
        async def gathered(request: Request) -> HTTPResponse:
            try:
                form = self.auth.signed_form(request)
                (call_sid,) = required(form, "CallSid")
                sender_id = await self.caller_of(call_sid, form)
            except WebhookRejected as rejected:
                logger.warning("twilio_voice: gather result rejected (%s): %s", rejected.status, rejected.reason)
                return rejected.as_response()
            digits = (form.get("Digits") or "").strip()
            speech = (form.get("SpeechResult") or "").strip()
            if not digits and not speech:
                silence = request.args.get("silence", "1")
                return await self.after_silence(call_sid, int(silence) if _NUMBER.fullmatch(silence) else 1)
            if digits == HANG_UP_KEY or (not digits and self.phrases.means_goodbye(speech)):
                return await self.answer_turn(call_sid, sender_id, GOODBYE_INTENT, on_new_message, hang_up=True)
            reply = digits or speech
            text = await in_thread(self.choices.resolve, sender_id, reply) or reply
            return await self.answer_turn(call_sid, sender_id, text, on_new_message)

        @voice.route("/status", methods=["POST"])
        async def status(request: Request) -> HTTPResponse:
            try:
                form = self.auth.signed_form(request)
                call_sid, call_status = required(form, "CallSid", "CallStatus")
            except WebhookRejected as rejected:
                logger.warning("twilio_voice: status callback rejected (%s): %s", rejected.status, rejected.reason)
                return rejected.as_response()
            error_code = (form.get("ErrorCode") or "").strip() or None
            if not await in_thread(record_status, call_sid, call_status, error_code):
                logger.debug("twilio_voice: status %s for unknown call %s", call_status, call_sid)
            return twiml(str(VoiceResponse()))

        return voice
