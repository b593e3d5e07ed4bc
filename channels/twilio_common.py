"""What the Twilio SMS and voice webhooks share: checking that Twilio sent the request, required fields,
TwiML responses, blocking work off the event loop, and turns that run after the webhook was answered."""

from __future__ import annotations

import asyncio
import functools
import logging
from dataclasses import dataclass, replace
from typing import Any, Awaitable, Callable, Coroutine, Dict, Optional, Set, Tuple, TypeVar

from rasa.core.channels.channel import InputChannel, UserMessage
from sanic import response
from sanic.request import Request
from sanic.response import HTTPResponse

from bot.outbound.settings import TwilioSettings, get_provider_settings
from channels.common import parse_form

logger = logging.getLogger(__name__)

MAX_BODY_BYTES = 64 * 1024  # Twilio's own bodies are a few KiB; anything bigger is not Twilio
FORM_CONTENT_TYPE = "application/x-www-form-urlencoded"

T = TypeVar("T")
OnNewMessage = Callable[[UserMessage], Awaitable[Any]]


# ----------------------------------------------------------------------------------------------
class WebhookRejected(Exception):
    """A webhook request we refuse; `reason` goes back to the caller as a plain-text body."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason

    def as_response(self) -> HTTPResponse:
        return response.text(self.reason, status=self.status)


@dataclass(frozen=True)
class TwilioWebhookAuth:
    """What a webhook needs to tell Twilio from a forger: the auth token and the public URL Twilio calls."""

    account_sid: str
    auth_token: str
    public_url: str  # scheme://host[:port] as Twilio sees it, without a trailing slash

    def url_called(self, request: Request) -> str:
        """The URL Twilio signed: behind a proxy `request.url` names the wrong host, so it is rebuilt."""
        query = request.query_string
        return self.public_url + request.path + (f"?{query}" if query else "")

    def signed_form(self, request: Request) -> Dict[str, str]:
        """The request's form once its size, encoding and signature were checked; raises WebhookRejected."""
        from twilio.request_validator import RequestValidator

        body = request.body or b""
        if len(body) > MAX_BODY_BYTES:
            raise WebhookRejected(400, f"request body is larger than {MAX_BODY_BYTES} bytes")
        content_type = (request.headers.get("content-type") or "").split(";")[0].strip().lower()
        if content_type != FORM_CONTENT_TYPE:
            raise WebhookRejected(400, f"request body must be {FORM_CONTENT_TYPE}, as Twilio sends it")
        try:
            form = parse_form(body)
        except ValueError:
            raise WebhookRejected(400, "request body is not UTF-8 form data") from None
        signature = request.headers.get("x-twilio-signature")
        if not signature:
            raise WebhookRejected(403, "missing X-Twilio-Signature: only Twilio may call this webhook")
        if not RequestValidator(self.auth_token).validate(self.url_called(request), form, signature):
            raise WebhookRejected(
                403, "X-Twilio-Signature does not match: check the auth token and the public URL configured"
            )
        account = form.get("AccountSid")
        if account and self.account_sid and account != self.account_sid:
            raise WebhookRejected(403, "the request is for another Twilio account")
        return form


class TwilioWebhookChannel(InputChannel):
    """What every Twilio input channel has: its credentials.yml keys, and the check of Twilio's signature built
    from them (read on first use: settings come from the environment of the running server)."""

    def __init__(self, account_sid: Optional[str], auth_token: Optional[str], public_url: Optional[str]) -> None:
        self.credentials = {"account_sid": account_sid, "auth_token": auth_token, "public_url": public_url}
        self._auth: Optional[TwilioWebhookAuth] = None

    @property
    def auth(self) -> TwilioWebhookAuth:
        if self._auth is None:
            settings = twilio_settings(self.credentials)
            self._auth = TwilioWebhookAuth(settings.account_sid, settings.auth_token, settings.public_url)
        return self._auth


def required(form: Dict[str, str], *names: str) -> Tuple[str, ...]:
    """The named fields, stripped; WebhookRejected(400) naming the first one missing."""
    values = tuple((form.get(name) or "").strip() for name in names)
    for name, value in zip(names, values):
        if not value:
            raise WebhookRejected(400, f"'{name}' is required")
    return values


def twilio_settings(credentials: Dict[str, Any]) -> TwilioSettings:
    """The configured Twilio settings with the channel's credentials.yml keys on top."""
    base = get_provider_settings().twilio
    overrides = {key: str(value).strip() for key, value in credentials.items() if value}
    if "public_url" in overrides:
        overrides["public_url"] = overrides["public_url"].rstrip("/")
    return replace(base, **overrides)


def twiml(xml: str, status: int = 200) -> HTTPResponse:
    return response.text(xml, status=status, content_type="text/xml; charset=utf-8")


async def in_thread(func: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Run blocking work (SQL, Redis, the Twilio SDK) on the default executor, never on the event loop."""
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(None, functools.partial(func, *args, **kwargs))


class BackgroundTasks:
    """Turns started after the webhook was answered: references kept until done, failures logged."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._tasks: Set[asyncio.Task] = set()

    def start(self, work: Coroutine[Any, Any, Any]) -> asyncio.Task:
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._finished)
        return task

    def _finished(self, task: asyncio.Task) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            logger.error("%s: a background turn failed", self.name, exc_info=task.exception())

    async def drain(self) -> None:
        """Wait for every running turn (tests, shutdown)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)
