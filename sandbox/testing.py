"""Run the sandbox inside a test: a background thread with its own event loop, on 127.0.0.1 and a free port.

Tests drive the real `wechatpy` and `twilio` clients (synchronous, `requests`-based) against it and then ask
what each patient received. The helpers here are synchronous on purpose: they read the shared state directly
and hand voice input to the sandbox's loop, so a plain pytest function needs no asyncio of its own.

    with run_sandbox() as sandbox:
        client = sandbox.wechat_client()
        client.message.send_text("o_patient", "您好")
        assert sandbox.messages(to="o_patient")[0]["body"] == "您好"
"""

from __future__ import annotations

import asyncio
import threading
import time
from contextlib import contextmanager
from typing import Any, Callable, Coroutine, Dict, Iterator, List, Optional, Tuple, Union

from aiohttp import web
from twilio.rest import Client as TwilioClient
from wechatpy import WeChatClient

from bot.outbound.settings import get_provider_settings
from sandbox import control, voice
from sandbox.app import DEFAULT_BOT_URL, create_app
from sandbox.runtime import STATE
from sandbox.state import WINDOW_LIFETIME, WINDOW_LIMIT, FaultCode, SandboxState

RecordPredicate = Callable[[Dict[str, Any]], bool]
STARTUP_TIMEOUT = 10.0


class SandboxWaitError(AssertionError):
    """What a test waited for did not arrive in time; the message lists what did arrive."""


def wechat_client(
    sandbox_url: str,
    *,
    appid: Optional[str] = None,
    secret: Optional[str] = None,
    auto_retry: bool = True,
    timeout: float = 10.0,
) -> WeChatClient:
    """A real `WeChatClient` talking to the sandbox.

    wechatpy reaches most APIs through `API_BASE_URL`, but `fetch_access_token` has WeChat's token URL written
    into it, so the instance gets one pointing at the sandbox too.
    """
    settings = get_provider_settings().wechat
    client = WeChatClient(appid or settings.appid, secret or settings.secret, timeout=timeout, auto_retry=auto_retry)
    base = sandbox_url.rstrip("/") + "/wechat/cgi-bin/"
    client.API_BASE_URL = base

    def fetch_access_token() -> Dict[str, Any]:
        params = {"grant_type": "client_credential", "appid": client.appid, "secret": client.secret}
        return client._fetch_access_token(url=base + "token", params=params)

    client.fetch_access_token = fetch_access_token
    return client


def twilio_client(
    sandbox_url: str, *, account_sid: Optional[str] = None, auth_token: Optional[str] = None
) -> TwilioClient:
    """A real twilio `Client` whose 2010-04-01 API (Messages, Calls) is the sandbox."""
    settings = get_provider_settings().twilio
    client = TwilioClient(account_sid or settings.account_sid, auth_token or settings.auth_token)
    client.api.base_url = sandbox_url.rstrip("/") + "/twilio"
    return client


class RunningSandbox:
    """A started sandbox: its URL, its state, and synchronous helpers for tests."""

    def __init__(self, url: str, app: web.Application, loop: asyncio.AbstractEventLoop) -> None:
        self.url = url
        self.app = app
        self.loop = loop
        self.state: SandboxState = app[STATE]

    # What patients received -------------------------------------------------------------------------------

    def messages(
        self,
        to: Optional[str] = None,
        provider: Optional[str] = None,
        *,
        kind: Optional[str] = None,
        status: Optional[str] = None,
    ) -> List[Dict[str, Any]]:
        """Records oldest first (the `/sandbox/api/messages` shape), filtered by whichever arguments are given."""
        return self.state.messages(to=to, provider=provider, kind=kind, status=status)

    def wait_for(
        self,
        predicate_or_count: Union[int, RecordPredicate] = 1,
        *,
        to: Optional[str] = None,
        provider: Optional[str] = None,
        kind: Optional[str] = None,
        status: Optional[str] = None,
        timeout: float = 10.0,
    ) -> List[Dict[str, Any]]:
        """Poll until `count` records match the filters (or one that also satisfies the predicate); returns the
        matching records. Delivery happens in the background, so assert on what this returns."""
        count = predicate_or_count if isinstance(predicate_or_count, int) else 1
        predicate = predicate_or_count if callable(predicate_or_count) else None
        deadline = time.monotonic() + timeout
        while True:
            matching = [
                r for r in self.messages(to, provider, kind=kind, status=status) if not predicate or predicate(r)
            ]
            if len(matching) >= count:
                return matching
            if time.monotonic() >= deadline:
                seen = [(r["provider"], r["kind"], r["to"], r["status"], r["body"][:40]) for r in self.messages()]
                wanted = f"{count} record(s) to={to} provider={provider} kind={kind} status={status}"
                raise SandboxWaitError(f"Waited {timeout} s for {wanted}; got {len(matching)}. All records: {seen}")
            time.sleep(0.02)

    def wait_until(self, condition: Callable[[], Any], *, timeout: float = 10.0, what: str = "condition") -> Any:
        """Poll any condition (a callback reaching the test's server, a call ending) until it is truthy."""
        deadline = time.monotonic() + timeout
        while True:
            result = condition()
            if result:
                return result
            if time.monotonic() >= deadline:
                raise SandboxWaitError(f"Waited {timeout} s for {what}")
            time.sleep(0.02)

    def stats(self) -> Dict[str, Any]:
        return self.state.stats()

    def call_status(self, call_sid: str) -> str:
        return self.state.call(call_sid).status

    # Steering the platforms ----------------------------------------------------------------------------------

    def reset(self) -> None:
        self.state.reset()

    def fail_next(self, provider: str, code: FaultCode, count: int = 1) -> None:
        """The next `count` API calls of "wechat" or "twilio" fail with `code` ("down": HTTP 503, no body)."""
        self.state.fail_next(provider, code, count)

    def open_window(self, openid: str, *, limit: int = WINDOW_LIMIT, lifetime: float = WINDOW_LIFETIME) -> None:
        """As if the patient just wrote: 5 customer-service messages within 48 h (after a menu click, follow or
        scan WeChat allows 3 within 60 s: `limit=3, lifetime=60`)."""
        self.state.open_window(openid, limit=limit, lifetime=lifetime)

    def close_window(self, openid: str) -> None:
        self.state.close_window(openid)

    def unfollow(self, openid: str) -> None:
        self.state.unfollow(openid)

    def subscribe(self, openid: str) -> None:
        """The patient accepts long-term subscription messages (matters with `strict_subscriptions`)."""
        self.state.subscribe(openid)

    def advance_clock(self, seconds: float) -> None:
        """Jump the sandbox's clock (48 h windows, 2 h tokens) without waiting."""
        self.state.advance_clock(seconds)

    def set_unreachable(self, phone: str, error_code: Optional[int] = 30003) -> None:
        self.state.set_unreachable(phone, error_code)

    def set_unsubscribed(self, phone: str, unsubscribed: bool = True) -> None:
        self.state.set_unsubscribed(phone, unsubscribed)

    # The patient's side ------------------------------------------------------------------------------------

    def press(self, call_sid: str, digits: str, *, timeout: float = 10.0) -> List[Dict[str, Any]]:
        """Press keys at the call's current `<Gather>` (waiting for the call to get there); returns the records
        the bot's answer produced (what the patient heard next)."""
        return self._run(voice.press(self.app, call_sid, digits, timeout=timeout), timeout)

    def say(
        self, call_sid: str, speech: str, *, timeout: float = 10.0, confidence: float = 0.9
    ) -> List[Dict[str, Any]]:
        return self._run(voice.say(self.app, call_sid, speech, confidence=confidence, timeout=timeout), timeout)

    def stay_silent(self, call_sid: str, *, timeout: float = 10.0) -> List[Dict[str, Any]]:
        """Let the `<Gather>` time out: Twilio goes on with the verbs after it."""
        return self._run(voice.stay_silent(self.app, call_sid, timeout=timeout), timeout)

    def write_as_patient(self, channel: str, patient: str, text: str, *, timeout: float = 20.0) -> Dict[str, Any]:
        """What the page's form does: deliver `text` to the bot's webhook as WeChat or Twilio would."""
        return self._run(control.write_as_patient(self.app, channel, patient, text), timeout)

    # Clients -----------------------------------------------------------------------------------------------

    def wechat_client(self, **kwargs: Any) -> WeChatClient:
        return wechat_client(self.url, **kwargs)

    def twilio_client(self, **kwargs: Any) -> TwilioClient:
        return twilio_client(self.url, **kwargs)

    def _run(self, coroutine: Coroutine[Any, Any, Any], timeout: float) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout + 5)


class _ServerThread(threading.Thread):
    """Owns the sandbox's event loop; the test thread only talks to it through thread-safe calls."""

    def __init__(self, app: web.Application, host: str, port: int) -> None:
        super().__init__(name="sandbox-server", daemon=True)
        self.app, self.host, self.port = app, host, port
        self.loop = asyncio.new_event_loop()
        self.runner = web.AppRunner(app, access_log=None)
        self.started = threading.Event()
        self.error: Optional[BaseException] = None

    def run(self) -> None:
        asyncio.set_event_loop(self.loop)
        try:
            self.loop.run_until_complete(self._start())
        except BaseException as error:  # handed to the test thread, which raises it
            self.error = error
            self.started.set()
            self.loop.close()
            return
        self.started.set()
        try:
            self.loop.run_forever()
        finally:
            self.loop.run_until_complete(self.runner.cleanup())
            self.loop.close()

    async def _start(self) -> None:
        await self.runner.setup()
        site = web.TCPSite(self.runner, self.host, self.port)
        await site.start()
        self.port = self.runner.addresses[0][1]

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.join(timeout=10)


@contextmanager
def serve_app(
    app: web.Application, *, host: str = "127.0.0.1", port: int = 0
) -> Iterator[Tuple[str, asyncio.AbstractEventLoop]]:
    """Serve any aiohttp app from a background thread: the sandbox, or a test's stand-in for the bot's webhooks
    (status callbacks, TwiML). Yields its base URL and its loop; stops it on exit."""
    server = _ServerThread(app, host, port)
    server.start()
    if not server.started.wait(STARTUP_TIMEOUT):
        raise RuntimeError(f"The server did not start within {STARTUP_TIMEOUT} s on {host}:{port}")
    if server.error is not None:
        raise RuntimeError(f"The server could not start on {host}:{port}: {server.error}") from server.error
    try:
        yield f"http://{host}:{server.port}", server.loop
    finally:
        server.stop()


@contextmanager
def run_sandbox(
    state: Optional[SandboxState] = None,
    *,
    bot_url: str = DEFAULT_BOT_URL,
    host: str = "127.0.0.1",
    port: int = 0,
) -> Iterator[RunningSandbox]:
    """Start the sandbox (an ephemeral port by default), yield it, and stop it and its background tasks."""
    app = create_app(state, bot_url=bot_url)
    with serve_app(app, host=host, port=port) as (url, loop):
        yield RunningSandbox(url, app, loop)
