"""The nurse console served on loopback from a background thread, logged in as real staff over HTTP.

`console` gives a running console on a fresh CRM (SQLite, or PostgreSQL where the test asks for it) and a
tracker-store `events` table; Rasa's API is the recording double below unless a test passes the real server.
"""

from __future__ import annotations

import asyncio
import json
import re
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

import pytest
import requests
from aiohttp import web
from sqlalchemy import create_engine, insert

from bot.crm.models import Escalation, EscalationStatus, Patient, StaffRole
from bot.db import session_scope
from console import auth
from console.app import make_app
from console.conversations import EVENTS, History, Rasa
from tests.conftest import _free_port, migrate_and_seed

PASSWORD = "correct horse battery"


class RecordingRasa(Rasa):
    """Rasa's conversation API as the console calls it, recorded; appended events land in the tracker table
    the way Rasa stores them, so the console reads back what it wrote."""

    def __init__(self, tracker_url: str) -> None:
        super().__init__(url="http://rasa.invalid", token="")
        self.calls: List[Tuple[str, Any, Dict[str, str]]] = []
        self.engine = create_engine(tracker_url)
        self.down = False

    async def _post(self, path: str, body: Any, **params: str) -> None:
        from console.conversations import RasaUnavailable

        if self.down:
            raise RasaUnavailable("Rasa server unreachable (test)")
        self.calls.append((path, body, params))
        if path.endswith("/tracker/events"):
            sender = path.split("/")[2]  # as Sanic hands it to Rasa: not percent-decoded
            for event in body:
                add_event(self.engine, sender, event["event"], event)


def add_event(engine: Any, sender_id: str, kind: str, data: Dict[str, Any], intent: Optional[str] = None) -> None:
    with engine.begin() as connection:
        connection.execute(
            insert(EVENTS).values(
                sender_id=sender_id,
                type_name=kind,
                timestamp=data.get("timestamp") or time.time(),
                intent_name=intent,
                action_name=data.get("name") if kind == "action" else None,
                data=json.dumps({"event": kind, **data}, ensure_ascii=False),
            )
        )


@dataclass
class ConsoleWorld:
    url: str
    crm_url: str
    tracker_url: str
    rasa: Any
    tracker: Any
    sessions: Dict[str, requests.Session] = field(default_factory=dict)

    def login(self, username: str, password: str = PASSWORD) -> requests.Session:
        browser = requests.Session()
        page = browser.get(f"{self.url}/login", timeout=10)
        token = re.search(r'name="csrf_token" value="([^"]+)"', page.text).group(1)  # type: ignore[union-attr]
        response = browser.post(f"{self.url}/login", data={"username": username, "password": password,
                                "csrf_token": token, "next": "/"}, allow_redirects=False, timeout=10)  # fmt: skip
        assert response.status_code == 302, response.text
        browser.headers["X-CSRF-Token"] = csrf_of(browser.get(f"{self.url}/", timeout=10).text)
        return browser

    def patient_says(self, sender_id: str, text: str, intent: str = "request_human", channel: str = "sms") -> None:
        add_event(self.tracker, sender_id, "user", {"text": text, "input_channel": channel,
                  "parse_data": {"intent": {"name": intent}}}, intent=intent)  # fmt: skip

    def escalate(
        self,
        sender_id: str = "+8613800000001",
        reason: str = "request_human",
        priority: int = 2,
        patient_id: Optional[int] = None,
        channel: str = "sms",
        department: Optional[str] = None,
    ) -> int:
        with session_scope(self.crm_url) as session:
            escalation = Escalation(sender_id=sender_id, channel=channel, reason=reason, priority=priority,
                                    summary="患者说：我要找人工", patient_id=patient_id, department_code=department,
                                    status=EscalationStatus.OPEN, pauses_bot=True)  # fmt: skip
            session.add(escalation)
            session.flush()
            return escalation.id


def csrf_of(html: str) -> str:
    return re.search(r'<meta name="csrf-token" content="([^"]*)"', html).group(1)  # type: ignore[union-attr]


@contextmanager
def serve(app: web.Application) -> Iterator[str]:
    """Run `app` on a free loopback port in a thread with its own event loop."""
    port = _free_port()
    loop = asyncio.new_event_loop()
    runner = web.AppRunner(app)
    started = threading.Event()

    def run() -> None:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(runner.setup())
        loop.run_until_complete(web.TCPSite(runner, "127.0.0.1", port).start())
        started.set()
        loop.run_forever()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    assert started.wait(20), "the console did not start"
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(20)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)


def add_staff(crm_url: str) -> None:
    with session_scope(crm_url) as session:
        auth.create_user(session, "nurse", PASSWORD, display_name="王护士", on_call=True, phone="+8613900000009")
        auth.create_user(session, "nurse2", PASSWORD, display_name="李护士")
        auth.create_user(session, "admin", PASSWORD, role=StaffRole.ADMIN, display_name="管理员")


def a_patient(crm_url: str, name: str = "陈测试", phone: str = "+8613800000001") -> int:
    with session_scope(crm_url) as session:
        patient = Patient(card_no=f"C{abs(hash(phone)) % 10**8:08d}", name=name, phone=phone)
        session.add(patient)
        session.flush()
        return patient.id


@pytest.fixture
def console_factory(
    tmp_path: Any, process_settings: Callable[..., None], sandbox: Any, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Callable[..., ConsoleWorld]]:
    """`console_factory(crm_url=None)`: a running console on that CRM (a fresh SQLite one by default), sending
    through the provider sandbox."""
    for name in ("WECHAT_API_BASE", "TWILIO_API_BASE", "REDIS_URL"):
        monkeypatch.delenv(name, raising=False)
    stack: List[Any] = []

    def start(crm_url: Optional[str] = None, rasa: Any = None) -> ConsoleWorld:
        crm_url = crm_url or migrate_and_seed(f"sqlite:///{tmp_path / 'crm.sqlite'}", days=2)
        tracker_url = f"sqlite:///{tmp_path / 'tracker.sqlite'}"
        tracker = create_engine(tracker_url)
        EVENTS.metadata.create_all(tracker)
        process_settings(DATABASE_URL=crm_url, TRACKER_DATABASE_URL=tracker_url, SANDBOX_URL=sandbox.url)
        add_staff(crm_url)
        rasa = rasa or RecordingRasa(tracker_url)
        app = make_app(history=History(tracker_url), rasa=rasa, secret="test-secret", poll_interval=0.2)
        context = serve(app)
        url = context.__enter__()
        stack.append(context)
        return ConsoleWorld(url, crm_url, tracker_url, rasa, tracker)

    yield start
    for context in reversed(stack):
        context.__exit__(None, None, None)


@pytest.fixture
def console(console_factory: Callable[..., ConsoleWorld]) -> ConsoleWorld:
    return console_factory()
