"""Privacy and retention: export everything about one patient, erase one patient, purge old conversations.

    python -m bot.privacy export --patient 42 [--actor NAME] > patient-42.json
    python -m bot.privacy erase --patient 42 --actor NAME --yes
    python -m bot.privacy purge-conversations --older-than-days 365 --actor NAME   # or CONVERSATION_RETENTION_DAYS

Two stores are involved: the CRM (DATABASE_URL) and Rasa's tracker store (TRACKER_DATABASE_URL, table `events`),
which may be another database. A patient's conversations are the tracker events of the sender ids of their
channel identities (bot.addresses.sender_id_for), plus the SMS and voice conversations of their registered mobile
when no other patient shares that number.

Erasure is one CRM transaction (all or nothing), then the tracker deletion. Every foreign key to patients.id
(read from the models' metadata) is handled as `REFERENCES` below says:

- deleted: the patient, identities, appointments (the slot becomes free: a slot is taken only by a *booked*
  appointment), surveys and their answers (also those of their conversations before they registered), care
  plans, outbox rows, prescriptions, doses, readings, tags, deliveries (message text and address) to them or to
  an address only they use, consents of their addresses;
- scrubbed and kept as anonymous statistics for the dashboard: escalations (summary and resolution text, sender
  id and patient link removed; an open one is closed) and triage records (they hold no message text; sender id
  and patient link removed);
- detached: appointments they booked for someone else (kept, `booked_by_patient_id` cleared), and a consent on
  a number another patient is registered with (the opt-out still protects that family member);
- kept: the audit log (it holds no personal data), plus one "erase" entry with the counts.
A foreign key to patients.id this module does not know yet (a new table) is deleted row by row with the patient,
privacy first; tests/bot/test_privacy.py fails until it is given a decision here.

Crash safety between the two stores: before the CRM commit, the sender ids to delete are written to the tracker
database (table `privacy_erasures`, which only ever holds ids the events table holds already) under a random
token, and the CRM's "erase" audit entry carries the same token. Running erase again for the same patient id
finishes every confirmed leftover (token in the audit log) and drops unconfirmed ones (the CRM rolled back).
"""

from __future__ import annotations

import argparse
import enum
import getpass
import json
import os
import sys
import time
import uuid
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Set, Tuple, Union

from sqlalchemy import Column, Float, Integer, MetaData, String, Table, Text, and_, delete, inspect, or_, select, update
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, joinedload

from bot import clock
from bot.addresses import sender_id_for
from bot.config import get_settings
from bot.crm import audit
from bot.crm.models import (
    Appointment,
    AuditEntry,
    Base,
    CarePlan,
    ChannelIdentity,
    Consent,
    Delivery,
    Escalation,
    EscalationStatus,
    MeasurementReading,
    MedicationDose,
    OutboxMessage,
    Patient,
    PatientTag,
    Prescription,
    ScheduleSlot,
    SurveyAnswer,
    SurveyResponse,
    TriageRecord,
)
from bot.db import make_engine, session_scope
from bot.errors import DomainError, UnknownPatient

BATCH_SIZE = 5000  # tracker rows per transaction: a big events table is never locked for long
RETENTION_ENV = "CONVERSATION_RETENTION_DAYS"
ERASED = "erased"  # what a scrubbed sender id or resolution reads
STALE_PENDING_SECONDS = 3600  # an unconfirmed pending erasure older than this belongs to a rolled-back attempt
PHONE_CHANNELS = ("sms", "voice")  # channels that reach the registered mobile without a linked identity

# Every foreign key to patients.id and what erasure does with its rows (see the module docstring).
REFERENCES: Dict[Tuple[str, str], str] = {
    ("channel_identities", "patient_id"): "deleted",
    ("appointments", "patient_id"): "deleted",
    ("appointments", "booked_by_patient_id"): "detached",
    ("escalations", "patient_id"): "scrubbed",
    ("patient_tags", "patient_id"): "deleted",
    ("consents", "patient_id"): "deleted",  # detached when the address is another patient's mobile too
    ("survey_responses", "patient_id"): "deleted",
    ("triage_records", "patient_id"): "scrubbed",
    ("deliveries", "patient_id"): "deleted",
    ("care_plans", "patient_id"): "deleted",
    ("outbox", "patient_id"): "deleted",
    ("prescriptions", "patient_id"): "deleted",
    ("medication_doses", "patient_id"): "deleted",
    ("readings", "patient_id"): "deleted",
}

# The tracker store's events (Rasa's SQLTrackerStore.SQLEvent; console.conversations reads the same columns).
_tracker_metadata = MetaData()
EVENTS = Table(
    "events",
    _tracker_metadata,
    Column("id", Integer, primary_key=True),
    Column("sender_id", String(255)),
    Column("type_name", String(255)),
    Column("timestamp", Float),
    Column("intent_name", String(255)),
    Column("action_name", String(255)),
    Column("data", Text),
)
# Conversations still to delete after a committed CRM erasure (see the module docstring).
PENDING = Table(
    "privacy_erasures",
    _tracker_metadata,
    Column("token", String(36), primary_key=True),
    Column("patient_id", Integer, nullable=False, index=True),
    Column("sender_ids", Text, nullable=False),  # JSON list
    Column("created_at", Float, nullable=False),
)


class PrivacyError(DomainError):
    """A privacy command cannot run as asked (missing retention, no confirmation)."""


# ----------------------------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------------------------
def patient_references() -> List[Tuple[str, str, Optional[str]]]:
    """(table, column, ondelete) of every foreign key to patients.id in the CRM models."""
    found = []
    for table in Base.metadata.sorted_tables:
        for fk in table.foreign_keys:
            if fk.column.table.name == "patients" and fk.column.name == "id":
                found.append((table.name, fk.parent.name, fk.ondelete))
    return sorted(found)


def _json_value(value: Any) -> Any:
    if isinstance(value, datetime):
        return (value if value.tzinfo else value.replace(tzinfo=timezone.utc)).isoformat()
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, (bytes, bytearray)):
        return value.hex()
    return value


def _row(obj: Any) -> Dict[str, Any]:
    """A model instance as JSON-ready data: every column, times in ISO 8601 UTC."""
    return {attr.key: _json_value(getattr(obj, attr.key)) for attr in inspect(obj).mapper.column_attrs}


def _tracker_engine() -> Engine:
    return make_engine(get_settings().tracker_database_url, future=True)


def _has_events(engine: Engine) -> bool:
    """Rasa creates `events` on its first start: before that there is no conversation to read or delete."""
    return inspect(engine).has_table("events")


def _delete_events(engine: Engine, condition: Any, batch_size: int = BATCH_SIZE) -> int:
    """Delete the events matching `condition`, `batch_size` rows per transaction, walking the primary key."""
    if not _has_events(engine):
        return 0
    deleted, after = 0, 0
    while True:
        with engine.begin() as connection:
            ids = (
                connection.execute(
                    select(EVENTS.c.id).where(condition, EVENTS.c.id > after).order_by(EVENTS.c.id).limit(batch_size)
                )
                .scalars()
                .all()
            )
            if not ids:
                return deleted
            # a range plus the condition: no 5,000 bound parameters, and rows of the range appended meanwhile
            # that match (an old-timestamped event, a late turn of an erased conversation) go too
            result = connection.execute(delete(EVENTS).where(condition, EVENTS.c.id.between(ids[0], ids[-1])))
            deleted += max(result.rowcount or 0, 0)
        after = ids[-1]
        if len(ids) < batch_size:
            return deleted


def _default_actor() -> str:
    try:
        return f"cli:{getpass.getuser()}"[:64]
    except Exception:  # no user name (some containers)
        return "cli"


# ----------------------------------------------------------------------------------------------
# who the patient is across both stores
# ----------------------------------------------------------------------------------------------
@dataclass
class _Footprint:
    """The patient's addresses and conversations, and which of them other patients share."""

    patient_id: int
    addresses: Set[Tuple[str, str]] = field(default_factory=set)  # (channel, address) they can be reached at
    shared: Set[Tuple[str, str]] = field(default_factory=set)  # of those, also another patient's mobile
    sender_ids: List[str] = field(default_factory=list)

    @property
    def exclusive(self) -> Set[Tuple[str, str]]:
        return self.addresses - self.shared

    def address_condition(self, channel_column: Any, address_column: Any, pairs: Iterable[Tuple[str, str]]) -> Any:
        clauses = [and_(channel_column == channel, address_column == address) for channel, address in sorted(pairs)]
        return or_(*clauses) if clauses else None


def _footprint(session: Session, patient: Patient) -> _Footprint:
    footprint = _Footprint(patient.id)
    identities = (
        session.execute(
            select(ChannelIdentity).where(ChannelIdentity.patient_id == patient.id).order_by(ChannelIdentity.id)
        )
        .scalars()
        .all()
    )
    senders: List[str] = []
    for identity in identities:
        footprint.addresses.add((identity.channel, identity.external_id))
        senders.append(sender_id_for(identity.channel, identity.external_id))
    phones = {identity.external_id for identity in identities if identity.channel in PHONE_CHANNELS} | {patient.phone}
    others_phones = set(
        session.execute(select(Patient.phone).where(Patient.phone.in_(sorted(phones)), Patient.id != patient.id))
        .scalars()
        .all()
    )
    others_identities = {
        (channel, address)
        for channel, address in session.execute(
            select(ChannelIdentity.channel, ChannelIdentity.external_id).where(
                ChannelIdentity.channel.in_(PHONE_CHANNELS),
                ChannelIdentity.external_id == patient.phone,
                ChannelIdentity.patient_id != patient.id,
            )
        ).all()
    }
    for channel in PHONE_CHANNELS:
        pair = (channel, patient.phone)
        footprint.addresses.add(pair)
        if patient.phone not in others_phones and pair not in others_identities:
            senders.append(sender_id_for(channel, patient.phone))  # their own number's conversations
    footprint.shared = {(c, a) for c, a in footprint.addresses if c in PHONE_CHANNELS and a in others_phones}
    footprint.shared |= others_identities
    footprint.sender_ids = list(dict.fromkeys(senders))
    return footprint


def _by_patient_or_conversation(model: Any, footprint: _Footprint) -> Any:
    """Rows of the patient, and rows of their conversations not linked to anybody (before they registered)."""
    condition = model.patient_id == footprint.patient_id
    if footprint.sender_ids:
        condition = or_(condition, and_(model.patient_id.is_(None), model.sender_id.in_(footprint.sender_ids)))
    return condition


def _deliveries_condition(footprint: _Footprint) -> Any:
    condition = Delivery.patient_id == footprint.patient_id
    to_address = footprint.address_condition(Delivery.channel, Delivery.address, footprint.exclusive)
    if to_address is not None:
        condition = or_(condition, and_(Delivery.patient_id.is_(None), to_address))
    return condition


def _consents_condition(footprint: _Footprint) -> Any:
    condition = Consent.patient_id == footprint.patient_id
    keyed = footprint.address_condition(Consent.channel, Consent.external_id, footprint.addresses)
    if keyed is not None:
        condition = or_(condition, and_(Consent.patient_id.is_(None), keyed))
    return condition


# ----------------------------------------------------------------------------------------------
# export
# ----------------------------------------------------------------------------------------------
def _appointment(appointment: Appointment, *, with_patient: bool = True) -> Dict[str, Any]:
    data = _row(appointment)
    if not with_patient:
        data.pop("patient_id", None)
    slot, doctor = appointment.slot, appointment.slot.doctor
    data["slot"] = {"start_at": _json_value(slot.start_at), "end_at": _json_value(slot.end_at)}
    data["doctor"] = {"id": doctor.id, "name": doctor.name, "title": doctor.title, "room": doctor.room}
    data["department"] = {
        "code": doctor.department_code,
        "name": doctor.department.name if doctor.department else doctor.department_code,
    }
    return data


def _conversations(engine: Engine, sender_ids: Sequence[str]) -> List[Dict[str, Any]]:
    if not sender_ids or not _has_events(engine):
        return []
    with engine.connect() as connection:
        rows = connection.execute(
            select(EVENTS.c.sender_id, EVENTS.c.data)
            .where(EVENTS.c.sender_id.in_(list(sender_ids)))
            .order_by(EVENTS.c.id)
        ).all()
    events: Dict[str, List[Any]] = {sender: [] for sender in sender_ids}
    for sender, data in rows:
        try:
            events[sender].append(json.loads(data) if data else None)
        except ValueError:
            events[sender].append({"unparsed": data})
    return [{"sender_id": sender, "events": events[sender]} for sender in sender_ids if events[sender]]


def export_patient(patient_id: int, *, actor: str) -> Dict[str, Any]:
    """Everything stored about one patient, as JSON-serialisable data; the export is audited.
    Raises UnknownPatient (also for an erased patient)."""
    engine = _tracker_engine()
    try:
        with session_scope() as session:
            patient = session.get(Patient, patient_id)
            if patient is None:
                raise UnknownPatient(f"no patient with id {patient_id}")
            footprint = _footprint(session, patient)
            pid = patient.id

            def rows(model: Any, condition: Any, order: Any = None) -> List[Dict[str, Any]]:
                query = select(model).where(condition).order_by(order if order is not None else model.id)
                return [_row(obj) for obj in session.execute(query).scalars().all()]

            slot_options = joinedload(Appointment.slot).joinedload(ScheduleSlot.doctor)
            appointments = (
                session.execute(
                    select(Appointment)
                    .options(slot_options)
                    .where(Appointment.patient_id == pid)
                    .order_by(Appointment.id)
                )
                .scalars()
                .all()
            )
            booked_for_others = (
                session.execute(
                    select(Appointment)
                    .options(slot_options)
                    .where(Appointment.booked_by_patient_id == pid, Appointment.patient_id != pid)
                    .order_by(Appointment.id)
                )
                .scalars()
                .all()
            )
            surveys = []
            for response in (
                session.execute(
                    select(SurveyResponse)
                    .options(joinedload(SurveyResponse.answers))
                    .where(_by_patient_or_conversation(SurveyResponse, footprint))
                    .order_by(SurveyResponse.id)
                )
                .scalars()
                .unique()
                .all()
            ):
                surveys.append({**_row(response), "answers": [_row(answer) for answer in response.answers]})
            prescription_ids = select(Prescription.id).where(Prescription.patient_id == pid)
            data: Dict[str, Any] = {
                "format": "hospital-assistant patient export",
                "version": 1,
                "exported_at": _json_value(clock.now()),
                "times": "ISO 8601; CRM times are UTC, conversation event timestamps are epoch seconds",
                "patient": _row(patient),
                "channel_identities": rows(ChannelIdentity, ChannelIdentity.patient_id == pid),
                "consents": rows(Consent, _consents_condition(footprint)),
                "appointments": [_appointment(a) for a in appointments],
                "appointments_booked_for_others": [_appointment(a, with_patient=False) for a in booked_for_others],
                "escalations": rows(Escalation, _by_patient_or_conversation(Escalation, footprint)),
                "surveys": surveys,
                "triage_records": rows(TriageRecord, _by_patient_or_conversation(TriageRecord, footprint)),
                "deliveries": rows(Delivery, _deliveries_condition(footprint)),
                "care_plans": rows(CarePlan, CarePlan.patient_id == pid),
                "outbox": rows(OutboxMessage, OutboxMessage.patient_id == pid),
                "prescriptions": rows(Prescription, Prescription.patient_id == pid),
                "medication_doses": rows(
                    MedicationDose,
                    or_(MedicationDose.patient_id == pid, MedicationDose.prescription_id.in_(prescription_ids)),
                ),
                "readings": rows(MeasurementReading, MeasurementReading.patient_id == pid),
                "tags": rows(PatientTag, PatientTag.patient_id == pid),
                "audit_log": rows(
                    AuditEntry,
                    or_(
                        AuditEntry.patient_id == pid,
                        and_(AuditEntry.entity == "patient", AuditEntry.entity_id == str(pid)),
                    ),
                ),
            }
            other = _unknown_reference_rows(session, pid)
            if other:
                data["other"] = other
            data["conversations"] = _conversations(engine, footprint.sender_ids)
            counts = {key: len(value) for key, value in data.items() if isinstance(value, list)}
            audit.record(session, actor, "export", "patient", pid, pid, {"sections": counts})
        return data
    finally:
        engine.dispose()


def _unknown_references() -> List[Tuple[Table, str]]:
    tables = {table.name: table for table in Base.metadata.sorted_tables}
    return [
        (tables[table], column)
        for table, column, _ondelete in patient_references()
        if (table, column) not in REFERENCES
    ]


def _unknown_reference_rows(session: Session, patient_id: int) -> Dict[str, List[Dict[str, Any]]]:
    found: Dict[str, List[Dict[str, Any]]] = {}
    for table, column in _unknown_references():
        rows = session.execute(select(table).where(table.c[column] == patient_id)).mappings().all()
        if rows:
            found[f"{table.name}.{column}"] = [{k: _json_value(v) for k, v in row.items()} for row in rows]
    return found


# ----------------------------------------------------------------------------------------------
# erase
# ----------------------------------------------------------------------------------------------
def _run(session: Session, statement: Any) -> int:
    """Execute a bulk UPDATE/DELETE without in-session synchronisation (nothing reads the ORM objects
    afterwards); returns the number of rows it touched."""
    result = session.execute(statement, execution_options={"synchronize_session": False})
    return max(result.rowcount or 0, 0)


def _erase_surveys(session: Session, footprint: _Footprint, counts: Dict[str, int]) -> None:
    responses = select(SurveyResponse.id).where(_by_patient_or_conversation(SurveyResponse, footprint))
    ids = session.execute(responses).scalars().all()
    if ids:
        counts["survey_answers"] = _run(session, delete(SurveyAnswer).where(SurveyAnswer.response_id.in_(ids)))
        counts["survey_responses"] = _run(session, delete(SurveyResponse).where(SurveyResponse.id.in_(ids)))


def _erase_care(session: Session, footprint: _Footprint, counts: Dict[str, int]) -> None:
    pid = footprint.patient_id
    plans = select(CarePlan.id).where(CarePlan.patient_id == pid)
    counts["outbox"] = _run(
        session, delete(OutboxMessage).where(or_(OutboxMessage.patient_id == pid, OutboxMessage.plan_id.in_(plans)))
    )
    prescriptions = select(Prescription.id).where(Prescription.patient_id == pid)
    counts["medication_doses"] = _run(
        session,
        delete(MedicationDose).where(
            or_(MedicationDose.patient_id == pid, MedicationDose.prescription_id.in_(prescriptions))
        ),
    )
    counts["prescriptions"] = _run(session, delete(Prescription).where(Prescription.patient_id == pid))
    counts["care_plans"] = _run(session, delete(CarePlan).where(CarePlan.patient_id == pid))
    counts["readings"] = _run(session, delete(MeasurementReading).where(MeasurementReading.patient_id == pid))
    counts["patient_tags"] = _run(session, delete(PatientTag).where(PatientTag.patient_id == pid))


def _erase_deliveries(session: Session, footprint: _Footprint, counts: Dict[str, int]) -> None:
    ids = session.execute(select(Delivery.id).where(_deliveries_condition(footprint))).scalars().all()
    if not ids:
        return
    # rows pointing at these: SET NULL in the schema, done here so it holds whatever the database enforces
    _run(session, update(OutboxMessage).where(OutboxMessage.delivery_id.in_(ids)).values(delivery_id=None))
    _run(
        session,
        update(Delivery).where(Delivery.fallback_of_id.in_(ids), Delivery.id.notin_(ids)).values(fallback_of_id=None),
    )
    counts["deliveries"] = _run(session, delete(Delivery).where(Delivery.id.in_(ids)))


def _erase_appointments(session: Session, footprint: _Footprint, counts: Dict[str, int]) -> None:
    pid = footprint.patient_id
    counts["appointments_detached"] = _run(
        session,
        update(Appointment)
        .where(Appointment.booked_by_patient_id == pid, Appointment.patient_id != pid)
        .values(booked_by_patient_id=None),
    )
    ids = session.execute(select(Appointment.id).where(Appointment.patient_id == pid)).scalars().all()
    if not ids:
        return
    _run(session, update(SurveyResponse).where(SurveyResponse.appointment_id.in_(ids)).values(appointment_id=None))
    _run(
        session,
        update(Appointment)
        .where(Appointment.replaces_appointment_id.in_(ids), Appointment.id.notin_(ids))
        .values(replaces_appointment_id=None),
    )
    # deleted, not cancelled: a slot is taken only by a booked appointment, and nothing of theirs may remain
    counts["appointments"] = _run(session, delete(Appointment).where(Appointment.id.in_(ids)))


def _scrub_escalations(session: Session, footprint: _Footprint, counts: Dict[str, int]) -> None:
    condition = _by_patient_or_conversation(Escalation, footprint)
    ids = session.execute(select(Escalation.id).where(condition)).scalars().all()
    if not ids:
        return
    # an open or claimed one has nothing left to work on: closed, so it leaves the nurses' queue
    _run(
        session,
        update(Escalation)
        .where(Escalation.id.in_(ids), Escalation.status != EscalationStatus.RESOLVED)
        .values(status=EscalationStatus.RESOLVED, resolved_at=clock.utc_now_naive(), pauses_bot=False),
    )
    counts["escalations_scrubbed"] = _run(
        session,
        update(Escalation)
        .where(Escalation.id.in_(ids))
        .values(patient_id=None, sender_id=ERASED, summary="", resolution=ERASED),
    )


def _scrub_triage(session: Session, footprint: _Footprint, counts: Dict[str, int]) -> None:
    counts["triage_records_scrubbed"] = _run(
        session,
        update(TriageRecord)
        .where(_by_patient_or_conversation(TriageRecord, footprint))
        .values(patient_id=None, sender_id=ERASED),
    )


def _erase_identity(session: Session, footprint: _Footprint, counts: Dict[str, int]) -> None:
    rows = session.execute(
        select(Consent.id, Consent.patient_id, Consent.channel, Consent.external_id).where(
            _consents_condition(footprint)
        )
    ).all()
    # another patient is registered with this number: its opt-out must go on protecting them
    shared = [row for row in rows if (row.channel, row.external_id) in footprint.shared]
    detach = [row.id for row in shared if row.patient_id is not None]
    drop = [row.id for row in rows if row not in shared]
    if detach:
        counts["consents_detached"] = _run(
            session, update(Consent).where(Consent.id.in_(detach)).values(patient_id=None)
        )
    if drop:
        counts["consents"] = _run(session, delete(Consent).where(Consent.id.in_(drop)))
    counts["channel_identities"] = _run(
        session, delete(ChannelIdentity).where(ChannelIdentity.patient_id == footprint.patient_id)
    )


def _erase_unknown(session: Session, footprint: _Footprint, counts: Dict[str, int]) -> None:
    for table, column in _unknown_references():
        counts[f"{table.name}.{column}"] = _run(session, delete(table).where(table.c[column] == footprint.patient_id))


# In order: children before parents, so it holds whether or not the database enforces the foreign keys.
ERASE_STEPS: List[Callable[[Session, _Footprint, Dict[str, int]], None]] = [
    _erase_surveys,
    _erase_care,
    _erase_deliveries,
    _erase_appointments,
    _scrub_escalations,
    _scrub_triage,
    _erase_identity,
    _erase_unknown,
]


def _erase_crm(session: Session, patient: Patient, footprint: _Footprint) -> Dict[str, int]:
    counts: Dict[str, int] = {}
    for step in ERASE_STEPS:
        step(session, footprint, counts)
    session.expunge(patient)
    counts["patients"] = _run(session, delete(Patient).where(Patient.id == footprint.patient_id))
    return {key: value for key, value in sorted(counts.items()) if value}


def _remember_pending(engine: Engine, token: str, patient_id: int, sender_ids: Sequence[str]) -> None:
    PENDING.create(engine, checkfirst=True)
    with engine.begin() as connection:
        connection.execute(
            PENDING.insert().values(
                token=token, patient_id=patient_id, sender_ids=json.dumps(list(sender_ids)), created_at=time.time()
            )
        )


def _forget_pending(engine: Engine, token: str) -> None:
    with engine.begin() as connection:
        connection.execute(delete(PENDING).where(PENDING.c.token == token))


def _erase_tokens(session: Session, patient_id: int) -> Set[str]:
    """Tokens of committed CRM erasures of this patient (from their audit entries)."""
    details = session.execute(
        select(AuditEntry.detail).where(
            AuditEntry.action == "erase", AuditEntry.entity == "patient", AuditEntry.entity_id == str(patient_id)
        )
    ).scalars()
    return {str(detail["erasure"]) for detail in details if isinstance(detail, Mapping) and detail.get("erasure")}


def _erase_conversations(
    session: Session,
    engine: Engine,
    patient_id: int,
    token: str,
    sender_ids: Sequence[str],
    actor: str,
    batch_size: int,
) -> int:
    deleted = _delete_events(engine, EVENTS.c.sender_id.in_(list(sender_ids)), batch_size) if sender_ids else 0
    _forget_pending(engine, token)
    detail = {"erasure": token, "conversations": len(sender_ids), "events": deleted}
    audit.record(session, actor, "erase_conversations", "patient", patient_id, patient_id, detail)
    return deleted


def _finish_pending(engine: Engine, patient_id: int, actor: str, batch_size: int) -> Dict[str, int]:
    """Complete earlier erasures of this patient whose tracker part did not finish (their token is in the CRM's
    audit log); drop leftovers of rolled-back attempts (no such token, and older than an erasure can take)."""
    finished = {"runs": 0, "conversations": 0, "events": 0}
    if not inspect(engine).has_table(PENDING.name):
        return finished
    with engine.connect() as connection:
        pending = connection.execute(select(PENDING).where(PENDING.c.patient_id == patient_id)).mappings().all()
    if not pending:
        return finished
    with session_scope() as session:
        confirmed = _erase_tokens(session, patient_id)
        for row in pending:
            if row["token"] not in confirmed:
                if row["created_at"] < time.time() - STALE_PENDING_SECONDS:  # else maybe another run in flight
                    _forget_pending(engine, row["token"])
                continue
            sender_ids = json.loads(row["sender_ids"])
            finished["events"] += _erase_conversations(
                session, engine, patient_id, row["token"], sender_ids, actor, batch_size
            )
            finished["runs"] += 1
            finished["conversations"] += len(sender_ids)
    return finished


def erase_patient(patient_id: int, *, actor: str, batch_size: int = BATCH_SIZE) -> Dict[str, Any]:
    """Erase one patient: their CRM rows in one transaction, then their conversations in the tracker store.

    Returns {"patient_id", "already_erased", "crm": {what: rows}, "conversations": sender ids,
    "tracker_events": rows}. Re-running it for an erased patient finishes a tracker deletion that an outage or
    a crash interrupted, and reports. Raises UnknownPatient for an id that was never erased here."""
    if not actor:
        raise PrivacyError("an actor is required")
    engine = _tracker_engine()
    try:
        finished = _finish_pending(engine, patient_id, actor, batch_size)
        report: Dict[str, Any] = {
            "patient_id": patient_id,
            "already_erased": False,
            "crm": {},
            "conversations": finished["conversations"],
            "tracker_events": finished["events"],
        }
        token: Optional[str] = None
        sender_ids: List[str] = []
        try:
            with session_scope() as session:
                # the row lock serialises two erasures of one patient on PostgreSQL
                patient = session.execute(
                    select(Patient).where(Patient.id == patient_id).with_for_update()
                ).scalar_one_or_none()
                if patient is None:
                    if not finished["runs"] and not _erase_tokens(session, patient_id):
                        raise UnknownPatient(f"no patient with id {patient_id}")
                    report["already_erased"] = True
                    return report
                footprint = _footprint(session, patient)
                sender_ids = footprint.sender_ids
                token = str(uuid.uuid4())
                _remember_pending(engine, token, patient_id, sender_ids)
                counts = _erase_crm(session, patient, footprint)
                detail = {"erasure": token, "counts": counts, "conversations": len(sender_ids)}
                audit.record(session, actor, "erase", "patient", patient_id, patient_id, detail)
                report["crm"] = counts
        except BaseException:
            if token is not None:
                _drop_if_unconfirmed(engine, patient_id, token)
            raise
        # the CRM part is committed: now the conversations (a failure here is finished by the next run)
        with session_scope() as session:
            report["tracker_events"] += _erase_conversations(
                session, engine, patient_id, token, sender_ids, actor, batch_size
            )
        report["conversations"] += len(sender_ids)
        return report
    finally:
        engine.dispose()


def _drop_if_unconfirmed(engine: Engine, patient_id: int, token: str) -> None:
    """After a failed CRM transaction: forget its pending conversations unless the commit happened after all."""
    try:
        with session_scope() as session:
            committed = token in _erase_tokens(session, patient_id)
        if not committed:
            _forget_pending(engine, token)
    except Exception:  # the next run drops it (unconfirmed) or finishes it (confirmed)
        pass


# ----------------------------------------------------------------------------------------------
# retention
# ----------------------------------------------------------------------------------------------
def _epoch(now: Union[float, int, datetime, None]) -> float:
    if now is None:
        return clock.now().timestamp()
    if isinstance(now, datetime):
        return (now if now.tzinfo else now.replace(tzinfo=timezone.utc)).timestamp()
    return float(now)


def retention_days(value: Optional[int] = None) -> int:
    """The retention to apply: the argument, else CONVERSATION_RETENTION_DAYS; at least one day."""
    if value is None:
        raw = os.environ.get(RETENTION_ENV, "").strip()
        if not raw:
            raise PrivacyError(f"give --older-than-days or set {RETENTION_ENV}")
        try:
            value = int(raw)
        except ValueError as error:
            raise PrivacyError(f"{RETENTION_ENV} must be a whole number of days, not {raw!r}") from error
    if int(value) < 1:
        raise PrivacyError("the retention must be at least 1 day")
    return int(value)


def purge_conversations(
    older_than_days: int,
    *,
    actor: str,
    now: Union[float, datetime, None] = None,
    batch_size: int = BATCH_SIZE,
) -> int:
    """Delete tracker events whose timestamp is older than `older_than_days` before `now`, in batches of
    `batch_size` rows per transaction. Returns how many were deleted; the purge is audited."""
    if not actor:
        raise PrivacyError("an actor is required")
    days = retention_days(older_than_days)
    cutoff = _epoch(now) - timedelta(days=days).total_seconds()
    engine = _tracker_engine()
    try:
        deleted = _delete_events(engine, EVENTS.c.timestamp < cutoff, batch_size)
    finally:
        engine.dispose()
    with session_scope() as session:
        detail = {
            "older_than_days": days,
            "cutoff": datetime.fromtimestamp(cutoff, tz=timezone.utc).isoformat(),
            "events": deleted,
        }
        audit.record(session, actor, "purge", "conversations", "events", None, detail)
    return deleted


# ----------------------------------------------------------------------------------------------
# command line
# ----------------------------------------------------------------------------------------------
def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bot.privacy", description="Patient data export, erasure, retention"
    )
    commands = parser.add_subparsers(dest="command", required=True)
    export = commands.add_parser("export", help="print everything about one patient as JSON")
    export.add_argument("--patient", type=int, required=True)
    export.add_argument("--actor", default=None, help="who asks (audited); default cli:<user>")
    erase = commands.add_parser("erase", help="erase one patient and their conversations")
    erase.add_argument("--patient", type=int, required=True)
    erase.add_argument("--actor", required=True, help="who asks (audited)")
    erase.add_argument("--yes", action="store_true", help="confirm: erasure cannot be undone")
    purge = commands.add_parser("purge-conversations", help="delete conversation events older than N days")
    purge.add_argument(
        "--older-than-days", type=int, default=None, help=f"default: the {RETENTION_ENV} environment variable"
    )
    purge.add_argument("--actor", required=True, help="who asks (audited)")
    purge.add_argument("--batch-size", type=int, default=BATCH_SIZE, help=argparse.SUPPRESS)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "export":
            data = export_patient(args.patient, actor=args.actor or _default_actor())
            json.dump(data, sys.stdout, ensure_ascii=False, indent=2)
            sys.stdout.write("\n")
        elif args.command == "erase":
            if not args.yes:
                print(
                    f"refusing to erase patient {args.patient} without --yes (this cannot be undone)", file=sys.stderr
                )
                return 2
            print(json.dumps(erase_patient(args.patient, actor=args.actor), ensure_ascii=False, indent=2))
        else:
            days = retention_days(args.older_than_days)
            deleted = purge_conversations(days, actor=args.actor, batch_size=args.batch_size)
            print(json.dumps({"older_than_days": days, "events_deleted": deleted}))
    except DomainError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
