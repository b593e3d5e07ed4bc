"""A nurse takes over a patient's SMS conversation in a real headless Chromium (Debian's chromium package),
against the running Rasa server, action server, CRM and provider sandbox.

CONSOLE_SCREENSHOTS=<dir> saves the queue, conversation and dashboard pages there (the README's pictures).
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

import pytest
from sqlalchemy import select

from bot.crm.models import Escalation, EscalationStatus, StaffUser
from bot.db import session_scope
from console.app import make_app
from console.conversations import History, Rasa
from tests.console.conftest import PASSWORD, add_staff, serve
from tests.e2e.conftest import RasaServer
from tests.e2e.patients import SmsPatient

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not Path(CHROMIUM).exists():
        message = "no Chromium: `apt-get install chromium` (Debian) for the console's browser tests"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield launched
        launched.close()


@pytest.fixture
def console_url(
    rasa_server: RasaServer, dialogue_db: str, sandbox: Any, process_settings: Callable[..., None]
) -> Iterator[str]:
    process_settings(DATABASE_URL=dialogue_db, TRACKER_DATABASE_URL=rasa_server.tracker_db, SANDBOX_URL=sandbox.url,
                     PUBLIC_BASE_URL=rasa_server.url)  # fmt: skip
    with session_scope(dialogue_db) as session:
        staffed = session.execute(select(StaffUser.id).where(StaffUser.username == "nurse")).first()
    if not staffed:
        add_staff(dialogue_db)
    app = make_app(history=History(rasa_server.tracker_db), rasa=Rasa(rasa_server.url, token=""), secret="e2e",
                   poll_interval=0.3)  # fmt: skip
    with serve(app) as url:
        yield url


def _login(browser: Any, url: str, username: str) -> Any:
    page = browser.new_context(viewport={"width": 1360, "height": 860}, locale="zh-CN").new_page()
    page.goto(f"{url}/")
    assert "/login" in page.url  # no login, no console
    page.fill("#username", username)
    page.fill("#password", PASSWORD)
    page.click("#login")
    page.wait_for_selector("#queue")
    return page


def _shot(page: Any, name: str) -> None:
    target = os.environ.get("CONSOLE_SCREENSHOTS")
    if target:
        Path(target).mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(Path(target) / f"{name}.png"), full_page=True)


def _escalation(db: str, sender_id: str) -> Optional[Escalation]:
    with session_scope(db) as session:
        row = session.execute(
            select(Escalation).where(Escalation.sender_id == sender_id).order_by(Escalation.id.desc())
        ).scalar_one_or_none()
        if row is not None:
            session.expunge(row)
        return row


def test_a_nurse_takes_over_an_sms_chat_and_hands_it_back(
    browser: Any, console_url: str, rasa_server: RasaServer, sandbox: Any, dialogue_db: str
) -> None:
    nurse = _login(browser, console_url, "nurse")
    patient = SmsPatient(rasa_server.url, sandbox, "+8613700001234")
    answer = patient.say("我要找人工客服")
    assert "转接人工" in answer and "分钟" in answer  # what happens next, and how long
    escalation = _escalation(dialogue_db, patient.phone)
    assert escalation is not None and escalation.status == EscalationStatus.OPEN and escalation.pauses_bot
    # the new escalation arrives in the open queue page without a reload
    row = nurse.wait_for_selector(f'#queue tr[data-id="{escalation.id}"]', timeout=10000)
    assert "要求人工" in row.inner_text()
    # the bot is paused: the patient's next message gets no answer, but it is kept
    patient.post("我血压有点高，降压药要不要加量")
    time.sleep(3)
    assert patient.texts()[patient.seen :] == []
    assert rasa_server.user_texts(patient.phone)[-1] == "我血压有点高，降压药要不要加量"
    _shot(nurse, "queue")

    nurse.click(f'#queue tr[data-id="{escalation.id}"] button.claim')
    nurse.wait_for_selector("#reply-text")
    assert "我血压有点高，降压药要不要加量" in nurse.inner_text("#turns")  # the whole history
    nurse.fill("#reply-text", "您好，我是王护士。请先不要自行加量，把这几天的血压读数发给我看看。")
    nurse.click("#send")
    assert "王护士" in patient.wait()  # through the sandbox, on the patient's own channel
    nurse.wait_for_selector("#notice:not([hidden])")
    assert nurse.inner_text("#notice") == "已发送（sms）"
    # what the patient writes now appears live in the nurse's view
    patient.post("好的，今天早上是150/95")
    nurse.wait_for_selector("#turns li.patient >> text=今天早上是150/95", timeout=10000)
    lines = nurse.eval_on_selector_all("#turns li", "items => items.map(i => [i.className, i.innerText])")
    authors = [(cls.split()[-1], text) for cls, text in lines]
    replied = next(i for i, (who, text) in enumerate(authors) if who == "nurse" and "王护士" in text)
    answered = next(i for i, (who, text) in enumerate(authors) if who == "patient" and "150/95" in text)
    assert replied < answered, authors
    _shot(nurse, "conversation")

    nurse.fill("#resolution", "已指导用药，预约复诊")
    nurse.click("#resolve-button")
    nurse.wait_for_selector("#queue")
    assert "护士已结束本次对话" in patient.wait()  # the bot says it is back
    assert _escalation(dialogue_db, patient.phone).status == EscalationStatus.RESOLVED
    assert patient.say("你好")  # and answers the next message again
    events = [e for e in rasa_server.tracker(patient.phone)["events"] if e.get("event") == "bot"]
    assert any((e.get("metadata") or {}).get("nurse") == "王护士" for e in events)  # the nurse's turn, as hers

    nurse.goto(f"{console_url}/dashboard")
    nurse.wait_for_load_state("networkidle")
    widths = nurse.eval_on_selector_all(".charts img", "images => images.map(i => i.naturalWidth)")
    assert len(widths) == 6 and all(width > 0 for width in widths)
    _shot(nurse, "dashboard")


def test_two_nurses_racing_for_one_chat_one_wins(
    browser: Any, console_url: str, rasa_server: RasaServer, sandbox: Any, dialogue_db: str
) -> None:
    first, second = _login(browser, console_url, "nurse"), _login(browser, console_url, "nurse2")
    patient = SmsPatient(rasa_server.url, sandbox, "+8613700005678")
    patient.say("转人工")
    escalation = _escalation(dialogue_db, patient.phone)
    selector = f'#queue tr[data-id="{escalation.id}"] button.claim'
    first.wait_for_selector(selector)
    second.wait_for_selector(selector)
    first.click(selector)
    second.click(selector)  # before its queue learned that the chat is taken
    first.wait_for_selector("#reply-text")
    second.wait_for_selector("#notice:not([hidden])")
    assert "已被 王护士 接手" in second.inner_text("#notice")
    assert _escalation(dialogue_db, patient.phone).claimed_by_id is not None
