"""The nurse console over HTTP: login and sessions, CSRF, roles, claiming, replies, hand-back, audit."""

from __future__ import annotations

import concurrent.futures
import re
import time
from typing import Any, Callable

import pytest
import requests
from sqlalchemy import select

from bot.crm.models import AuditEntry, Escalation, EscalationStatus
from bot.db import session_scope
from console.app import COOKIE, make_app
from tests.console.conftest import ConsoleWorld, a_patient, add_event

CONCRETE = {"escalation_id": "1", "patient_id": "1", "kind": "blood_pressure", "name": "followups"}
PUBLIC = ("/login", "/health", "/ready", "/static", "/favicon.ico", "/metrics")


def _routes() -> list:
    """Every (method, path) the console serves, with its placeholders filled in."""
    app = make_app(secret="x")
    found = []
    for route in app.router.routes():
        info = route.resource.get_info() if route.resource else {}
        pattern = info.get("formatter") or info.get("path") or info.get("prefix")
        if not pattern or route.method == "HEAD" or pattern.startswith(PUBLIC):
            continue
        path = re.sub(r"\{(\w+)[^}]*\}", lambda m: CONCRETE[m.group(1)], pattern)
        found.append((route.method, path))
    return found


def test_every_route_refuses_a_visitor_without_a_login(console: ConsoleWorld) -> None:
    routes = _routes()
    assert len(routes) >= 15
    for method, path in routes:
        response = requests.request(method, console.url + path, allow_redirects=False, timeout=10)
        assert response.status_code in (302, 401), (method, path, response.status_code)
        if response.status_code == 302:
            assert response.headers["Location"].startswith("/login")
        assert "陈" not in response.text and "+86" not in response.text


def test_login_sets_a_signed_httponly_samesite_cookie_and_logout_ends_the_session(console: ConsoleWorld) -> None:
    nurse = console.login("nurse")
    cookie = next(c for c in nurse.cookies if c.name == COOKIE)
    assert cookie.has_nonstandard_attr("HttpOnly")
    assert nurse.get(console.url + "/", timeout=10).status_code == 200
    raw = requests.get(console.url + "/login", timeout=10)
    assert "SameSite=Strict" in raw.headers["Set-Cookie"] and "HttpOnly" in raw.headers["Set-Cookie"]
    stolen = cookie.value
    # a tampered signature is no session
    forged = requests.get(console.url + "/", cookies={COOKIE: stolen[:-2] + "xx"}, allow_redirects=False, timeout=10)
    assert forged.status_code == 302
    assert nurse.post(console.url + "/logout", allow_redirects=False, timeout=10).status_code == 302
    # the old cookie no longer works: sessions live on the server
    after = requests.get(console.url + "/", cookies={COOKIE: stolen}, allow_redirects=False, timeout=10)
    assert after.status_code == 302


def test_wrong_password_is_refused_and_audited(console: ConsoleWorld) -> None:
    page = requests.Session()
    token = re.search(r'name="csrf_token" value="([^"]+)"', page.get(console.url + "/login").text).group(1)
    response = page.post(console.url + "/login", data={"username": "nurse", "password": "wrong password!",
                         "csrf_token": token}, allow_redirects=False, timeout=10)  # fmt: skip
    assert response.status_code == 401 and "用户名或密码错误" in response.text
    # a login form posted from elsewhere (no login CSRF cookie) is refused
    bare = requests.post(console.url + "/login", data={"username": "nurse", "password": "x", "csrf_token": token},
                         allow_redirects=False, timeout=10)  # fmt: skip
    assert bare.status_code == 403
    with session_scope(console.crm_url) as session:
        actions = session.execute(select(AuditEntry.action).where(AuditEntry.actor == "nurse")).scalars().all()
    assert "login_failed" in actions


def test_a_forged_or_missing_csrf_token_is_refused(console: ConsoleWorld) -> None:
    escalation_id = console.escalate()
    nurse = console.login("nurse")
    url = f"{console.url}/escalations/{escalation_id}/claim"
    assert nurse.post(url, headers={"X-CSRF-Token": "forged"}, timeout=10).status_code == 403
    del nurse.headers["X-CSRF-Token"]
    assert nurse.post(url, timeout=10).status_code == 403
    with session_scope(console.crm_url) as session:
        assert session.get(Escalation, escalation_id).status == EscalationStatus.OPEN


def test_a_nurse_cannot_reach_admin_pages_and_an_admin_reads_the_audit_log(console: ConsoleWorld) -> None:
    nurse = console.login("nurse")
    assert nurse.get(console.url + "/admin/audit", timeout=10).status_code == 403
    admin = console.login("admin")
    page = admin.get(console.url + "/admin/audit", timeout=10)
    assert page.status_code == 200 and "login" in page.text and "nurse" in page.text


def test_two_nurses_racing_to_claim_one_chat_one_wins(console_factory: Callable[..., ConsoleWorld],
                                                      postgres_url: str) -> None:  # fmt: skip
    from tests.conftest import migrate_and_seed

    world = console_factory(migrate_and_seed(postgres_url, days=1))
    escalation_id = world.escalate()
    nurses = [world.login("nurse"), world.login("nurse2")]
    for _ in range(3):  # several rounds: the winner is whoever the database serialises first

        def claim(nurse: requests.Session) -> requests.Response:
            return nurse.post(f"{world.url}/escalations/{escalation_id}/claim", timeout=10)

        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            responses = list(pool.map(claim, nurses))
        assert sorted(r.status_code for r in responses) == [200, 409]
        loser = next(r for r in responses if r.status_code == 409).json()
        winner = next(r for r in responses if r.status_code == 200).json()
        assert winner["won"] and loser["holder"] in ("王护士", "李护士")
        with session_scope(world.crm_url) as session:
            row = session.get(Escalation, escalation_id)
            assert row.status == EscalationStatus.CLAIMED and row.claimed_by.display_name == loser["holder"]
            row.status, row.claimed_by_id, row.claimed_at = EscalationStatus.OPEN, None, None


def test_claim_reply_resolve_goes_through_rasa_and_is_audited(console: ConsoleWorld, sandbox: Any) -> None:
    patient_id = a_patient(console.crm_url)
    escalation_id = console.escalate(patient_id=patient_id, channel="sms", sender_id="+8613800000001")
    console.patient_says("+8613800000001", "我要找人工")
    nurse, other = console.login("nurse"), console.login("nurse2")
    view = nurse.get(f"{console.url}/escalations/{escalation_id}", timeout=10)
    assert view.status_code == 200 and "我要找人工" in view.text and "陈测试" in view.text
    assert "13800000001" not in view.text  # the phone is masked in the panel
    # nobody replies before claiming
    assert nurse.post(f"{console.url}/escalations/{escalation_id}/reply", json={"text": "您好"}).status_code == 409
    assert nurse.post(f"{console.url}/escalations/{escalation_id}/claim", timeout=10).status_code == 200
    assert other.post(f"{console.url}/escalations/{escalation_id}/reply", json={"text": "抢答"}).status_code == 409
    assert nurse.post(f"{console.url}/escalations/{escalation_id}/reply", json={"text": "   "}).status_code == 400
    reply = nurse.post(f"{console.url}/escalations/{escalation_id}/reply", json={"text": "您好，我是王护士"})
    assert reply.status_code == 200, reply.text
    assert reply.json()["sent"] and reply.json()["delivery"]["channel"] == "sms"
    # the nurse's turn is in the conversation, marked as the nurse's
    turns = nurse.get(f"{console.url}/api/escalations/{escalation_id}/turns", timeout=10).json()["turns"]
    assert [(t["author"], t["text"]) for t in turns if t["author"] != "system"][-1] == ("nurse", "您好，我是王护士")
    resolved = nurse.post(f"{console.url}/escalations/{escalation_id}/resolve",
                          json={"resolution": "已电话随访", "offer_survey": True})  # fmt: skip
    assert resolved.status_code == 200 and resolved.json()["warnings"] == []
    calls = [(path.split("/")[-1], body) for path, body, _ in console.rasa.calls]
    assert calls[-3][0] == "events" and calls[-3][1][0]["event"] == "resume"
    assert calls[-3][1][-1] == {"event": "action", "name": "action_listen", "timestamp": calls[-3][1][-1]["timestamp"]}
    assert calls[-2] == ("trigger_intent", {"name": "EXTERNAL_handback", "entities": {}})
    assert calls[-1][1]["entities"] == {"survey_instrument": "satisfaction"}
    with session_scope(console.crm_url) as session:
        row = session.get(Escalation, escalation_id)
        assert row.status == EscalationStatus.RESOLVED and row.resolution == "已电话随访"
        entries = session.execute(
            select(AuditEntry.actor, AuditEntry.action).where(AuditEntry.patient_id == patient_id)
        ).all()
    assert ("nurse", "view") in entries and ("nurse", "reply") in entries and ("nurse", "resolve") in entries


def test_the_reply_reaches_the_patients_phone(console: ConsoleWorld, sandbox: Any) -> None:
    escalation_id = console.escalate(channel="sms", sender_id="+8613800000002")
    nurse = console.login("nurse")
    nurse.post(f"{console.url}/escalations/{escalation_id}/claim", timeout=10)
    assert nurse.post(f"{console.url}/escalations/{escalation_id}/reply", json={"text": "请按时服药"}).json()["sent"]
    received = sandbox.messages(to="+8613800000002", provider="sms")
    assert [m["body"] for m in received] == ["请按时服药"]


def test_claiming_an_alert_pauses_the_bot_and_a_rasa_outage_is_reported(console: ConsoleWorld) -> None:
    escalation_id = console.escalate(reason="missed_medication", sender_id="+8613800000003")
    with session_scope(console.crm_url) as session:
        session.get(Escalation, escalation_id).pauses_bot = False
    nurse = console.login("nurse")
    assert nurse.post(f"{console.url}/escalations/{escalation_id}/claim").status_code == 200
    assert console.rasa.calls[-1][1][0]["event"] == "pause"
    console.rasa.down = True
    resolved = nurse.post(f"{console.url}/escalations/{escalation_id}/resolve", json={}).json()
    assert resolved["resolved"] and "机器人未能恢复" in resolved["warnings"][0]


def test_the_queue_is_ordered_by_priority_then_waiting_time_and_filtered(console: ConsoleWorld) -> None:
    late_urgent = console.escalate(sender_id="a", priority=1, department="cardiology")
    time.sleep(0.01)
    early_routine = console.escalate(sender_id="b", priority=3, department="dermatology")
    with session_scope(console.crm_url) as session:  # b has waited longer, a is more urgent
        session.get(Escalation, early_routine).created_at = session.get(Escalation, late_urgent).created_at.replace(
            year=2020
        )
    other = console.escalate(sender_id="c", priority=3, department="cardiology")
    nurse = console.login("nurse")
    items = nurse.get(f"{console.url}/api/queue", timeout=10).json()["items"]
    assert [i["id"] for i in items] == [late_urgent, early_routine, other]
    assert (items[0]["department_name"], items[0]["channel_name"]) == ("心血管内科", "短信")  # as staff read them
    assert items[1]["overdue"] and not items[0]["overdue"]
    cardiology = nurse.get(f"{console.url}/api/queue?department=cardiology", timeout=10).json()["items"]
    assert [i["id"] for i in cardiology] == [late_urgent, other]


def test_a_red_flag_written_while_waiting_moves_the_chat_to_the_top(console: ConsoleWorld) -> None:
    escalation_id = console.escalate(sender_id="+8613800000004", priority=3, reason="complaint")
    console.patient_says("+8613800000004", "我胸口好痛，喘不上气", intent="emergency")
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        with session_scope(console.crm_url) as session:
            if session.get(Escalation, escalation_id).priority == 1:
                break
        time.sleep(0.1)
    with session_scope(console.crm_url) as session:
        row = session.get(Escalation, escalation_id)
        assert row.priority == 1 and "危险信号" in row.summary


def test_security_headers_forbid_framing_and_inline_script(console: ConsoleWorld) -> None:
    headers = console.login("nurse").get(console.url + "/", timeout=10).headers
    assert "script-src 'self'" in headers["Content-Security-Policy"]
    assert headers["X-Frame-Options"] == "DENY" and headers["Cache-Control"] == "no-store"


@pytest.mark.parametrize("body", ['{"text": ', "[1, 2]", "x" * 70000])
def test_malformed_replies_get_a_clear_4xx(console: ConsoleWorld, body: str) -> None:
    escalation_id = console.escalate()
    nurse = console.login("nurse")
    nurse.post(f"{console.url}/escalations/{escalation_id}/claim")
    response = nurse.post(f"{console.url}/escalations/{escalation_id}/reply", data=body,
                          headers={"Content-Type": "application/json"})  # fmt: skip
    assert 400 <= response.status_code < 500


def test_history_shows_patient_bot_and_nurse_turns_in_order(console: ConsoleWorld) -> None:
    escalation_id = console.escalate(sender_id="+8613800000005")
    console.patient_says("+8613800000005", "我要找人工")
    add_event(console.tracker, "+8613800000005", "bot", {"text": "好的，已为您转接人工服务。"})
    add_event(console.tracker, "+8613800000005", "pause", {})
    console.patient_says("+8613800000005", "我还在等")  # written while paused: kept and shown
    add_event(console.tracker, "+8613800000005", "bot", {"text": "我来了", "metadata": {"nurse": "王护士"}})
    nurse = console.login("nurse")
    turns = nurse.get(f"{console.url}/api/escalations/{escalation_id}/turns", timeout=10).json()["turns"]
    assert [(t["author"], t["text"]) for t in turns] == [
        ("patient", "我要找人工"),
        ("bot", "好的，已为您转接人工服务。"),
        ("system", "paused"),
        ("patient", "我还在等"),
        ("nurse", "我来了"),
    ]


def test_the_dashboard_shows_its_figures_and_charts_and_refuses_a_bad_window(console: ConsoleWorld) -> None:
    escalation_id = console.escalate()
    nurse = console.login("nurse")
    page = nurse.get(f"{console.url}/dashboard?days=7", timeout=10)
    assert page.status_code == 200 and "转人工" in page.text
    tiles = re.search(r'<div class="tiles" id="summary">(.*?)</div>\s*<div class="charts">', page.text, re.S).group(1)
    assert "<span>待接手</span><strong>1</strong>" in re.sub(r"\s+", "", tiles).replace("<div>", "")
    chart = nurse.get(f"{console.url}/dashboard/escalations.png?days=7", timeout=30)
    assert chart.headers["Content-Type"] == "image/png" and chart.content.startswith(b"\x89PNG")
    assert nurse.get(f"{console.url}/dashboard?days=abc", timeout=10).status_code == 400
    assert nurse.get(f"{console.url}/dashboard/nothing.png", timeout=10).status_code == 404
    assert escalation_id


def test_metrics_are_counts_only_and_a_token_guards_them(console: ConsoleWorld, monkeypatch: Any) -> None:
    console.escalate(priority=1)
    scraped = requests.get(f"{console.url}/metrics", timeout=10)
    assert scraped.status_code == 200
    assert 'hospital_escalations_waiting{priority="1"} 1.0' in scraped.text
    assert "+86" not in scraped.text and "找人工" not in scraped.text
    monkeypatch.setenv("METRICS_TOKEN", "scrape-me")
    assert requests.get(f"{console.url}/metrics", timeout=10).status_code == 401
    guarded = requests.get(f"{console.url}/metrics", headers={"Authorization": "Bearer scrape-me"}, timeout=10)
    assert guarded.status_code == 200


def test_the_console_process_does_not_load_rasa() -> None:
    """The console starts in a second and stays small: no Rasa, TensorFlow or channel package in it."""
    import subprocess
    import sys

    probe = "import sys, console.app; print(sorted(m for m in ('rasa', 'tensorflow', 'channels') if m in sys.modules))"
    loaded = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert loaded.stdout.strip() == "[]", loaded.stderr[-2000:]
