"""The dispatcher with controlled time, against the sandbox through the real clients, on SQLite and PostgreSQL:
exact sends, quiet hours, opt-outs, WeChat 45015 → SMS, backoff, two dispatchers, and a kill -9 mid-dispatch."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from datetime import datetime, timedelta
from typing import Any, Dict, List

from sqlalchemy import select
from zoneinfo import ZoneInfo

from bot.crm import consent, patients
from bot.crm.models import Delivery, OutboxMessage, OutboxStatus
from bot.db import session_scope
from scheduler import plans
from scheduler.dispatcher import Dispatcher, DispatchSettings
from tests.conftest import PROJECT_ROOT, migrate_and_seed

SHANGHAI = ZoneInfo("Asia/Shanghai")
UTC = ZoneInfo("UTC")
OPENID = "oDispatch0000000000000001"
PHONE = "+8613800138666"
SETTINGS = DispatchSettings(rate_limits={}, rasa_url=None, workers=4, lease=timedelta(seconds=30))


def make_patient(name: str = "郑提醒", phone: str = PHONE, openid: str = OPENID) -> int:
    with session_scope() as session:
        patient, _ = patients.match_or_register(session, name, phone)
        if openid:
            patients.link_identity(session, patient, "wechat", openid)
        return patient.id


def add_rows(patient_id: int, due: datetime, count: int = 1, **overrides: Any) -> List[int]:
    rows = []
    for index in range(count):
        values: Dict[str, Any] = {
            "patient_id": patient_id,
            "step": "test",
            "message": "appointment_reminder_24h",
            "params": {"department": f"心内科{index}", "doctor": "李医生", "location": "门诊楼3层",
                       "anchor": (due + timedelta(days=1)).isoformat()},
            "conversation": None,
            "channel_policy": "wechat,sms,voice",
            "urgent": False,
            "due_at": due.astimezone(UTC).replace(tzinfo=None),
            "next_attempt_at": due.astimezone(UTC).replace(tzinfo=None),
            "status": "pending",
            "attempts": 0,
            "idempotency_key": f"test:{patient_id}:{index}:{due.isoformat()}:{overrides.get('step', '')}",
        }  # fmt: skip
        values.update(overrides)
        rows.append(values)
    with session_scope() as session:
        plans.insert_ignoring_duplicates(session, rows)
        keys = [row["idempotency_key"] for row in rows]
        return list(session.execute(select(OutboxMessage.id).where(OutboxMessage.idempotency_key.in_(keys))).scalars())


def row(row_id: int) -> OutboxMessage:
    with session_scope() as session:
        found = session.get(OutboxMessage, row_id)
        session.expunge(found)
        return found


def test_a_due_reminder_is_rendered_from_the_catalog_and_sent_on_wechat(outbox_db: str, sandbox: Any) -> None:
    patient_id = make_patient()
    at_nine = datetime(2026, 11, 24, 9, 0, tzinfo=SHANGHAI)
    due_id, *_ = add_rows(patient_id, at_nine)
    later_id, *_ = add_rows(patient_id, at_nine + timedelta(hours=1), step="later")
    stats = Dispatcher("d1", SETTINGS).run_once(at_nine)
    assert (stats.claimed, stats.sent) == (1, 1)
    [received] = sandbox.messages(to=OPENID, provider="wechat")
    assert "心内科0" in received["body"]
    sent = row(due_id)
    assert (sent.status, sent.channel, sent.attempts) == (OutboxStatus.SENT, "wechat", 1)
    with session_scope() as session:
        assert session.get(Delivery, sent.delivery_id).purpose == "reminder"
    assert row(later_id).status == OutboxStatus.PENDING  # not due yet


def test_quiet_hours_defer_to_the_patients_morning_but_not_urgent_rows(outbox_db: str, sandbox: Any) -> None:
    patient_id = make_patient()
    late = datetime(2026, 11, 24, 23, 0, tzinfo=SHANGHAI)
    quiet_id, *_ = add_rows(patient_id, late)
    urgent_id, *_ = add_rows(patient_id, late, urgent=True, step="urgent")
    stats = Dispatcher("d1", SETTINGS).run_once(late)
    assert (stats.deferred, stats.sent) == (1, 1)
    deferred = row(quiet_id)
    assert deferred.status == OutboxStatus.PENDING
    assert deferred.next_attempt_at == datetime(2026, 11, 25, 0, 0)  # 08:00 in Shanghai
    assert row(urgent_id).status == OutboxStatus.SENT
    assert Dispatcher("d1", SETTINGS).run_once(datetime(2026, 11, 25, 7, 59, tzinfo=SHANGHAI)).claimed == 0
    assert Dispatcher("d1", SETTINGS).run_once(datetime(2026, 11, 25, 8, 0, tzinfo=SHANGHAI)).sent == 1


def test_an_opt_out_holds(outbox_db: str, sandbox: Any) -> None:
    patient_id = make_patient()
    with session_scope() as session:
        for channel, address in (("wechat", OPENID), ("sms", PHONE), ("voice", PHONE)):
            consent.set_consent(session, channel=channel, external_id=address, opted_in=False, patient_id=patient_id)
    row_id, *_ = add_rows(patient_id, datetime(2026, 11, 24, 9, 0, tzinfo=SHANGHAI))
    stats = Dispatcher("d1", SETTINGS).run_once(datetime(2026, 11, 24, 9, 0, tzinfo=SHANGHAI))
    assert stats.skipped == 1
    assert (row(row_id).status, row(row_id).last_error) == (OutboxStatus.SKIPPED, "opted out")
    assert sandbox.messages() == []


def test_wechat_45015_falls_back_to_sms(outbox_db: str, sandbox: Any) -> None:
    patient_id = make_patient()
    sandbox.close_window(OPENID)
    row_id, *_ = add_rows(patient_id, datetime(2026, 11, 24, 9, 0, tzinfo=SHANGHAI))
    Dispatcher("d1", SETTINGS).run_once(datetime(2026, 11, 24, 9, 0, tzinfo=SHANGHAI))
    sent = row(row_id)
    assert (sent.status, sent.channel) == (OutboxStatus.SENT, "sms")
    assert "心内科0" in sandbox.messages(to=PHONE, provider="sms")[0]["body"]
    with session_scope() as session:
        attempts = session.execute(select(Delivery).where(Delivery.patient_id == patient_id).order_by(Delivery.id))
        assert [(d.channel, d.error_code) for d in attempts.scalars()] == [("wechat", "45015"), ("sms", None)]


def test_failures_retry_with_backoff_then_fail(outbox_db: str, sandbox: Any) -> None:
    patient_id = make_patient(openid="")
    start = datetime(2026, 11, 24, 9, 0, tzinfo=SHANGHAI)
    row_id, *_ = add_rows(patient_id, start, channel_policy="sms")
    sandbox.fail_next("twilio", "down", 100)
    dispatcher, moment, waits = Dispatcher("d1", SETTINGS), start, []
    for _ in range(SETTINGS.max_attempts):
        dispatcher.run_once(moment)
        current = row(row_id)
        if current.status != OutboxStatus.PENDING:
            break
        waits.append(current.next_attempt_at.replace(tzinfo=UTC) - moment)
        moment = current.next_attempt_at.replace(tzinfo=UTC)
    assert waits == [timedelta(minutes=1), timedelta(minutes=2), timedelta(minutes=4), timedelta(minutes=8)]
    failed = row(row_id)
    assert (failed.status, failed.attempts) == (OutboxStatus.FAILED, 5)
    assert "sms" in failed.last_error


def test_two_dispatchers_never_send_the_same_row(postgres_url: str, sandbox: Any, process_settings: Any) -> None:
    request_db(process_settings, sandbox, postgres_url)
    patient_ids = [make_patient(f"并发{i:02d}", f"+861380013{7000 + i}", f"oTwo{i:022d}") for i in range(10)]
    now = datetime(2026, 11, 24, 9, 0, tzinfo=SHANGHAI)
    for patient_id in patient_ids:
        add_rows(patient_id, now, count=30)
    settings = DispatchSettings(rate_limits={}, rasa_url=None, workers=4, batch=25, lease=timedelta(minutes=5))
    dispatchers = [Dispatcher(f"d{i}", settings) for i in range(2)]
    results: List[Any] = []
    threads = [threading.Thread(target=lambda d=d: results.append(d.run_until_idle(now))) for d in dispatchers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert sum(r.sent for r in results) == 300, results
    assert all(r.sent > 0 for r in results), results  # both took a share
    # past the customer-service quota (5 per patient message) WeChat took notices as templates: count them all
    assert len(sandbox.messages(provider="wechat", status="delivered")) == 300
    with session_scope() as session:
        statuses = Counter(session.execute(select(OutboxMessage.status)).scalars())
    assert statuses == {OutboxStatus.SENT: 300}


def test_a_claim_takes_at_most_its_batch(outbox_db: str, sandbox: Any) -> None:
    patient_id = make_patient()
    now = datetime(2026, 11, 24, 9, 0, tzinfo=SHANGHAI)
    add_rows(patient_id, now, count=60)
    first, second = Dispatcher("a", SETTINGS), Dispatcher("b", SETTINGS)
    taken_a, taken_b = first.claim(now, limit=25), second.claim(now, limit=25)
    assert len(taken_a) == 25 and len(taken_b) == 25 and not set(taken_a) & set(taken_b)
    assert len(first.claim(now, limit=25)) == 10


def request_db(process_settings: Any, sandbox: Any, url: str) -> None:
    migrate_and_seed(url, days=1)
    process_settings(DATABASE_URL=url, SANDBOX_URL=sandbox.url)


def test_kill_9_mid_dispatch_then_restart_delivers_everything(
    postgres_url: str, sandbox: Any, process_settings: Any
) -> None:
    request_db(process_settings, sandbox, postgres_url)
    now = datetime(2026, 11, 24, 9, 0, tzinfo=SHANGHAI)
    patient_ids = [make_patient(f"崩溃{i:02d}", f"+861380014{7000 + i}", f"oKill{i:021d}") for i in range(20)]
    for patient_id in patient_ids:
        add_rows(patient_id, now, count=50)
    total = 1000
    env = {
        **os.environ,
        "DATABASE_URL": postgres_url,
        "SANDBOX_URL": sandbox.url,
        "HOSPITAL_FAKE_NOW": now.isoformat(),
        "RASA_URL": "",
        "RATE_LIMIT_WECHAT": "0", "RATE_LIMIT_SMS": "0", "RATE_LIMIT_VOICE": "0",
        "OUTBOX_BATCH": "50", "OUTBOX_WORKERS": "8", "OUTBOX_LEASE_SECONDS": "60",
    }  # fmt: skip
    worker = subprocess.Popen(
        [sys.executable, "-m", "scheduler", "dispatch-once"], cwd=PROJECT_ROOT, env=env,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    deadline = time.monotonic() + 120
    while len(sandbox.messages(provider="wechat")) < total // 3:
        assert worker.poll() is None, "the dispatcher finished before it could be killed: make the batch bigger"
        assert time.monotonic() < deadline, "the dispatcher sent too little"
        time.sleep(0.05)
    worker.send_signal(signal.SIGKILL)
    worker.wait(10)
    before_restart = len(sandbox.messages(provider="wechat"))
    assert before_restart < total
    # the restart, after the dead worker's leases expired
    restarted = Dispatcher("restarted", DispatchSettings(rate_limits={}, rasa_url=None, workers=8, batch=100))
    restarted.run_until_idle(now + timedelta(minutes=2))
    delivered = len(sandbox.messages(provider="wechat", status="delivered"))
    assert total <= delivered <= total + 8  # every reminder; duplicates at most the sends in flight at the kill
    with session_scope() as session:
        statuses = Counter(session.execute(select(OutboxMessage.status)).scalars())
    assert statuses == {OutboxStatus.SENT: total}
