"""The console's dashboard: follow-ups, reminder delivery, adherence, satisfaction/NPS, escalations and triage.

`metrics()` reads the CRM over the last `days` days and returns plain lists and dicts (`Dashboard.as_json()` for
templates and JSON); `chart_pngs()` draws one small PNG per section in the style of bot/charts.py.

Definitions (what a nurse reads on the charts):
- Follow-ups are outbox rows (care-plan pushes) due in the window, grouped by their catalog message key (the row's
  kind: medication_reminder, surgery_day1_checkin...). Completion = sent / (sent + failed + skipped): skipped
  pushes (opted out, nothing to say) did not reach the patient, so they count against it; pending rows (due but
  not out yet, `sending` included) are undecided and cancelled ones (plan or appointment cancelled) were never
  owed, so neither counts.
- Reminder delivery counts `deliveries` rows with purpose "reminder", every attempt (a fallback is a row of its
  own). sent_rate = (sent + delivered) / attempted, attempted being everything but skipped and still sending;
  delivered_rate = delivered / (delivered + undelivered), the share confirmed among messages with a receipt (SMS).
- Adherence = taken / (taken + missed) per week of the scheduled time; doses still `due` are undecided.
- Satisfaction: the mean of the satisfaction instrument's rating items (1-5) and NPS = % promoters (9-10) −
  % detractors (0-6) of its NPS-scale item (0-10), per week of the answer; skipped items do not count.
- Time to claim is created_at → claimed_at in minutes (median and p90, linear interpolation), per week of
  creation; `unclaimed` counts escalations still open without a claim.
- Triage counts records per urgency level (1 = most urgent) and the top-scoring department of each record.

Days and weeks (ISO, starting Monday) are the hospital's local dates (`tz`, by default HOSPITAL_TIMEZONE). The
database only filters by time and groups where no date function is needed, so SQLite and PostgreSQL both work.
"""

from __future__ import annotations

import io
import math
import statistics
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field
from datetime import date, datetime, time, timedelta, timezone
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from matplotlib import dates as mdates
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from sqlalchemy import and_, func, select
from sqlalchemy.orm import Session
from zoneinfo import ZoneInfo

from bot import catalog, clock, notices
from bot.charts import _DRAWING, _fonts_for, chart_locale
from bot.crm.models import (
    Delivery,
    DeliveryStatus,
    Escalation,
    EscalationStatus,
    MedicationDose,
    OutboxMessage,
    OutboxStatus,
    SurveyAnswer,
    SurveyResponse,
    TriageRecord,
)
from bot.surveys import instruments

REMINDER_CHANNELS = ("wechat", "sms", "voice")  # always listed, in this order, even without deliveries
TRIAGE_LEVELS = (1, 2, 3, 4)
TOP_DEPARTMENTS = 10
SATISFACTION = "satisfaction"
FIGURE_SIZE = (6.0, 3.0)  # 600 x 300 px at 100 dpi
DPI = 100
CHART_KEYS = ("followups", "delivery", "adherence", "satisfaction", "escalations", "triage")


@dataclass
class Dashboard:
    """Everything the dashboard shows, as plain data. Rates are 0-1 floats, or None when nothing was counted."""

    days: int
    since: datetime  # naive UTC, start of the window
    until: datetime  # naive UTC, end of the window ("now")
    timezone: str  # the zone days and weeks are counted in
    # [{"kind", "sent", "failed", "skipped", "pending", "cancelled", "total", "completion_rate"}], largest first
    followups: List[Dict[str, Any]] = field(default_factory=list)
    # [{"channel", "counts": {status: n}, "total", "attempted", "sent_rate", "delivered_rate"}]
    delivery: List[Dict[str, Any]] = field(default_factory=list)
    # [{"week": date (Monday), "taken", "missed", "rate"}]
    adherence: List[Dict[str, Any]] = field(default_factory=list)
    # [{"week", "responses", "ratings", "satisfaction_mean", "nps_answers", "promoters", "passives", "detractors",
    #   "nps"}]; nps is -100..100
    satisfaction: List[Dict[str, Any]] = field(default_factory=list)
    # [{"day": date, "total", "by_reason": {reason: n}, "by_priority": {priority: n}}]
    escalations: List[Dict[str, Any]] = field(default_factory=list)
    # [{"week", "created", "claimed", "median_minutes", "p90_minutes"}]
    claim_times: List[Dict[str, Any]] = field(default_factory=list)
    # {1: n, 2: n, 3: n, 4: n}
    triage_levels: Dict[int, int] = field(default_factory=dict)
    # [{"code", "name", "count"}], most frequent first
    triage_departments: List[Dict[str, Any]] = field(default_factory=list)
    # overall figures of the window: followup_completion, reminder_sent_rate, adherence, satisfaction_mean, nps,
    # escalations, unclaimed, claim_median_minutes, claim_p90_minutes, triage
    summary: Dict[str, Any] = field(default_factory=dict)

    def as_json(self) -> Dict[str, Any]:
        """A JSON-ready dict: datetimes and dates as ISO strings, dict keys as strings."""
        return _jsonable(asdict(self))


def _jsonable(value: Any) -> Any:
    if isinstance(value, (datetime, date)):
        return value.isoformat()
    if isinstance(value, Mapping):
        return {str(key): _jsonable(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(item) for item in value]
    return value


# ----------------------------------------------------------------------------------------------
# Helpers
# ----------------------------------------------------------------------------------------------
def _ratio(part: float, whole: float) -> Optional[float]:
    return part / whole if whole else None


def _percentile(values: Sequence[float], q: float) -> Optional[float]:
    """The q-quantile (0-1) with linear interpolation between ranks (numpy's default); None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = q * (len(ordered) - 1)
    low, high = math.floor(rank), math.ceil(rank)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def _value(status: Any) -> str:
    """An enum column's value as its string (rows may come back as enum members or plain strings)."""
    return str(getattr(status, "value", status))


class _Calendar:
    """Local days and ISO weeks of naive UTC times."""

    def __init__(self, zone: ZoneInfo) -> None:
        self.zone = zone

    def day(self, moment: datetime) -> date:
        return moment.replace(tzinfo=timezone.utc).astimezone(self.zone).date()

    def week(self, moment: datetime) -> date:
        day = self.day(moment)
        return day - timedelta(days=day.weekday())


def _nps(promoters: int, detractors: int, answers: int) -> Optional[float]:
    return 100.0 * (promoters - detractors) / answers if answers else None


# ----------------------------------------------------------------------------------------------
# Sections
# ----------------------------------------------------------------------------------------------
def _followups(session: Session, since: datetime, until: datetime) -> List[Dict[str, Any]]:
    rows = session.execute(
        select(OutboxMessage.message, OutboxMessage.status, func.count())
        .where(OutboxMessage.due_at >= since, OutboxMessage.due_at <= until)
        .group_by(OutboxMessage.message, OutboxMessage.status)
    ).all()
    counts: Dict[str, Counter] = defaultdict(Counter)
    for kind, status, count in rows:
        status = _value(status)
        counts[kind][OutboxStatus.PENDING.value if status == OutboxStatus.SENDING.value else status] += count
    result = []
    for kind, by_status in counts.items():
        sent, failed, skipped = by_status["sent"], by_status["failed"], by_status["skipped"]
        result.append(
            {
                "kind": kind,
                "sent": sent,
                "failed": failed,
                "skipped": skipped,
                "pending": by_status[OutboxStatus.PENDING.value],
                "cancelled": by_status[OutboxStatus.CANCELLED.value],
                "total": sum(by_status.values()),
                "completion_rate": _ratio(sent, sent + failed + skipped),
            }
        )
    return sorted(result, key=lambda row: (-row["total"], row["kind"]))


def _delivery(session: Session, since: datetime, until: datetime) -> List[Dict[str, Any]]:
    rows = session.execute(
        select(Delivery.channel, Delivery.status, func.count())
        .where(Delivery.purpose == "reminder", Delivery.created_at >= since, Delivery.created_at <= until)
        .group_by(Delivery.channel, Delivery.status)
    ).all()
    counts: Dict[str, Counter] = {channel: Counter() for channel in REMINDER_CHANNELS}
    for channel, status, count in rows:
        counts.setdefault(channel, Counter())[_value(status)] += count
    result = []
    for channel, by_status in counts.items():
        full = {status.value: by_status[status.value] for status in DeliveryStatus}
        total = sum(full.values())
        attempted = total - full["skipped"] - full["sending"]
        result.append(
            {
                "channel": channel,
                "counts": full,
                "total": total,
                "attempted": attempted,
                "sent_rate": _ratio(full["sent"] + full["delivered"], attempted),
                "delivered_rate": _ratio(full["delivered"], full["delivered"] + full["undelivered"]),
            }
        )
    return result


def _adherence(session: Session, since: datetime, until: datetime, calendar: _Calendar) -> List[Dict[str, Any]]:
    rows = session.execute(
        select(MedicationDose.scheduled_at, MedicationDose.status).where(
            MedicationDose.scheduled_at >= since,
            MedicationDose.scheduled_at <= until,
            MedicationDose.status.in_(("taken", "missed")),
        )
    ).all()
    weeks: Dict[date, Counter] = defaultdict(Counter)
    for scheduled_at, status in rows:
        weeks[calendar.week(scheduled_at)][status] += 1
    return [
        {
            "week": week,
            "taken": counts["taken"],
            "missed": counts["missed"],
            "rate": _ratio(counts["taken"], counts["taken"] + counts["missed"]),
        }
        for week, counts in sorted(weeks.items())
    ]


def _satisfaction_items() -> Tuple[Tuple[str, ...], Tuple[str, ...]]:
    """(rating item ids, NPS item ids) of the satisfaction instrument (data/surveys/instruments.yml)."""
    try:
        instrument = instruments.get(SATISFACTION)
    except KeyError:
        return (), ()
    ratings = tuple(item.id for item in instrument.items if item.scale == instruments.RATING)
    nps = tuple(item.id for item in instrument.items if item.scale == instruments.NPS)
    return ratings, nps


def _satisfaction(session: Session, since: datetime, until: datetime, calendar: _Calendar) -> List[Dict[str, Any]]:
    rating_items, nps_items = _satisfaction_items()
    if not rating_items and not nps_items:
        return []
    rows = session.execute(
        select(SurveyAnswer.response_id, SurveyAnswer.item, SurveyAnswer.value, SurveyAnswer.answered_at)
        .join(SurveyResponse, SurveyResponse.id == SurveyAnswer.response_id)
        .where(
            SurveyResponse.instrument == SATISFACTION,
            SurveyAnswer.item.in_(rating_items + nps_items),
            SurveyAnswer.skipped.is_(False),
            SurveyAnswer.value.isnot(None),
            SurveyAnswer.answered_at >= since,
            SurveyAnswer.answered_at <= until,
        )
    ).all()
    ratings: Dict[date, List[int]] = defaultdict(list)
    scores: Dict[date, List[int]] = defaultdict(list)
    responses: Dict[date, set] = defaultdict(set)
    for response_id, item, value, answered_at in rows:
        week = calendar.week(answered_at)
        responses[week].add(response_id)
        (ratings if item in rating_items else scores)[week].append(int(value))
    result = []
    for week in sorted(responses):
        nps_values = scores[week]
        promoters = sum(1 for value in nps_values if value >= 9)
        detractors = sum(1 for value in nps_values if value <= 6)
        result.append(
            {
                "week": week,
                "responses": len(responses[week]),
                "ratings": len(ratings[week]),
                "satisfaction_mean": statistics.fmean(ratings[week]) if ratings[week] else None,
                "nps_answers": len(nps_values),
                "promoters": promoters,
                "passives": len(nps_values) - promoters - detractors,
                "detractors": detractors,
                "nps": _nps(promoters, detractors, len(nps_values)),
            }
        )
    return result


def _escalations(
    session: Session, since: datetime, until: datetime, calendar: _Calendar
) -> Tuple[List[Dict[str, Any]], List[Dict[str, Any]], Dict[str, Any]]:
    """(per day, time to claim per week, totals)."""
    rows = session.execute(
        select(
            Escalation.created_at, Escalation.claimed_at, Escalation.reason, Escalation.priority, Escalation.status
        ).where(Escalation.created_at >= since, Escalation.created_at <= until)
    ).all()
    reasons: Dict[date, Counter] = defaultdict(Counter)
    priorities: Dict[date, Counter] = defaultdict(Counter)
    created: Counter = Counter()
    waits: Dict[date, List[float]] = defaultdict(list)
    unclaimed = 0
    for created_at, claimed_at, reason, priority, status in rows:
        day = calendar.day(created_at)
        reasons[day][reason] += 1
        priorities[day][int(priority)] += 1
        week = calendar.week(created_at)
        created[week] += 1
        if claimed_at is not None:
            waits[week].append(max((claimed_at - created_at).total_seconds(), 0.0) / 60)
        elif _value(status) == EscalationStatus.OPEN.value:
            unclaimed += 1
    daily = [
        {
            "day": day,
            "total": sum(reasons[day].values()),
            "by_reason": dict(sorted(reasons[day].items())),
            "by_priority": dict(sorted(priorities[day].items())),
        }
        for day in sorted(reasons)
    ]
    weekly = [
        {
            "week": week,
            "created": created[week],
            "claimed": len(waits[week]),
            "median_minutes": _percentile(waits[week], 0.5),
            "p90_minutes": _percentile(waits[week], 0.9),
        }
        for week in sorted(created)
    ]
    every_wait = [wait for values in waits.values() for wait in values]
    totals = {
        "escalations": len(rows),
        "unclaimed": unclaimed,
        "claim_median_minutes": _percentile(every_wait, 0.5),
        "claim_p90_minutes": _percentile(every_wait, 0.9),
    }
    return daily, weekly, totals


def _top_department(departments: Any) -> Optional[str]:
    """The code of the highest-scoring department of a record's [{"code", "score"}] (the first on a tie)."""
    best: Optional[Tuple[float, str]] = None
    for entry in departments or []:
        if not isinstance(entry, Mapping) or not entry.get("code"):
            continue
        score = float(entry.get("score") or 0)
        if best is None or score > best[0]:
            best = (score, str(entry["code"]))
    return best[1] if best else None


def _triage(session: Session, since: datetime, until: datetime) -> Tuple[Dict[int, int], List[Dict[str, Any]]]:
    window = and_(TriageRecord.created_at >= since, TriageRecord.created_at <= until)
    levels = {level: 0 for level in TRIAGE_LEVELS}
    for level, count in session.execute(
        select(TriageRecord.level, func.count()).where(window).group_by(TriageRecord.level)
    ).all():
        levels[int(level)] = levels.get(int(level), 0) + count
    tops = Counter(
        code
        for (departments,) in session.execute(select(TriageRecord.departments).where(window)).all()
        if (code := _top_department(departments)) is not None
    )
    known = catalog.departments()
    ranked = sorted(tops.items(), key=lambda item: (-item[1], item[0]))[:TOP_DEPARTMENTS]
    return levels, [
        {"code": code, "name": known[code].name if code in known else code, "count": count} for code, count in ranked
    ]


# ----------------------------------------------------------------------------------------------
# Metrics
# ----------------------------------------------------------------------------------------------
def metrics(session: Session, *, days: int = 30, now: Optional[datetime] = None, tz: Optional[str] = None) -> Dashboard:
    """The dashboard over the `days` days before `now` (naive UTC; default the clock's now, see bot.clock).

    `tz` is the zone days and weeks are counted in (default the hospital's). Only reads: an empty database gives
    zero counts, empty lists and None rates.
    """
    until = now if now is not None else clock.utc_now_naive()
    if until.tzinfo is not None:
        until = clock.to_db(until)
    since = until - timedelta(days=max(int(days), 1))
    zone = clock.local_tz(tz)
    calendar = _Calendar(zone)

    followups = _followups(session, since, until)
    delivery = _delivery(session, since, until)
    adherence = _adherence(session, since, until, calendar)
    satisfaction = _satisfaction(session, since, until, calendar)
    escalations, claim_times, escalation_totals = _escalations(session, since, until, calendar)
    levels, departments = _triage(session, since, until)

    sent = sum(row["sent"] for row in followups)
    settled = sum(row["sent"] + row["failed"] + row["skipped"] for row in followups)
    delivered = sum(row["counts"]["sent"] + row["counts"]["delivered"] for row in delivery)
    attempted = sum(row["attempted"] for row in delivery)
    taken = sum(row["taken"] for row in adherence)
    missed = sum(row["missed"] for row in adherence)
    rated = sum(row["ratings"] for row in satisfaction)
    rating_sum = sum(row["satisfaction_mean"] * row["ratings"] for row in satisfaction if row["ratings"])
    nps_answers = sum(row["nps_answers"] for row in satisfaction)
    summary = {
        "followup_completion": _ratio(sent, settled),
        "reminder_sent_rate": _ratio(delivered, attempted),
        "adherence": _ratio(taken, taken + missed),
        "satisfaction_mean": _ratio(rating_sum, rated),
        "nps": _nps(
            sum(row["promoters"] for row in satisfaction), sum(row["detractors"] for row in satisfaction), nps_answers
        ),
        **escalation_totals,
        "triage": sum(levels.values()),
    }
    return Dashboard(
        days=max(int(days), 1),
        since=since,
        until=until,
        timezone=zone.key,
        followups=followups,
        delivery=delivery,
        adherence=adherence,
        satisfaction=satisfaction,
        escalations=escalations,
        claim_times=claim_times,
        triage_levels=levels,
        triage_departments=departments,
        summary=summary,
    )


# ----------------------------------------------------------------------------------------------
# Charts
# ----------------------------------------------------------------------------------------------
LABELS: Dict[str, Dict[str, str]] = {
    "zh": {
        "followups": "随访完成情况",
        "delivery": "各渠道提醒送达",
        "adherence": "用药依从性（每周）",
        "satisfaction": "满意度与 NPS（每周）",
        "escalations": "转人工（每日）与接手时间（每周）",
        "triage": "分诊等级与首选科室",
        "no_data": "暂无数据",
        "pending": "待发送",
        "sending": "发送中",
        "sent": "已发送",
        "delivered": "已送达",
        "undelivered": "未送达",
        "failed": "失败",
        "skipped": "跳过",
        "wechat": "微信",
        "sms": "短信",
        "voice": "语音",
        "webchat": "网页",
        "count": "条数",
        "rate": "依从率（%）",
        "satisfaction_mean": "满意度均分（1–5）",
        "nps": "NPS",
        "priority": "优先级{value}",
        "median": "中位数",
        "p90": "P90",
        "minutes": "接手用时（分钟）",
        "unclaimed": "未接手 {value}",
        "level": "{value}级",
    },
    "en": {
        "followups": "Follow-up completion",
        "delivery": "Reminder delivery by channel",
        "adherence": "Medication adherence (weekly)",
        "satisfaction": "Satisfaction and NPS (weekly)",
        "escalations": "Escalations (daily) and time to claim (weekly)",
        "triage": "Triage levels and top departments",
        "no_data": "No data",
        "pending": "Pending",
        "sending": "Sending",
        "sent": "Sent",
        "delivered": "Delivered",
        "undelivered": "Undelivered",
        "failed": "Failed",
        "skipped": "Skipped",
        "wechat": "WeChat",
        "sms": "SMS",
        "voice": "Voice",
        "webchat": "Web chat",
        "count": "Count",
        "rate": "Adherence (%)",
        "satisfaction_mean": "Mean satisfaction (1-5)",
        "nps": "NPS",
        "priority": "Priority {value}",
        "median": "Median",
        "p90": "P90",
        "minutes": "Time to claim (min)",
        "unclaimed": "unclaimed {value}",
        "level": "Level {value}",
    },
}
STATUS_COLORS = {
    "delivered": "#1e8449",
    "sent": "#52be80",
    "pending": "#f5b041",
    "sending": "#f5b041",
    "undelivered": "#e67e22",
    "failed": "#c0392b",
    "skipped": "#95a5a6",
}
LEVEL_COLORS = {1: "#c0392b", 2: "#e67e22", 3: "#f1c40f", 4: "#27ae60"}
PRIORITY_COLORS = {1: "#c0392b", 2: "#e67e22", 3: "#2471a3", 4: "#7f8c8d"}
BAR_COLOR = "#1f6f8b"
LINE_COLOR = "#c0392b"
DAY_FORMAT = mdates.DateFormatter("%m-%d")
MAX_TICKS = 6


class _Labels:
    """Chart texts in the label language: Chinese with a CJK font, English otherwise (see bot.charts)."""

    def __init__(self, label_locale: str) -> None:
        self.locale = label_locale
        self.chinese = label_locale.split("_")[0] == "zh"
        self.texts = LABELS["zh" if self.chinese else "en"]

    def __call__(self, key: str, **params: Any) -> str:
        return self.texts.get(key, key).format(**params)

    def kind(self, kind: str) -> str:
        """A push's short name from the notices catalog (`<key>.summary`), or its key."""
        try:
            return notices.translate(f"{kind}.summary", locale=self.locale)
        except (notices.NoticeError, KeyError):
            return kind


def _no_data(axes: Axes, labels: _Labels) -> None:
    axes.set_axis_off()
    axes.text(
        0.5, 0.5, labels("no_data"), ha="center", va="center", fontsize=12, color="#7f8c8d", transform=axes.transAxes
    )


def _counts(axes: Axes, axis: str = "y") -> None:
    """Whole-number ticks on a count axis, a light grid, small labels."""
    (axes.yaxis if axis == "y" else axes.xaxis).set_major_locator(MaxNLocator(integer=True))
    axes.grid(True, axis=axis, alpha=0.3)
    axes.tick_params(labelsize=7)


def _local_window(data: Dashboard) -> Tuple[date, date]:
    calendar = _Calendar(ZoneInfo(data.timezone))
    return calendar.day(data.since), calendar.day(data.until)


def _day_axis(axes: Axes, data: Dashboard) -> None:
    """The whole window as local days, a bar per day centred on its tick."""
    first, last = _local_window(data)
    axes.set_xlim(datetime.combine(first, time()) - timedelta(hours=14), datetime.combine(last, time(14)))
    interval = max(1, math.ceil(((last - first).days + 1) / MAX_TICKS))
    axes.xaxis.set_major_locator(mdates.DayLocator(interval=interval))
    axes.xaxis.set_major_formatter(DAY_FORMAT)
    axes.tick_params(axis="x", labelrotation=30, labelsize=7)


def _week_axis(axes: Axes, data: Dashboard) -> None:
    """The whole window as ISO weeks: ticks on Mondays, a week's bar from its Monday (see _week_bar)."""
    first, last = _local_window(data)
    start = first - timedelta(days=first.weekday())
    end = last - timedelta(days=last.weekday()) + timedelta(days=7)
    axes.set_xlim(start, end)
    interval = max(1, math.ceil((end - start).days / 7 / MAX_TICKS))
    axes.xaxis.set_major_locator(mdates.WeekdayLocator(byweekday=mdates.MO, interval=interval))
    axes.xaxis.set_major_formatter(DAY_FORMAT)
    axes.tick_params(axis="x", labelsize=7)


def _mid_week(week: date) -> date:
    """Where a week's point sits: the middle of its bar."""
    return week + timedelta(days=3)


def _week_bar(axes: Axes, weeks: Sequence[date], values: Sequence[float], **style: Any) -> None:
    axes.bar(weeks, values, width=6, align="edge", **style)


def _draw_followups(figure: Figure, data: Dashboard, labels: _Labels) -> None:
    axes = figure.add_subplot()
    rows = [row for row in data.followups if row["total"]][:8][::-1]  # the largest on top
    if not rows:
        return _no_data(axes, labels)
    names = [labels.kind(row["kind"]) for row in rows]
    left = [0] * len(rows)
    for status in ("sent", "failed", "skipped", "pending"):
        values = [row[status] for row in rows]
        axes.barh(names, values, left=left, color=STATUS_COLORS[status], label=labels(status), height=0.6)
        left = [a + b for a, b in zip(left, values)]
    for index, row in enumerate(rows):
        rate = row["completion_rate"]
        text = "—" if rate is None else f"{rate:.0%}"
        axes.annotate(text, xy=(left[index], index), xytext=(3, 0), textcoords="offset points", va="center", fontsize=7)
    axes.set_xlim(0, max(left) * 1.15 or 1)
    axes.set_xlabel(labels("count"), fontsize=8)
    axes.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    _counts(axes, "x")
    return None


def _draw_delivery(figure: Figure, data: Dashboard, labels: _Labels) -> None:
    axes = figure.add_subplot()
    rows = [row for row in data.delivery if row["total"] or row["channel"] in REMINDER_CHANNELS]
    if not any(row["total"] for row in rows):
        return _no_data(axes, labels)
    names = [labels(row["channel"]) for row in rows]
    bottom = [0] * len(rows)
    for status in ("delivered", "sent", "sending", "undelivered", "failed", "skipped"):
        values = [row["counts"].get(status, 0) for row in rows]
        if any(values):
            axes.bar(names, values, bottom=bottom, color=STATUS_COLORS[status], label=labels(status), width=0.5)
            bottom = [a + b for a, b in zip(bottom, values)]
    for index, row in enumerate(rows):
        text = "—" if row["sent_rate"] is None else f"{row['sent_rate']:.0%}"
        axes.annotate(
            text, xy=(index, bottom[index]), xytext=(0, 2), textcoords="offset points", ha="center", fontsize=7
        )
    axes.set_ylim(0, max(bottom) * 1.15 or 1)
    axes.set_ylabel(labels("count"), fontsize=8)
    axes.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    _counts(axes)
    return None


def _draw_adherence(figure: Figure, data: Dashboard, labels: _Labels) -> None:
    axes = figure.add_subplot()
    rows = [row for row in data.adherence if row["rate"] is not None]
    if not rows:
        return _no_data(axes, labels)
    rates = [row["rate"] * 100 for row in rows]
    _week_bar(axes, [row["week"] for row in rows], rates, color=BAR_COLOR)
    for row, rate in zip(rows, rates):
        axes.annotate(
            f"{row['taken']}/{row['taken'] + row['missed']}",
            xy=(_mid_week(row["week"]), rate),
            xytext=(0, 2),
            textcoords="offset points",
            ha="center",
            fontsize=7,
        )
    axes.set_ylim(0, 110)
    axes.set_ylabel(labels("rate"), fontsize=8)
    axes.grid(True, axis="y", alpha=0.3)
    axes.tick_params(labelsize=7)
    _week_axis(axes, data)
    return None


def _draw_satisfaction(figure: Figure, data: Dashboard, labels: _Labels) -> None:
    axes = figure.add_subplot()
    rows = data.satisfaction
    if not rows:
        return _no_data(axes, labels)
    rated = [row for row in rows if row["satisfaction_mean"] is not None]
    means = [row["satisfaction_mean"] for row in rated]
    _week_bar(axes, [row["week"] for row in rated], means, color=BAR_COLOR, label=labels("satisfaction_mean"))
    axes.set_ylim(0, 5.5)
    axes.set_ylabel(labels("satisfaction_mean"), fontsize=8)
    axes.grid(True, axis="y", alpha=0.3)
    axes.tick_params(labelsize=7)
    nps_axes = axes.twinx()
    scored = [row for row in rows if row["nps"] is not None]
    nps_axes.plot(
        [_mid_week(row["week"]) for row in scored],
        [row["nps"] for row in scored],
        marker="o",
        color=LINE_COLOR,
        linewidth=1.5,
        label=labels("nps"),
    )
    nps_axes.axhline(0, color=LINE_COLOR, linewidth=0.6, linestyle=":", alpha=0.6)
    nps_axes.set_ylim(-105, 105)
    nps_axes.set_ylabel(labels("nps"), fontsize=8)
    nps_axes.tick_params(labelsize=7)
    handles = [*axes.get_legend_handles_labels()[0], *nps_axes.get_legend_handles_labels()[0]]
    axes.legend(handles=handles, fontsize=7, loc="lower left")
    _week_axis(axes, data)
    return None


def _draw_escalations(figure: Figure, data: Dashboard, labels: _Labels) -> None:
    daily_axes, claim_axes = figure.subplots(1, 2, gridspec_kw={"width_ratios": [3, 2]})
    if data.escalations:
        days = [row["day"] for row in data.escalations]
        priorities = sorted({priority for row in data.escalations for priority in row["by_priority"]})
        bottom = [0] * len(days)
        for priority in priorities:
            values = [row["by_priority"].get(priority, 0) for row in data.escalations]
            color = PRIORITY_COLORS.get(priority, "#bdc3c7")
            label = labels("priority", value=priority)
            daily_axes.bar(days, values, bottom=bottom, width=0.8, label=label, color=color)
            bottom = [a + b for a, b in zip(bottom, values)]
        daily_axes.set_ylabel(labels("count"), fontsize=8)
        daily_axes.legend(fontsize=6, loc="upper left")
        daily_axes.set_title(labels("unclaimed", value=data.summary.get("unclaimed", 0)), fontsize=8)
        _counts(daily_axes)
        _day_axis(daily_axes, data)
    else:
        _no_data(daily_axes, labels)
    claimed = [row for row in data.claim_times if row["claimed"]]
    if claimed:
        weeks = [_mid_week(row["week"]) for row in claimed]
        medians = [row["median_minutes"] for row in claimed]
        p90s = [row["p90_minutes"] for row in claimed]
        claim_axes.plot(weeks, medians, marker="o", color=BAR_COLOR, label=labels("median"))
        claim_axes.plot(weeks, p90s, marker="s", color=LINE_COLOR, linestyle="--", label=labels("p90"))
        claim_axes.set_ylim(0, max(p90s) * 1.2 or 1)
        claim_axes.set_ylabel(labels("minutes"), fontsize=8)
        claim_axes.legend(fontsize=6, loc="upper left")
        claim_axes.grid(True, axis="y", alpha=0.3)
        claim_axes.tick_params(labelsize=7)
        _week_axis(claim_axes, data)
        claim_axes.tick_params(axis="x", labelrotation=30)
    else:
        _no_data(claim_axes, labels)
    return None


def _draw_triage(figure: Figure, data: Dashboard, labels: _Labels) -> None:
    level_axes, department_axes = figure.subplots(1, 2)
    levels = sorted(data.triage_levels.items())
    if any(count for _, count in levels):
        names = [labels("level", value=level) for level, _ in levels]
        colors = [LEVEL_COLORS.get(level, BAR_COLOR) for level, _ in levels]
        level_axes.bar(names, [count for _, count in levels], color=colors, width=0.6)
        level_axes.set_ylabel(labels("count"), fontsize=8)
        _counts(level_axes)
    else:
        _no_data(level_axes, labels)
    departments = data.triage_departments[:6][::-1]  # the most frequent on top
    if departments:
        names = [row["name"] if labels.chinese else row["code"] for row in departments]
        department_axes.barh(names, [row["count"] for row in departments], color=BAR_COLOR, height=0.6)
        _counts(department_axes, "x")
    else:
        _no_data(department_axes, labels)
    return None


DRAWERS = {
    "followups": _draw_followups,
    "delivery": _draw_delivery,
    "adherence": _draw_adherence,
    "satisfaction": _draw_satisfaction,
    "escalations": _draw_escalations,
    "triage": _draw_triage,
}


def chart_pngs(dashboard: Dashboard, locale: str = "zh_CN") -> Dict[str, bytes]:
    """One small PNG per section (keys: CHART_KEYS). Labels are Chinese when a CJK font exists, else English; an
    empty section says there is no data. The PNG's Title metadata holds the chart title."""
    labels = _Labels(chart_locale(locale))
    pngs: Dict[str, bytes] = {}
    with _DRAWING, _fonts_for(labels.locale):
        for key in CHART_KEYS:
            figure = Figure(figsize=FIGURE_SIZE, dpi=DPI, constrained_layout=True)
            FigureCanvasAgg(figure)
            DRAWERS[key](figure, dashboard, labels)
            title = labels(key)
            figure.suptitle(title, fontsize=10)
            buffer = io.BytesIO()
            figure.savefig(buffer, format="png", metadata={"Title": title})
            pngs[key] = buffer.getvalue()
    return pngs
