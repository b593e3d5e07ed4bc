"""Handing a conversation to a human: escalation rows, and the nurse console's workflow on them.

open → claimed (exactly one nurse: a conditional UPDATE) → resolved. One conversation has at most one active
escalation: a second reason raises its priority and adds to its summary instead of queueing the patient twice.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import lru_cache
from statistics import median
from typing import Dict, FrozenSet, List, Optional, Sequence

import yaml
from sqlalchemy import and_, func, or_, select, update
from sqlalchemy.orm import Session

from bot.config import DATA_DIR
from bot.crm import audit
from bot.crm.models import ConsoleSession, Escalation, EscalationStatus, StaffRole, StaffUser, utcnow

# 1 = most urgent. Red flags, crises and a questionnaire's self-harm item 1; a patient asking for a person and a
# positive screening 2; everything else 3.
PRIORITY = {
    "red_flag": 1,
    "crisis": 1,
    "survey_safety": 1,
    "request_human": 2,
    "survey_positive": 2,
    "complaint": 3,
    "repeated_fallback": 3,
    "survey_detractor": 3,
    "abnormal_reading": 2,  # a reading in the urgent range (level 3), sent in chat
    "missed_medication": 2,  # three days in a row without a confirmed dose
    "missing_reading": 3,  # a care plan's readings stopped coming
}

ACTIVE = (EscalationStatus.OPEN, EscalationStatus.CLAIMED)


@dataclass(frozen=True)
class Rules:
    """data/console/console.yml: deadlines, which reasons pause the bot, reason names, canned replies."""

    deadlines_minutes: Dict[int, int]
    pausing_reasons: FrozenSet[str]
    reason_names: Dict[str, str]
    canned_replies: Sequence[str]
    labels: Dict[str, Dict[str, str]]

    def deadline(self, priority: int) -> timedelta:
        return timedelta(minutes=self.deadlines_minutes.get(priority, max(self.deadlines_minutes.values())))


@lru_cache(maxsize=1)
def rules() -> Rules:
    raw = yaml.safe_load((DATA_DIR / "console" / "console.yml").read_text(encoding="utf-8"))
    return Rules(
        deadlines_minutes={int(k): int(v) for k, v in raw["deadlines_minutes"].items()},
        pausing_reasons=frozenset(raw["pausing_reasons"]),
        reason_names=dict(raw.get("reasons") or {}),
        canned_replies=tuple(raw.get("canned_replies") or ()),
        labels={kind: dict(names) for kind, names in (raw.get("labels") or {}).items()},
    )


def active_for(session: Session, sender_id: str) -> Optional[Escalation]:
    """The conversation's open or claimed escalation, if any."""
    return session.execute(
        select(Escalation)
        .where(Escalation.sender_id == sender_id, Escalation.status.in_(ACTIVE))
        .order_by(Escalation.id.desc())
        .limit(1)
    ).scalar_one_or_none()


def open_escalation(
    session: Session,
    *,
    sender_id: str,
    channel: Optional[str],
    reason: str,
    summary: str,
    patient_id: Optional[int] = None,
    priority: Optional[int] = None,
    department_code: Optional[str] = None,
) -> Escalation:
    """Queue the conversation for a nurse, or raise the priority of its active escalation."""
    priority = priority or PRIORITY.get(reason, 3)
    pauses = reason in rules().pausing_reasons
    existing = active_for(session, sender_id)
    if existing is not None:
        if priority < existing.priority:
            existing.priority = priority
            existing.reason = reason
        existing.pauses_bot = existing.pauses_bot or pauses
        existing.summary = f"{existing.summary}\n[{reason}] {summary}"[-2000:]
        existing.patient_id = existing.patient_id or patient_id
        existing.department_code = existing.department_code or department_code
        session.flush()
        audit.record(session, "assistant", "update", "escalation", existing.id, existing.patient_id, {"reason": reason})
        return existing
    escalation = Escalation(
        sender_id=sender_id,
        channel=channel,
        reason=reason,
        priority=priority,
        summary=summary[:2000],
        patient_id=patient_id,
        department_code=department_code,
        pauses_bot=pauses,
        status=EscalationStatus.OPEN,
    )
    session.add(escalation)
    session.flush()
    audit.record(session, "assistant", "create", "escalation", escalation.id, patient_id, {"reason": reason})
    return escalation


@dataclass(frozen=True)
class Wait:
    """What the patient is told: how many wait before them and about how long it takes."""

    ahead: int
    minutes: int


def wait_estimate(session: Session, escalation: Escalation, now: Optional[datetime] = None) -> Wait:
    """Patients ahead (more urgent, or as urgent and earlier) times the recent median time to claim at this
    priority, shared among the nurses logged in; the priority's deadline when there is no history yet."""
    now = now or utcnow()
    ahead = session.execute(
        select(func.count(Escalation.id)).where(
            Escalation.status == EscalationStatus.OPEN,
            Escalation.id != escalation.id,
            or_(
                Escalation.priority < escalation.priority,
                and_(Escalation.priority == escalation.priority, Escalation.created_at <= escalation.created_at),
            ),
        )
    ).scalar_one()
    recent = session.execute(
        select(Escalation.created_at, Escalation.claimed_at).where(
            Escalation.priority == escalation.priority,
            Escalation.claimed_at.isnot(None),
            Escalation.claimed_at >= now - timedelta(days=7),
        )
    ).all()
    deadline = rules().deadline(escalation.priority).total_seconds() / 60
    per_patient = median((c - o).total_seconds() / 60 for o, c in recent) if len(recent) >= 3 else deadline
    nurses = max(1, nurses_online(session, now))
    minutes = per_patient * (ahead + 1) / nurses
    return Wait(ahead=int(ahead), minutes=int(min(max(math.ceil(minutes), 1), 120)))


def nurses_online(session: Session, now: datetime) -> int:
    """Staff with a console session used in the last 10 minutes."""
    return session.execute(
        select(func.count(func.distinct(ConsoleSession.user_id))).where(
            ConsoleSession.last_seen_at >= now - timedelta(minutes=10), ConsoleSession.expires_at > now
        )
    ).scalar_one()


def queue(session: Session, department_code: Optional[str] = None, include_claimed: bool = True) -> List[Escalation]:
    """Active escalations, most urgent first, then longest waiting."""
    statuses = ACTIVE if include_claimed else (EscalationStatus.OPEN,)
    query = select(Escalation).where(Escalation.status.in_(statuses))
    if department_code:
        query = query.where(Escalation.department_code == department_code)
    return list(session.execute(query.order_by(Escalation.priority, Escalation.created_at)).scalars())


@dataclass(frozen=True)
class ClaimResult:
    won: bool
    holder: Optional[str]  # who holds it now (display name)
    escalation: Optional[Escalation]


def claim(session: Session, escalation_id: int, user: StaffUser, now: Optional[datetime] = None) -> ClaimResult:
    """Take an open escalation. Exactly one of several nurses racing wins: the UPDATE matches only while the row
    is still open, and the database serialises concurrent UPDATEs of one row."""
    now = now or utcnow()
    won = (
        session.execute(
            update(Escalation)
            .where(Escalation.id == escalation_id, Escalation.status == EscalationStatus.OPEN)
            .values(status=EscalationStatus.CLAIMED, claimed_by_id=user.id, claimed_at=now)
            .execution_options(synchronize_session=False)
        ).rowcount
        == 1
    )
    escalation = session.get(Escalation, escalation_id, populate_existing=True)
    if escalation is None:
        return ClaimResult(False, None, None)
    if won:
        audit.record(session, user.username, "claim", "escalation", escalation.id, escalation.patient_id)
    holder = escalation.claimed_by.display_name if escalation.claimed_by else None
    return ClaimResult(won, holder, escalation)


class NotYours(Exception):
    """A nurse acted on an escalation another nurse holds (or one already resolved)."""


def may_act(escalation: Escalation, user: StaffUser) -> bool:
    """The holder acts on a claimed escalation; an admin may step in."""
    return escalation.status == EscalationStatus.CLAIMED and (
        escalation.claimed_by_id == user.id or user.role == StaffRole.ADMIN
    )


def resolve(
    session: Session, escalation_id: int, user: StaffUser, resolution: str = "", now: Optional[datetime] = None
) -> Escalation:
    escalation = session.get(Escalation, escalation_id, with_for_update=True)
    if escalation is None or not may_act(escalation, user):
        raise NotYours(escalation_id)
    escalation.status = EscalationStatus.RESOLVED
    escalation.resolved_by_id = user.id
    escalation.resolved_at = now or utcnow()
    escalation.resolution = resolution[:200] or None
    audit.record(session, user.username, "resolve", "escalation", escalation.id, escalation.patient_id)
    return escalation


def release(session: Session, escalation_id: int, user: StaffUser) -> Escalation:
    """Put a claimed escalation back in the queue (the nurse's shift ends)."""
    escalation = session.get(Escalation, escalation_id, with_for_update=True)
    if escalation is None or not may_act(escalation, user):
        raise NotYours(escalation_id)
    escalation.status = EscalationStatus.OPEN
    escalation.claimed_by_id = None
    escalation.claimed_at = None
    audit.record(session, user.username, "release", "escalation", escalation.id, escalation.patient_id)
    return escalation


def raise_priority(session: Session, escalation: Escalation, priority: int, note: str) -> bool:
    """A paused conversation turned urgent (a red flag while waiting): move it up the queue."""
    if priority >= escalation.priority:
        return False
    escalation.priority = priority
    escalation.summary = f"{escalation.summary}\n[{note}]"[-2000:]
    escalation.deadline_alerted_at = None  # the tighter deadline deserves its own alert
    audit.record(session, "assistant", "raise_priority", "escalation", escalation.id, escalation.patient_id)
    return True


def overdue(session: Session, now: Optional[datetime] = None) -> List[Escalation]:
    """Open escalations past their priority's deadline whose on-call alert has not gone out."""
    now = now or utcnow()
    candidates = session.execute(
        select(Escalation).where(Escalation.status == EscalationStatus.OPEN, Escalation.deadline_alerted_at.is_(None))
    ).scalars()
    return [e for e in candidates if e.created_at + rules().deadline(e.priority) <= now]


def mark_alerted(session: Session, escalation_id: int, now: Optional[datetime] = None) -> bool:
    """Claim the right to alert for one escalation: True for exactly one of several schedulers."""
    return (
        session.execute(
            update(Escalation)
            .where(Escalation.id == escalation_id, Escalation.deadline_alerted_at.is_(None))
            .values(deadline_alerted_at=now or utcnow())
            .execution_options(synchronize_session=False)
        ).rowcount
        == 1
    )


def on_call_staff(session: Session) -> List[StaffUser]:
    return list(
        session.execute(
            select(StaffUser).where(StaffUser.on_call.is_(True), StaffUser.active.is_(True)).order_by(StaffUser.id)
        ).scalars()
    )
