"""On-call alerts for escalations left unclaimed past their deadline, sent as SMS through the sandbox on SQLite
and PostgreSQL: once per escalation, never for a claimed or not-yet-due one, one SMS for two racing schedulers."""

from __future__ import annotations

import logging
import threading
from datetime import datetime, timedelta
from typing import Any, List, Optional

import pytest
from sqlalchemy import create_engine, select, text

from bot import clock
from bot.crm import escalations, patients
from bot.crm.models import Delivery, Escalation, EscalationStatus, StaffRole, StaffUser, utcnow
from bot.db import session_scope
from console.auth import create_user
from scheduler import alerts, service
from tests.conftest import migrate_and_seed

PATIENT_NAME = "卫急诊"
PATIENT_PHONE = "+8613800138777"
NURSE_PHONE = "+8613900139001"
SECOND_NURSE_PHONE = "+8613900139002"
PASSWORD = "correct-horse-battery"


def now() -> datetime:
    """The fixed clock as the CRM stores time (naive UTC)."""
    return clock.utc_now_naive()


def make_nurse(username: str, phone: Optional[str], on_call: bool = True) -> int:
    with session_scope() as session:
        return create_user(session, username, PASSWORD, role=StaffRole.NURSE, phone=phone, on_call=on_call).id


def make_escalation(priority: int, waited: timedelta, reason: str = "red_flag") -> int:
    """An open escalation of a registered patient (name and phone on record), created `waited` ago."""
    with session_scope() as session:
        patient, _ = patients.match_or_register(session, PATIENT_NAME, PATIENT_PHONE)
        escalation = escalations.open_escalation(
            session, sender_id=f"sms:{PATIENT_PHONE}", channel="sms", reason=reason,
            summary=f"{PATIENT_NAME} {PATIENT_PHONE} 胸痛", patient_id=patient.id, priority=priority,
        )  # fmt: skip
        escalation.created_at = now() - waited
        return escalation.id


def sms_to(sandbox: Any, phone: str) -> List[str]:
    """The SMS the sandbox accepted for `phone` (a refused one is recorded too, as failed or rejected)."""
    records = sandbox.messages(to=phone, provider="sms")
    return [record["body"] for record in records if record["status"] not in ("failed", "rejected")]


def alerted_at(escalation_id: int) -> Optional[datetime]:
    with session_scope() as session:
        return session.get(Escalation, escalation_id).deadline_alerted_at


def test_an_overdue_priority_1_escalation_texts_the_on_call_nurse_once(outbox_db: str, sandbox: Any) -> None:
    make_nurse("nurse-oncall", NURSE_PHONE)
    make_nurse("nurse-off", "+8613900139099", on_call=False)
    escalation_id = make_escalation(priority=1, waited=timedelta(minutes=6))

    assert alerts.alert_overdue_escalations(clock.now()) == 1

    [delivered] = sandbox.wait_for(1, to=NURSE_PHONE, provider="sms", status="delivered")
    [body] = sms_to(sandbox, NURSE_PHONE)
    assert body == delivered["body"]
    assert f"#{escalation_id}" in body and f"/escalations/{escalation_id}" in body
    assert "6" in body and "危险信号" in body and alerts.DEFAULT_CONSOLE_URL in body
    assert PATIENT_NAME not in body and PATIENT_PHONE not in body
    assert sms_to(sandbox, "+8613900139099") == []  # not on call
    assert sms_to(sandbox, PATIENT_PHONE) == []
    assert alerted_at(escalation_id) == now()
    with session_scope() as session:
        [delivery] = session.execute(select(Delivery).where(Delivery.address == NURSE_PHONE)).scalars().all()
        assert (delivery.purpose, delivery.patient_id) == ("alert", None)

    # the next run (30 seconds later) sends nothing more
    assert alerts.alert_overdue_escalations(clock.now() + timedelta(seconds=30)) == 0
    assert len(sms_to(sandbox, NURSE_PHONE)) == 1


def test_not_yet_due_and_claimed_escalations_send_nothing(outbox_db: str, sandbox: Any) -> None:
    nurse_id = make_nurse("nurse-oncall", NURSE_PHONE)
    low = make_escalation(priority=3, waited=timedelta(minutes=6), reason="complaint")  # deadline 60 minutes
    assert alerts.alert_overdue_escalations(clock.now()) == 0
    assert sandbox.messages(provider="sms") == []
    assert alerted_at(low) is None

    with session_scope() as session:
        escalations.claim(session, low, session.get(StaffUser, nurse_id), now=now())
        session.get(Escalation, low).created_at = now() - timedelta(hours=2)  # long past its deadline, but held
    assert alerts.alert_overdue_escalations(clock.now()) == 0
    assert sandbox.messages(provider="sms") == []


def test_a_custom_console_url_is_linked(outbox_db: str, sandbox: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CONSOLE_URL", "https://console.example-hospital.cn/")
    make_nurse("nurse-oncall", NURSE_PHONE)
    escalation_id = make_escalation(priority=2, waited=timedelta(minutes=16), reason="request_human")
    assert alerts.alert_overdue_escalations(clock.now()) == 1
    [body] = sms_to(sandbox, NURSE_PHONE)
    assert f"https://console.example-hospital.cn/escalations/{escalation_id}" in body and "要求人工" in body


def test_two_schedulers_racing_send_one_sms(outbox_db: str, sandbox: Any) -> None:
    make_nurse("nurse-oncall", NURSE_PHONE)
    make_escalation(priority=1, waited=timedelta(minutes=6))
    barrier = threading.Barrier(2)
    results: List[int] = []
    errors: List[BaseException] = []

    def run() -> None:
        try:
            barrier.wait(timeout=10)
            results.append(alerts.alert_overdue_escalations(clock.now()))
        except BaseException as error:  # reported by the main thread
            errors.append(error)

    threads = [threading.Thread(target=run) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not errors
    assert sorted(results) == [0, 1]
    assert len(sms_to(sandbox, NURSE_PHONE)) == 1


def test_nobody_on_call_with_a_phone_still_marks_it_alerted(
    outbox_db: str, sandbox: Any, caplog: pytest.LogCaptureFixture
) -> None:
    make_nurse("nurse-nophone", None)
    escalation_id = make_escalation(priority=1, waited=timedelta(minutes=6))
    with caplog.at_level(logging.WARNING, logger="scheduler.alerts"):
        assert alerts.alert_overdue_escalations(clock.now()) == 1
    assert sandbox.messages(provider="sms") == []
    assert alerted_at(escalation_id) is not None
    assert f"escalation {escalation_id}" in caplog.text and "no on-call staff has a phone" in caplog.text
    assert PATIENT_NAME not in caplog.text and PATIENT_PHONE not in caplog.text


def test_a_failed_send_does_not_stop_the_other_alerts(
    outbox_db: str, sandbox: Any, caplog: pytest.LogCaptureFixture
) -> None:
    make_nurse("nurse-first", NURSE_PHONE)
    make_nurse("nurse-second", SECOND_NURSE_PHONE)
    make_escalation(priority=1, waited=timedelta(minutes=6))
    sandbox.fail_next("twilio", "down", 1)  # the first nurse's SMS (staff are texted in id order)
    with caplog.at_level(logging.WARNING, logger="scheduler.alerts"):
        assert alerts.alert_overdue_escalations(clock.now()) == 1
    assert sms_to(sandbox, NURSE_PHONE) == []
    assert [r["status"] for r in sandbox.messages(to=NURSE_PHONE, provider="sms")] == ["failed"]
    assert len(sms_to(sandbox, SECOND_NURSE_PHONE)) == 1
    assert "undeliverable" in caplog.text and NURSE_PHONE not in caplog.text


def test_the_job_is_in_the_store_and_the_cli_runs_it_once(
    outbox_db: str, sandbox: Any, capsys: pytest.CaptureFixture
) -> None:
    make_nurse("nurse-oncall", NURSE_PHONE)
    escalation_id = make_escalation(priority=1, waited=timedelta(minutes=6))
    with session_scope() as session:  # the CLI uses the wall clock, as escalations are stamped
        session.get(Escalation, escalation_id).created_at = utcnow() - timedelta(minutes=6)

    assert service.main(["alert-overdue"]) == 0
    assert "1 overdue escalations alerted" in capsys.readouterr().out
    assert len(sms_to(sandbox, NURSE_PHONE)) == 1
    with session_scope() as session:
        assert session.get(Escalation, escalation_id).status == EscalationStatus.OPEN  # alerting does not claim


def test_escalation_deadlines_job_persists(sqlite_url: str) -> None:
    migrate_and_seed(sqlite_url, days=1)
    scheduler = service.build_scheduler(sqlite_url, dispatch_seconds=3600)
    scheduler.start(paused=True)
    job = scheduler.get_job("escalation_deadlines")
    assert job.func_ref == "scheduler.service:escalation_deadlines"
    assert job.trigger.interval == timedelta(seconds=30) and job.coalesce and job.max_instances == 1
    scheduler.shutdown(wait=False)
    with create_engine(sqlite_url).connect() as connection:
        stored = set(connection.execute(text(f"SELECT id FROM {service.JOB_TABLE}")).scalars())
    assert "escalation_deadlines" in stored
