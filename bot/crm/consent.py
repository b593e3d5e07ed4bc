"""Consent per channel identity: opting out of (and back into) messages the hospital sends."""

from __future__ import annotations

from typing import Optional

from sqlalchemy import select
from sqlalchemy.orm import Session

from bot.crm import audit
from bot.crm.models import Consent


def set_consent(
    session: Session,
    *,
    channel: str,
    external_id: str,
    opted_in: bool,
    patient_id: Optional[int] = None,
    actor: str = "assistant",
) -> Consent:
    consent = session.execute(
        select(Consent).where(Consent.channel == channel, Consent.external_id == external_id)
    ).scalar_one_or_none()
    if consent is None:
        consent = Consent(channel=channel, external_id=external_id)
        session.add(consent)
    consent.opted_in = opted_in
    consent.patient_id = patient_id or consent.patient_id
    session.flush()
    audit.record(
        session,
        actor,
        "opt_in" if opted_in else "opt_out",
        "consent",
        consent.id,
        consent.patient_id,
        {"channel": channel},
    )
    return consent


def accepts_messages(session: Session, *, channel: str, external_id: str) -> bool:
    """False once the identity opted out; True by default (consent is given at registration)."""
    consent = session.execute(
        select(Consent.opted_in).where(Consent.channel == channel, Consent.external_id == external_id)
    ).scalar_one_or_none()
    return True if consent is None else bool(consent)
