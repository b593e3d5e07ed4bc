"""On-call alerts: an escalation left unclaimed past its priority's deadline texts the on-call nurse(s).

Run by the scheduler's `escalation_deadlines` job (every 30 seconds, scheduler/service.py) or once with
`python -m scheduler alert-overdue`. Each overdue escalation is claimed for alerting with `mark_alerted` in its
own short transaction, so of several schedulers exactly one alerts it: at most once, never twice (a crash
between the claim and the SMS loses that alert; the console still shows the escalation as overdue).

The SMS comes from the notices catalogs (`escalation_overdue`) in the hospital's locale and carries no patient
data: the escalation's id, priority, reason name, minutes waiting and the console link. The logs name
escalations and staff by id only.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import List, Optional

from bot import notices
from bot.config import get_settings
from bot.crm import escalations
from bot.crm.models import Escalation, EscalationStatus, utcnow
from bot.db import session_scope
from bot.outbound.providers import OutboundMessage, Providers
from bot.outbound.service import Undeliverable, send_to_address

logger = logging.getLogger(__name__)

DEFAULT_CONSOLE_URL = "http://127.0.0.1:5088"
NOTICE_KEY = "escalation_overdue"


@dataclass(frozen=True)
class _Overdue:
    """What the alert needs of an escalation, read inside the transaction (no patient fields)."""

    id: int
    priority: int
    reason: str
    created_at: datetime


@dataclass(frozen=True)
class _Recipient:
    staff_id: int
    phone: str


def console_url() -> str:
    return (os.environ.get("CONSOLE_URL") or DEFAULT_CONSOLE_URL).rstrip("/")


def _naive_utc(moment: Optional[datetime]) -> datetime:
    """The CRM's form of a moment: naive UTC (escalations are stamped with models.utcnow, the wall clock)."""
    if moment is None:
        return utcnow()
    if moment.tzinfo is None:
        return moment
    return moment.astimezone(timezone.utc).replace(tzinfo=None)


def alert_text(escalation: _Overdue, now: datetime) -> str:
    """The SMS to the on-call nurse, from the catalogs in the hospital's locale."""
    settings = get_settings()
    minutes = max(0, int((now - escalation.created_at).total_seconds() // 60))
    return notices.translate(
        NOTICE_KEY,
        {
            "escalation_id": str(escalation.id),  # a string: no digit grouping ("1,234") in an id
            "priority": str(escalation.priority),
            "reason": escalations.rules().reason_names.get(escalation.reason, escalation.reason),
            "minutes": minutes,
            "url": f"{console_url()}/escalations/{escalation.id}",
        },
        locale=settings.locale,
        tz=settings.timezone,
    )


def _claim(escalation_id: int, now: datetime) -> bool:
    """Win the right to alert in one short transaction; False when another scheduler won it, or the escalation
    was claimed by a nurse (or resolved) since it was listed (then it is marked and nobody is texted)."""
    with session_scope() as session:
        if not escalations.mark_alerted(session, escalation_id, now):
            return False
        status = session.get(Escalation, escalation_id, populate_existing=True).status
        if status != EscalationStatus.OPEN:
            logger.info("escalation %s was taken (%s) before its alert went out", escalation_id, status.value)
            return False
        return True


def _send(recipient: _Recipient, escalation_id: int, text: str, providers: Optional[Providers]) -> bool:
    """One SMS to one nurse; a failure is logged (without the provider's message, which may quote the number)."""
    try:
        send_to_address("sms", recipient.phone, OutboundMessage(text, purpose="alert"), providers=providers)
    except Undeliverable as error:
        outcomes = ", ".join(f"{a.channel} {a.status.value}" for a in error.attempts) or "no attempt"
        logger.warning("overdue alert for escalation %s to staff %s undeliverable: %s",
                       escalation_id, recipient.staff_id, outcomes)  # fmt: skip
        return False
    except Exception as error:  # a provider or database fault must not stop the other alerts
        logger.error("overdue alert for escalation %s to staff %s failed: %s",
                     escalation_id, recipient.staff_id, type(error).__name__)  # fmt: skip
        return False
    return True


def alert_overdue_escalations(now: Optional[datetime] = None, providers: Optional[Providers] = None) -> int:
    """Text the on-call nurses about every open escalation past its deadline that has not been alerted yet.

    `now` is aware or naive UTC (default: the wall clock, as escalations are stamped). Returns how many
    escalations this call claimed and alerted (including those with nobody on call to text); another scheduler's
    claims are not counted. Blocking: run it in a worker thread (the scheduler's jobs are).
    """
    moment = _naive_utc(now)
    with session_scope() as session:
        due = [_Overdue(e.id, e.priority, e.reason, e.created_at) for e in escalations.overdue(session, moment)]
        if not due:
            return 0
        recipients: List[_Recipient] = [
            _Recipient(staff.id, staff.phone) for staff in escalations.on_call_staff(session) if staff.phone
        ]
    handled = 0
    for escalation in sorted(due, key=lambda e: (e.priority, e.created_at)):
        try:
            text = alert_text(escalation, moment)
        except notices.NoticeError as error:  # a broken catalog: leave it unclaimed, the next run tries again
            logger.error("overdue alert for escalation %s not rendered: %s", escalation.id, error)
            continue
        if not _claim(escalation.id, moment):
            continue
        handled += 1
        if not recipients:
            logger.warning("escalation %s (priority %s) is overdue and no on-call staff has a phone: nobody texted",
                           escalation.id, escalation.priority)  # fmt: skip
            continue
        sent = sum(_send(recipient, escalation.id, text, providers) for recipient in recipients)
        logger.info("escalation %s (priority %s) overdue: alert sent to %s of %s on-call staff",
                    escalation.id, escalation.priority, sent, len(recipients))  # fmt: skip
    return handled
