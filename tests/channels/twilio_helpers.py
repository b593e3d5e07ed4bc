"""What the Twilio SMS and voice channel tests share: a stand-in for Rasa, the channel's blueprint served
by a real Sanic app, and the sandbox playing Twilio, all wired to a migrated SQLite CRM.

The Sanic app runs on its own event loop in a background thread (the bot answers Twilio first and works
afterwards, so its loop must keep running between requests), the sandbox on another; the tests themselves
are plain synchronous functions that send signed webhooks with `requests` and read what patients received.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional
from urllib.parse import urljoin, urlsplit

import pytest
import requests
import yaml
from rasa.core.channels.channel import InputChannel, UserMessage
from sanic import Sanic
from sqlalchemy import select

from bot.crm.models import Consent, Delivery
from bot.kv import MemoryStore
from bot.outbound import Providers
from bot.outbound.settings import SANDBOX_SMS_FROM, SANDBOX_TWILIO_AUTH_TOKEN, get_provider_settings
from sandbox.patient import twilio_signature
from sandbox.testing import RunningSandbox, run_sandbox
from tests.conftest import PROJECT_ROOT, migrate_and_seed

# Sanic rewrites its own methods ("touch-up") when an app starts; in test mode it keeps the originals, so the
# next app in this process can start too. Set at import, before any test module's app starts.
Sanic.test_mode = True

HOSPITAL_NUMBER = SANDBOX_SMS_FROM
FORM_HEADERS = {"Content-Type": "application/x-www-form-urlencoded; charset=utf-8"}
LONG_ADVICE = "".join(
    f"第{n}条：检查前一天晚上十点以后请不要进食，可以少量喝水，早上八点前到门诊二楼抽血处排队。" for n in range(1, 16)
)
EMERGENCY_ADVICE = "⚠️ 请立即拨打120 <急救> & 前往急诊😀\n本院急诊24小时开放"


def domain_responses() -> Dict[str, List[Dict[str, Any]]]:
    domain = yaml.safe_load((PROJECT_ROOT / "domain.yml").read_text(encoding="utf-8"))
    return domain["responses"]


def domain_text(response: str) -> str:
    """The first text of a domain response: what the patient reads when the bot utters it."""
    return domain_responses()[response][0]["text"]


class FakeRasa:
    """Answers the way the trained assistant would (the domain's own responses, sent through the output
    channel Rasa is handed), without loading a model. Records every UserMessage it gets."""

    def __init__(self) -> None:
        responses = domain_responses()
        self.received: List[UserMessage] = []
        self._lock = threading.Lock()
        self.answers: Dict[str, List[Dict[str, Any]]] = {
            "/greet": responses["utter_greet"][:1],
            "你好": responses["utter_greet"][:1],
            "/opt_out": responses["utter_opted_out"][:1],
            "/goodbye": responses["utter_goodbye"][:1],
            "/opt_in": responses["utter_opted_in"][:1],
            "/share_media": responses["utter_media_received"][:1],
            "/book_appointment": [{"text": "好的，请问您想挂哪个科室？"}],
            "我想挂号": [{"text": "好的，请问您想挂哪个科室？"}],
            "/medication_taken": [{"text": "好的，已记录您今天按时服药，祝您身体健康。"}],
            "/remind_later": [{"text": "好的，一小时后再提醒您。"}],
            "/ask_hospital_info": [
                {"text": "本院地址：上海市徐汇区医院路1号。"},
                {
                    "text": "您想了解哪方面？",
                    "buttons": [
                        {"title": "门诊时间", "payload": '/ask_hospital_info{"topic":"hours"}'},
                        {"title": "停车", "payload": '/ask_hospital_info{"topic":"parking"}'},
                    ],
                },
            ],
            "检查注意事项": [{"text": LONG_ADVICE}],
            "急救": [{"text": EMERGENCY_ADVICE}],
            "/quiet": [],  # a turn that ends without a bot message (e.g. paused for a nurse)
        }

    async def __call__(self, message: UserMessage) -> None:
        with self._lock:
            self.received.append(message)
        if message.text == "/boom":
            raise RuntimeError("the assistant failed")
        if message.text == "/slow":
            await asyncio.sleep(0.5)
        intent = message.text.split("{")[0] if message.text.startswith("/") else message.text
        answer = self.answers.get(message.text, self.answers.get(intent, [{"text": f"收到：{message.text}"}]))
        for response in answer:
            # Rasa's processor hands each bot event's message to send_response, which dispatches by content.
            await message.output_channel.send_response(message.sender_id, dict(response))

    def turns_of(self, sender_id: str) -> List[UserMessage]:
        with self._lock:
            return [message for message in self.received if message.sender_id == sender_id]

    def wait_for_turns(self, sender_id: str, count: int = 1, timeout: float = 10.0) -> List[UserMessage]:
        deadline = time.monotonic() + timeout
        while True:
            turns = self.turns_of(sender_id)
            if len(turns) >= count:
                return turns
            if time.monotonic() >= deadline:
                raise AssertionError(f"waited {timeout} s for {count} turn(s) of {sender_id}; got {len(turns)}")
            time.sleep(0.02)


class BotServer:
    """A channel's blueprint on a real Sanic app, served from a background thread on a given socket."""

    def __init__(self, channel: InputChannel, on_new_message: Callable[[UserMessage], Any], sock: socket.socket):
        self.channel = channel
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="bot-server", daemon=True)
        self._sock = sock
        host, port = sock.getsockname()[:2]
        self.public_url = f"http://{host}:{port}"
        self.prefix = urljoin("/webhooks/", channel.url_prefix())
        self.app = Sanic(f"twilio_test_{uuid.uuid4().hex}")
        # Same prefix as rasa.core.channels.channel.register(..., route="/webhooks/").
        self.app.blueprint(channel.blueprint(on_new_message), url_prefix=self.prefix)
        self.server: Any = None

    def __enter__(self) -> BotServer:
        self._thread.start()
        self.server = self.run(self._start(), timeout=10)
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.run(self._stop(), timeout=10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=10)
        self.loop.close()

    async def _start(self) -> Any:
        server = await self.app.create_server(sock=self._sock, return_asyncio_server=True, access_log=False)
        await server.startup()  # Sanic 21.12 already bound the socket; this finalizes the routes
        return server

    async def _stop(self) -> None:
        turns = getattr(self.channel, "turns", None)
        if turns is not None:
            await turns.drain()
        self.server.close()
        await self.server.wait_closed()
        # Keep-alive connections (the sandbox's callbacks) would outlive the loop: close them, then end
        # whatever is still pending so nothing runs on a closed loop.
        for connection in list(self.server.connections):
            connection.close_if_idle()
        await asyncio.sleep(0.05)
        pending = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)

    def run(self, coroutine: Any, timeout: float = 10.0) -> Any:
        """Run a coroutine on the server's loop (e.g. draining the channel's background turns)."""
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)

    def url(self, route: str) -> str:
        """The public URL of a route, e.g. url("/webhook?x=1") -> http://127.0.0.1:PORT/webhooks/twilio_sms/webhook?x=1."""
        return f"{self.public_url}{self.prefix}{route}"

    def post_signed(
        self,
        route: str,
        form: Dict[str, str],
        *,
        auth_token: str = SANDBOX_TWILIO_AUTH_TOKEN,
        signed_url: Optional[str] = None,
        signed_form: Optional[Dict[str, str]] = None,
        signature: Optional[str] = None,
    ) -> requests.Response:
        """POST a form as Twilio does, signed over the public URL and the form (or what the test says)."""
        url = self.url(route)
        headers = dict(FORM_HEADERS)
        if signature is None:
            signature = twilio_signature(signed_url or url, form if signed_form is None else signed_form, auth_token)
        if signature:
            headers["X-Twilio-Signature"] = signature
        return requests.post(url, data=form, headers=headers, timeout=10)

    def post_raw(self, route: str, body: bytes, headers: Dict[str, str]) -> requests.Response:
        return requests.post(self.url(route), data=body, headers=headers, timeout=10)


@dataclass
class TwilioWorld:
    sandbox: RunningSandbox
    bot: BotServer
    rasa: FakeRasa
    providers: Providers
    database_url: str

    def deliveries(self, address: str, channel: Optional[str] = None) -> List[Delivery]:
        from bot.db import session_scope

        with session_scope() as session:
            query = select(Delivery).where(Delivery.address == address).order_by(Delivery.id)
            if channel:
                query = query.where(Delivery.channel == channel)
            return list(session.execute(query).scalars())

    def consent(self, channel: str, address: str) -> Optional[bool]:
        from bot.db import session_scope

        with session_scope() as session:
            return session.execute(
                select(Consent.opted_in).where(Consent.channel == channel, Consent.external_id == address)
            ).scalar_one_or_none()

    def wait_until(self, condition: Callable[[], Any], what: str, timeout: float = 10.0) -> Any:
        return self.sandbox.wait_until(condition, timeout=timeout, what=what)


def _clear_cached_settings() -> None:
    from tests.conftest import forget_process_settings

    forget_process_settings()


@contextmanager
def twilio_world(
    tmp_dir: Path, make_channel: Callable[[Providers, MemoryStore], InputChannel]
) -> Iterator[TwilioWorld]:
    """The sandbox as Twilio, a fresh CRM, and the channel served at a public URL the providers call back."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    host, port = sock.getsockname()[:2]
    database_url = f"sqlite:///{tmp_dir / 'crm.sqlite'}"
    with pytest.MonkeyPatch.context() as env, run_sandbox() as sandbox:
        env.setenv("DATABASE_URL", database_url)
        env.setenv("SANDBOX_URL", sandbox.url)
        env.setenv("TWILIO_API_BASE", f"{sandbox.url}/twilio")
        env.setenv("PUBLIC_BASE_URL", f"http://{host}:{port}")
        env.delenv("REDIS_URL", raising=False)
        _clear_cached_settings()
        try:
            migrate_and_seed(database_url, days=1)
            providers = Providers(get_provider_settings(), store=MemoryStore())
            channel = make_channel(providers, MemoryStore())
            rasa = FakeRasa()
            with BotServer(channel, rasa, sock) as bot:
                assert urlsplit(bot.public_url).port == port
                yield TwilioWorld(sandbox, bot, rasa, providers, database_url)
        finally:
            from bot.db import get_engine

            get_engine().dispose()
            _clear_cached_settings()


def new_phone() -> str:
    """A Hong Kong mobile number no other test uses (choices and consent are kept per number)."""
    return f"+8529{uuid.uuid4().int % 10**7:07d}"
