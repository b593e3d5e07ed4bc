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
from typing import Any, Dict, List, Mapping, Optional, Tuple

import requests
from sqlalchemy import and_, or_, select, update
from sqlalchemy.orm import Session
from zoneinfo import ZoneInfo

from bot import clock
from bot.catalog import hospital
from bot.crm.models import CarePlan, ChannelIdentity, DeliveryStatus, OutboxMessage, OutboxStatus, Patient
from bot.db import session_scope
from bot.notices import NoticeError
from bot.outbound import OutboundMessage, Providers, Undeliverable, get_providers, send_to_patient
from bot.outbound.providers import Provider, SendResult

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
        self.http = requests.Session()

    def trigger(self, sender_id: str, channel: str, intent: str, entities: Mapping[str, Any]) -> None:
        response = self.http.post(
            f"{self.rasa_url}/conversations/{sender_id}/trigger_intent",
            params={"output_channel": channel},
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
        with session_scope() as session:
            return list(session.execute(select(table.c.id).where(table.c.claimed_by == token)).scalars())

    # one pass ------------------------------------------------------------------------------------
    def run_once(self, now: Optional[datetime] = None) -> DispatchStats:
        """Claim one batch of due rows and send them, `workers` at a time."""
        moment = now or clock.now()
        stats = DispatchStats()
        ids = self.claim(moment)
        stats.claimed = len(ids)
        if not ids:
            return stats
        with ThreadPoolExecutor(max_workers=self.settings.workers, thread_name_prefix="dispatch") as pool:
            for outcome in pool.map(lambda row_id: self.process(row_id, moment), ids):
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

    # one row -------------------------------------------------------------------------------------
    def process(self, row_id: int, now: datetime) -> str:
        try:
            return self._process(row_id, now)
        except Exception as error:  # one bad row must not stop the batch: retry it later
            logger.exception("outbox row %s failed unexpectedly", row_id)
            return self._retry(row_id, now, f"internal error: {type(error).__name__}")

    def _process(self, row_id: int, now: datetime) -> str:
        with session_scope() as session:
            row = session.get(OutboxMessage, row_id)
            patient = session.get(Patient, row.patient_id)
            plan = session.get(CarePlan, row.plan_id) if row.plan_id else None
            if plan is not None and not plan.active:
                return self._finish(session, row, OutboxStatus.CANCELLED, "skipped", "plan no longer active")
            if not row.urgent:
                wake = next_waking_time(
                    now, ZoneInfo(patient.timezone or "Asia/Shanghai"), self.settings.quiet_start,
                    self.settings.quiet_end,
                )  # fmt: skip
                if wake is not None:
                    row.status, row.claimed_by, row.claim_expires_at = OutboxStatus.PENDING, None, None
                    row.next_attempt_at = _naive(wake)
                    return "deferred"
            if row.message == "medication_reask" and _dose_settled(session, row):
                return self._finish(session, row, OutboxStatus.SKIPPED, "skipped", "dose already confirmed")
            if row.message == "medication_reminder":
                _open_dose(session, row, now)
            conversation = self._conversation_channel(session, row, patient)
            try:
                message = render_notice(row, patient)
            except NoticeError as error:  # the plan lacks a value the message needs: retrying cannot help
                return self._finish(session, row, OutboxStatus.FAILED, "failed", f"cannot render: {error}")
            patient_id, policy = patient.id, [c for c in row.channel_policy.split(",") if c]
        if conversation is not None:
            return self._push_conversation(row_id, now, conversation, message, patient_id, policy)
        return self._send_notice(row_id, now, message, patient_id, policy)

    def _conversation_channel(
        self, session: Session, row: OutboxMessage, patient: Patient
    ) -> Optional[Tuple[str, str, Dict[str, Any]]]:
        """(sender id, channel, conversation) when the row goes through Rasa on a channel the patient writes on."""
        if not row.conversation or self.rasa is None:
            return None
        from bot.crm.consent import accepts_messages

        identities = {
            identity.channel: identity.external_id
            for identity in session.execute(
                select(ChannelIdentity).where(ChannelIdentity.patient_id == patient.id)
            ).scalars()
        }
        for channel in ("wechat", "sms"):
            address = identities.get(channel) or (patient.phone if channel == "sms" else None)
            if (
                channel in row.channel_policy
                and address
                and accepts_messages(session, channel=channel, external_id=address)
            ):
                return address, channel, dict(row.conversation)
        return None

    def _push_conversation(
        self,
        row_id: int,
        now: datetime,
        target: Tuple[str, str, Dict[str, Any]],
        message: OutboundMessage,
        patient_id: int,
        policy: List[str],
    ) -> str:
        sender, channel, conversation = target
        entities = {**conversation.get("entities", {}), "reminder_text": message.text}
        try:
            self.rasa.trigger(sender, channel, conversation["intent"], entities)  # type: ignore[union-attr]
        except Exception as error:  # Rasa down: the notice still goes out, through the outbound API
            logger.warning("outbox row %s: trigger_intent failed (%s); sending as a notice", row_id, error)
            return self._send_notice(row_id, now, message, patient_id, policy)
        with session_scope() as session:
            row = session.get(OutboxMessage, row_id)
            row.channel = channel
            return self._finish(session, row, OutboxStatus.SENT, "sent", None, now=now)

    def _send_notice(
        self, row_id: int, now: datetime, message: OutboundMessage, patient_id: int, policy: List[str]
    ) -> str:
        try:
            report = send_to_patient(patient_id, message, policy=policy, providers=self.providers)
        except Undeliverable as error:
            if error.attempts and all(a.status == DeliveryStatus.SKIPPED for a in error.attempts):
                with session_scope() as session:
                    return self._finish(
                        session, session.get(OutboxMessage, row_id), OutboxStatus.SKIPPED, "skipped", "opted out"
                    )
            if not error.attempts:  # no address on any channel of the policy: retrying will not help
                with session_scope() as session:
                    return self._finish(
                        session, session.get(OutboxMessage, row_id), OutboxStatus.FAILED, "failed", str(error)
                    )
            return self._retry(row_id, now, str(error))
        with session_scope() as session:
            row = session.get(OutboxMessage, row_id)
            row.delivery_id, row.channel = report.delivery_id, report.channel
            return self._finish(session, row, OutboxStatus.SENT, "sent", None, now=now)

    def _finish(
        self,
        session: Session,
        row: OutboxMessage,
        status: OutboxStatus,
        outcome: str,
        error: Optional[str],
        now: Optional[datetime] = None,
    ) -> str:
        row.status = status
        row.claimed_by, row.claim_expires_at = None, None
        row.last_error = (error or "")[:255] or None
        if status == OutboxStatus.SENT:
            row.attempts += 1
            row.sent_at = _naive(now or clock.now())
        return outcome

    def _retry(self, row_id: int, now: datetime, error: str) -> str:
        with session_scope() as session:
            row = session.get(OutboxMessage, row_id)
            row.attempts += 1
            row.last_error = error[:255]
            row.claimed_by, row.claim_expires_at = None, None
            if row.attempts >= self.settings.max_attempts:
                row.status = OutboxStatus.FAILED
                logger.warning("outbox row %s failed after %s attempts", row_id, row.attempts)
                return "failed"
            delay = min(self.settings.backoff * (2 ** (row.attempts - 1)), self.settings.backoff_cap)
            row.status = OutboxStatus.PENDING
            row.next_attempt_at = _naive(now) + delay
            return "retried"
