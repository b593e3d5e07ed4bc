"""A patient's readings as a trend chart a nurse or the patient opens in WeChat: a real PNG, labels in their
language when the machine can draw it, dates in their own zone, and a plain error when there is nothing to draw."""

from __future__ import annotations

import io
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import List, Tuple

import matplotlib
import pytest

from bot import charts
from bot.charts import trend_png

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
START = datetime(2026, 10, 1, 0, 0, tzinfo=timezone.utc)  # 08:00 in Shanghai
BP_THRESHOLDS = {"systolic": 140, "systolic_severe": 180, "diastolic": 90}


def blood_pressure(count: int) -> List[Tuple[datetime, dict]]:
    """Twice-daily home readings drifting up and down."""
    return [
        (START + timedelta(hours=12 * i), {"systolic": 125 + (i * 7) % 40, "diastolic": 78 + (i * 3) % 18})
        for i in range(count)
    ]


def png_info(data: bytes) -> Tuple[Tuple[int, int], dict]:
    """Size and text metadata, read with Pillow when it is installed (it comes with matplotlib)."""
    image_module = pytest.importorskip("PIL.Image")
    with image_module.open(io.BytesIO(data)) as image:
        image.verify()
    with image_module.open(io.BytesIO(data)) as image:
        return image.size, dict(image.text)


def assert_png(data: bytes) -> None:
    assert data.startswith(PNG_MAGIC)
    assert len(data) > 1024


def test_a_blood_pressure_trend_is_a_png_with_both_lines_and_thresholds() -> None:
    data = trend_png(blood_pressure(60), "blood_pressure", thresholds=BP_THRESHOLDS)
    assert_png(data)
    size, text = png_info(data)
    assert size == (800, 450)
    assert text["Title"] in ("血压趋势", "Blood pressure")


def test_a_glucose_trend_with_low_and_high_lines() -> None:
    readings = [(START + timedelta(days=3 * i), {"value": 5.2 + (i % 5) * 1.3}) for i in range(20)]
    assert_png(trend_png(readings, "glucose", thresholds={"low": 3.9, "high": 10}, locale="en"))


def test_naive_times_are_utc_like_the_crm_stores_them() -> None:
    naive = [(taken_at.replace(tzinfo=None), values) for taken_at, values in blood_pressure(5)]
    assert trend_png(naive, "blood_pressure") == trend_png(blood_pressure(5), "blood_pressure")


@pytest.mark.parametrize("count", [1, 200])
def test_one_reading_or_two_hundred_are_drawn_fast(count: int) -> None:
    started = time.perf_counter()
    data = trend_png(blood_pressure(count), "blood_pressure", thresholds=BP_THRESHOLDS)
    assert time.perf_counter() - started < 2.0
    assert_png(data)
    assert png_info(data)[0] == (800, 450)


def test_no_readings_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="at least one reading"):
        trend_png([], "blood_pressure")


def test_readings_without_values_of_the_kind_are_a_clear_error() -> None:
    with pytest.raises(ValueError, match="systolic/diastolic"):
        trend_png([(START, {"value": 6.1})], "blood_pressure")


def test_an_unknown_kind_or_zone_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="blood_pressure"):
        trend_png([(START, {"value": 1.0})], "steps")
    with pytest.raises(ValueError, match="time zone"):
        trend_png(blood_pressure(2), "blood_pressure", tz="Mars/Olympus")


def test_a_systolic_only_report_still_charts() -> None:
    readings = [*blood_pressure(3), (START + timedelta(days=3), {"systolic": 150})]
    assert_png(trend_png(readings, "blood_pressure"))


def test_without_a_chinese_font_a_chinese_patient_gets_english_labels_not_boxes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(charts, "cjk_font", lambda: None)
    assert charts.chart_locale("zh_CN") == "en"
    assert png_info(trend_png(blood_pressure(3), "blood_pressure"))[1]["Title"] == "Blood pressure"


def test_with_a_chinese_font_the_labels_are_chinese(monkeypatch: pytest.MonkeyPatch) -> None:
    # Any font file exercises the font selection; this machine may have no CJK font (see fc-list :lang=zh).
    font = str(Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf")
    monkeypatch.setattr(charts, "cjk_font", lambda: font)
    assert charts.chart_locale("zh-CN") == "zh_CN"
    assert png_info(trend_png(blood_pressure(3), "blood_pressure"))[1]["Title"] == "血压趋势"
    assert charts.chart_locale("en_US") == "en"


def test_the_machine_decides_the_label_language() -> None:
    expected = "zh_CN" if charts.cjk_font() else "en"
    assert charts.chart_locale("zh_CN") == expected


def test_dates_are_labelled_in_the_patients_zone() -> None:
    readings = [(START + timedelta(hours=i), {"value": 6.0 + i}) for i in range(3)]  # 00:00-02:00 UTC
    shanghai = charts._draw(charts._series(readings, "glucose"), "glucose", charts._zone("Asia/Shanghai"), "en", {})
    new_york = charts._draw(charts._series(readings, "glucose"), "glucose", charts._zone("America/New_York"), "en", {})
    for figure in (shanghai, new_york):
        figure.canvas.draw()
    shanghai_ticks = " ".join(label.get_text() for label in shanghai.axes[0].get_xticklabels())
    new_york_ticks = " ".join(label.get_text() for label in new_york.axes[0].get_xticklabels())
    assert "Oct 1, 08:00" in shanghai_ticks
    assert "Sep 30, 20:00" in new_york_ticks
