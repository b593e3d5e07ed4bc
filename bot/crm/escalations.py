"""Handing a conversation to a human: escalation rows the nurse console (later) works from."""

from __future__ import annotations

from typing import Optional

from sqlalchemy.orm import Session

from bot.crm import audit
from bot.crm.models import Escalation

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


def open_escalation(
    session: Session,
    *,
    sender_id: str,
    channel: Optional[str],
    reason: str,
    summary: str,
    patient_id: Optional[int] = None,
    priority: Optional[int] = None,
) -> Escalation:
    escalation = Escalation(
        sender_id=sender_id,
        channel=channel,
        reason=reason,
        priority=priority or PRIORITY.get(reason, 3),
        summary=summary[:2000],
        patient_id=patient_id,
    )
    session.add(escalation)
    session.flush()
    audit.record(session, "assistant", "create", "escalation", escalation.id, patient_id, {"reason": reason})
    return escalation
