"""The scheduler process: a few periodic APScheduler jobs over the outbox, never one job per reminder.

- `dispatch` (every few seconds): claim due outbox rows and send them (scheduler/dispatcher.py).
- `extend_plans` (hourly): write the next rows of every active plan up to the horizon.
- `daily_checks` (daily, 07:00 in the hospital's zone): e.g. no blood-pressure reading for 14 days → a nurse
  alert (an escalation for the console).
- `escalation_deadlines` (every 30 seconds): an escalation left unclaimed past its priority's deadline texts the
  on-call nurses, once (scheduler/alerts.py).

The jobs live in APScheduler's SQLAlchemy job store in the CRM database (table `apscheduler_jobs`), so a
restarted scheduler keeps its schedule and misfire policy; several schedulers may run (the outbox claims keep
them apart; `max_instances=1` and coalescing keep one process from piling up runs). An aiohttp server gives
`/health` and the import API (`POST /import`, scheduler/importer.py).

    .venv/bin/python -m scheduler                # runs until stopped (SIGTERM/Ctrl-C)
    .venv/bin/python -m scheduler dispatch-once  # one pass over what is due now, then exit
    .venv/bin/python -m scheduler alert-overdue  # text the on-call nurses about overdue escalations, once
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from datetime import datetime, timedelta
from typing import Any, List, Optional

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from bot import clock, notices, observability
from bot.config import get_settings
from bot.crm import care
from bot.crm.escalations import open_escalation
from bot.crm.models import CarePlan, Escalation, EscalationStatus, MeasurementReading, Patient, Prescription
from bot.db import session_scope
from scheduler import alerts, plans

logger = logging.getLogger(__name__)
JOB_TABLE = "apscheduler_jobs"
_dispatcher = None
_dispatcher_lock = threading.Lock()


def dispatcher():  # type: ignore[no-untyped-def]
    """The process's dispatcher, built on first use."""
    global _dispatcher
    with _dispatcher_lock:
        if _dispatcher is None:
            from scheduler.dispatcher import Dispatcher

            _dispatcher = Dispatcher()
        return _dispatcher


# The job functions are module-level so the persistent job store can name them ("scheduler.service:dispatch").
def dispatch() -> None:
    stats = dispatcher().run_until_idle(max_batches=50)
    if stats.claimed:
        logger.info(
            "dispatch: %s claimed, %s sent, %s deferred, %s retried, %s failed, %s skipped",
            stats.claimed, stats.sent, stats.deferred, stats.retried, stats.failed, stats.skipped,
        )  # fmt: skip


def extend_plans() -> None:
    with session_scope() as session:
        added = plans.extend_active_plans(session)
    logger.info("extend_plans: %s rows written ahead", added)


def daily_checks(now: Optional[datetime] = None) -> int:
    """Alerts for plans whose `check` steps fail today; returns how many escalations were opened."""
    moment = now or clock.now()
    opened = 0
    with session_scope() as session:
        care.mark_missed(session, moment)
        opened += _check_missed_doses(session, moment)
        for plan in session.execute(select(CarePlan).where(CarePlan.active.is_(True))).scalars():
            template = plans.get_template(plan.template)
            for step in template.steps:
                if step.kind.kind == "check" and step.spec.get("check") == "no_reading":
                    opened += _check_no_reading(session, plan, step, moment)
    return opened


def escalation_deadlines() -> None:
    alerted = alerts.alert_overdue_escalations()
    if alerted:
        logger.info("escalation_deadlines: %s overdue escalations alerted", alerted)


MISSED_DAYS_ALERT = 3  # three days in a row without a confirmed dose: a nurse calls


def _check_missed_doses(session: Session, now: datetime) -> int:
    opened = 0
    for prescription in session.execute(select(Prescription)).scalars():
        patient = session.get(Patient, prescription.patient_id)
        tz = plans.ZoneInfo(patient.timezone or "Asia/Shanghai")
        streak = care.missed_days_in_a_row(session, prescription.id, tz, now)
        if streak < MISSED_DAYS_ALERT:
            continue
        if _alert_pending(session, patient.id, "missed_medication"):
            continue
        summary = notices.translate(
            "nurse_alert_missed_doses",
            {"name": patient.name, "drug": prescription.drug or "-", "count": streak, "days": streak},
            locale=get_settings().locale,
            tz=get_settings().timezone,
        )
        open_escalation(session, sender_id=f"patient:{patient.id}", channel=None, reason="missed_medication",
                        summary=summary, patient_id=patient.id, priority=2)  # fmt: skip
        opened += 1
    return opened


def _alert_pending(session: Session, patient_id: int, reason: str) -> bool:
    """An alert of this kind is still open or being handled: a nurse is on it, do not raise another."""
    return (
        session.execute(
            select(Escalation.id).where(
                Escalation.patient_id == patient_id,
                Escalation.reason == reason,
                Escalation.status != EscalationStatus.RESOLVED,
            )
        ).first()
        is not None
    )


def _check_no_reading(session: Session, plan: CarePlan, step: plans.Step, now: datetime) -> int:
    days = int(step.spec.get("days", 14))
    kind = str(step.spec.get("measurement", "blood_pressure"))
    since = (now - timedelta(days=days)).astimezone(plans.ZoneInfo("UTC")).replace(tzinfo=None)
    if plan.anchor_at > since:
        return 0  # the plan is younger than the window
    latest = session.execute(
        select(func.max(MeasurementReading.taken_at)).where(
            MeasurementReading.patient_id == plan.patient_id, MeasurementReading.kind == kind
        )
    ).scalar_one_or_none()
    if latest is not None and latest >= since:
        return 0
    reason = "missing_reading"
    if _alert_pending(session, plan.patient_id, reason):
        return 0  # one alert until a nurse resolves it, not one a day
    patient = session.get(Patient, plan.patient_id)
    summary = notices.translate(
        str(step.message),
        {"name": patient.name, "measurement": notices.Term(f"measurement.{kind}"), "days": days},
        locale=get_settings().locale,
        tz=get_settings().timezone,
    )
    open_escalation(
        session,
        sender_id=f"patient:{patient.id}",
        channel=None,
        reason=reason,
        summary=summary,
        patient_id=patient.id,
        priority=3,
    )
    return 1


# ----------------------------------------------------------------------------------------------
# the process
# ----------------------------------------------------------------------------------------------
def build_scheduler(database_url: Optional[str] = None, dispatch_seconds: float = 5.0) -> Any:
    from apscheduler.jobstores.sqlalchemy import SQLAlchemyJobStore
    from apscheduler.schedulers.background import BackgroundScheduler

    settings = get_settings()
    url = database_url or settings.database_url
    scheduler = BackgroundScheduler(
        jobstores={"default": SQLAlchemyJobStore(url=url, tablename=JOB_TABLE)},
        job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": 3600},
        timezone=settings.timezone,
    )
    scheduler.add_job(
        "scheduler.service:dispatch", "interval", seconds=dispatch_seconds, id="dispatch", replace_existing=True
    )
    scheduler.add_job("scheduler.service:extend_plans", "interval", hours=1, id="extend_plans", replace_existing=True)
    scheduler.add_job(
        "scheduler.service:daily_checks", "cron", hour=7, minute=0, id="daily_checks", replace_existing=True
    )
    scheduler.add_job(
        "scheduler.service:escalation_deadlines",
        "interval",
        seconds=30,
        id="escalation_deadlines",
        replace_existing=True,
        coalesce=True,
        max_instances=1,
    )
    return scheduler


async def _health(request: Any) -> Any:
    from aiohttp import web

    return web.json_response({"status": "ok", "jobs": [job.id for job in request.app["scheduler"].get_jobs()]})


async def _metrics(request: Any) -> Any:
    from aiohttp import web

    if not observability.authorized(request.headers.get("Authorization", ""), os.environ.get("METRICS_TOKEN", "")):
        raise web.HTTPUnauthorized(text="metrics token required")
    body, content_type = observability.exposition()
    return web.Response(body=body, headers={"Content-Type": content_type})


def serve(port: int) -> None:
    """Run the jobs and the HTTP server until SIGTERM or Ctrl-C."""
    from aiohttp import web

    scheduler = build_scheduler(dispatch_seconds=float(os.environ.get("DISPATCH_SECONDS", "5")))
    scheduler.start()
    app = web.Application(client_max_size=20 * 1024 * 1024)
    app["scheduler"] = scheduler
    app.router.add_get("/health", _health)
    app.router.add_get("/metrics", _metrics)
    observability.register_store_metrics()
    try:
        from scheduler import importer

        app.router.add_routes(importer.routes())
    except (ImportError, AttributeError):
        logger.warning("the import API is not available")
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    try:
        web.run_app(app, host=os.environ.get("SCHEDULER_HOST", "127.0.0.1"), port=port, print=None)
    finally:
        scheduler.shutdown(wait=True)


def chart(patient_id: int, kind: str, days: int = 90) -> bytes:
    """A patient's readings of one kind over the last `days` days as a PNG, in their locale and zone."""
    from bot.charts import trend_png

    with session_scope() as session:
        patient = session.get(Patient, patient_id)
        if patient is None:
            raise ValueError(f"no patient with id {patient_id}")
        points = care.readings_of(session, patient_id, kind, clock.now() - timedelta(days=days))
        locale, tz = patient.locale or "zh_CN", patient.timezone or "Asia/Shanghai"
    if not points:
        raise ValueError(f"patient {patient_id} has no {kind} readings in the last {days} days")
    thresholds = {"blood_pressure": {"systolic": 140, "systolic_severe": 180, "diastolic": 90},
                  "glucose": {"low": 3.9, "high": 10.0}}.get(kind)  # fmt: skip
    return trend_png(points, kind, tz=tz, locale=locale, thresholds=thresholds)


def send_chart(patient_id: int, kind: str, days: int = 90) -> int:
    """Send the chart to the patient on WeChat with a caption from the catalogs; returns the delivery id."""
    from bot.outbound import send_image_to_patient

    png = chart(patient_id, kind, days)
    with session_scope() as session:
        patient = session.get(Patient, patient_id)
        caption = notices.translate(
            "chart.caption",
            {"name": patient.name, "measurement": notices.Term(f"measurement.{kind}"), "days": days},
            locale=patient.locale or "zh_CN",
            tz=patient.timezone or "Asia/Shanghai",
        )
    return send_image_to_patient(patient_id, png, caption).delivery_id


def chart_command(patient_id: Optional[int], kind: str, days: int, out: Optional[str], send: bool) -> int:
    if patient_id is None:
        print("chart needs --patient", file=sys.stderr)
        return 1
    try:
        if send:
            print(f"sent, delivery {send_chart(patient_id, kind, days)}")
        if out:
            with open(out, "wb") as file:
                file.write(chart(patient_id, kind, days))
            print(f"written to {out}")
    except ValueError as error:
        print(error, file=sys.stderr)
        return 1
    return 0


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m scheduler", description="care-plan scheduler")
    parser.add_argument(
        "command",
        nargs="?",
        default="serve",
        choices=["serve", "dispatch-once", "extend", "check", "chart", "alert-overdue"],
    )
    parser.add_argument("--port", type=int, default=int(os.environ.get("SCHEDULER_PORT", "5077")))
    parser.add_argument("--patient", type=int, help="chart: the patient's id")
    parser.add_argument("--kind", default="blood_pressure", help="chart: blood_pressure, glucose, heart_rate...")
    parser.add_argument("--days", type=int, default=90, help="chart: how far back")
    parser.add_argument("--out", help="chart: write the PNG here")
    parser.add_argument("--send", action="store_true", help="chart: send it to the patient on WeChat")
    args = parser.parse_args(argv)
    if args.command == "chart":
        return chart_command(args.patient, args.kind, args.days, args.out, args.send)
    observability.configure_logging("scheduler")
    if args.command == "dispatch-once":
        stats = dispatcher().run_until_idle()
        print(stats)
        return 0
    if args.command == "extend":
        extend_plans()
        return 0
    if args.command == "check":
        print(f"{daily_checks()} alerts opened")
        return 0
    if args.command == "alert-overdue":
        print(f"{alerts.alert_overdue_escalations()} overdue escalations alerted")
        return 0
    serve(args.port)
    return 0


if __name__ == "__main__":
    sys.exit(main())
