"""Care-plan templates (data/care_plans/*.yml) and enrolment: a plan becomes outbox rows with exact due times.

A template is data: a hospital edits it without touching code. Each step has a kind (a small class registered
by name, like APScheduler's triggers) that turns the plan's anchor and the patient's time zone into occurrences.
Expansion is idempotent (each row's `idempotency_key` names plan, step and due time), so it can run again and
again (the scheduler extends plans ahead every hour) and two schedulers can run it at once.
"""

from __future__ import annotations

import calendar
import re
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Mapping, Optional, Sequence, Type

import yaml
from sqlalchemy import select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session
from zoneinfo import ZoneInfo

from bot.config import DATA_DIR
from bot.crm import audit
from bot.crm.models import CarePlan, OutboxMessage, OutboxStatus, Patient, Prescription

TEMPLATES_DIR = DATA_DIR / "care_plans"
HORIZON = timedelta(days=14)  # rows are written this far ahead; the hourly job extends active plans
DEFAULT_POLICY = "wechat,sms,voice"


class PlanError(ValueError):
    """A template or an enrolment that cannot work; the message says which file, step or field."""


# ----------------------------------------------------------------------------------------------
# step kinds
# ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Occurrence:
    due_at: datetime  # aware
    params: Dict[str, Any] = field(default_factory=dict)


STEP_KINDS: Dict[str, Type[StepKind]] = {}


def step_kind(name: str) -> Callable[[Type[StepKind]], Type[StepKind]]:
    def register(cls: Type[StepKind]) -> Type[StepKind]:
        STEP_KINDS[name] = cls
        cls.kind = name
        return cls

    return register


class StepKind(ABC):
    """Turns a step of a template into the times it is due between `start` and `end` (aware datetimes)."""

    kind = ""

    def __init__(self, spec: Mapping[str, Any], where: str) -> None:
        self.spec = spec
        self.where = where

    @abstractmethod
    def occurrences(
        self, anchor: datetime, tz: ZoneInfo, plan_params: Mapping[str, Any], start: datetime, end: datetime
    ) -> Iterator[Occurrence]:
        """Occurrences due in [start, end)."""

    def local_time(self, value: Any, name: str = "time") -> time:
        text = str(value if value is not None else self.spec.get(name, "09:00"))
        match = re.fullmatch(r"(\d{1,2}):(\d{2})", text.strip())
        if not match or int(match.group(1)) > 23 or int(match.group(2)) > 59:
            raise PlanError(f"{self.where}: {name} {text!r} is not a local time like '08:30'")
        return time(int(match.group(1)), int(match.group(2)))


def _at(day: date, clock: time, tz: ZoneInfo) -> datetime:
    return datetime.combine(day, clock, tzinfo=tz)


@step_kind("at")
class Once(StepKind):
    """Once: `day` days after the anchor at local `time`, or `offset` ("-24h", "-7d", "30m") from the anchor
    (with `time`, an offset in days keeps the local time of day)."""

    def occurrences(self, anchor, tz, plan_params, start, end):  # type: ignore[no-untyped-def]
        local_anchor = anchor.astimezone(tz)
        if "offset" in self.spec:
            delta = parse_offset(str(self.spec["offset"]), self.where)
            due = local_anchor + delta
            if "time" in self.spec:
                due = _at(due.date(), self.local_time(None), tz)
        else:
            due = _at(local_anchor.date() + timedelta(days=int(self.spec.get("day", 0))), self.local_time(None), tz)
        if start <= due < end:
            yield Occurrence(due)


@step_kind("daily")
class Daily(StepKind):
    """Every day from `from_day` (0 = the anchor's day) to `to_day`, at each of `times`; `times: prescription`
    takes the dose times of the plan's prescription."""

    def times(self, plan_params: Mapping[str, Any]) -> List[time]:
        times = self.spec.get("times", ["09:00"])
        if times == "prescription":
            times = plan_params.get("times") or []
            if not times:
                raise PlanError(f"{self.where}: the plan has no dose times (params.times)")
        if isinstance(times, str):
            times = [part for part in re.split(r"[;,\s]+", times) if part]
        return sorted(self.local_time(value) for value in times)

    def occurrences(self, anchor, tz, plan_params, start, end):  # type: ignore[no-untyped-def]
        first = anchor.astimezone(tz).date() + timedelta(days=int(self.spec.get("from_day", 0)))
        last = first + timedelta(days=int(self.spec["to_day"])) if "to_day" in self.spec else None
        clocks = self.times(plan_params)
        day = max(first, start.astimezone(tz).date() - timedelta(days=1))
        while _at(day, time(0), tz) < end and (last is None or day <= last):
            for clock in clocks:
                due = _at(day, clock, tz)
                if start <= due < end and due >= anchor:
                    yield Occurrence(due, {"time": clock.strftime("%H:%M")})
            day += timedelta(days=1)


@step_kind("weekly")
class EveryFewDays(StepKind):
    """Every `every_days` days (7 by default) at local `time`, starting `every_days` after the anchor's day
    unless `from_day` says otherwise."""

    def occurrences(self, anchor, tz, plan_params, start, end):  # type: ignore[no-untyped-def]
        every = int(self.spec.get("every_days", 7))
        if every < 1:
            raise PlanError(f"{self.where}: every_days must be at least 1")
        clock = self.local_time(None)
        day = anchor.astimezone(tz).date() + timedelta(days=int(self.spec.get("from_day", every)))
        while _at(day, clock, tz) < end:
            due = _at(day, clock, tz)
            if due >= start:
                yield Occurrence(due)
            day += timedelta(days=every)


@step_kind("monthly")
class EveryFewMonths(StepKind):
    """Every `every_months` months on the anchor's day of the month (the month's last day when shorter)."""

    def occurrences(self, anchor, tz, plan_params, start, end):  # type: ignore[no-untyped-def]
        every = int(self.spec.get("every_months", 1))
        clock = self.local_time(None)
        base = anchor.astimezone(tz).date()
        step = 1
        while True:
            month_index = base.month - 1 + every * step
            year, month = base.year + month_index // 12, month_index % 12 + 1
            day = min(base.day, calendar.monthrange(year, month)[1])
            due = _at(date(year, month, day), clock, tz)
            if due >= end:
                return
            if due >= start:
                yield Occurrence(due)
            step += 1


@step_kind("check")
class DailyCheck(StepKind):
    """Not a message of its own: the scheduler's daily checks read it (e.g. no reading for `days` days)."""

    def occurrences(self, anchor, tz, plan_params, start, end):  # type: ignore[no-untyped-def]
        return iter(())


def parse_offset(text: str, where: str) -> timedelta:
    match = re.fullmatch(r"([+-]?\d+)\s*([dhm])", text.strip())
    if not match:
        raise PlanError(f"{where}: offset {text!r} is not like '-24h', '-7d' or '30m'")
    amount, unit = int(match.group(1)), match.group(2)
    return {"d": timedelta(days=amount), "h": timedelta(hours=amount), "m": timedelta(minutes=amount)}[unit]


# ----------------------------------------------------------------------------------------------
# templates
# ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Step:
    id: str
    kind: StepKind
    message: str
    conversation: Optional[Dict[str, Any]]  # {"intent", "entities"} when the push goes through Rasa
    urgent: bool
    policy: str
    spec: Mapping[str, Any]


@dataclass(frozen=True)
class Template:
    name: str
    title: str
    anchor: str
    steps: Sequence[Step]

    def step(self, step_id: str) -> Step:
        for step in self.steps:
            if step.id == step_id:
                return step
        raise PlanError(f"template {self.name} has no step {step_id!r}")


def _step(spec: Mapping[str, Any], where: str) -> Step:
    for key in ("id", "kind", "message"):
        if not spec.get(key):
            raise PlanError(f"{where}: every step needs '{key}'")
    kind_class = STEP_KINDS.get(spec["kind"])
    if kind_class is None:
        raise PlanError(f"{where}: unknown kind {spec['kind']!r} (known: {', '.join(sorted(STEP_KINDS))})")
    where = f"{where} step {spec['id']}"
    conversation = None
    if spec.get("intent"):
        conversation = {"intent": str(spec["intent"]), "entities": dict(spec.get("entities") or {})}
    return Step(
        id=str(spec["id"]),
        kind=kind_class(spec, where),
        message=str(spec["message"]),
        conversation=conversation,
        urgent=bool(spec.get("urgent", False)),
        policy=str(spec.get("channels", DEFAULT_POLICY)),
        spec=dict(spec),
    )


def load_template(path: Path) -> Template:
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as error:
        raise PlanError(f"{path.name}: not valid YAML: {error}") from error
    if not raw.get("name") or not isinstance(raw.get("steps"), list):
        raise PlanError(f"{path.name}: a template needs 'name' and a list of 'steps'")
    steps = [_step(spec, path.name) for spec in raw["steps"]]
    ids = [step.id for step in steps]
    if len(set(ids)) != len(ids):
        raise PlanError(f"{path.name}: step ids must be unique")
    return Template(str(raw["name"]), str(raw.get("title", raw["name"])), str(raw.get("anchor", "")), steps)


@lru_cache(maxsize=4)
def templates(directory: Path = TEMPLATES_DIR) -> Dict[str, Template]:
    loaded = {}
    for path in sorted(directory.glob("*.yml")):
        template = load_template(path)
        loaded[template.name] = template
    return loaded


def get_template(name: str) -> Template:
    found = templates().get(name)
    if found is None:
        raise PlanError(f"unknown care-plan template {name!r} (known: {', '.join(sorted(templates()))})")
    return found


# ----------------------------------------------------------------------------------------------
# enrolment and expansion
# ----------------------------------------------------------------------------------------------
def _utc_naive(moment: datetime) -> datetime:
    if moment.tzinfo is None:
        return moment
    return moment.astimezone(ZoneInfo("UTC")).replace(tzinfo=None)


def _aware_utc(moment: datetime) -> datetime:
    return moment.replace(tzinfo=ZoneInfo("UTC")) if moment.tzinfo is None else moment


def enroll(
    session: Session,
    *,
    patient_id: int,
    template: str,
    anchor_at: datetime,
    source: str,
    source_ref: str,
    params: Optional[Mapping[str, Any]] = None,
    now: Optional[datetime] = None,
    actor: str = "scheduler",
) -> CarePlan:
    """Enrol a patient (idempotent per patient, template and source_ref) and write the plan's outbox rows up to
    the horizon, in the caller's transaction. `anchor_at`: aware, or naive UTC. Raises PlanError."""
    chosen = get_template(template)
    existing = session.execute(
        select(CarePlan).where(
            CarePlan.patient_id == patient_id, CarePlan.template == template, CarePlan.source_ref == source_ref
        )
    ).scalar_one_or_none()
    if existing is not None:
        return existing
    patient = session.get(Patient, patient_id)
    if patient is None:
        raise PlanError(f"no patient with id {patient_id}")
    plan_params = dict(params or {})
    if chosen.anchor == "prescription" and not plan_params.get("prescription_id"):
        plan_params["prescription_id"] = _prescription_for(session, patient_id, anchor_at, source_ref, plan_params)
    plan = CarePlan(
        patient_id=patient_id,
        template=chosen.name,
        anchor_at=_utc_naive(anchor_at),
        source=source,
        source_ref=source_ref,
        params=plan_params,
    )
    with session.begin_nested():
        session.add(plan)
        session.flush()
        expand(session, plan, now=now)
    audit.record(session, actor, "enroll", "care_plan", plan.id, patient_id, {"template": chosen.name})
    return plan


def _prescription_for(
    session: Session, patient_id: int, start: datetime, source_ref: str, params: Mapping[str, Any]
) -> int:
    """A medication plan enrolled without a prescription record gets one, so its doses can be tracked."""
    prescription = Prescription(
        patient_id=patient_id,
        drug=str(params.get("drug") or ""),
        dose=str(params.get("dose") or ""),
        times=list(params.get("times") or []),
        start_date=_utc_naive(start),
        condition=str(params.get("condition") or "") or None,
        source_ref=f"plan:{source_ref}",
    )
    session.add(prescription)
    session.flush()
    return prescription.id


def expand(session: Session, plan: CarePlan, *, now: Optional[datetime] = None, horizon: timedelta = HORIZON) -> int:
    """Write the plan's rows due between its last expansion (or now) and now + horizon; returns how many were
    new. Rows that already exist (same idempotency key) are left alone, whoever wrote them."""
    from bot import clock

    current = _aware_utc(now) if now else clock.now().astimezone(ZoneInfo("UTC"))
    chosen = get_template(plan.template)
    patient = session.get(Patient, plan.patient_id)
    tz = ZoneInfo(patient.timezone or "Asia/Shanghai")
    anchor = _aware_utc(plan.anchor_at)
    start = _aware_utc(plan.expanded_until) if plan.expanded_until else current
    end = current + horizon
    if start >= end:
        return 0
    rows = []
    prescription_end = _prescription_end(session, plan)
    for step in chosen.steps:
        for occurrence in step.kind.occurrences(anchor, tz, plan.params or {}, start, end):
            due = _utc_naive(occurrence.due_at)
            if prescription_end and step.spec.get("times") == "prescription" and due >= prescription_end:
                continue  # the prescription has ended: no more dose reminders
            rows.append(
                {
                    "patient_id": plan.patient_id,
                    "plan_id": plan.id,
                    "step": step.id,
                    "message": step.message,
                    "params": {**(plan.params or {}), **occurrence.params, "anchor": anchor.isoformat()},
                    "conversation": step.conversation,
                    "channel_policy": step.policy,
                    "urgent": step.urgent,
                    "due_at": due,
                    "next_attempt_at": due,
                    "status": OutboxStatus.PENDING.value,
                    "attempts": 0,
                    "idempotency_key": f"plan:{plan.id}:{step.id}:{due.isoformat()}",
                    "created_at": _utc_naive(current),
                }
            )
    plan.expanded_until = _utc_naive(end)
    return insert_ignoring_duplicates(session, rows)


def _prescription_end(session: Session, plan: CarePlan) -> Optional[datetime]:
    """The end of the prescription's last day (naive UTC), when the plan's prescription has an end date."""
    prescription_id = (plan.params or {}).get("prescription_id")
    prescription = session.get(Prescription, int(prescription_id)) if prescription_id else None
    if prescription is None or prescription.end_date is None:
        return None
    return prescription.end_date + timedelta(days=1)


def insert_ignoring_duplicates(session: Session, rows: List[Dict[str, Any]]) -> int:
    """INSERT ... ON CONFLICT (idempotency_key) DO NOTHING on both backends; returns the rows inserted."""
    if not rows:
        return 0
    dialect = session.get_bind().dialect.name
    table = OutboxMessage.__table__
    if dialect == "postgresql":
        statement = postgresql.insert(table).on_conflict_do_nothing(index_elements=["idempotency_key"])
    else:
        statement = sqlite.insert(table).on_conflict_do_nothing(index_elements=["idempotency_key"])
    inserted = 0
    for chunk_start in range(0, len(rows), 1000):
        result = session.execute(statement, rows[chunk_start : chunk_start + 1000])
        inserted += max(result.rowcount or 0, 0)
    return inserted


def extend_active_plans(session: Session, *, now: Optional[datetime] = None) -> int:
    """The hourly job: every active plan gets rows up to now + horizon. Returns rows added."""
    added = 0
    for plan in session.execute(select(CarePlan).where(CarePlan.active.is_(True))).scalars():
        added += expand(session, plan, now=now)
    return added


def cancel(session: Session, plan: CarePlan, actor: str = "scheduler") -> int:
    """End a plan: its pending rows are cancelled (audited). Returns how many."""
    plan.active = False
    pending = session.execute(
        select(OutboxMessage).where(OutboxMessage.plan_id == plan.id, OutboxMessage.status == OutboxStatus.PENDING)
    ).scalars()
    count = 0
    for row in pending:
        row.status = OutboxStatus.CANCELLED
        count += 1
    audit.record(session, actor, "cancel", "care_plan", plan.id, plan.patient_id, {"rows": count})
    return count


# ----------------------------------------------------------------------------------------------
# appointments booked in the CRM
# ----------------------------------------------------------------------------------------------
APPOINTMENT_TEMPLATE = "appointment_reminders"


def follow_appointment(session: Session, appointment_id: int, *, actor: str = "assistant") -> CarePlan:
    """Reminders for an appointment booked in the CRM (24 h and 2 h before), in the booking's transaction."""
    from bot.crm.booking import appointment_view

    view = appointment_view(session, appointment_id)
    if view is None:
        raise PlanError(f"no appointment with id {appointment_id}")
    return enroll(
        session,
        patient_id=view.patient_id,
        template=APPOINTMENT_TEMPLATE,
        anchor_at=view.start,
        source="appointment",
        source_ref=f"appointment:{appointment_id}",
        params={
            "department": view.department_name,
            "doctor": f"{view.doctor_name}（{view.doctor_title}）",
            "location": view.place,
            "appointment_id": appointment_id,
        },
        actor=actor,
    )


def stop_following_appointment(session: Session, appointment_id: int, *, actor: str = "assistant") -> int:
    """A cancelled or moved appointment: its reminders are cancelled. Returns how many rows."""
    cancelled = 0
    for plan in session.execute(
        select(CarePlan).where(CarePlan.source_ref == f"appointment:{appointment_id}", CarePlan.active.is_(True))
    ).scalars():
        cancelled += cancel(session, plan, actor=actor)
    return cancelled
