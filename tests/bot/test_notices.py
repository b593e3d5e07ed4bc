"""Pushed messages as patients and nurses receive them: every key in Chinese and English, times in the patient's
own zone, safe fallbacks, and errors instead of half-filled messages. Also the catalog check the build runs."""

from __future__ import annotations

import logging
import subprocess
import sys
from datetime import date, datetime, time, timezone
from pathlib import Path
from typing import Dict, Iterator

import pytest
import yaml
from babel.messages.catalog import Catalog
from babel.messages.pofile import write_po

from bot import notices
from bot.notices import (
    NOTICE_KEYS,
    SUMMARY_LIMIT,
    CatalogError,
    InvalidParameter,
    MissingParameter,
    Notice,
    Term,
    UnknownNotice,
    render,
)
from tests.conftest import PROJECT_ROOT

UTC = timezone.utc
# Tuesday 24 November 2026, 01:30 UTC: 09:30 in Shanghai, 20:30 the evening before in New York.
APPOINTMENT = datetime(2026, 11, 24, 1, 30, tzinfo=UTC)
SAMPLE = {
    "name": "张三",
    "drug": "二甲双胍",
    "dose": "0.5克",
    "time": datetime(2026, 11, 24, 0, 0, tzinfo=UTC),
    "date": date(2026, 11, 24),
    "datetime": APPOINTMENT,
    "department": "心内科",
    "doctor": "王明",
    "location": "门诊楼3楼",
    "days": 14,
    "count": 3,
    "reading": "血压 150/95 mmHg",
    "hospital_phone": "0571-8888 1234",
    "summary": "平均 132/84 mmHg，最高 148/92 mmHg",
    "measurement": Term("measurement.blood_pressure"),
}
APPOINTMENT_PARAMS = {**SAMPLE, "department": "Cardiology", "doctor": "Wang", "location": "Building 2"}


# ----------------------------------------------------------------------------------------------
# every message, both languages
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("locale", ["zh_CN", "en"])
@pytest.mark.parametrize("key", NOTICE_KEYS)
def test_every_message_renders_completely_in_both_languages(key: str, locale: str) -> None:
    notice = render(key, SAMPLE, locale=locale)
    assert notice.locale == locale
    for text in (notice.text, notice.summary):
        assert text and "{" not in text and "}" not in text and "None" not in text
    assert 0 < len(notice.summary) <= SUMMARY_LIMIT


@pytest.mark.parametrize("key", NOTICE_KEYS)
def test_chinese_and_english_are_real_translations(key: str) -> None:
    chinese, english = render(key, SAMPLE, locale="zh_CN"), render(key, SAMPLE, locale="en")
    assert chinese.text != english.text
    assert any("\u4e00" <= char <= "\u9fff" for char in chinese.summary)
    assert english.summary.isascii()


def test_the_real_catalogs_pass_the_check() -> None:
    assert notices.check_catalogs() == []
    result = subprocess.run(
        [sys.executable, "-m", "bot.notices", "check", "--templates", "data/care_plans"],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_care_plan_message_is_a_known_notice() -> None:
    used = notices.template_messages()
    assert used, "the care plans name their messages"
    assert set(used) <= set(NOTICE_KEYS)


# ----------------------------------------------------------------------------------------------
# dates and times for the patient's locale and zone
# ----------------------------------------------------------------------------------------------
def test_a_utc_appointment_is_shown_in_shanghai_time() -> None:
    notice = render("appointment_reminder_24h", SAMPLE)
    assert "11月24日 星期二 上午9:30" in notice.text


def test_a_naive_datetime_means_utc_as_the_crm_stores_it() -> None:
    naive = {**SAMPLE, "datetime": APPOINTMENT.replace(tzinfo=None)}
    assert render("appointment_reminder_24h", naive).text == render("appointment_reminder_24h", SAMPLE).text


def test_a_new_york_patient_sees_new_york_time_in_english() -> None:
    notice = render("appointment_reminder_24h", APPOINTMENT_PARAMS, locale="en_US", tz="America/New_York")
    assert "Mon, Nov 23, 8:30 PM" in notice.text
    summer = {**APPOINTMENT_PARAMS, "datetime": datetime(2026, 7, 1, 12, 0, tzinfo=UTC)}
    assert "Wed, Jul 1, 8:00 AM" in render("appointment_reminder_24h", summer, locale="en", tz="America/New_York").text


def test_the_time_placeholder_shows_the_time_of_day_in_each_language() -> None:
    chinese = render("medication_reminder", SAMPLE)
    english = render("medication_reminder", SAMPLE, locale="en")
    assert "上午8:00该服药了" in chinese.text
    assert "(8:00 AM)" in english.text
    assert "11月" not in chinese.text and "Nov" not in english.text


def test_a_dose_time_without_a_date_is_taken_as_local_wall_time() -> None:
    evening = {**SAMPLE, "time": time(20, 0)}
    assert "下午8:00" in render("medication_reminder", evening, tz="America/New_York").text
    assert "8:00 PM" in render("medication_reminder", evening, locale="en").text


def test_a_date_is_shown_as_a_full_date() -> None:
    day_only = {**SAMPLE, "datetime": date(2026, 11, 24)}
    assert "2026年11月24日星期二" in render("chemo_cycle_booking", day_only).text
    assert "Tuesday, November 24, 2026" in render("chemo_cycle_booking", day_only, locale="en").text


def test_a_measurement_term_is_translated_with_the_message() -> None:
    params = {**SAMPLE, "measurement": Term("measurement.glucose")}
    assert "未上报血糖" in render("nurse_alert_no_reading", params).text
    assert "any blood glucose reading" in render("nurse_alert_no_reading", params, locale="en").text


def test_pre_formatted_strings_are_used_as_given() -> None:
    params = {**SAMPLE, "datetime": "明天上午"}
    assert "提醒您明天就诊：明天上午，" in render("appointment_reminder_24h", params).text


# ----------------------------------------------------------------------------------------------
# locales and fallbacks
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("asked", "served"),
    [
        ("zh_CN", "zh_CN"),
        ("zh-CN", "zh_CN"),
        ("zh_Hans_CN", "zh_CN"),
        ("zh_TW", "zh_CN"),
        ("en", "en"),
        ("en_US", "en"),
        ("en-GB", "en"),
        ("fr", "zh_CN"),
        ("xx_YY", "zh_CN"),
        ("", "zh_CN"),
    ],
)
def test_patient_locales_are_normalised_to_a_catalog(asked: str, served: str) -> None:
    assert notices.catalog_locale(asked) == served
    assert render("birthday_greeting", {"name": "张三"}, locale=asked).locale == served


def write_catalog(path: Path, locale: str, entries: Dict[str, str]) -> None:
    catalog = Catalog(locale=locale, domain="notices")
    for key, text in entries.items():
        catalog.add(key, text)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as handle:
        write_po(handle, catalog)


@pytest.fixture
def locale_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """Catalogs written by the test, read through the same code as the real ones."""
    directory = tmp_path / "locale"
    monkeypatch.setattr(notices, "LOCALE_DIR", directory)
    notices.reload_catalogs()
    yield directory
    monkeypatch.undo()
    notices.reload_catalogs()


def test_a_key_missing_in_the_patients_language_falls_back_to_chinese_then_english(
    locale_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    write_catalog(notices.po_path("zh_CN", locale_dir), "zh_CN", {"flu_shot": "{name}您好，流感疫苗已到货。"})
    write_catalog(
        notices.po_path("en", locale_dir),
        "en",
        {"fasting_note": "{name}, please fast from midnight.", "fasting_note.summary": "Fast from midnight"},
    )
    notices.reload_catalogs()

    english_patient = render("flu_shot", {"name": "Li"}, locale="en")
    assert english_patient == Notice(text="Li您好，流感疫苗已到货。", summary="", locale="zh_CN")
    assert "flu_shot" in caplog.text and logging.WARNING in {record.levelno for record in caplog.records}

    chinese_patient = render("fasting_note", {"name": "李四"})
    assert chinese_patient == Notice(text="李四, please fast from midnight.", summary="Fast from midnight", locale="en")


# ----------------------------------------------------------------------------------------------
# errors instead of wrong messages
# ----------------------------------------------------------------------------------------------
def test_an_unknown_key_says_where_to_add_it() -> None:
    with pytest.raises(UnknownNotice) as raised:
        render("flu_shot_reminder", SAMPLE)
    assert isinstance(raised.value, KeyError)
    assert "'flu_shot_reminder'" in str(raised.value) and "python -m bot.notices check" in str(raised.value)


@pytest.mark.parametrize("empty", [None, "", "  "])
def test_a_missing_parameter_is_named_and_nothing_is_sent(empty: object) -> None:
    params = {key: value for key, value in SAMPLE.items() if key != "drug"}
    with pytest.raises(MissingParameter) as raised:
        render("medication_reminder", params)
    assert raised.value.names == ("drug",) and "drug" in str(raised.value)
    with pytest.raises(MissingParameter, match="dose"):
        render("medication_reminder", {**SAMPLE, "dose": empty})


def test_an_unknown_time_zone_is_refused() -> None:
    with pytest.raises(InvalidParameter, match="Asia/Shanghai"):
        render("medication_reminder", SAMPLE, tz="Mars/Olympus")


def test_a_value_with_no_patient_facing_form_is_refused() -> None:
    with pytest.raises(InvalidParameter, match="dose"):
        render("medication_reminder", {**SAMPLE, "dose": object()})


def test_a_catalog_cannot_reach_into_parameter_attributes(locale_dir: Path) -> None:
    write_catalog(notices.po_path("zh_CN", locale_dir), "zh_CN", {"leaky": "{name.__class__}"})
    notices.reload_catalogs()
    with pytest.raises(CatalogError, match="plain name"):
        render("leaky", {"name": "张三"})


# ----------------------------------------------------------------------------------------------
# the check and the command line
# ----------------------------------------------------------------------------------------------
def test_the_check_reports_what_a_translator_got_wrong(tmp_path: Path) -> None:
    locale_dir, templates = tmp_path / "locale", tmp_path / "plans"
    keys = {**{key: "x" for key in NOTICE_KEYS}, **{f"{key}.summary": "x" for key in NOTICE_KEYS}}
    zh = {
        **keys,
        "bp_request": "{name}您好，请测血压。",
        "bp_request.summary": "请您今天早上起床后安静休息五分钟再测量血压并回复",
    }
    en = {**keys, "bp_request": "Hello {patient}, please check your blood pressure."}
    del en["birthday_greeting"]
    write_catalog(locale_dir / "notices.pot", "zh_CN", dict.fromkeys(keys, ""))
    write_catalog(notices.po_path("zh_CN", locale_dir), "zh_CN", zh)
    write_catalog(notices.po_path("en", locale_dir), "en", en)
    templates.mkdir()
    plan = {"name": "flu", "steps": [{"id": "shot", "kind": "at", "day": 0, "message": "flu_shot"}]}
    (templates / "flu.yml").write_text(yaml.safe_dump(plan), encoding="utf-8")

    problems = "\n".join(notices.check_catalogs(templates, locale_dir))

    assert "notices.pot: 'flu_shot' (used by flu.yml) is missing" in problems
    assert "en: 'birthday_greeting' is missing" in problems
    assert "zh_CN: 'flu_shot.summary' is missing" in problems
    assert "zh_CN: 'bp_request.summary' has 24 characters, more than 20" in problems
    assert "'bp_request': placeholders differ" in problems


def test_check_exits_1_when_a_care_plan_names_an_unknown_message(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    plan = {"name": "flu", "steps": [{"id": "shot", "kind": "at", "day": 0, "message": "flu_shot"}]}
    (tmp_path / "flu.yml").write_text(yaml.safe_dump(plan), encoding="utf-8")
    assert notices.main(["check", "--templates", str(tmp_path)]) == 1
    assert "'flu_shot'" in capsys.readouterr().out


def test_show_prints_a_message_as_the_patient_gets_it(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["show", "appointment_reminder_2h", "--locale", "en", "--tz", "America/New_York"]
    argv += ["--param", "name=张三", "--param", "time=2026-11-24T14:00Z"]
    argv += ["--param", "department=Cardiology", "--param", "location=Building 2"]
    assert notices.main(argv) == 0
    out = capsys.readouterr().out
    assert "[en] Hello 张三, your appointment at Cardiology is today at 9:00 AM" in out
    assert "summary: Appointment in 2h" in out


def test_show_names_the_missing_parameter(capsys: pytest.CaptureFixture[str]) -> None:
    assert notices.main(["show", "birthday_greeting"]) == 1
    assert "name" in capsys.readouterr().err


def test_a_patient_without_a_recorded_zone_gets_the_hospitals() -> None:
    assert render("appointment_reminder_24h", SAMPLE, tz=None).text == render("appointment_reminder_24h", SAMPLE).text
