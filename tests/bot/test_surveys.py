"""Questionnaires: wording and scoring as CLINICAL.md says, replies read the way patients write them, answers
stored item by item on SQLite and PostgreSQL, FHIR R4 export."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from fhir.resources.questionnaireresponse import QuestionnaireResponse

from bot.crm import surveys
from bot.crm.models import AuditEntry, Patient, SurveyStatus
from bot.db import session_scope
from bot.surveys import answers, fhir, instruments
from tests.conftest import PROJECT_ROOT, migrate_and_seed

PHQ9_ITEMS = [
    "做事时提不起劲或没有兴趣",
    "感到心情低落、沮丧或绝望",
    "入睡困难、睡不安稳或睡眠过多",
    "感觉疲倦或没有活力",
    "食欲不振或吃太多",
    "觉得自己很糟，或觉得自己很失败，或让自己或家人失望",
    "对事物专注有困难，例如阅读报纸或看电视时",
    "动作或说话速度缓慢到别人已经察觉？或正好相反——烦躁或坐立不安、动来动去的情况更胜于平常",
    "有不如死掉或用某种方式伤害自己的念头",
]
GAD7_ITEMS = [
    "感觉紧张、焦虑或急切",
    "不能够停止或控制担忧",
    "对各种各样的事情担忧过多",
    "很难放松下来",
    "由于不安而无法静坐",
    "变得容易烦恼或急躁",
    "感到似乎将有可怕的事情发生而害怕",
]


def test_wording_and_codes_are_exactly_clinical_md() -> None:
    phq9, gad7 = instruments.get("phq9"), instruments.get("gad7")
    assert [item.text for item in phq9.items] == PHQ9_ITEMS
    assert [item.text for item in gad7.items] == GAD7_ITEMS
    assert phq9.stem == "在过去的两周里，以下问题困扰您的频率有多少？"
    assert gad7.stem == "在过去的两周里，有多少时候您受到以下任何问题困扰？"
    assert [(o.value, o.label) for o in phq9.options["frequency"]] == [
        (0, "完全不会"), (1, "好几天"), (2, "一半以上的天数"), (3, "几乎每天"),
    ]  # fmt: skip
    assert (phq9.loinc_panel, phq9.loinc_total, gad7.loinc_panel, gad7.loinc_total) == (
        "44249-1", "44261-6", "69737-5", "70274-6",
    )  # fmt: skip
    assert phq9.max_score == 27 and gad7.max_score == 21
    assert [item.safety for item in phq9.items] == [False] * 8 + [True]


@pytest.mark.parametrize(
    ("key", "score", "band"),
    [
        ("phq9", 0, "minimal"), ("phq9", 4, "minimal"), ("phq9", 5, "mild"), ("phq9", 9, "mild"),
        ("phq9", 10, "moderate"), ("phq9", 14, "moderate"), ("phq9", 15, "moderately_severe"),
        ("phq9", 19, "moderately_severe"), ("phq9", 20, "severe"), ("phq9", 27, "severe"),
        ("gad7", 4, "minimal"), ("gad7", 5, "mild"), ("gad7", 10, "moderate"), ("gad7", 14, "moderate"),
        ("gad7", 15, "severe"), ("gad7", 21, "severe"),
    ],
)  # fmt: skip
def test_published_score_bands(key: str, score: int, band: str) -> None:
    assert instruments.get(key).band(score).code == band


@pytest.mark.parametrize(
    ("scale", "text", "kind", "value"),
    [
        ("frequency", "好几天", "answer", 1),
        ("frequency", "2", "answer", 2),
        ("frequency", "B", "answer", 1),
        ("frequency", "d", "answer", 3),
        ("frequency", "几乎每天都这样", "answer", 3),
        ("frequency", "完全不会", "answer", 0),
        ("frequency", "一半以上的天数", "answer", 2),
        ("frequency", "８", "invalid", None),
        ("frequency", "跳过", "skip", None),
        ("frequency", "等会再说", "pause", None),
        ("frequency", "不做了", "refuse", None),
        ("rating", "5分", "answer", 5),
        ("rating", "五星", "answer", 5),
        ("rating", "⭐⭐⭐⭐", "answer", 4),
        ("rating", "非常满意", "answer", 5),
        ("rating", "还行", "answer", 3),
        ("rating", "不满意", "answer", 2),
        ("rating", "十分满意", "answer", 5),
        ("rating", "7", "invalid", None),
        ("nps", "十分", "answer", 10),
        ("nps", "8", "answer", 8),
        ("nps", "8分", "answer", 8),
        ("nps", "满分", "answer", 10),
        ("nps", "11", "invalid", None),
        ("text", "医生很耐心，就是排队太久了，下次不用了吧哈哈", "answer", None),
        ("text", "跳过", "skip", None),
    ],
)
def test_replies_are_read_the_way_patients_write_them(scale: str, text: str, kind: str, value) -> None:
    reply = answers.read(scale, text)
    assert (reply.kind, reply.value) == (kind, value)


def _patient(session) -> int:  # type: ignore[no-untyped-def]
    patient = Patient(card_no="MZ-T1", name="测试", phone="+8613800000001")
    session.add(patient)
    session.flush()
    return patient.id


def test_answers_are_stored_item_by_item_then_scored_on_both_databases(crm_url: str) -> None:
    with session_scope(crm_url) as session:
        patient_id = _patient(session)
        response = surveys.start(session, sender_id="s1", instrument="phq9", patient_id=patient_id)
        for value in (3, 3, 2, 2, 1, 1, 0):
            surveys.record(session, response, surveys.next_item(response), value=value)
        surveys.record(session, response, surveys.next_item(response), skipped=True)
        surveys.record(session, response, surveys.next_item(response), value=1)
        assert surveys.next_item(response) is None
        outcome = surveys.finish(session, response)
        response_id = response.id
    assert (outcome.total, outcome.band, outcome.positive, outcome.safety_alert) == (13, "moderate", True, True)
    with session_scope(crm_url) as session:
        response = session.get(type(response), response_id)
        assert response.status == SurveyStatus.COMPLETED and response.total_score == 13
        assert [a.item for a in response.answers] == [str(n) for n in range(1, 10)]
        assert [a.skipped for a in response.answers] == [False] * 7 + [True, False]
        exported = fhir.questionnaire_response(response)
        QuestionnaireResponse.parse_obj(exported)  # valid FHIR R4
        assert exported["subject"] == {"reference": f"Patient/{patient_id}"}
        assert "answer" not in exported["item"][7]  # the skipped item is listed without an answer
        actions = [e.action for e in session.query(AuditEntry).filter(AuditEntry.entity == "survey_response")]
        assert actions == ["create", "complete"]


def test_a_paused_survey_resumes_the_same_response(crm_url: str) -> None:
    with session_scope(crm_url) as session:
        first = surveys.start(session, sender_id="s2", instrument="satisfaction")
        surveys.record(session, first, surveys.next_item(first), value=4)
        surveys.pause(session, first)
        again = surveys.start(session, sender_id="s2", instrument="satisfaction")
        assert again.id == first.id and again.status == SurveyStatus.IN_PROGRESS
        assert surveys.next_item(again).id == "nurse"
        surveys.refuse(session, again)
        assert surveys.open_response(session, "s2") is None
        assert surveys.start(session, sender_id="s2", instrument="satisfaction").id != first.id


def test_unknown_instruments_are_refused_before_anything_is_written(crm_url: str) -> None:
    with session_scope(crm_url) as session, pytest.raises(KeyError, match="unknown questionnaire"):
        surveys.start(session, sender_id="s3", instrument="mmse")


def test_export_command_writes_fhir_and_an_audit_entry(sqlite_url: str) -> None:
    migrate_and_seed(sqlite_url, days=1)
    with session_scope(sqlite_url) as session:
        response = surveys.start(session, sender_id="s4", instrument="gad7", patient_id=_patient(session))
        for _ in range(7):
            surveys.record(session, response, surveys.next_item(response), value=2)
        surveys.finish(session, response)
        response_id, patient_id = response.id, response.patient_id
    done = subprocess.run(
        [sys.executable, "-m", "bot.surveys", "export", "--patient", str(patient_id), "--actor", "nurse-li"],
        capture_output=True,
        text=True,
        cwd=PROJECT_ROOT,
        env={**os.environ, "DATABASE_URL": sqlite_url},
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    bundle = json.loads(done.stdout)
    assert bundle["resourceType"] == "Bundle" and len(bundle["entry"]) == 1
    resource = bundle["entry"][0]["resource"]
    assert resource["id"] == f"survey-{response_id}" and resource["questionnaire"] == "http://loinc.org/q/69737-5"
    assert resource["item"][-1]["answer"] == [{"valueInteger": 14}]
    with session_scope(sqlite_url) as session:
        assert session.query(AuditEntry).filter_by(actor="nurse-li", action="export").count() == 1
