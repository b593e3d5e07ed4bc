"""What the sandbox knows: what reached each simulated patient, and the platform rules' per-patient state.

The aiohttp handlers run on the sandbox's event loop while tests read and steer the same state from their own
thread (`sandbox.testing.RunningSandbox`), so every access goes through one lock and readers get copies.
The platform rules that depend on remembered state (WeChat's customer-service window and token grace period,
Twilio's opted-out numbers) are decided here, atomically with the bookkeeping they need.
"""

from __future__ import annotations

import copy
import itertools
import secrets
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Callable, Dict, List, Optional, Set, Tuple, Union

from bot.outbound.settings import (
    SANDBOX_TWILIO_ACCOUNT_SID,
    SANDBOX_TWILIO_AUTH_TOKEN,
    SANDBOX_WECHAT_APPID,
    SANDBOX_WECHAT_SECRET,
    get_provider_settings,
)

PROVIDERS = ("wechat", "sms", "voice")
FAULT_PROVIDERS = ("wechat", "twilio")

TOKEN_LIFETIME = 7200.0  # seconds, what WeChat answers in `expires_in`
TOKEN_GRACE = 300.0  # a replaced access_token keeps working this long (WeChat's documented behaviour)
WINDOW_LIFETIME = 48 * 3600.0  # customer-service window after a patient's message
WINDOW_LIMIT = 5  # customer-service messages per patient message

FaultCode = Union[int, str]


class SandboxError(Exception):
    """A request to the sandbox's control surface that cannot be carried out (unknown call, bad argument)."""


@dataclass
class Record:
    """One thing that reached (or was refused for) a simulated patient: a WeChat message, an SMS, a call step."""

    id: int
    at: float
    provider: str  # "wechat" | "sms" | "voice"
    kind: str  # custom, template, subscribe, passive, sms, call, call_say, ...
    to: str
    from_: str
    body: str
    status: str
    error_code: Optional[FaultCode] = None
    detail: Dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> Dict[str, Any]:
        """The JSON shape of `/sandbox/api/messages`; `from` is a keyword in Python, hence `from_` here."""
        return {
            "id": self.id,
            "at": iso_utc(self.at),
            "provider": self.provider,
            "kind": self.kind,
            "to": self.to,
            "from": self.from_,
            "body": self.body,
            "status": self.status,
            "error_code": self.error_code,
            "detail": copy.deepcopy(self.detail),
        }


@dataclass
class InboundRecord:
    """A message the page sent to the bot as a patient, with what the bot answered."""

    id: int
    at: float
    channel: str  # "wechat" | "sms"
    patient: str
    body: str
    http_status: Optional[int] = None
    replies: List[str] = field(default_factory=list)
    error: Optional[str] = None

    def to_dict(self) -> Dict[str, Any]:
        return {
            "id": self.id,
            "at": iso_utc(self.at),
            "channel": self.channel,
            "patient": self.patient,
            "body": self.body,
            "http_status": self.http_status,
            "replies": list(self.replies),
            "error": self.error,
        }


@dataclass
class WeChatFollower:
    """A patient following the official account, as far as the customer-service rules care."""

    openid: str
    followed: bool = True
    window_opened_at: Optional[float] = None
    sent_since_inbound: int = 0
    window_limit: int = WINDOW_LIMIT
    window_lifetime: float = WINDOW_LIFETIME


@dataclass
class AccessToken:
    value: str
    expires_at: float
    stable: bool


@dataclass
class PhoneLine:
    """A simulated patient's phone: whether carriers deliver to it and whether it texted STOP."""

    phone: str
    unreachable_code: Optional[int] = None
    unsubscribed: bool = False


@dataclass
class SmsMessage:
    """A Twilio message resource, kept so `GET .../Messages/{Sid}.json` shows its current status."""

    sid: str
    account_sid: str
    to: str
    from_: Optional[str]
    body: str
    status: str
    num_segments: int
    created_at: float
    record_id: int
    messaging_service_sid: Optional[str] = None
    status_callback: Optional[str] = None
    error_code: Optional[int] = None
    updated_at: float = 0.0
    sent_at: Optional[float] = None


@dataclass
class Gather:
    """A `<Gather>` the simulated callee is listening to, waiting for `press` or `say`."""

    action: str
    method: str
    input: str
    language: Optional[str]
    remaining: List[Any] = field(default_factory=list)  # verbs after the Gather, played when nothing is said
    document_url: str = ""


@dataclass
class Call:
    """An outbound call the sandbox is simulating, from queued to its end."""

    sid: str
    account_sid: str
    to: str
    from_: str
    url: Optional[str]
    method: str
    twiml: Optional[str]
    status_callback: Optional[str]
    status_callback_method: str
    events: List[str]
    machine_detection: Optional[str]
    record_id: int
    created_at: float
    status: str = "queued"
    gather: Optional[Gather] = None
    answered_at: Optional[float] = None
    ended_at: Optional[float] = None
    sequence: int = 0

    @property
    def ended(self) -> bool:
        return self.status in CALL_END_STATUSES


CALL_END_STATUSES = frozenset({"completed", "busy", "failed", "no-answer", "canceled"})


def iso_utc(timestamp: float) -> str:
    """ISO 8601 in UTC with milliseconds, what the page and the JSON API show."""
    moment = datetime.fromtimestamp(timestamp, tz=timezone.utc)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def rfc2822(timestamp: Optional[float]) -> Optional[str]:
    """Twilio's date format in resources and callbacks: `Thu, 30 Jul 2015 20:12:31 +0000`."""
    if timestamp is None:
        return None
    return datetime.fromtimestamp(timestamp, tz=timezone.utc).strftime("%a, %d %b %Y %H:%M:%S +0000")


def _default_wechat_apps() -> Dict[str, str]:
    settings = get_provider_settings().wechat
    return {SANDBOX_WECHAT_APPID: SANDBOX_WECHAT_SECRET, settings.appid: settings.secret}


def _default_twilio_accounts() -> Dict[str, str]:
    settings = get_provider_settings().twilio
    return {SANDBOX_TWILIO_ACCOUNT_SID: SANDBOX_TWILIO_AUTH_TOKEN, settings.account_sid: settings.auth_token}


class SandboxState:
    """Everything the sandbox remembers, safe to use from the event loop and from test threads at once.

    Configuration (credentials, strictness, clock, callback delay) survives `reset()`; observations and
    simulated conditions (windows, opted-out numbers, pending faults, calls, `advance_clock`) do not.
    Issued access tokens survive too: clients cache them for two hours, and a test's reset should not look
    like a token revocation.
    """

    def __init__(
        self,
        *,
        strict_window: bool = False,
        strict_subscriptions: bool = False,
        clock: Callable[[], float] = time.time,
        callback_delay: float = 0.05,
        wechat_apps: Optional[Dict[str, str]] = None,
        twilio_accounts: Optional[Dict[str, str]] = None,
    ) -> None:
        self._lock = threading.RLock()
        self.strict_window = strict_window
        self.strict_subscriptions = strict_subscriptions
        self.clock = clock
        self.callback_delay = callback_delay
        self.wechat_apps = dict(wechat_apps) if wechat_apps is not None else _default_wechat_apps()
        self.twilio_accounts = dict(twilio_accounts) if twilio_accounts is not None else _default_twilio_accounts()
        self._tokens: Dict[str, AccessToken] = {}
        self._ids = itertools.count(1)
        self._msgids = itertools.count(3_100_000_001)
        self._clear()

    def _clear(self) -> None:
        self.records: List[Record] = []
        self.inbound: List[InboundRecord] = []
        self.followers: Dict[str, WeChatFollower] = {}
        self.subscriptions: Set[str] = set()
        self.phones: Dict[str, PhoneLine] = {}
        self.faults: Dict[str, List[FaultCode]] = {provider: [] for provider in FAULT_PROVIDERS}
        self.sms: Dict[str, SmsMessage] = {}
        self.calls: Dict[str, Call] = {}
        self.token_fetches = 0
        self.stable_token_fetches = 0
        self.clock_offset = 0.0
        self.media: Dict[str, Tuple[str, bytes]] = {}

    def add_media(self, media_type: str, content: bytes) -> str:
        """Keep an uploaded file (temporary media) and return its media id."""
        with self._lock:
            media_id = f"sandbox_media_{next(self._ids)}"
            self.media[media_id] = (media_type, content)
            return media_id

    def reset(self) -> None:
        with self._lock:
            self._clear()

    def now(self) -> float:
        """The simulated time: `clock()` plus whatever `advance_clock` added (tests jump past 48 h)."""
        return self.clock() + self.clock_offset

    def advance_clock(self, seconds: float) -> None:
        with self._lock:
            self.clock_offset += seconds

    # Records -------------------------------------------------------------------------------------------

    def add_record(
        self,
        provider: str,
        kind: str,
        *,
        to: str,
        from_: str,
        body: str,
        status: str,
        error_code: Optional[FaultCode] = None,
        detail: Optional[Dict[str, Any]] = None,
    ) -> Record:
        if provider not in PROVIDERS:
            raise SandboxError(f"Unknown provider {provider!r}; expected one of {', '.join(PROVIDERS)}")
        with self._lock:
            record = Record(
                id=next(self._ids),
                at=self.now(),
                provider=provider,
                kind=kind,
                to=to,
                from_=from_,
                body=body,
                status=status,
                error_code=error_code,
                detail=dict(detail or {}),
            )
            self.records.append(record)
            return record

    def update_record(self, record_id: int, **changes: Any) -> None:
        with self._lock:
            record = self._record(record_id)
            for name, value in changes.items():
                setattr(record, name, value)

    def append_detail(self, record_id: int, key: str, item: Any) -> None:
        """Add to a list in a record's detail (callback results, fetched TwiML) without racing readers."""
        with self._lock:
            self._record(record_id).detail.setdefault(key, []).append(item)

    def _record(self, record_id: int) -> Record:
        for record in reversed(self.records):
            if record.id == record_id:
                return record
        raise SandboxError(f"No record with id {record_id}; was the sandbox reset meanwhile?")

    def messages(
        self,
        to: Optional[str] = None,
        provider: Optional[str] = None,
        kind: Optional[str] = None,
        status: Optional[str] = None,
    ) -> List[Dict[str, Any]]:
        """Records oldest first as JSON dicts, filtered by whichever arguments are given."""
        with self._lock:
            return [
                record.to_dict()
                for record in self.records
                if (to is None or record.to == to)
                and (provider is None or record.provider == provider)
                and (kind is None or record.kind == kind)
                and (status is None or record.status == status)
            ]

    def last_record_id(self) -> int:
        with self._lock:
            return self.records[-1].id if self.records else 0

    def add_inbound(self, channel: str, patient: str, body: str) -> InboundRecord:
        with self._lock:
            inbound = InboundRecord(id=next(self._ids), at=self.now(), channel=channel, patient=patient, body=body)
            self.inbound.append(inbound)
            return inbound

    def finish_inbound(
        self, inbound_id: int, *, http_status: Optional[int], replies: List[str], error: Optional[str]
    ) -> None:
        with self._lock:
            for inbound in self.inbound:
                if inbound.id == inbound_id:
                    inbound.http_status, inbound.replies, inbound.error = http_status, list(replies), error

    def inbound_messages(self) -> List[Dict[str, Any]]:
        with self._lock:
            return [inbound.to_dict() for inbound in self.inbound]

    def stats(self) -> Dict[str, Any]:
        with self._lock:
            per_provider = {provider: 0 for provider in PROVIDERS}
            per_status: Dict[str, int] = {}
            for record in self.records:
                per_provider[record.provider] += 1
                per_status[record.status] = per_status.get(record.status, 0) + 1
            return {
                "token_fetches": self.token_fetches,
                "stable_token_fetches": self.stable_token_fetches,
                "messages": per_provider,
                "statuses": per_status,
                "inbound": len(self.inbound),
                "calls": len(self.calls),
            }

    # Faults ----------------------------------------------------------------------------------------------

    def fail_next(self, provider: str, code: FaultCode, count: int = 1) -> None:
        """Make the provider's next `count` API calls fail with `code` ("down" = HTTP 503 without a body)."""
        provider = {"sms": "twilio", "voice": "twilio"}.get(provider, provider)
        if provider not in FAULT_PROVIDERS:
            raise SandboxError(f"Faults are injected per provider: {' or '.join(FAULT_PROVIDERS)}, not {provider!r}")
        if not (code == "down" or isinstance(code, int)):
            raise SandboxError(f"A fault code is an error code (int) or 'down', not {code!r}")
        if count < 1:
            raise SandboxError(f"A fault needs a positive count, not {count}")
        with self._lock:
            self.faults[provider].extend([code] * count)

    def take_fault(self, provider: str) -> Optional[FaultCode]:
        with self._lock:
            pending = self.faults[provider]
            return pending.pop(0) if pending else None

    # WeChat access tokens --------------------------------------------------------------------------------

    def check_wechat_app(self, appid: str, secret: str) -> Optional[Tuple[int, str]]:
        """The error WeChat gives for these credentials, or None when they are right."""
        if appid not in self.wechat_apps:
            return 40013, "invalid appid"
        if not secrets.compare_digest(self.wechat_apps[appid].encode(), secret.encode()):
            return 40001, "invalid credential, access_token is invalid or not latest (AppSecret error)"
        return None

    def issue_token(self) -> AccessToken:
        """`/cgi-bin/token`: always a new token; the previous ones stop working after the grace period."""
        with self._lock:
            now = self.now()
            self.token_fetches += 1
            for token in self._tokens.values():
                if not token.stable:
                    token.expires_at = min(token.expires_at, now + TOKEN_GRACE)
            return self._new_token(now, stable=False)

    def issue_stable_token(self, force_refresh: bool) -> AccessToken:
        """`/cgi-bin/stable_token`: the same token while it is valid, unaffected by `/cgi-bin/token` fetches."""
        with self._lock:
            now = self.now()
            self.stable_token_fetches += 1
            current = [t for t in self._tokens.values() if t.stable and t.expires_at > now]
            if current and not force_refresh:
                return copy.copy(max(current, key=lambda t: t.expires_at))
            for token in current:
                token.expires_at = min(token.expires_at, now + TOKEN_GRACE)
            return self._new_token(now, stable=True)

    def _new_token(self, now: float, *, stable: bool) -> AccessToken:
        token = AccessToken(value=secrets.token_urlsafe(96), expires_at=now + TOKEN_LIFETIME, stable=stable)
        self._tokens[token.value] = token
        return copy.copy(token)

    def token_valid(self, value: Optional[str]) -> bool:
        with self._lock:
            token = self._tokens.get(value or "")
            return token is not None and token.expires_at > self.now()

    def expire_tokens(self) -> None:
        """Invalidate every issued token at once, as when the secret is reset on the WeChat admin page."""
        with self._lock:
            self._tokens.clear()

    # WeChat followers, windows, subscriptions ----------------------------------------------------------------

    def _follower(self, openid: str) -> WeChatFollower:
        follower = self.followers.get(openid)
        if follower is None:
            follower = self.followers[openid] = WeChatFollower(openid=openid)
        return follower

    def open_window(self, openid: str, *, limit: int = WINDOW_LIMIT, lifetime: float = WINDOW_LIFETIME) -> None:
        """A patient message (limit 5, 48 h) or a menu click/follow/scan (WeChat: 3 within 60 s) opens it."""
        with self._lock:
            follower = self._follower(openid)
            follower.followed = True
            follower.window_opened_at = self.now()
            follower.sent_since_inbound = 0
            follower.window_limit, follower.window_lifetime = limit, lifetime

    def close_window(self, openid: str) -> None:
        with self._lock:
            self._follower(openid).window_opened_at = None

    def unfollow(self, openid: str) -> None:
        with self._lock:
            follower = self._follower(openid)
            follower.followed = False
            follower.window_opened_at = None

    def follow(self, openid: str) -> None:
        with self._lock:
            self._follower(openid).followed = True

    def is_following(self, openid: str) -> bool:
        with self._lock:
            follower = self.followers.get(openid)
            return follower is None or follower.followed

    def consume_custom_quota(self, openid: str) -> Optional[Tuple[int, str]]:
        """Apply the customer-service window to one message: None and counted when allowed, else WeChat's error.

        An openid never seen gets a window opened now (lenient, so a demo can push without writing first)
        unless `strict_window` is set, which is how WeChat really behaves.
        """
        with self._lock:
            follower = self.followers.get(openid)
            if follower is None:
                if self.strict_window:
                    return 45015, "response out of time limit or subscription is canceled"
                self.open_window(openid)
                follower = self.followers[openid]
            if not follower.followed:
                return 43004, "require subscribe hint: the user is not following the account"
            opened = follower.window_opened_at
            if opened is None or self.now() - opened > follower.window_lifetime:
                return 45015, "response out of time limit or subscription is canceled"
            if follower.sent_since_inbound >= follower.window_limit:
                return 45047, "out of response count limit"
            follower.sent_since_inbound += 1
            return None

    def subscribe(self, openid: str) -> None:
        """Record that the patient accepted long-term subscription messages."""
        with self._lock:
            self.subscriptions.add(openid)

    def unsubscribe(self, openid: str) -> None:
        with self._lock:
            self.subscriptions.discard(openid)

    def accepts_subscription_messages(self, openid: str) -> bool:
        with self._lock:
            return not self.strict_subscriptions or openid in self.subscriptions

    def next_msgid(self) -> int:
        with self._lock:
            return next(self._msgids)

    # Twilio phones, messages, calls ----------------------------------------------------------------------

    def twilio_token(self, account_sid: str) -> Optional[str]:
        return self.twilio_accounts.get(account_sid)

    def set_unreachable(self, phone: str, error_code: Optional[int] = 30003) -> None:
        """Messages to `phone` end `undelivered` with this code (30003 unreachable, 30005 unknown, 30007 filtered);
        calls to it are not answered. None makes it reachable again."""
        with self._lock:
            self.phones.setdefault(phone, PhoneLine(phone)).unreachable_code = error_code

    def set_unsubscribed(self, phone: str, unsubscribed: bool = True) -> None:
        """As if the patient texted STOP: Twilio refuses further messages to the number with 21610."""
        with self._lock:
            self.phones.setdefault(phone, PhoneLine(phone)).unsubscribed = unsubscribed

    def phone(self, phone: str) -> PhoneLine:
        with self._lock:
            return copy.copy(self.phones.get(phone, PhoneLine(phone)))

    def add_sms(self, message: SmsMessage) -> None:
        with self._lock:
            self.sms[message.sid] = message

    def sms_message(self, sid: str) -> Optional[SmsMessage]:
        with self._lock:
            message = self.sms.get(sid)
            return copy.copy(message) if message else None

    def set_sms_status(self, sid: str, status: str, error_code: Optional[int] = None) -> Optional[SmsMessage]:
        """Move a message along queued → sent → delivered/undelivered, mirrored on its record."""
        with self._lock:
            message = self.sms.get(sid)
            if message is None:
                return None
            now = self.now()
            message.status, message.error_code, message.updated_at = status, error_code, now
            if status == "sent":
                message.sent_at = now
            self._record(message.record_id).status = status
            self._record(message.record_id).error_code = error_code
            return copy.copy(message)

    def add_call(self, call: Call) -> None:
        with self._lock:
            self.calls[call.sid] = call

    def call(self, sid: str) -> Call:
        with self._lock:
            call = self.calls.get(sid)
            if call is None:
                raise SandboxError(f"No call {sid} in the sandbox (known: {', '.join(self.calls) or 'none'})")
            return copy.copy(call)

    def update_call(self, sid: str, **changes: Any) -> Call:
        """Change a call and mirror its status on the call's record."""
        with self._lock:
            call = self.calls.get(sid)
            if call is None:
                raise SandboxError(f"No call {sid} in the sandbox")
            for name, value in changes.items():
                setattr(call, name, value)
            if "status" in changes:
                self._record(call.record_id).status = call.status
            return copy.copy(call)

    def next_call_sequence(self, sid: str) -> int:
        with self._lock:
            call = self.calls[sid]
            sequence = call.sequence
            call.sequence += 1
            return sequence

    def list_calls(self) -> List[Dict[str, Any]]:
        with self._lock:
            return [
                {
                    "sid": call.sid,
                    "to": call.to,
                    "from": call.from_,
                    "status": call.status,
                    "awaiting": call.gather.input if call.gather else None,
                }
                for call in self.calls.values()
            ]
