"""Provider senders: one small class per way of reaching a patient (WeChat, Twilio SMS, Twilio voice).

Each takes an address (openid or E.164 phone) and a message and either returns what the provider accepted or
raises `ProviderError` with the provider's code. Choosing a channel, consent and fallback live one level up
(`bot.outbound.service`); callers never branch on which provider or which backend (real or sandbox) is used.

The SDKs are synchronous (`requests`): call `send` from a worker thread, never on an event loop.
"""

from __future__ import annotations

import logging
import re
import threading
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from datetime import datetime
from typing import Dict, List, Optional, Sequence, Tuple

from bot.kv import KeyValueStore, get_store
from bot.outbound.settings import ProviderSettings, TwilioSettings, WeChatSettings, get_provider_settings

logger = logging.getLogger(__name__)

# Retry once on these (the token was rotated or invalidated elsewhere), never more: wechatpy retries forever.
WECHAT_TOKEN_ERRORS = {40001, 40014, 42001}
# The customer-service window is closed (45015) or its quota for this patient message is used up (45047).
WECHAT_WINDOW_ERRORS = {45015, 45047}
# Permanent for this address: not following (43004), blocked (43019), bad openid (40003), subscription refused.
WECHAT_UNREACHABLE = {43004, 43019, 40003, 43101}
TEMPLATE_VALUE_LIMIT = 20  # characters per template value (WeChat's rule since May 2023)
WECHAT_TEXT_LIMIT = 600  # characters per customer-service text; longer answers go out in parts
SMS_SEGMENT_LIMIT = 300  # characters per SMS we send; Twilio concatenates up to 1600, handsets do worse


class ProviderError(Exception):
    """The provider refused or failed. `code` is the provider's own (WeChat errcode, Twilio error code)."""

    def __init__(self, channel: str, code: str, message: str, *, retryable: bool = False) -> None:
        super().__init__(f"{channel} refused the message: {code} {message}")
        self.channel = channel
        self.code = code
        self.message = message
        self.retryable = retryable


@dataclass(frozen=True)
class Choice:
    title: str
    payload: str


@dataclass(frozen=True)
class OutboundMessage:
    """What to tell a patient. `summary` is the short form used where a provider allows only a few characters
    (a WeChat template outside the 48-hour window); `choices` become a numbered list."""

    text: str
    summary: str = ""
    choices: Tuple[Choice, ...] = ()
    purpose: str = "conversation"  # conversation, reminder, nurse, alert
    when: Optional[datetime] = None  # the time the message is about (appointment, dose), for templates


@dataclass
class SendResult:
    kind: str  # custom, template, subscribe, sms, call
    provider_message_ids: List[str] = field(default_factory=list)
    notes: List[str] = field(default_factory=list)  # e.g. "window closed (45015): sent as template"

    @property
    def provider_message_id(self) -> Optional[str]:
        return self.provider_message_ids[0] if self.provider_message_ids else None


def numbered_text(message: OutboundMessage) -> str:
    """The text with its choices as '1. …' lines, the way a patient answers on SMS or WeChat ('1')."""
    if not message.choices:
        return message.text
    lines = [message.text.rstrip(), *(f"{index}. {choice.title}" for index, choice in enumerate(message.choices, 1))]
    return "\n".join(lines)


_SENTENCE_END = re.compile(r"(?<=[。！？!?；;\n])")


def split_text(text: str, limit: int) -> List[str]:
    """Parts of at most `limit` characters, cut after a sentence end where possible (never mid-word in
    Chinese terms: the cut falls after 。！？; or a newline, else at the limit)."""
    text = text.strip()
    if len(text) <= limit:
        return [text] if text else []
    parts: List[str] = []
    current = ""
    for sentence in (piece for piece in _SENTENCE_END.split(text) if piece):
        while len(sentence) > limit:  # one sentence longer than a part: cut it hard
            if current:
                parts.append(current)
                current = ""
            parts.append(sentence[:limit])
            sentence = sentence[limit:]
        if len(current) + len(sentence) > limit:
            parts.append(current)
            current = sentence
        else:
            current += sentence
    if current.strip():
        parts.append(current)
    return [part.strip() for part in parts if part.strip()]


def short_value(text: str, limit: int = TEMPLATE_VALUE_LIMIT) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


class Provider(ABC):
    """Sends to one channel. Subclasses are a few lines over their SDK."""

    channel: str = ""

    @abstractmethod
    def send(self, address: str, message: OutboundMessage, delivery_id: Optional[int] = None) -> SendResult:
        """Deliver `message` to `address` or raise ProviderError. Blocking: run it in a worker thread.
        `delivery_id` is the row recording this attempt (a voice call fetches its words by it)."""


# ----------------------------------------------------------------------------------------------
# WeChat
# ----------------------------------------------------------------------------------------------
class _StoreSession:
    """wechatpy's SessionStorage over our key-value store (Redis when configured), for the access token."""

    def __init__(self, store: KeyValueStore) -> None:
        self._store = store

    def get(self, key: str, default: Optional[str] = None) -> Optional[str]:
        value = self._store.get(f"wechat:{key}")
        return value if value is not None else default

    def set(self, key: str, value: str, ttl: Optional[int] = None) -> None:
        self._store.set(f"wechat:{key}", str(value), float(ttl or 7200))

    def delete(self, key: str) -> None:
        self._store.delete(f"wechat:{key}")


def make_wechat_client(settings: WeChatSettings, store: Optional[KeyValueStore] = None):  # type: ignore[no-untyped-def]
    """A wechatpy client that shares one access token between every process.

    It fetches through `/cgi-bin/stable_token`, which returns the same token while it is valid, so processes
    that refresh at the same time do not invalidate each other (plain `/cgi-bin/token` would), and the token
    lives in the shared store. wechatpy's own retry on token errors has no cap: it is off here, and
    `WeChatProvider` retries once.
    """
    from wechatpy import WeChatClient
    from wechatpy.exceptions import WeChatClientException

    class SharedTokenClient(WeChatClient):
        API_BASE_URL = settings.api_base

        def fetch_access_token(self) -> Dict[str, object]:
            response = self._http.post(
                settings.api_base + "stable_token",
                json={"grant_type": "client_credential", "appid": self.appid, "secret": self.secret},
                timeout=self.timeout,
            )
            response.raise_for_status()
            result = response.json()
            if result.get("errcode"):
                raise WeChatClientException(result["errcode"], result.get("errmsg"), client=self)
            expires_in = int(result.get("expires_in", 7200))
            # Keep a margin so no process uses a token in its last minute.
            self.session.set(self.access_token_key, result["access_token"], max(60, expires_in - 120))
            return result

        @property
        def access_token(self) -> str:
            token = self.session.get(self.access_token_key)
            if token:
                return token
            self.fetch_access_token()
            return self.session.get(self.access_token_key)

    return SharedTokenClient(
        settings.appid, settings.secret, session=_StoreSession(store or get_store()), timeout=5, auto_retry=False
    )


class WeChatProvider(Provider):
    """Customer-service messages inside the 48-hour window; a subscription or template message outside it."""

    channel = "wechat"

    def __init__(self, settings: WeChatSettings, store: Optional[KeyValueStore] = None) -> None:
        self.settings = settings
        self._store = store
        # One client (and requests.Session) per thread: a Session is not guaranteed thread-safe, and one lock
        # around every call serialised the dispatcher's sends. The token is shared through the store anyway.
        self._local = threading.local()

    @property
    def client(self):  # type: ignore[no-untyped-def]
        client = getattr(self._local, "client", None)
        if client is None:
            client = self._local.client = make_wechat_client(self.settings, self._store)
        return client

    def _call(self, method: str, *args: object, **kwargs: object) -> Dict[str, object]:
        from wechatpy.exceptions import WeChatClientException

        for attempt in (1, 2):
            try:
                return getattr(self.client.message, method)(*args, **kwargs)
            except WeChatClientException as error:
                code = int(error.errcode) if error.errcode is not None else None
                if code in WECHAT_TOKEN_ERRORS and attempt == 1:
                    self.client.session.delete(self.client.access_token_key)
                    continue
                if code is None:
                    raise ProviderError(
                        "wechat", "http", "WeChat API unreachable or answered an HTTP error", retryable=True
                    ) from error
                raise ProviderError(
                    "wechat", str(code), str(error.errmsg or ""), retryable=code in (-1, 45009)
                ) from error
            except OSError as error:  # requests' ConnectionError and timeouts are OSErrors
                raise ProviderError("wechat", "network", type(error).__name__, retryable=True) from error
        raise AssertionError("unreachable")

    def send(self, address: str, message: OutboundMessage, delivery_id: Optional[int] = None) -> SendResult:
        parts = split_text(numbered_text(message), WECHAT_TEXT_LIMIT)
        result = SendResult(kind="custom")
        try:
            for part in parts:
                self._call("send_text", address, part)
            return result
        except ProviderError as error:
            window_closed = error.code in {str(code) for code in WECHAT_WINDOW_ERRORS}
            has_notice = bool(self.settings.subscribe_template_id or self.settings.template_id)
            if not window_closed or not has_notice or result.provider_message_ids:
                raise  # no notice configured: the caller falls back to the next channel (SMS)
            note = f"customer-service window closed ({error.code})"
        return self._send_notice(address, message, note)

    def send_image(self, address: str, png: bytes, caption: str) -> SendResult:
        """A picture (a readings chart) as a temporary media upload and a customer-service image message, with its
        caption as text first. Inside the 48-hour window only: images have no template fallback."""
        import io

        from wechatpy.exceptions import WeChatClientException

        if caption:
            self._call("send_text", address, caption)
        try:
            uploaded = self.client.media.upload("image", ("chart.png", io.BytesIO(png), "image/png"))
        except WeChatClientException as error:
            raise ProviderError("wechat", str(error.errcode), str(error.errmsg or "")) from error
        except OSError as error:
            raise ProviderError("wechat", "network", type(error).__name__, retryable=True) from error
        self._call("send_image", address, uploaded["media_id"])
        return SendResult(kind="image", provider_message_ids=[str(uploaded["media_id"])])

    def _send_notice(self, address: str, message: OutboundMessage, note: str) -> SendResult:
        """Outside the window: a long-term subscription message when configured, else a template message."""
        summary = short_value(message.summary or message.text)
        when = (message.when or datetime.now()).strftime("%Y-%m-%d %H:%M")
        if self.settings.subscribe_template_id:
            data = {"thing1": {"value": summary}, "time2": {"value": when}}
            self._call("send_subscribe_message", address, self.settings.subscribe_template_id, data)
            return SendResult(kind="subscribe", notes=[f"{note}: sent as subscription message"])
        data = {"thing1": {"value": summary}, "time2": {"value": when}}
        response = self._call("send_template", address, self.settings.template_id, data)
        msgid = response.get("msgid")
        return SendResult(
            kind="template",
            provider_message_ids=[str(msgid)] if msgid is not None else [],
            notes=[f"{note}: sent as template message"],
        )


# ----------------------------------------------------------------------------------------------
# Twilio
# ----------------------------------------------------------------------------------------------
def make_twilio_client(settings: TwilioSettings):  # type: ignore[no-untyped-def]
    """A twilio REST client pointed at `settings.api_base` (Twilio itself or the sandbox)."""
    from twilio.rest import Client

    client = Client(settings.account_sid, settings.auth_token)
    client.api.base_url = settings.api_base
    return client


def _twilio_error(channel: str, error: Exception) -> ProviderError:
    from twilio.base.exceptions import TwilioRestException

    if isinstance(error, TwilioRestException):
        code = str(error.code or error.status)
        return ProviderError(channel, code, str(error.msg or "")[:200], retryable=(error.status or 0) >= 500)
    return ProviderError(channel, "network", type(error).__name__, retryable=True)


class TwilioSmsProvider(Provider):
    """SMS through Twilio's Messages API, split on sentence boundaries, status callbacks to our webhook."""

    channel = "sms"

    def __init__(self, settings: TwilioSettings) -> None:
        self.settings = settings
        self.client = make_twilio_client(settings)

    @property
    def status_callback(self) -> str:
        return f"{self.settings.public_url}/webhooks/twilio_sms/status"

    def send(self, address: str, message: OutboundMessage, delivery_id: Optional[int] = None) -> SendResult:
        from twilio.base.exceptions import TwilioException

        result = SendResult(kind="sms")
        for part in split_text(numbered_text(message), SMS_SEGMENT_LIMIT):
            try:
                created = self.client.messages.create(
                    to=address, from_=self.settings.sms_from, body=part, status_callback=self.status_callback
                )
            except (TwilioException, OSError) as error:
                raise _twilio_error(self.channel, error) from error
            result.provider_message_ids.append(created.sid)
        return result


class TwilioVoiceProvider(Provider):
    """An outbound call; Twilio fetches what to say from our voice webhook, keyed by the delivery row."""

    channel = "voice"

    def __init__(self, settings: TwilioSettings) -> None:
        self.settings = settings
        self.client = make_twilio_client(settings)

    def call_url(self, delivery_id: Optional[int]) -> str:
        return f"{self.settings.public_url}/webhooks/twilio_voice/outbound?delivery={delivery_id or 0}"

    def send(self, address: str, message: OutboundMessage, delivery_id: Optional[int] = None) -> SendResult:
        from twilio.base.exceptions import TwilioException

        try:
            call = self.client.calls.create(
                to=address,
                from_=self.settings.voice_from,
                url=self.call_url(delivery_id),
                status_callback=f"{self.settings.public_url}/webhooks/twilio_voice/status",
                status_callback_event=["completed"],
            )
        except (TwilioException, OSError) as error:
            raise _twilio_error(self.channel, error) from error
        return SendResult(kind="call", provider_message_ids=[call.sid])


class Providers:
    """The provider of each channel, built once per process from the settings."""

    def __init__(self, settings: Optional[ProviderSettings] = None, store: Optional[KeyValueStore] = None) -> None:
        self.settings = settings or get_provider_settings()
        self._store = store
        self._built: Dict[str, Provider] = {}
        self._lock = threading.Lock()

    def get(self, channel: str) -> Provider:
        with self._lock:
            if channel not in self._built:
                self._built[channel] = self._build(channel)
            return self._built[channel]

    def _build(self, channel: str) -> Provider:
        if channel == "wechat":
            return WeChatProvider(self.settings.wechat, self._store)
        if channel == "sms":
            return TwilioSmsProvider(self.settings.twilio)
        if channel == "voice":
            return TwilioVoiceProvider(self.settings.twilio)
        raise KeyError(f"no provider for channel {channel!r}: expected wechat, sms or voice")

    @property
    def channels(self) -> Sequence[str]:
        return ("wechat", "sms", "voice")


_default: Optional[Providers] = None


def get_providers() -> Providers:
    global _default
    if _default is None:
        _default = Providers()
    return _default
