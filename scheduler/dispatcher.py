"""The dispatcher: claims due outbox rows and sends them, so a million pending reminders cost rows, not memory.

- Claiming marks a batch `sending` with this worker's name and a lease; on PostgreSQL the candidates are picked
  with `FOR UPDATE SKIP LOCKED`, so several schedulers share the outbox and never take the same row. A worker
  that dies leaves its rows `sending`; when the lease expires any worker takes them again (a reminder is sent
  at least once; duplicates are at most the sends that were in flight).
- Each row: the plan still active? the patient's waking hours (22:00–08:00 quiet by default, in the patient's
  own time zone; urgent rows exempt)? Then a conversation push through Rasa's `trigger_intent` on the patient's
  channel, or a notice rendered from the Babel catalogs and sent with `bot.outbound` (opt-outs skipped, WeChat →
  SMS → voice fallback, every attempt a Delivery row). Failures retry with exponential backoff, then fail.
- Each provider's rate limit is held per process (token buckets around the providers).
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time as time_module
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, time, timedelta
from typing import Any, Dict, List, Mapping, Optional, Sequence, Set, Tuple, Union

import requests
from sqlalchemy import and_, or_, select, update
from sqlalchemy.orm import Session
from zoneinfo import ZoneInfo

from bot import clock
from bot.catalog import hospital
from bot.crm.models import CarePlan, ChannelIdentity, Consent, OutboxMessage, OutboxStatus, Patient
from bot.db import session_scope
from bot.notices import NoticeError
from bot.outbound import OutboundMessage, Providers, get_providers
from bot.outbound.providers import Provider, SendResult
from bot.outbound.service import addresses_of, attempt_sends, record_outcomes

logger = logging.getLogger(__name__)
UTC = ZoneInfo("UTC")


@dataclass(frozen=True)
class DispatchSettings:
    quiet_start: time = time(22, 0)
    quiet_end: time = time(8, 0)
    lease: timedelta = timedelta(minutes=5)  # a claim older than this is taken again
    batch: int = 200
    workers: int = 8  # sends in flight per dispatcher
    max_attempts: int = 5
    backoff: timedelta = timedelta(minutes=1)  # 1, 2, 4, 8 ... minutes, capped
    backoff_cap: timedelta = timedelta(hours=6)
    rate_limits: Mapping[str, float] = field(default_factory=lambda: {"wechat": 50.0, "sms": 1.0, "voice": 0.2})
    rasa_url: Optional[str] = None  # conversation pushes; None: sent as notices

    @classmethod
    def from_env(cls) -> DispatchSettings:
        def hhmm(name: str, default: str) -> time:
            hours, minutes = os.environ.get(name, default).split(":")
            return time(int(hours), int(minutes))

        limits = {"wechat": 50.0, "sms": 1.0, "voice": 0.2}
        for channel in limits:
            value = os.environ.get(f"RATE_LIMIT_{channel.upper()}")
            if value:
                limits[channel] = float(value)
        return cls(
            quiet_start=hhmm("QUIET_HOURS_START", "22:00"),
            quiet_end=hhmm("QUIET_HOURS_END", "08:00"),
            lease=timedelta(seconds=float(os.environ.get("OUTBOX_LEASE_SECONDS", "300"))),
            batch=int(os.environ.get("OUTBOX_BATCH", "200")),
            workers=int(os.environ.get("OUTBOX_WORKERS", "8")),
            rate_limits=limits,
            rasa_url=os.environ.get("RASA_URL", "http://127.0.0.1:5005") or None,
        )


@dataclass
class DispatchStats:
    claimed: int = 0
    sent: int = 0
    deferred: int = 0
    retried: int = 0
    failed: int = 0
    skipped: int = 0

    def add(self, outcome: str) -> None:
        setattr(self, outcome, getattr(self, outcome) + 1)


# ----------------------------------------------------------------------------------------------
# rate limits
# ----------------------------------------------------------------------------------------------
class TokenBucket:
    """`rate` sends per second with a burst of one second's worth; `acquire` waits (in the worker thread)."""

    def __init__(self, rate: float) -> None:
        self.rate = rate
        self.capacity = max(1.0, rate)
        self.tokens = self.capacity
        self.updated = time_module.monotonic()
        self.lock = threading.Lock()

    def acquire(self) -> None:
        while True:
            with self.lock:
                now = time_module.monotonic()
                self.tokens = min(self.capacity, self.tokens + (now - self.updated) * self.rate)
                self.updated = now
                if self.tokens >= 1:
                    self.tokens -= 1
                    return
                wait = (1 - self.tokens) / self.rate
            time_module.sleep(wait)


class _Limited(Provider):
    def __init__(self, inner: Provider, bucket: TokenBucket) -> None:
        self.inner = inner
        self.bucket = bucket
        self.channel = inner.channel

    def send(self, address: str, message: OutboundMessage, delivery_id: Optional[int] = None) -> SendResult:
        self.bucket.acquire()
        return self.inner.send(address, message, delivery_id=delivery_id)


class RateLimitedProviders(Providers):
    """The process's providers, each behind its token bucket (a rate of 0 or less: no limit)."""

    def __init__(self, inner: Providers, limits: Mapping[str, float]) -> None:
        self.inner = inner
        self.buckets = {channel: TokenBucket(rate) for channel, rate in limits.items() if rate and rate > 0}

    def get(self, channel: str) -> Provider:
        provider = self.inner.get(channel)
        bucket = self.buckets.get(channel)
        return _Limited(provider, bucket) if bucket else provider


# ----------------------------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------------------------
def _naive(moment: datetime) -> datetime:
    return moment.astimezone(UTC).replace(tzinfo=None) if moment.tzinfo else moment


def next_waking_time(now: datetime, tz: ZoneInfo, quiet_start: time, quiet_end: time) -> Optional[datetime]:
    """None when `now` is within the patient's waking hours, else the end of the quiet period (aware)."""
    local = now.astimezone(tz)
    clock_now = local.time()
    overnight = quiet_start > quiet_end  # 22:00–08:00
    quiet = (clock_now >= quiet_start or clock_now < quiet_end) if overnight else quiet_start <= clock_now < quiet_end
    if not quiet:
        return None
    day = local.date() if clock_now < quiet_end else local.date() + timedelta(days=1)
    return datetime.combine(day, quiet_end, tzinfo=tz)


REASK_AFTER = timedelta(hours=2)  # no answer to a medication reminder: one gentle re-ask


def _open_dose(session: Session, row: OutboxMessage, now: datetime) -> None:
    """A medication reminder going out opens its dose and schedules one re-ask (both idempotent)."""
    from bot.crm import care
    from scheduler.plans import insert_ignoring_duplicates

    prescription_id = (row.params or {}).get("prescription_id")
    if not prescription_id:
        return
    dose = care.due_dose(session, int(prescription_id), row.patient_id, row.due_at)
    reask_at = max(_naive(now), row.due_at) + REASK_AFTER
    insert_ignoring_duplicates(
        session,
        [
            {
                "patient_id": row.patient_id,
                "plan_id": row.plan_id,
                "step": f"{row.step}:reask",
                "message": "medication_reask",
                "params": {**(row.params or {}), "dose_id": dose.id},
                "conversation": row.conversation,
                "channel_policy": row.channel_policy,
                "urgent": False,
                "due_at": reask_at,
                "next_attempt_at": reask_at,
                "status": OutboxStatus.PENDING.value,
                "attempts": 0,
                "idempotency_key": f"reask:{row.id}",
                "created_at": _naive(now),
            }
        ],
    )


def _dose_settled(session: Session, row: OutboxMessage) -> bool:
    from bot.crm.models import MedicationDose

    dose_id = (row.params or {}).get("dose_id")
    dose = session.get(MedicationDose, int(dose_id)) if dose_id else None
    return dose is None or dose.status != "due"


class RasaTrigger:
    """Conversation pushes: Rasa's trigger_intent with the patient's channel as output channel."""

    def __init__(self, rasa_url: str) -> None:
        self.rasa_url = rasa_url.rstrip("/")
        self.token = os.environ.get("RASA_TOKEN", "")  # Rasa's --auth-token
        self.http = requests.Session()

    def trigger(self, sender_id: str, channel: str, intent: str, entities: Mapping[str, Any]) -> None:
        response = self.http.post(
            f"{self.rasa_url}/conversations/{sender_id}/trigger_intent",
            params={"output_channel": channel, **({"token": self.token} if self.token else {})},
            json={"name": intent, "entities": dict(entities)},
            timeout=30,
        )
        if response.status_code != 200:
            raise RuntimeError(f"Rasa answered {response.status_code} to trigger_intent {intent}")


def render_notice(row: OutboxMessage, patient: Patient) -> OutboundMessage:
    """The catalog text of a row, in the patient's locale and time zone."""
    from bot import notices

    params: Dict[str, Any] = {"name": patient.name, "hospital_phone": str(hospital().get("hotline", ""))}
    params.update(row.params or {})
    for key in ("anchor", "datetime", "appointment_at"):
        if isinstance(params.get(key), str):
            with contextlib.suppress(ValueError):  # not a timestamp: shown as written
                params[key] = datetime.fromisoformat(params[key])
    if isinstance(params.get("time"), str):  # a dose time "08:00": formatted for the patient's locale
        with contextlib.suppress(ValueError):
            params["time"] = time.fromisoformat(params["time"])
    params.setdefault("datetime", params.get("anchor"))
    notice = notices.render(row.message, params, locale=patient.locale or "zh_CN", tz=patient.timezone)
    purpose = "alert" if row.message.startswith("nurse_") else "reminder"
    return OutboundMessage(notice.text, summary=notice.summary, purpose=purpose, when=row.due_at)


# ----------------------------------------------------------------------------------------------
# the dispatcher
# ----------------------------------------------------------------------------------------------
class Dispatcher:
    def __init__(
        self,
        name: Optional[str] = None,
        settings: Optional[DispatchSettings] = None,
        providers: Optional[Providers] = None,
    ) -> None:
        self.name = name or f"{os.uname().nodename}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self.settings = settings or DispatchSettings.from_env()
        self.providers = RateLimitedProviders(providers or get_providers(), self.settings.rate_limits)
        self.rasa = RasaTrigger(self.settings.rasa_url) if self.settings.rasa_url else None

    # claiming ------------------------------------------------------------------------------------
    def claim(self, now: datetime, limit: Optional[int] = None) -> List[int]:
        """Mark up to `limit` due rows as ours; returns their ids. Safe with any number of dispatchers."""
        now_naive = _naive(now)
        token = f"{self.name}:{uuid.uuid4().hex[:8]}"
        table = OutboxMessage.__table__
        due = or_(
            and_(table.c.status == OutboxStatus.PENDING.value, table.c.next_attempt_at <= now_naive),
            and_(table.c.status == OutboxStatus.SENDING.value, table.c.claim_expires_at < now_naive),
        )
        # Two statements in one transaction, not UPDATE ... WHERE id IN (SELECT ... LIMIT n FOR UPDATE SKIP LOCKED):
        # PostgreSQL may run such a subquery more than once and claim far more than n rows for one worker.
        with session_scope() as session:
            candidates = (
                select(table.c.id).where(due).order_by(table.c.next_attempt_at).limit(limit or self.settings.batch)
            )
            if session.get_bind().dialect.name == "postgresql":
                candidates = candidates.with_for_update(skip_locked=True)
            picked = list(session.execute(candidates).scalars())
            if not picked:
                return []
            # `due` again: on SQLite another process may have claimed a row between the two statements
            session.execute(
                update(table)
                .where(table.c.id.in_(picked), due)
                .values(
                    status=OutboxStatus.SENDING.value,
                    claimed_by=token,
                    claim_expires_at=now_naive + self.settings.lease,
                )
                .execution_options(synchronize_session=False)
            )
        with session_scope() as session:  # by primary key: `claimed_by` has no index (a scan per batch)
            mine = select(table.c.id).where(table.c.id.in_(picked), table.c.claimed_by == token)
            return list(session.execute(mine).scalars())

    # one pass ------------------------------------------------------------------------------------
    def run_once(self, now: Optional[datetime] = None) -> DispatchStats:
        """Claim one batch of due rows, decide what each needs in one transaction, then send them `workers` at a
        time, each row's outcome recorded in one transaction of its own (so at most the sends in flight are
        repeated after a crash)."""
        moment = now or clock.now()
        stats = DispatchStats()
        ids = self.claim(moment)
        stats.claimed = len(ids)
        if not ids:
            return stats
        jobs = self.prepare(ids, moment, stats)
        with ThreadPoolExecutor(max_workers=self.settings.workers, thread_name_prefix="dispatch") as pool:
            for outcome in pool.map(lambda job: self.deliver(job, moment), jobs):
                stats.add(outcome)
        return stats

    def run_until_idle(self, now: Optional[datetime] = None, max_batches: int = 10_000) -> DispatchStats:
        total = DispatchStats()
        for _ in range(max_batches):
            stats = self.run_once(now)
            for name in ("claimed", "sent", "deferred", "retried", "failed", "skipped"):
                setattr(total, name, getattr(total, name) + getattr(stats, name))
            if not stats.claimed:
                break
        return total

    # deciding (one transaction per batch) ----------------------------------------------------------
    def prepare(self, ids: Sequence[int], now: datetime, stats: DispatchStats) -> List[Job]:
        jobs: List[Job] = []
        failed_rows: List[Tuple[int, str]] = []
        with session_scope() as session:
            rows = list(session.execute(select(OutboxMessage).where(OutboxMessage.id.in_(ids))).scalars())
            patient_ids = {row.patient_id for row in rows}
            patients = {p.id: p for p in session.execute(select(Patient).where(Patient.id.in_(patient_ids))).scalars()}
            plan_ids = {row.plan_id for row in rows if row.plan_id}
            active_plans = set(
                session.execute(select(CarePlan.id).where(CarePlan.id.in_(plan_ids), CarePlan.active.is_(True)))
                .scalars()
            )  # fmt: skip
            identities: Dict[int, List[ChannelIdentity]] = {}
            for identity in session.execute(
                select(ChannelIdentity).where(ChannelIdentity.patient_id.in_(patient_ids))
            ).scalars():
                identities.setdefault(identity.patient_id, []).append(identity)
            addresses = {i.external_id for group in identities.values() for i in group}
            addresses |= {p.phone for p in patients.values()}
            opted_out = set(
                session.execute(
                    select(Consent.channel, Consent.external_id).where(
                        Consent.opted_in.is_(False), Consent.external_id.in_(addresses)
                    )
                ).all()
            )
            for row in rows:
                try:
                    with session.begin_nested():
                        decided = self._decide(session, row, patients[row.patient_id], row.plan_id in active_plans,
                                               identities.get(row.patient_id, []), opted_out, now)  # fmt: skip
                except Exception as error:  # one bad row must not stop the batch: retried later
                    logger.exception("outbox row %s could not be prepared", row.id)
                    failed_rows.append((row.id, f"internal error: {type(error).__name__}"))
                    continue
                if isinstance(decided, Job):
                    jobs.append(decided)
                else:
                    stats.add(decided)
        for row_id, error in failed_rows:
            stats.add(self._retry(row_id, now, error))
        return jobs

    def _decide(
        self,
        session: Session,
        row: OutboxMessage,
        patient: Patient,
        plan_active: bool,
        identities: Sequence[ChannelIdentity],
        opted_out: Set[Tuple[str, str]],
        now: datetime,
    ) -> Union[Job, str]:
        """A Job to send, or the outcome already settled here (cancelled, deferred, skipped, failed)."""
        if row.plan_id and not plan_active:
            return _finish(row, OutboxStatus.CANCELLED, "skipped", "plan no longer active")
        if not row.urgent:
            tz = ZoneInfo(patient.timezone or "Asia/Shanghai")
            wake = next_waking_time(now, tz, self.settings.quiet_start, self.settings.quiet_end)
            if wake is not None:
                row.status, row.claimed_by, row.claim_expires_at = OutboxStatus.PENDING, None, None
                row.next_attempt_at = _naive(wake)
                return "deferred"
        if row.message == "medication_reask" and _dose_settled(session, row):
            return _finish(row, OutboxStatus.SKIPPED, "skipped", "dose already confirmed")
        if row.message == "medication_reminder":
            _open_dose(session, row, now)
        try:
            message = render_notice(row, patient)
        except NoticeError as error:  # the plan lacks a value the message needs: retrying cannot help
            return _finish(row, OutboxStatus.FAILED, "failed", f"cannot render: {error}")
        policy = [channel for channel in row.channel_policy.split(",") if channel]
        pairs = addresses_of(patient, identities, policy)
        blocked = {pair for pair in pairs if pair in opted_out}
        if not pairs:
            return _finish(row, OutboxStatus.FAILED, "failed", "no address on any channel of the policy")
        if len(blocked) == len(pairs):
            return _finish(row, OutboxStatus.SKIPPED, "skipped", "opted out")
        conversation = None
        if row.conversation and self.rasa is not None:
            for channel, address in pairs:
                if channel in ("wechat", "sms") and (channel, address) not in blocked:
                    conversation = (address, channel, dict(row.conversation))
                    break
        return Job(row.id, patient.id, message, pairs, blocked, conversation)

    # sending (one transaction per row) -------------------------------------------------------------
    def deliver(self, job: Job, now: datetime) -> str:
        try:
            if job.conversation is not None and self._push_conversation(job):
                with session_scope() as session:
                    row = session.get(OutboxMessage, job.row_id)
                    row.channel = job.conversation[1]
                    return _finish(row, OutboxStatus.SENT, "sent", None, now=now)
            outcomes = attempt_sends(job.pairs, job.message, job.patient_id, self.providers, job.opted_out)
            with session_scope() as session:
                report, attempts = record_outcomes(session, outcomes, job.message, job.patient_id)
                row = session.get(OutboxMessage, job.row_id)
                if report is not None:
                    row.delivery_id, row.channel = report.delivery_id, report.channel
                    return _finish(row, OutboxStatus.SENT, "sent", None, now=now)
                tried = "; ".join(f"{a.channel}: {a.outcome}" for a in attempts)
                return self._schedule_retry(row, now, f"not delivered: {tried}")
        except Exception as error:  # an unexpected failure: the row is retried, never lost
            logger.exception("outbox row %s failed unexpectedly", job.row_id)
            return self._retry(job.row_id, now, f"internal error: {type(error).__name__}")

    def _push_conversation(self, job: Job) -> bool:
        """Through Rasa on the patient's channel; False (send as a notice) when Rasa cannot take it."""
        sender, channel, conversation = job.conversation  # type: ignore[misc]
        entities = {**conversation.get("entities", {}), "reminder_text": job.message.text}
        try:
            self.rasa.trigger(sender, channel, conversation["intent"], entities)  # type: ignore[union-attr]
        except Exception as error:
            logger.warning("outbox row %s: trigger_intent failed (%s); sending as a notice", job.row_id, error)
            return False
        return True

    def _retry(self, row_id: int, now: datetime, error: str) -> str:
        with session_scope() as session:
            return self._schedule_retry(session.get(OutboxMessage, row_id), now, error)

    def _schedule_retry(self, row: OutboxMessage, now: datetime, error: str) -> str:
        row.attempts += 1
        row.last_error = error[:255]
        row.claimed_by, row.claim_expires_at = None, None
        if row.attempts >= self.settings.max_attempts:
            row.status = OutboxStatus.FAILED
            logger.warning("outbox row %s failed after %s attempts", row.id, row.attempts)
            return "failed"
        delay = min(self.settings.backoff * (2 ** (row.attempts - 1)), self.settings.backoff_cap)
        row.status = OutboxStatus.PENDING
        row.next_attempt_at = _naive(now) + delay
        return "retried"


@dataclass
class Job:
    """A row ready to send: everything decided, nothing left to read from the database."""

    row_id: int
    patient_id: int
    message: OutboundMessage
    pairs: List[Tuple[str, str]]
    opted_out: Set[Tuple[str, str]]
    conversation: Optional[Tuple[str, str, Dict[str, Any]]]


def _finish(
    row: OutboxMessage, status: OutboxStatus, outcome: str, error: Optional[str], now: Optional[datetime] = None
) -> str:
    row.status = status
    row.claimed_by, row.claim_expires_at = None, None
    row.last_error = (error or "")[:255] or None
    if status == OutboxStatus.SENT:
        row.attempts += 1
        row.sent_at = _naive(now or clock.now())
    return outcome
