"""Care-plan templates become outbox rows with exact due times, in the patient's own time zone."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any, Dict, List, Tuple

import pytest
from sqlalchemy import select
from zoneinfo import ZoneInfo

from bot.crm import patients
from bot.crm.models import OutboxMessage, Patient
from bot.db import session_scope
from scheduler import plans

SHANGHAI = ZoneInfo("Asia/Shanghai")
NOW = datetime(2026, 11, 23, 9, 0, tzinfo=SHANGHAI)


def utc(*args: int) -> datetime:
    """A naive UTC datetime, as the CRM stores them."""
    return datetime(*args)


@pytest.fixture
def patient_id(crm_url: str) -> int:
    with session_scope(crm_url) as session:
        patient, _ = patients.match_or_register(session, "周随访", "+8613800138555")
        return patient.id


def enroll(url: str, patient_id: int, template: str, anchor: datetime, **params: Any) -> int:
    with session_scope(url) as session:
        plan = plans.enroll(
            session, patient_id=patient_id, template=template, anchor_at=anchor, source="test",
            source_ref=f"{template}-1", params=params, now=NOW,
        )  # fmt: skip
        return plan.id


def rows(url: str, plan_id: int) -> List[Tuple[str, datetime]]:
    with session_scope(url) as session:
        found = session.execute(
            select(OutboxMessage.step, OutboxMessage.due_at).where(OutboxMessage.plan_id == plan_id)
            .order_by(OutboxMessage.due_at, OutboxMessage.step)
        ).all()  # fmt: skip
        return [(step, due) for step, due in found]


def test_every_shipped_template_loads() -> None:
    loaded = plans.templates()
    assert {"after_surgery", "hypertension", "diabetes", "chemotherapy", "appointment_reminders", "birthday",
            "winback"} <= set(loaded)  # fmt: skip


def test_after_surgery_gives_the_exact_due_times(crm_url: str, patient_id: int) -> None:
    discharge = datetime(2026, 11, 23, 15, 0, tzinfo=SHANGHAI)
    plan_id = enroll(crm_url, patient_id, "after_surgery", discharge)
    # local 10:00 / 09:00 in Shanghai is 02:00 / 01:00 UTC; the day-30 survey is past the 14-day horizon
    assert rows(crm_url, plan_id) == [
        ("day1_checkin", utc(2026, 11, 24, 2, 0)),
        ("day3_wound_care", utc(2026, 11, 26, 2, 0)),
        ("day7_revisit", utc(2026, 11, 30, 1, 0)),
    ]
    with session_scope(crm_url) as session:
        plan = session.get(plans.CarePlan, plan_id)
        added = plans.expand(session, plan, now=datetime(2026, 12, 10, 9, 0, tzinfo=SHANGHAI))
    assert added == 1
    assert rows(crm_url, plan_id)[-1] == ("day30_survey", utc(2026, 12, 23, 2, 0))
    with session_scope(crm_url) as session:
        survey = session.execute(select(OutboxMessage).where(OutboxMessage.step == "day30_survey")).scalar_one()
        expected = {"intent": "EXTERNAL_start_survey", "entities": {"survey_instrument": "satisfaction"}}
        assert survey.conversation == expected


def test_hypertension_doses_twice_a_day_and_a_weekly_reading(crm_url: str, patient_id: int) -> None:
    plan_id = enroll(crm_url, patient_id, "hypertension", NOW, times=["08:00", "20:00"], drug="氨氯地平", dose="5mg")
    found = rows(crm_url, plan_id)
    doses = [due for step, due in found if step == "medication"]
    assert doses[:3] == [utc(2026, 11, 23, 12, 0), utc(2026, 11, 24, 0, 0), utc(2026, 11, 24, 12, 0)]
    assert len(doses) == 28  # today 20:00, two a day Nov 24 to Dec 6, Dec 7 08:00 (the horizon is Dec 7, 09:00)
    assert [due for step, due in found if step == "bp_request"] == [utc(2026, 11, 30, 0, 30), utc(2026, 12, 7, 0, 30)]
    assert not [step for step, _ in found if step in ("no_reading_alert", "monthly_summary")]
    with session_scope(crm_url) as session:
        first = (
            session.execute(
                select(OutboxMessage).where(OutboxMessage.plan_id == plan_id).order_by(OutboxMessage.due_at)
            )
            .scalars()
            .first()
        )
        assert first.params["drug"] == "氨氯地平" and first.params["time"] == "20:00"


def test_appointment_reminders_24h_and_2h_before(crm_url: str, patient_id: int) -> None:
    appointment = datetime(2026, 11, 25, 9, 0, tzinfo=SHANGHAI)
    plan_id = enroll(crm_url, patient_id, "appointment_reminders", appointment, department="心血管内科")
    assert rows(crm_url, plan_id) == [("before_24h", utc(2026, 11, 24, 1, 0)), ("before_2h", utc(2026, 11, 24, 23, 0))]
    with session_scope(crm_url) as session:
        urgent = {r.step: r.urgent for r in session.execute(select(OutboxMessage)).scalars()}
    assert urgent == {"before_24h": False, "before_2h": True}


def test_times_follow_the_patients_own_zone(crm_url: str, patient_id: int) -> None:
    with session_scope(crm_url) as session:
        session.get(Patient, patient_id).timezone = "America/New_York"
    plan_id = enroll(crm_url, patient_id, "after_surgery", datetime(2026, 11, 23, 15, 0, tzinfo=SHANGHAI))
    # discharged 15:00 Shanghai = 02:00 New York on Nov 23: day 1 is Nov 24, 10:00 New York = 15:00 UTC
    assert rows(crm_url, plan_id)[0] == ("day1_checkin", utc(2026, 11, 24, 15, 0))


def test_enrolment_and_expansion_are_idempotent(crm_url: str, patient_id: int) -> None:
    first = enroll(crm_url, patient_id, "hypertension", NOW, times=["08:00"])
    before = rows(crm_url, first)
    assert enroll(crm_url, patient_id, "hypertension", NOW, times=["08:00"]) == first
    with session_scope(crm_url) as session:
        plan = session.get(plans.CarePlan, first)
        plan.expanded_until = None  # as if another scheduler expanded the same window again
        assert plans.expand(session, plan, now=NOW) == 0
    assert rows(crm_url, first) == before


@pytest.mark.parametrize(
    "step, message",
    [
        ({"id": "x", "kind": "fortnightly", "message": "m"}, "unknown kind 'fortnightly'"),
        ({"id": "x", "kind": "at", "day": 1, "time": "25:00", "message": "m"}, "is not a local time"),
        ({"id": "x", "kind": "at", "offset": "tomorrow", "message": "m"}, "is not like '-24h'"),
        ({"kind": "at", "message": "m"}, "needs 'id'"),
    ],
)
def test_template_mistakes_are_named(tmp_path: Path, step: Dict[str, Any], message: str) -> None:
    import yaml

    path = tmp_path / "bad.yml"
    path.write_text(yaml.safe_dump({"name": "bad", "steps": [step]}), encoding="utf-8")
    with pytest.raises(plans.PlanError, match=message):
        template = plans.load_template(path)
        list(template.steps[0].kind.occurrences(NOW, SHANGHAI, {}, NOW, NOW.replace(year=2027)))


def test_unknown_template_and_patient_are_refused(crm_url: str, patient_id: int) -> None:
    with pytest.raises(plans.PlanError, match="unknown care-plan template 'yoga'"):
        enroll(crm_url, patient_id, "yoga", NOW)
    with pytest.raises(plans.PlanError, match="no patient with id 999999"):
        enroll(crm_url, 999999, "birthday", NOW)
