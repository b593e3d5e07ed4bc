"""Triage as staff and patients see it: red flags with their look-alikes, readings, departments, the command."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import yaml

from bot.triage import assess, urgency
from bot.triage.departments import age_in
from bot.triage.readings import judge, parse
from bot.triage.redflags import detect, lexicon, subject
from tests.conftest import PROJECT_ROOT

SELFTEST = PROJECT_ROOT / "data" / "triage" / "red_flags_selftest.yml"
CATEGORIES = {
    "chest_pain", "stroke", "breathing", "anaphylaxis", "consciousness", "seizure", "bleeding", "suicide_self_harm",
    "poisoning_overdose", "severe_pain", "shock", "fever", "head_injury", "choking",
}  # fmt: skip


def _cases():
    return yaml.safe_load(SELFTEST.read_text(encoding="utf-8"))["cases"]


def test_every_category_of_clinical_md_is_in_the_lexicon() -> None:
    assert {category.id for category in lexicon().categories} == CATEGORIES
    assert {case["category"] for case in _cases()} == CATEGORIES
    by_category = {c: [case for case in _cases() if case["category"] == c] for c in CATEGORIES}
    for category, cases in by_category.items():
        assert any(case["fires"] for case in cases) and any(not case["fires"] for case in cases), category


@pytest.mark.parametrize("case", _cases(), ids=lambda case: f"{case['category']}-{case['text'][:12]}")
def test_red_flag_cases(case) -> None:
    level, findings, _ = urgency(case["text"])
    current = {f.category for f in findings if f.status == "current"}
    if case["fires"]:
        assert level <= 2, (case, findings)
        assert case["category"] in current, findings
    else:
        assert case["category"] not in current, (case, findings)
        assert level >= 3, (case, findings)


@pytest.mark.parametrize(
    ("text", "status"),
    [
        ("突然胸口压着疼，出了一身冷汗", "current"),
        ("没有胸痛，就是有点咳嗽", None),
        ("以前中过风，现在想挂个复查的号", None),
        ("我以前就有癫痫，今天又犯了", "current"),
        ("晕倒过一次，现在没事了", "resolved"),
        ("上周晕倒过一次", "history"),
        ("中风有哪些前兆？", None),
        ("我爸突然嘴歪了，说话也不清楚", "current"),
    ],
)
def test_negation_history_and_informational_context(text: str, status) -> None:
    findings = [f for f in detect(text) if f.status in ("current", "history", "resolved")]
    assert (findings[0].status if findings else None) == status, findings


def test_history_and_resolved_mean_a_visit_soon_not_an_emergency() -> None:
    level, _, _ = urgency("上周晕倒过一次，现在没事了")
    assert level == 3


def test_third_parties_are_emergencies_too_and_named() -> None:
    result = assess("我爸突然嘴歪了，说话也不清楚，左手也抬不起来")
    assert result.red_flag and result.level <= 2
    assert subject("我爸突然嘴歪了") == "父亲"
    assert any(reason.startswith("stroke") for reason in result.reasons)


def test_suicide_is_a_crisis() -> None:
    result = assess("活着没意思，安眠药我已经攒够了")
    assert result.red_flag and result.crisis
    assert not assess("今天加班累死了").red_flag
    assert not assess("笑死我了哈哈哈").red_flag


@pytest.mark.parametrize(
    ("text", "kind", "values"),
    [
        ("血压180/110", "blood_pressure", {"systolic": 180, "diastolic": 110}),
        ("高压一百八十五", "blood_pressure", {"systolic": 185}),
        ("心率38", "heart_rate", {"value": 38}),
        ("血氧饱和度只有八十八", "spo2", {"value": 88}),
        ("空腹血糖126mg/dl", "glucose", {"value": 7.0}),
        ("体温39度5", "temperature", {"value": 39.5}),
        ("体重130斤", "weight", {"value": 65}),
    ],
)
def test_readings_are_parsed_with_units(text: str, kind: str, values: dict) -> None:
    [reading] = parse(text)
    assert reading.kind == kind
    assert reading.values == pytest.approx(values)


def test_dates_and_times_are_not_blood_pressure() -> None:
    assert parse("3/5号挂号") == []
    assert parse("9-10点有空") == []


@pytest.mark.parametrize(
    ("text", "level"),
    [
        ("心率38", 1),
        ("心率45", 2),
        ("心率72", 4),
        ("血氧76", 1),
        ("血氧85", 2),
        ("血糖2.8", 1),
        ("收缩压75", 2),
        ("血压185/100", 3),
        ("血压185/100，头痛得厉害，看东西模糊", 2),
        ("血压210/120", 2),
        ("体温41.5度", 1),
        ("血压135/85", 4),
    ],
)
def test_reading_thresholds_of_clinical_md(text: str, level: int) -> None:
    findings = judge(parse(text), text)
    assert (findings[0].level if findings else 4) == level


def test_age_is_read_from_text() -> None:
    assert age_in("宝宝3个月，发烧") == pytest.approx(0.25)
    assert age_in("我今年45岁") == 45
    assert age_in("头疼") is None


def test_departments_ranked_with_scores() -> None:
    result = assess("乙肝小三阳，转氨酶有点高，要不要吃恩替卡韦")
    assert result.departments[0].code == "hepatology"
    assert 1 <= len(result.departments) <= 3
    scores = [d.score for d in result.departments]
    assert scores == sorted(scores, reverse=True) and all(0 <= s <= 1 for s in scores)
    assert scores[0] > 0.5


def test_age_and_sex_change_the_department() -> None:
    assert assess("发烧咳嗽三天了", age=4).departments[0].code == "pediatrics"
    assert assess("我家宝宝拉肚子两天了").departments[0].code == "pediatrics"
    assert assess("下腹痛，白带有异味").departments[0].code == "gynecology"
    assert "gynecology" not in [d.code for d in assess("下腹痛，尿频尿急", sex="male").departments]
    assert assess("怀孕12周了，下腹有点坠胀").departments[0].code == "obstetrics"


def _command(lines: str) -> list:
    done = subprocess.run(
        [sys.executable, "-m", "bot.triage"],
        input=lines,
        capture_output=True,
        text=True,
        cwd=PROJECT_ROOT,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    return [json.loads(line) for line in done.stdout.splitlines()]


def test_command_answers_every_line_and_survives_bad_ones() -> None:
    out = _command(
        "\n".join(
            [
                json.dumps({"text": "我爸突然说话不清楚，嘴也歪了", "age": 70}, ensure_ascii=False),
                "not json",
                json.dumps({"text": ""}),
                json.dumps({"text": "胃胀反酸一个月了😣", "sex": "女"}, ensure_ascii=False),
                json.dumps({"text": "头疼", "age": "十岁"}, ensure_ascii=False),
                json.dumps(["a list"]),
            ]
        )
        + "\n"
    )
    assert len(out) == 6
    first, bad_json, empty, stomach, bad_age, not_object = out
    assert set(first) == {"text", "level", "red_flag", "reasons", "departments"}
    assert first["red_flag"] is True and first["level"] <= 2 and first["reasons"]
    assert bad_json["line"] == 2 and "JSON" in bad_json["error"]
    assert empty["line"] == 3 and "text" in empty["error"]
    assert stomach["red_flag"] is False and stomach["departments"][0]["code"] == "gastroenterology"
    assert bad_age["line"] == 5 and "age" in bad_age["error"]
    assert not_object["line"] == 6
