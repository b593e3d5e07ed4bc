"""The audit log: who read or changed which patient record. Details never carry names or phones."""

from __future__ import annotations

from typing import Any, Mapping, Optional

from sqlalchemy.orm import Session

from bot.crm.models import AuditEntry


def record(
    session: Session,
    actor: str,
    action: str,
    entity: str,
    entity_id: object,
    patient_id: Optional[int] = None,
    detail: Optional[Mapping[str, Any]] = None,
) -> AuditEntry:
    """Add an audit row in the caller's transaction (so it commits or rolls back with the change)."""
    entry = AuditEntry(
        actor=actor,
        action=action,
        entity=entity,
        entity_id=str(entity_id),
        patient_id=patient_id,
        detail=dict(detail) if detail else None,
    )
    session.add(entry)
    return entry
