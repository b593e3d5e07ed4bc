"""Medication reminders as a patient lives them: the reminder opens a dose, 吃了 closes it, silence gets one
gentle re-ask two hours later, and three missed days in a row reach a nurse."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select
from zoneinfo import ZoneInfo

from bot.crm import care, patients
from bot.crm.models import Escalation, MedicationDose, OutboxMessage, OutboxStatus
from bot.db import session_scope
from scheduler import plans, service
from scheduler.dispatcher import Dispatcher, DispatchSettings

SHANGHAI = ZoneInfo("Asia/Shanghai")
OPENID = "oMedication00000000000001"
SETTINGS = DispatchSettings(rate_limits={}, rasa_url=None, workers=2, lease=timedelta(seconds=30))
DAY1 = datetime(2026, 11, 24, 8, 0, tzinfo=SHANGHAI)


def enrolled() -> int:
    with session_scope() as session:
        patient, _ = patients.match_or_register(session, "陈按时", "+8613800138999")
        patients.link_identity(session, patient, "wechat", OPENID)
        plans.enroll(
            session, patient_id=patient.id, template="hypertension", anchor_at=DAY1 - timedelta(hours=12),
            source="test", source_ref="rx", params={"times": ["08:00"], "drug": "氨氯地平", "dose": "5mg"},
            now=DAY1 - timedelta(hours=12),
        )  # fmt: skip
        return patient.id


def reask_rows() -> list:
    with session_scope() as session:
        return [
            (row.status, row.due_at)
            for row in session.execute(select(OutboxMessage).where(OutboxMessage.message == "medication_reask"))
            .scalars()
        ]  # fmt: skip


def test_taken_after_the_reminder_means_no_reask(outbox_db: str, sandbox: Any) -> None:
    patient_id = enrolled()
    Dispatcher("d", SETTINGS).run_once(DAY1)
    [reminder] = sandbox.messages(to=OPENID)
    assert "氨氯地平" in reminder["body"] and "5mg" in reminder["body"]
    assert reask_rows() == [(OutboxStatus.PENDING, datetime(2026, 11, 24, 2, 0))]  # 10:00 in Shanghai
    with session_scope() as session:
        dose = care.record_taken(session, patient_id, DAY1 + timedelta(minutes=20))
        assert dose is not None and dose.scheduled_at == datetime(2026, 11, 24, 0, 0)
    Dispatcher("d", SETTINGS).run_once(DAY1 + timedelta(hours=2))
    assert reask_rows()[0][0] == OutboxStatus.SKIPPED
    assert len(sandbox.messages(to=OPENID)) == 1
    with session_scope() as session:
        assert care.adherence(session, patient_id, DAY1 - timedelta(days=1)).rate == 1.0


def test_silence_gets_one_gentle_reask(outbox_db: str, sandbox: Any) -> None:
    enrolled()
    Dispatcher("d", SETTINGS).run_once(DAY1)
    Dispatcher("d", SETTINGS).run_once(DAY1 + timedelta(hours=2))
    received = sandbox.messages(to=OPENID)
    assert len(received) == 2 and "氨氯地平" in received[1]["body"]
    assert reask_rows() == [(OutboxStatus.SENT, datetime(2026, 11, 24, 2, 0))]
    Dispatcher("d", SETTINGS).run_once(DAY1 + timedelta(hours=5))
    assert len(sandbox.messages(to=OPENID)) == 2  # one re-ask, never a second


def test_three_missed_days_in_a_row_alert_a_nurse(outbox_db: str, sandbox: Any) -> None:
    patient_id = enrolled()
    for day in range(3):
        Dispatcher("d", SETTINGS).run_until_idle(DAY1 + timedelta(days=day, hours=3))
    assert service.daily_checks(DAY1 + timedelta(days=1, hours=23)) == 0  # Nov 26, 07:00: two missed days so far
    assert service.daily_checks(DAY1 + timedelta(days=2, hours=23)) == 1  # Nov 27, 07:00: the third
    with session_scope() as session:
        statuses = set(session.execute(select(MedicationDose.status)).scalars())
        escalation = session.execute(select(Escalation).where(Escalation.patient_id == patient_id)).scalar_one()
    assert statuses == {"missed"}
    assert escalation.reason == "missed_medication"
    assert "陈按时" in escalation.summary and "氨氯地平" in escalation.summary
    assert service.daily_checks(DAY1 + timedelta(days=3, hours=1)) == 0  # not again for the same streak
