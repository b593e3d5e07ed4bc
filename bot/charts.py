"""Trend charts of a patient's readings (blood pressure, glucose...) as PNG, for monthly summaries and nurses.

A chart is a picture a patient or nurse reads at a glance, so it speaks their language: titles and axis labels
come from the notices catalogs (`chart.*` keys, bot/locale/), dates are shown in the patient's time zone.

Chinese labels need a font with CJK glyphs. Without one matplotlib draws a box (tofu) for every character, so
when fontconfig knows no Chinese font (`fc-list :lang=zh` prints nothing, as on a bare server or CI image) the
chart falls back to the English catalog, dates included. Install a font (e.g. `apt-get install fonts-noto-cjk`)
to get Chinese charts; the font is looked up once per process.

Drawing uses matplotlib's object API on the Agg canvas (no pyplot, no global figure state); a lock serialises
drawing because the CJK font is selected through matplotlib's process-wide rcParams.
"""

from __future__ import annotations

import io
import logging
import shutil
import subprocess
import threading
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
from functools import lru_cache
from typing import Dict, Iterator, List, Mapping, Optional, Sequence, Tuple

import matplotlib
from babel.dates import format_datetime
from babel.numbers import format_decimal
from matplotlib import dates as mdates
from matplotlib import font_manager
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from bot import notices
from bot.triage.readings import UNITS

logger = logging.getLogger(__name__)

Reading = Tuple[datetime, Dict[str, float]]
Points = List[Tuple[datetime, float]]

# Which values of a reading become lines; a kind not listed here has one line, its "value".
SERIES: Dict[str, Tuple[str, ...]] = {"blood_pressure": ("systolic", "diastolic")}
COLORS = {"systolic": "#c0392b", "diastolic": "#2471a3", "value": "#1f6f8b"}
THRESHOLD_COLOR = "#7f8c8d"
CJK_LANGUAGES = frozenset({"zh", "ja", "ko"})
FIGURE_SIZE = (8.0, 4.5)  # inches at 100 dpi: 800 x 450 px, readable on a phone in WeChat
_DRAWING = threading.Lock()


# ----------------------------------------------------------------------------------------------
# Fonts and language
# ----------------------------------------------------------------------------------------------
@lru_cache(maxsize=1)
def cjk_font() -> Optional[str]:
    """The file of a font with Chinese glyphs that fontconfig knows (`fc-list :lang=zh`), or None."""
    if shutil.which("fc-list") is None:
        logger.info("fc-list not found: no CJK font lookup, charts use English labels")
        return None
    try:
        listing = subprocess.run(
            ["fc-list", ":lang=zh", "file"], capture_output=True, text=True, timeout=10, check=False
        ).stdout
    except (OSError, subprocess.SubprocessError) as error:
        logger.warning("fc-list failed (%s): charts use English labels", error)
        return None
    files = sorted(line.split(":")[0].strip() for line in listing.splitlines() if line.strip())
    usable = [path for path in files if path.lower().endswith((".ttf", ".otf", ".ttc"))]
    return usable[0] if usable else None


def chart_locale(locale: str) -> str:
    """The catalog the labels come from: the patient's, or en when its script needs a CJK font the machine lacks."""
    name = notices.catalog_locale(locale)
    if name.split("_")[0] in CJK_LANGUAGES and cjk_font() is None:
        return "en"
    return name


@lru_cache(maxsize=4)
def _font_family(path: str) -> str:
    """Register a font file with matplotlib (once) and return its family name."""
    font_manager.fontManager.addfont(path)
    return font_manager.FontProperties(fname=path).get_name()


@contextmanager
def _fonts_for(locale: str) -> Iterator[None]:
    """Select the CJK font while drawing a CJK chart; other charts keep matplotlib's default."""
    font = cjk_font()
    if font is None or locale.split("_")[0] not in CJK_LANGUAGES:
        yield
        return
    family = _font_family(font)
    overrides = {"font.family": "sans-serif", "font.sans-serif": [family, "DejaVu Sans"], "axes.unicode_minus": False}
    with matplotlib.rc_context(overrides):
        yield


# ----------------------------------------------------------------------------------------------
# Data
# ----------------------------------------------------------------------------------------------
def _as_utc(moment: datetime) -> datetime:
    """Aware datetimes as they are; naive ones are UTC, as the CRM stores them."""
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=timezone.utc)


def _series(readings: Sequence[Reading], kind: str) -> Dict[str, Points]:
    """Time-ordered points per line; a reading missing one value (a systolic-only report) skips that line only."""
    if kind not in UNITS:
        raise ValueError(f"no trend chart for reading kind {kind!r}; use one of {', '.join(sorted(UNITS))}")
    if not readings:
        raise ValueError(f"no {kind} readings to chart: a trend needs at least one reading")
    names = SERIES.get(kind, ("value",))
    ordered = sorted(((_as_utc(taken_at), values) for taken_at, values in readings), key=lambda item: item[0])
    series = {
        name: [(taken_at, float(values[name])) for taken_at, values in ordered if values.get(name) is not None]
        for name in names
    }
    if not any(series.values()):
        raise ValueError(f"the {kind} readings carry no {'/'.join(names)} values to chart")
    return series


def _zone(tz: str) -> ZoneInfo:
    try:
        return ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError) as error:
        raise ValueError(f"unknown time zone {tz!r}: use an IANA name such as Asia/Shanghai") from error


# ----------------------------------------------------------------------------------------------
# Drawing
# ----------------------------------------------------------------------------------------------
def _threshold_color(name: str) -> str:
    """A threshold named after a line ('systolic', 'systolic_severe') takes that line's color."""
    for series_name, color in COLORS.items():
        if name.startswith(series_name):
            return color
    return THRESHOLD_COLOR


def _draw_thresholds(axes: Axes, thresholds: Mapping[str, float], locale: str) -> None:
    for name, value in sorted(thresholds.items(), key=lambda item: item[1]):
        color = _threshold_color(name)
        axes.axhline(value, linestyle="--", linewidth=1, color=color, alpha=0.8)
        axes.annotate(
            format_decimal(value, locale=locale),
            xy=(1, value),
            xycoords=("axes fraction", "data"),
            xytext=(3, 0),
            textcoords="offset points",
            va="center",
            fontsize=8,
            color=color,
        )


def _date_axis(axes: Axes, first: datetime, last: datetime, zone: ZoneInfo, locale: str) -> None:
    """Ticks at local midnights/hours of the patient's zone, labelled with the catalog's chart date pattern."""
    span = last - first
    if span < timedelta(hours=1):  # one reading, or a few at once: show the day around it, not four years
        axes.set_xlim(first - timedelta(hours=12), last + timedelta(hours=12))
    pattern = notices.translate("format.chart_hour" if span <= timedelta(days=2) else "format.chart_day", locale=locale)
    axes.xaxis.set_major_locator(mdates.AutoDateLocator(tz=zone, minticks=3, maxticks=7))
    axes.xaxis.set_major_formatter(
        FuncFormatter(lambda x, _pos: format_datetime(mdates.num2date(x, tz=zone), pattern, tzinfo=zone, locale=locale))
    )
    axes.tick_params(axis="x", labelrotation=30, labelsize=8)


def _draw(
    series: Mapping[str, Points], kind: str, zone: ZoneInfo, locale: str, thresholds: Mapping[str, float]
) -> Figure:
    figure = Figure(figsize=FIGURE_SIZE, dpi=100, constrained_layout=True)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    for name, points in series.items():
        if points:
            label = notices.translate(f"chart.series.{name}", locale=locale) if len(series) > 1 else None
            times, values = zip(*points)
            marker_size = 5 if len(points) <= 30 else 3
            axes.plot(times, values, marker="o", markersize=marker_size, linewidth=1.5, color=COLORS[name], label=label)
    _draw_thresholds(axes, thresholds, locale)
    all_times = [taken_at for points in series.values() for taken_at, _ in points]
    _date_axis(axes, min(all_times), max(all_times), zone, locale)
    axes.set_title(notices.translate(f"chart.{kind}.title", locale=locale))
    axes.set_xlabel(notices.translate("chart.axis.date", locale=locale))
    axes.set_ylabel(notices.translate("chart.axis.value", {"unit": UNITS[kind]}, locale=locale))
    axes.grid(True, alpha=0.3)
    if len(series) > 1:
        axes.legend(loc="upper left", fontsize=9)
    return figure


def trend_png(
    readings: Sequence[Tuple[datetime, Dict[str, float]]],
    kind: str,
    *,
    tz: str = "Asia/Shanghai",
    locale: str = "zh_CN",
    thresholds: Optional[Dict[str, float]] = None,
) -> bytes:
    """A PNG of a patient's `kind` readings over time, dates in `tz`, labels in `locale` (or English, see above).

    `readings` are (taken_at, values) as MeasurementReading stores them: taken_at aware or naive UTC, values
    {"systolic": 150, "diastolic": 95} for blood_pressure (two lines) and {"value": 6.1} otherwise. `thresholds`
    draws dashed lines, named freely ({"systolic": 140, "systolic_severe": 180, "diastolic": 90} or
    {"low": 3.9, "high": 10}); a name starting with a line's name takes its color. The PNG's Title metadata holds
    the chart title. Raises ValueError for no readings, an unknown kind or time zone.
    """
    series = _series(readings, kind)
    zone = _zone(tz)
    label_locale = chart_locale(locale)
    with _DRAWING, _fonts_for(label_locale):
        figure = _draw(series, kind, zone, label_locale, thresholds or {})
        title = figure.axes[0].get_title()
        buffer = io.BytesIO()
        figure.savefig(buffer, format="png", metadata={"Title": title})
    return buffer.getvalue()
