"""The scheduler process: daily checks alert a nurse once, and the periodic jobs persist in the job store."""

from __future__ import annotations

import time
from datetime import datetime, timedelta

import pytest
from sqlalchemy import create_engine, func, select, text
from zoneinfo import ZoneInfo

from bot.crm import patients
from bot.crm.models import Escalation, MeasurementReading
from bot.db import session_scope
from scheduler import plans, service

SHANGHAI = ZoneInfo("Asia/Shanghai")
START = datetime(2026, 11, 1, 9, 0, tzinfo=SHANGHAI)


def enrolled_patient() -> int:
    with session_scope() as session:
        patient, _ = patients.match_or_register(session, "冯血压", "+8613800138888")
        plans.enroll(
            session, patient_id=patient.id, template="hypertension", anchor_at=START, source="test",
            source_ref="rx-1", params={"times": ["08:00"], "drug": "缬沙坦", "dose": "80mg"}, now=START,
        )  # fmt: skip
        return patient.id


def alerts(patient_id: int) -> int:
    with session_scope() as session:
        return session.execute(
            select(func.count(Escalation.id)).where(Escalation.patient_id == patient_id)
        ).scalar_one()


def test_no_reading_for_14_days_alerts_a_nurse_once(crm: str) -> None:
    patient_id = enrolled_patient()
    assert service.daily_checks(START + timedelta(days=10)) == 0  # the plan is younger than the window
    assert service.daily_checks(START + timedelta(days=15)) == 1
    assert service.daily_checks(START + timedelta(days=16)) == 0  # not again the next day
    with session_scope() as session:
        escalation = session.execute(select(Escalation).where(Escalation.patient_id == patient_id)).scalar_one()
        assert escalation.reason == "missing_reading" and "冯血压" in escalation.summary and "14" in escalation.summary


def test_a_recent_reading_means_no_alert(crm: str) -> None:
    patient_id = enrolled_patient()
    with session_scope() as session:
        session.add(MeasurementReading(
            patient_id=patient_id, kind="blood_pressure", value={"systolic": 135, "diastolic": 85}, unit="mmHg",
            taken_at=(START + timedelta(days=10)).astimezone(ZoneInfo("UTC")).replace(tzinfo=None),
        ))  # fmt: skip
    assert service.daily_checks(START + timedelta(days=15)) == 0
    assert alerts(patient_id) == 0


def test_jobs_persist_in_the_job_store_and_a_restart_is_fast(sqlite_url: str) -> None:
    from tests.conftest import migrate_and_seed

    migrate_and_seed(sqlite_url, days=1)
    first = service.build_scheduler(sqlite_url, dispatch_seconds=3600)
    first.start(paused=True)
    first.shutdown(wait=False)
    with create_engine(sqlite_url).connect() as connection:
        stored = set(connection.execute(text(f"SELECT id FROM {service.JOB_TABLE}")).scalars())
    assert stored == {"dispatch", "extend_plans", "daily_checks", "escalation_deadlines"}
    started = time.monotonic()
    again = service.build_scheduler(sqlite_url, dispatch_seconds=3600)
    again.start(paused=True)
    assert {job.id for job in again.get_jobs()} == stored
    again.shutdown(wait=False)
    assert time.monotonic() - started < 5


def test_a_readings_chart_reaches_the_patients_wechat(outbox_db: str, sandbox: object) -> None:
    from bot.crm import care
    from bot.crm.models import Delivery

    with session_scope() as session:
        patient, _ = patients.match_or_register(session, "褚图表", "+8613800138444")
        patients.link_identity(session, patient, "wechat", "oChart000000000000000001")
        for day, (systolic, diastolic) in enumerate([(150, 95), (142, 90), (136, 86), (131, 84)]):
            care.record_reading(session, patient.id, "blood_pressure", {"systolic": systolic, "diastolic": diastolic},
                                "mmHg", datetime(2026, 11, 10 + day * 3, 8, 0, tzinfo=SHANGHAI))  # fmt: skip
        patient_id = patient.id
    png = service.chart(patient_id, "blood_pressure", days=30)
    assert png.startswith(b"\x89PNG") and len(png) > 1000
    delivery_id = service.send_chart(patient_id, "blood_pressure", days=30)
    caption, image = sandbox.messages(to="oChart000000000000000001")  # type: ignore[attr-defined]
    assert "褚图表" in caption["body"] and "30" in caption["body"]
    assert image["kind"] == "custom" and image["body"].startswith("[image]")
    with session_scope() as session:
        assert session.get(Delivery, delivery_id).kind == "image"
    with pytest.raises(ValueError, match="no glucose readings"):
        service.chart(patient_id, "glucose")
