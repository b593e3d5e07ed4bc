"""SMS conversations through Twilio: signed webhooks in, one merged reply out through the outbound API.

Rasa's built-in `twilio` channel validates nothing, answers 500 to a picture without text, blocks the event
loop while it sends and sends every button as its own SMS with the payload showing. This channel:

* checks `X-Twilio-Signature` against the public URL Twilio called, over the form with blank fields kept
  (`FromCity=`); a bad signature is 403, a malformed request 400, never a 5xx for bad input;
* acknowledges at once with empty TwiML and runs the Rasa turn in a background task: the answer goes out
  through `bot.outbound.send_to_address` (recorded as a `Delivery`, split on sentence boundaries), so a slow
  turn never makes Twilio time out and retry;
* drops Twilio's retries by `MessageSid`, reads "1" as the first of the numbered choices last shown, and handles
  the consent keywords (STOP / 退订 …) before the bot sees them;
* applies status callbacks (`/status`) to the delivery rows.

Enable it in ``credentials.yml`` (every key optional, defaulting to `bot.outbound.settings`)::

    channels.twilio_sms.TwilioSmsInput:
      account_sid: AC...
      auth_token: ...
      public_url: https://bot.example-hospital.cn

Routes, mounted by Rasa under ``/webhooks/twilio_sms``: ``GET /health``, ``POST /webhook`` (inbound SMS),
``POST /status`` (delivery reports). Proactive messages: ``trigger_intent?output_channel=latest`` (the
conversations record ``input_channel="sms"``; channels/rasa_fixes.py maps that to this channel).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field, replace
from typing import Any, Dict, List, Optional

from rasa.core.channels.channel import CollectingOutputChannel, OutputChannel, UserMessage
from sanic import Blueprint, response
from sanic.request import Request
from sanic.response import HTTPResponse

from bot.crm import consent
from bot.db import session_scope
from bot.kv import KeyValueStore
from bot.observability import metered
from bot.outbound import OutboundMessage, Providers, Undeliverable, record_status, send_to_address
from bot.outbound.settings import get_provider_settings
from channels.common import ChoiceMemory, Deduplicator, mask, merge_messages, retrying
from channels.twilio_common import (
    BackgroundTasks,
    OnNewMessage,
    TwilioWebhookChannel,
    WebhookRejected,
    in_thread,
    required,
    twilio_settings,
    twiml,
)

logger = logging.getLogger(__name__)

CHANNEL = "sms"  # input_channel of the conversations, channel of the deliveries and consent rows
EMPTY_TWIML = '<?xml version="1.0" encoding="UTF-8"?><Response/>'


# ----------------------------------------------------------------------------------------------
# what a patient texts
# ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Keyword:
    """A single-word SMS with a fixed meaning. `twilio_answers`: Twilio itself replies to it (and blocks or
    unblocks the number), so the bot's answer is recorded but not sent."""

    intent: str
    opted_in: Optional[bool] = None
    twilio_answers: bool = False


OPT_OUT = Keyword("/opt_out", opted_in=False)
OPT_OUT_AT_TWILIO = Keyword("/opt_out", opted_in=False, twilio_answers=True)
OPT_IN = Keyword("/opt_in", opted_in=True)
OPT_IN_AT_TWILIO = Keyword("/opt_in", opted_in=True, twilio_answers=True)
HELP = Keyword("/greet")
HELP_AT_TWILIO = Keyword("/greet", twilio_answers=True)

KEYWORDS: Dict[str, Keyword] = {
    **dict.fromkeys(["STOP", "STOPALL", "UNSUBSCRIBE", "CANCEL", "END", "QUIT"], OPT_OUT_AT_TWILIO),
    **dict.fromkeys(["退订", "TD", "T"], OPT_OUT),  # the mainland carriers' "回T退订"
    **dict.fromkeys(["START", "UNSTOP", "YES"], OPT_IN_AT_TWILIO),
    "订阅": OPT_IN,
    **dict.fromkeys(["HELP", "INFO"], HELP_AT_TWILIO),
    "帮助": HELP,
}


def keyword_of(text: str) -> Optional[Keyword]:
    """The keyword a whole message is (case, spaces and closing punctuation ignored); None for sentences."""
    word = text.strip().rstrip(".!。！").strip().upper()
    return KEYWORDS.get(word)


def media_kind(content_type: str) -> str:
    """'image/jpeg' -> 'image'; a PDF or another document -> 'file'."""
    major = (content_type or "").split("/")[0].strip().lower()
    return major if major in ("image", "video", "audio") else "file"


@dataclass(frozen=True)
class InboundSms:
    phone: str  # E.164, the conversation id
    message_sid: str
    text: str
    media: List[Dict[str, str]] = field(default_factory=list)  # [{"url", "content_type"}]

    @classmethod
    def from_form(cls, form: Dict[str, str]) -> InboundSms:
        phone, message_sid = required(form, "From", "MessageSid")
        try:
            count = int(form.get("NumMedia") or 0)
        except ValueError:
            raise WebhookRejected(400, "'NumMedia' must be a number") from None
        media = [
            {"url": form[f"MediaUrl{index}"], "content_type": form.get(f"MediaContentType{index}", "")}
            for index in range(max(0, min(count, 10)))
            if form.get(f"MediaUrl{index}")
        ]
        return cls(phone, message_sid, (form.get("Body") or "").strip(), media)

    def metadata(self) -> Dict[str, Any]:
        metadata: Dict[str, Any] = {"channel": CHANNEL, "message_sid": self.message_sid}
        if self.media:
            metadata["media"] = self.media
        return metadata

    def media_intent(self) -> str:
        kind = media_kind(self.media[0]["content_type"]) if self.media else "file"
        return "/share_media" + json.dumps({"media_type": kind}, separators=(",", ":"))


# ----------------------------------------------------------------------------------------------
# output channels
# ----------------------------------------------------------------------------------------------
class SmsCollector(CollectingOutputChannel):
    """Collects one turn's messages, merged into one SMS afterwards. Named "sms" so channel-specific
    responses in the domain apply; paragraphs are kept whole (the base class cuts on blank lines)."""

    @classmethod
    def name(cls) -> str:
        return CHANNEL

    async def send_text_message(self, recipient_id: str, text: str, **kwargs: Any) -> None:
        await self._persist_message(self._message(recipient_id, text=text.strip()))


class SmsReplies:
    """Sends a merged bot answer to one phone and remembers its numbered choices."""

    def __init__(self, providers: Optional[Providers], choices: ChoiceMemory) -> None:
        self.providers = providers
        self.choices = choices

    async def send(self, phone: str, message: OutboundMessage) -> None:
        if not message.text and not message.choices:
            return
        # Remembered before sending: the patient may answer "1" before the send call returns.
        await in_thread(self.choices.remember, phone, message.choices)
        try:
            report = await in_thread(send_to_address, CHANNEL, phone, message, providers=self.providers)
        except Undeliverable as error:
            logger.warning("twilio_sms: answer to %s not delivered: %s", mask(phone), error)
            return
        logger.debug("twilio_sms: answer to %s is delivery %s", mask(phone), report.delivery_id)


class TwilioSmsOutput(OutputChannel):
    """Sends each message at once: Rasa's pushes (`trigger_intent`, a nurse's reply with side effects).

    Pushes are messages the hospital starts, so they honour an opt-out (`purpose`), unlike the answers
    to what the patient writes."""

    def __init__(self, replies: SmsReplies, purpose: str = "reminder") -> None:
        self.replies = replies
        self.purpose = purpose

    @classmethod
    def name(cls) -> str:
        return CHANNEL

    async def send_response(self, recipient_id: str, message: Dict[str, Any]) -> None:
        merged = merge_messages([message])
        await self.replies.send(recipient_id, replace(merged, purpose=self.purpose))

    async def send_text_message(self, recipient_id: str, text: str, **kwargs: Any) -> None:
        await self.send_response(recipient_id, {"text": text})

    async def send_text_with_buttons(
        self, recipient_id: str, text: str, buttons: List[Dict[str, Any]], **kwargs: Any
    ) -> None:
        await self.send_response(recipient_id, {"text": text, "buttons": buttons})


# ----------------------------------------------------------------------------------------------
# the channel
# ----------------------------------------------------------------------------------------------
def record_consent(phone: str, opted_in: bool) -> None:
    with session_scope() as session:
        consent.set_consent(session, channel=CHANNEL, external_id=phone, opted_in=opted_in, actor="patient")


class TwilioSmsInput(TwilioWebhookChannel):
    """Twilio Programmable Messaging webhooks: inbound SMS/MMS and delivery status callbacks."""

    def __init__(
        self,
        account_sid: Optional[str] = None,
        auth_token: Optional[str] = None,
        public_url: Optional[str] = None,
        *,
        providers: Optional[Providers] = None,
        store: Optional[KeyValueStore] = None,
    ) -> None:
        super().__init__(account_sid, auth_token, public_url)
        self._providers = providers
        self.seen = Deduplicator(CHANNEL, store)
        self.choices = ChoiceMemory(CHANNEL, store)
        self.turns = BackgroundTasks("twilio_sms")

    @classmethod
    def name(cls) -> str:
        return "twilio_sms"

    @classmethod
    def from_credentials(cls, credentials: Optional[Dict[str, Any]]) -> TwilioSmsInput:
        credentials = credentials or {}
        return cls(credentials.get("account_sid"), credentials.get("auth_token"), credentials.get("public_url"))

    @property
    def providers(self) -> Optional[Providers]:
        """The process's providers, or our own when credentials.yml overrides the Twilio account."""
        if self._providers is None and any(self.credentials.values()):
            base = get_provider_settings()
            self._providers = Providers(replace(base, twilio=twilio_settings(self.credentials)))
        return self._providers

    def replies(self) -> SmsReplies:
        return SmsReplies(self.providers, self.choices)

    def get_output_channel(self) -> OutputChannel:
        return TwilioSmsOutput(self.replies())

    async def converse(self, sms: InboundSms, on_new_message: OnNewMessage) -> None:
        """One turn: consent keywords first, numbered choices resolved, then one merged answer by SMS."""
        keyword = keyword_of(sms.text) if sms.text else None
        if keyword is not None and keyword.opted_in is not None:
            await in_thread(record_consent, sms.phone, keyword.opted_in)
            logger.info("twilio_sms: %s opted %s", mask(sms.phone), "in" if keyword.opted_in else "out")
        if keyword is not None:
            text = keyword.intent
        elif not sms.text:
            text = sms.media_intent()
        else:
            text = await in_thread(self.choices.resolve, sms.phone, sms.text) or sms.text

        collector = SmsCollector()
        await on_new_message(UserMessage(text, collector, sms.phone, input_channel=CHANNEL, metadata=sms.metadata()))
        if keyword is not None and keyword.twilio_answers:
            logger.info("twilio_sms: Twilio answered the keyword from %s; bot answer not sent", mask(sms.phone))
            return
        await self.replies().send(sms.phone, merge_messages(collector.messages))

    def blueprint(self, on_new_message: OnNewMessage) -> Blueprint:
        # counted and timed; run again while a store restarts (the patient's message is not lost)
        on_new_message = metered(retrying(on_new_message), "sms")
        sms = Blueprint(f"custom_webhook_{type(self).__name__}")

        @sms.route("/health", methods=["GET"])
        async def health(request: Request) -> HTTPResponse:
            return response.json({"status": "ok"})

        @sms.route("/webhook", methods=["POST"])
        async def receive(request: Request) -> HTTPResponse:
            try:
                inbound = InboundSms.from_form(self.auth.signed_form(request))
            except WebhookRejected as rejected:
                logger.warning("twilio_sms: webhook rejected (%s): %s", rejected.status, rejected.reason)
                return rejected.as_response()
            if not inbound.text and not inbound.media:
                logger.info("twilio_sms: empty message %s from %s ignored", inbound.message_sid, mask(inbound.phone))
                return twiml(EMPTY_TWIML)
            if not await in_thread(self.seen.first_time, inbound.message_sid):
                logger.info("twilio_sms: repeated delivery of %s ignored", inbound.message_sid)
                return twiml(EMPTY_TWIML)
            # Answer Twilio now; the bot's answer goes out through the REST API when the turn is done.
            self.turns.start(self.converse(inbound, on_new_message))
            return twiml(EMPTY_TWIML)

        @sms.route("/status", methods=["POST"])
        async def status(request: Request) -> HTTPResponse:
            try:
                form = self.auth.signed_form(request)
                message_sid, message_status = required(form, "MessageSid", "MessageStatus")
            except WebhookRejected as rejected:
                logger.warning("twilio_sms: status callback rejected (%s): %s", rejected.status, rejected.reason)
                return rejected.as_response()
            error_code = (form.get("ErrorCode") or "").strip() or None
            if not await in_thread(record_status, message_sid, message_status, error_code):
                logger.debug("twilio_sms: status %s for unknown message %s", message_status, message_sid)
            return twiml(EMPTY_TWIML)

        return sms
