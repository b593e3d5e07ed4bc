"""The dashboard's figures on a small known CRM (SQLite and PostgreSQL), an empty CRM, and its charts as PNGs."""

from __future__ import annotations

import io
import json
from datetime import date, datetime, timedelta
from typing import Iterator, Optional

import pytest
from sqlalchemy.orm import Session

from bot import db
from bot.crm.models import (
    Delivery,
    DeliveryStatus,
    Escalation,
    EscalationStatus,
    MedicationDose,
    OutboxMessage,
    OutboxStatus,
    Patient,
    Prescription,
    SurveyAnswer,
    SurveyResponse,
    SurveyStatus,
    TriageRecord,
)
from console import dashboard
from console.dashboard import CHART_KEYS, Dashboard, chart_pngs, metrics

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
NOW = datetime(2026, 11, 23, 1, 0)  # naive UTC: Monday 09:00 in Shanghai, the test run's fixed clock
TZ = "Asia/Shanghai"
LAST_WEEK = date(2026, 11, 16)  # Monday of the previous local week
THIS_WEEK = date(2026, 11, 23)


@pytest.fixture(params=["sqlite", "postgres"])
def db_url(request: pytest.FixtureRequest) -> str:
    """A migrated, empty CRM (no seed: every row is the test's own)."""
    url = request.getfixturevalue("sqlite_url" if request.param == "sqlite" else "postgres_url")
    db.upgrade(url)
    return url


@pytest.fixture
def session(db_url: str) -> Iterator[Session]:
    with db.session_scope(db_url) as session:
        yield session


def utc(day: int, hour: int = 0, minute: int = 0) -> datetime:
    """A naive UTC time in November 2026."""
    return datetime(2026, 11, day, hour, minute)


def fill(session: Session) -> None:
    patient = Patient(card_no="T0001", name="测试患者", phone="+8613800138000")
    session.add(patient)
    session.flush()
    pid = patient.id

    def outbox(message: str, status: OutboxStatus, due: datetime) -> OutboxMessage:
        key = f"test:{message}:{status.value}:{due.isoformat()}"
        return OutboxMessage(
            patient_id=pid, message=message, status=status, due_at=due, next_attempt_at=due, idempotency_key=key
        )

    reminder = "medication_reminder"
    statuses = [OutboxStatus.SENT] * 3 + [OutboxStatus.FAILED, OutboxStatus.SKIPPED, OutboxStatus.PENDING]
    statuses += [OutboxStatus.SENDING, OutboxStatus.CANCELLED]
    session.add_all(outbox(reminder, status, utc(10 + i)) for i, status in enumerate(statuses))
    session.add(outbox(reminder, OutboxStatus.PENDING, NOW + timedelta(days=1)))  # not due yet
    session.add(outbox(reminder, OutboxStatus.FAILED, NOW - timedelta(days=45)))  # before the window
    session.add(outbox("surgery_day1_checkin", OutboxStatus.SENT, utc(20)))

    def delivery(channel: str, status: DeliveryStatus, purpose: str = "reminder") -> Delivery:
        return Delivery(
            patient_id=pid,
            channel=channel,
            address="x",
            kind="template",
            purpose=purpose,
            status=status,
            created_at=utc(18),
        )

    session.add_all(delivery("wechat", DeliveryStatus.SENT) for _ in range(3))
    session.add(delivery("wechat", DeliveryStatus.FAILED))
    session.add(delivery("wechat", DeliveryStatus.FAILED, purpose="conversation"))  # a chat reply, not a reminder
    session.add_all(delivery("sms", DeliveryStatus.DELIVERED) for _ in range(2))
    session.add(delivery("sms", DeliveryStatus.UNDELIVERED))
    session.add(delivery("sms", DeliveryStatus.SKIPPED))

    prescription = Prescription(patient_id=pid, drug="氨氯地平", times=["08:00"], start_date=utc(1))
    session.add(prescription)
    session.flush()
    doses = [
        (utc(15, 20), "taken"),  # Monday 16 Nov 04:00 in Shanghai: last week locally, the week before in UTC
        (utc(17), "taken"),
        (utc(18), "taken"),
        (utc(19), "missed"),
        (utc(21), "due"),  # not answered yet: left out
        (utc(23), "taken"),  # this week
        (NOW - timedelta(days=40), "missed"),  # before the window
    ]
    session.add_all(
        MedicationDose(prescription_id=prescription.id, patient_id=pid, scheduled_at=at, status=status)
        for at, status in doses
    )

    def response(
        answers: dict, instrument: str = "satisfaction", status: SurveyStatus = SurveyStatus.COMPLETED
    ) -> None:
        row = SurveyResponse(patient_id=pid, sender_id="s1", instrument=instrument, status=status)
        for item, value in answers.items():
            skipped = value == "skip"
            row.answers.append(
                SurveyAnswer(
                    item=item,
                    value=None if skipped or isinstance(value, str) else value,
                    text=value if isinstance(value, str) and not skipped else None,
                    skipped=skipped,
                    answered_at=utc(18, 3),
                )
            )
        session.add(row)

    response({"doctor": 5, "nurse": 4, "waiting": 3, "environment": 4, "nps": 10, "comment": "很好"})
    response({"doctor": 2, "nurse": "skip", "nps": 5})
    response({"nps": 8}, status=SurveyStatus.PAUSED)
    response({"nps": 9}, status=SurveyStatus.REFUSED)
    response({"1": 3, "2": 3}, instrument="phq9")  # another questionnaire: not satisfaction

    def escalation(
        created: datetime, claim_minutes: Optional[int], reason: str, priority: int, status: Optional[str] = None
    ) -> None:
        claimed = created + timedelta(minutes=claim_minutes) if claim_minutes is not None else None
        status = status or (EscalationStatus.CLAIMED if claimed else EscalationStatus.OPEN)
        session.add(
            Escalation(
                patient_id=pid,
                sender_id="s1",
                reason=reason,
                priority=priority,
                created_at=created,
                claimed_at=claimed,
                status=status,
            )
        )

    escalation(utc(20, 2), 4, "red_flag", 1)  # Friday 20 Nov 10:00 local
    escalation(utc(20, 3), 10, "nurse_request", 3)
    escalation(utc(21, 2), 30, "nurse_request", 3)
    escalation(utc(21, 5), None, "nurse_request", 3)  # still waiting
    escalation(utc(21, 6), None, "low_rating", 2, status=EscalationStatus.RESOLVED)  # closed without a claim

    def triage(level: int, departments: list, created: datetime = utc(19)) -> None:
        session.add(
            TriageRecord(patient_id=pid, sender_id="s1", level=level, departments=departments, created_at=created)
        )

    triage(1, [{"code": "cardiology", "score": 0.9}, {"code": "respiratory", "score": 0.1}])
    triage(3, [{"code": "respiratory", "score": 0.4}, {"code": "cardiology", "score": 0.7}])  # top one is second
    triage(3, [{"code": "dermatology", "score": 0.8}])
    triage(4, [])
    triage(2, [{"code": "neurology", "score": 1.0}], created=NOW - timedelta(days=60))  # before the window
    session.flush()


@pytest.fixture
def filled(session: Session) -> Dashboard:
    fill(session)
    return metrics(session, now=NOW, tz=TZ)


def by(rows: list, key: str) -> dict:
    return {row[key]: row for row in rows}


def test_followup_completion_per_kind(filled: Dashboard) -> None:
    followups = by(filled.followups, "kind")
    assert set(followups) == {"medication_reminder", "surgery_day1_checkin"}
    reminder = followups["medication_reminder"]
    assert (reminder["sent"], reminder["failed"], reminder["skipped"]) == (3, 1, 1)
    assert (reminder["pending"], reminder["cancelled"], reminder["total"]) == (2, 1, 8)  # sending counts as pending
    assert reminder["completion_rate"] == pytest.approx(3 / 5)
    assert followups["surgery_day1_checkin"]["completion_rate"] == 1.0
    assert filled.summary["followup_completion"] == pytest.approx(4 / 6)


def test_reminder_delivery_by_channel(filled: Dashboard) -> None:
    assert [row["channel"] for row in filled.delivery] == ["wechat", "sms", "voice"]
    channels = by(filled.delivery, "channel")
    wechat, sms, voice = channels["wechat"], channels["sms"], channels["voice"]
    assert wechat["counts"]["sent"] == 3 and wechat["counts"]["failed"] == 1  # the chat reply is not counted
    assert wechat["sent_rate"] == pytest.approx(0.75) and wechat["delivered_rate"] is None
    assert (sms["total"], sms["attempted"]) == (4, 3)
    assert sms["sent_rate"] == pytest.approx(2 / 3) and sms["delivered_rate"] == pytest.approx(2 / 3)
    assert voice["total"] == 0 and voice["sent_rate"] is None
    assert filled.summary["reminder_sent_rate"] == pytest.approx(5 / 7)


def test_adherence_per_local_week(filled: Dashboard, session: Session) -> None:
    assert filled.adherence == [
        {"week": LAST_WEEK, "taken": 3, "missed": 1, "rate": 0.75},
        {"week": THIS_WEEK, "taken": 1, "missed": 0, "rate": 1.0},
    ]
    assert filled.summary["adherence"] == pytest.approx(4 / 5)
    in_utc = by(metrics(session, now=NOW, tz="UTC").adherence, "week")  # the Sunday-evening UTC dose moves back
    assert in_utc[date(2026, 11, 9)]["taken"] == 1 and in_utc[LAST_WEEK]["rate"] == pytest.approx(2 / 3)


def test_satisfaction_and_nps(filled: Dashboard) -> None:
    (week,) = filled.satisfaction
    assert week["week"] == LAST_WEEK
    assert week["responses"] == 4  # the PHQ-9 is not a satisfaction survey
    assert week["ratings"] == 5 and week["satisfaction_mean"] == pytest.approx((5 + 4 + 3 + 4 + 2) / 5)
    assert (week["promoters"], week["passives"], week["detractors"]) == (2, 1, 1)  # 10 and 9; 8; 5
    assert week["nps"] == pytest.approx(25.0)
    assert filled.summary["nps"] == pytest.approx(25.0)


def test_escalations_and_time_to_claim(filled: Dashboard) -> None:
    days = by(filled.escalations, "day")
    assert set(days) == {date(2026, 11, 20), date(2026, 11, 21)}
    assert days[date(2026, 11, 20)]["by_reason"] == {"nurse_request": 1, "red_flag": 1}
    assert days[date(2026, 11, 21)]["by_priority"] == {2: 1, 3: 2}
    (week,) = filled.claim_times
    assert (week["week"], week["created"], week["claimed"]) == (LAST_WEEK, 5, 3)
    assert week["median_minutes"] == pytest.approx(10.0)
    assert week["p90_minutes"] == pytest.approx(26.0)  # 4, 10, 30: 10 + 0.8 * 20
    assert filled.summary["escalations"] == 5 and filled.summary["unclaimed"] == 1
    assert filled.summary["claim_median_minutes"] == pytest.approx(10.0)


def test_triage_levels_and_top_departments(filled: Dashboard) -> None:
    assert filled.triage_levels == {1: 1, 2: 0, 3: 2, 4: 1}
    assert filled.triage_departments == [
        {"code": "cardiology", "name": "心血管内科", "count": 2},
        {"code": "dermatology", "name": "皮肤科", "count": 1},
    ]


def test_window_and_default_clock(filled: Dashboard, session: Session) -> None:
    assert filled.until == NOW and filled.since == NOW - timedelta(days=30)
    assert metrics(session).as_json() == filled.as_json()  # the fixed test clock, the hospital's zone
    week = metrics(session, days=3, now=NOW, tz=TZ)  # from 20 Nov 01:00 UTC
    assert week.followups == [] and week.summary["escalations"] == 5
    assert week.adherence == [{"week": THIS_WEEK, "taken": 1, "missed": 0, "rate": 1.0}]


def test_as_json_is_json(filled: Dashboard) -> None:
    data = filled.as_json()
    assert json.loads(json.dumps(data, ensure_ascii=False)) == data
    assert data["adherence"][0]["week"] == "2026-11-16"
    assert data["triage_levels"] == {"1": 1, "2": 0, "3": 2, "4": 1}
    assert data["timezone"] == TZ


def test_empty_database_gives_zeros(session: Session) -> None:
    empty = metrics(session, now=NOW, tz=TZ)
    assert empty.followups == [] and empty.adherence == [] and empty.satisfaction == []
    assert empty.escalations == [] and empty.claim_times == [] and empty.triage_departments == []
    assert [(row["channel"], row["total"], row["sent_rate"]) for row in empty.delivery] == [
        ("wechat", 0, None),
        ("sms", 0, None),
        ("voice", 0, None),
    ]
    assert empty.triage_levels == {1: 0, 2: 0, 3: 0, 4: 0}
    assert empty.summary["escalations"] == 0 and empty.summary["unclaimed"] == 0 and empty.summary["triage"] == 0
    assert empty.summary["adherence"] is None and empty.summary["nps"] is None
    json.dumps(empty.as_json())


def assert_pngs(pngs: dict) -> None:
    assert set(pngs) == set(CHART_KEYS)
    image_module = pytest.importorskip("PIL.Image")
    for name, data in pngs.items():
        assert data.startswith(PNG_MAGIC), name
        with image_module.open(io.BytesIO(data)) as image:
            assert image.size == (600, 300), name
        assert len(data) < 150_000, name


@pytest.mark.parametrize("locale", ["zh_CN", "en"])
def test_charts_filled_and_empty(filled: Dashboard, locale: str) -> None:
    assert_pngs(chart_pngs(filled, locale))
    empty = Dashboard(days=30, since=NOW - timedelta(days=30), until=NOW, timezone=TZ)
    assert_pngs(chart_pngs(empty, locale))


def test_charts_without_cjk_font_use_english(filled: Dashboard, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dashboard, "chart_locale", lambda locale: "en")
    pngs = chart_pngs(filled, "zh_CN")
    assert_pngs(pngs)
    image_module = pytest.importorskip("PIL.Image")
    with image_module.open(io.BytesIO(pngs["triage"])) as image:
        assert image.text["Title"] == "Triage levels and top departments"


@pytest.mark.parametrize("days", [1, 365])
def test_charts_for_short_and_long_windows(filled: Dashboard, session: Session, days: int) -> None:
    assert_pngs(chart_pngs(metrics(session, days=days, now=NOW, tz=TZ)))
