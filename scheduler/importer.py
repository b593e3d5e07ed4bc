"""Bring the hospital's own records into the CRM and enrol the patients in care plans.

The HIS (hospital information system) exports patients, outpatient appointments, inpatient discharges and
prescriptions, as CSV files (scheduler/import_formats.md) or as FHIR R4 Bundles. Each record becomes CRM rows
and a care-plan enrolment (`scheduler.plans.enroll`), so the scheduler reminds the patient at the right time.

Nothing is half-imported. A record is one CSV row, or in a bundle one clinical entry (Appointment, Encounter,
MedicationRequest) together with the Patient entry it refers to. Each record is validated and written inside its
own SAVEPOINT and then committed on its own: a bad record leaves no trace (no patient without its plan, no plan
without its outbox rows) and is reported with its row or entry number and what to fix, while the good ones stay.
A crash mid-file leaves only whole records, and a re-run skips them (plans and prescriptions are unique per
`source_ref`), so importing the same file again is always safe. A dry run writes every record the same way inside
one transaction and rolls it back, so its report is exactly what a real run would say.

Logs carry counts, row numbers and field names only: never a name or a phone number.

    .venv/bin/python -m scheduler.importer patients.csv [--dry-run] [--json] [--progress]
    .venv/bin/python -m scheduler.importer his_export.json           # a FHIR R4 Bundle
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import enum
import functools
import hashlib
import hmac
import io
import json
import logging
import os
import re
import sys
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Mapping, NamedTuple, Optional, Sequence, Tuple, Union

from aiohttp import web
from babel import Locale, UnknownLocaleError
from pydantic import ValidationError
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session
from tqdm import tqdm
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from bot import catalog, clock
from bot.config import get_settings
from bot.crm import audit, patients
from bot.crm.models import CarePlan, Channel, ChannelIdentity, Patient, Prescription
from bot.db import get_session_factory
from bot.errors import InvalidName, InvalidPhone
from scheduler import plans

logger = logging.getLogger(__name__)

ACTOR = "import"  # the audit log's actor for everything written here
KINDS = ("patients", "appointments", "discharges", "prescriptions", "fhir")
MAX_UPLOAD_BYTES = 20 * 1024 * 1024
TOKEN_ENV = "SCHEDULER_API_TOKEN"

DEFAULT_DISCHARGE_PLAN = "after_surgery"
APPOINTMENT_PLAN = "appointment_reminders"
CONDITIONS = ("hypertension", "diabetes")  # a prescription's condition is the plan it enrols in


class UnusableInput(ValueError):
    """The whole file cannot be imported (not UTF-8, missing columns, not a Bundle); the message says what to fix."""


class Rejected(Exception):
    """One record cannot be imported; `reason` says what is wrong with which field and what to do."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(reason)
        self.field = field
        self.reason = reason


class NotApplicable(Exception):
    """A valid record with nothing to import: a cancelled appointment that never had reminders, an outpatient
    encounter, an appointment that has already passed."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(reason)
        self.field = field
        self.reason = reason


# ----------------------------------------------------------------------------------------------
# the report
# ----------------------------------------------------------------------------------------------
class Rejection(NamedTuple):
    """One record that was not imported: its row (CSV, the header is row 1) or entry (bundle, from 1) number."""

    number: int
    field: str
    reason: str


class Outcome(enum.Enum):
    IMPORTED = "imported"  # something was written: a new patient, plan or prescription, or a change
    DUPLICATE = "duplicate"  # everything the record says is already in the CRM


@dataclass
class ImportReport:
    """What an import did: `total` = imported + skipped_duplicates + len(ignored) + len(rejected)."""

    kind: str
    unit: str = "row"  # "row" for CSV files, "entry" for FHIR bundles
    total: int = 0
    imported: int = 0
    skipped_duplicates: int = 0
    rejected: List[Rejection] = field(default_factory=list)
    ignored: List[Rejection] = field(default_factory=list)  # valid, but nothing to import (see NotApplicable)
    notes: List[str] = field(default_factory=list)  # about the whole file: ignored columns, reference-only entries
    dry_run: bool = False

    @property
    def ok(self) -> bool:
        return not self.rejected

    def message(self, item: Rejection) -> str:
        """'row 7: phone '1380013' is not a valid mobile number (...)'"""
        return f"{self.unit} {item.number}: {item.reason}"

    def summary(self) -> str:
        imported = "would be imported" if self.dry_run else "imported"
        units = self.unit if self.total == 1 else {"entry": "entries"}.get(self.unit, self.unit + "s")
        lines = [
            f"{self.kind}: {self.total} {units}, {self.imported} {imported}, "
            f"{self.skipped_duplicates} already imported, {len(self.ignored)} with nothing to import, "
            f"{len(self.rejected)} rejected" + (" (dry run: nothing was written)" if self.dry_run else "")
        ]
        if self.rejected:
            lines.append("Rejected (fix these and import the file again; imported records are skipped):")
            lines.extend(f"  {self.message(item)}" for item in self.rejected)
        if self.ignored:
            lines.append("Nothing to import:")
            lines.extend(f"  {self.message(item)}" for item in self.ignored)
        lines.extend(f"Note: {note}" for note in self.notes)
        return "\n".join(lines)

    def as_dict(self) -> Dict[str, Any]:
        def listed(items: Iterable[Rejection]) -> List[Dict[str, Any]]:
            return [
                {"number": item.number, "field": item.field, "reason": item.reason, "message": self.message(item)}
                for item in items
            ]

        return {
            "kind": self.kind,
            "unit": self.unit,
            "dry_run": self.dry_run,
            "total": self.total,
            "imported": self.imported,
            "skipped_duplicates": self.skipped_duplicates,
            "rejected": listed(self.rejected),
            "ignored": listed(self.ignored),
            "notes": list(self.notes),
        }


# ----------------------------------------------------------------------------------------------
# values: each parser returns a clean value or raises Rejected naming the field and the fix
# ----------------------------------------------------------------------------------------------
_MOMENT = re.compile(
    r"(\d{4})[-/](\d{1,2})[-/](\d{1,2})"
    r"(?:(?:T|\s+)(\d{1,2}):(\d{2})(?::(\d{2})(?:\.\d+)?)?)?"
    r"\s*(Z|[+-]\d{2}:?\d{2})?"
)
_CLOCK_TIME = re.compile(r"(\d{1,2})[:：](\d{2})(?:[:：]\d{2})?")
_CARD_NO = re.compile(r"[A-Za-z0-9-]{1,20}")
_OPENID = re.compile(r"[A-Za-z0-9_-]{6,128}")
_LOCALE = re.compile(r"([A-Za-z]{2,3})(?:[_-]([A-Za-z]{2}))?")
_HAN = re.compile(r"[\u4e00-\u9fff]")

# Words and codes that name a condition we run a plan for: the plan names themselves, Chinese, ICD-10 and SNOMED CT.
_CONDITION_WORDS = {
    "hypertension": "hypertension",
    "高血压": "hypertension",
    "原发性高血压": "hypertension",
    "diabetes": "diabetes",
    "糖尿病": "diabetes",
    "2型糖尿病": "diabetes",
    "1型糖尿病": "diabetes",
    "38341003": "hypertension",  # SNOMED CT hypertensive disorder
    "59621000": "hypertension",  # SNOMED CT essential hypertension
    "73211009": "diabetes",  # SNOMED CT diabetes mellitus
    "44054006": "diabetes",  # SNOMED CT type 2 diabetes mellitus
    "46635009": "diabetes",  # SNOMED CT type 1 diabetes mellitus
}
_CONDITION_ICD10 = (("hypertension", re.compile(r"I1[0-5](\.\d+)?")), ("diabetes", re.compile(r"E1[0-4](\.\d+)?")))

Moment = Union[datetime, date]  # an aware datetime, or a day whose midnight depends on the patient's zone


def _quoted(text: str, limit: int = 40) -> str:
    return repr(text if len(text) <= limit else text[:limit] + "…")


def parse_moment(text: str, field: str, tz: ZoneInfo, *, day_is_enough: bool = False) -> Moment:
    """'2026-11-24 09:30' (local), '2026-11-24T09:30+08:00' (its own offset); a bare day when `day_is_enough`."""
    match = _MOMENT.fullmatch(text.strip())
    if not match:
        raise Rejected(
            field,
            f"{field} {_quoted(text)} is not a date and time like '2026-11-24 09:30' "
            "(local time) or '2026-11-24T09:30+08:00'",
        )
    year, month, day, hour, minute, second, offset = match.groups()
    if hour is None and not day_is_enough:
        raise Rejected(field, f"{field} {_quoted(text)} has no time of day: write it like '{text.strip()} 09:30'")
    try:
        if hour is None:
            return date(int(year), int(month), int(day))
        naive = datetime(int(year), int(month), int(day), int(hour), int(minute), int(second or 0))
    except ValueError as error:
        what = "date" if hour is None else "date and time"
        raise Rejected(field, f"{field} {_quoted(text)} is not a real {what} ({error})") from None
    if offset:
        return naive.replace(tzinfo=_offset(offset))
    return localize(naive, tz, field, text)


def _offset(text: str) -> timezone:
    if text == "Z":
        return timezone.utc
    sign = -1 if text[0] == "-" else 1
    digits = text[1:].replace(":", "")
    return timezone(sign * timedelta(hours=int(digits[:2]), minutes=int(digits[2:])))


def localize(naive: datetime, tz: ZoneInfo, field: str, text: str) -> datetime:
    """A wall-clock time in `tz`, refusing times the zone skips (a daylight-saving gap)."""
    moment = naive.replace(tzinfo=tz)
    if moment.astimezone(timezone.utc).astimezone(tz).replace(tzinfo=None) != naive:
        raise Rejected(field, f"{field} {_quoted(text)} does not exist in {tz.key} (the clocks skip it)")
    return moment


def parse_day(text: str, field: str, tz: ZoneInfo) -> date:
    """A calendar day; a date and time is taken as its local day."""
    moment = parse_moment(text, field, tz, day_is_enough=True)
    return moment.astimezone(tz).date() if isinstance(moment, datetime) else moment


def parse_times(text: str, field: str = "times") -> List[str]:
    """'08:00;20:00' -> ['08:00', '20:00'] (also commas, spaces, full-width punctuation)."""
    parts = [part for part in re.split(r"[;,，；、\s]+", text.strip()) if part]
    if not parts:
        raise Rejected(field, f"{field} is empty: list the dose times like '08:00;20:00'")
    times = set()
    for part in parts:
        match = _CLOCK_TIME.fullmatch(part)
        if not match or int(match.group(1)) > 23 or int(match.group(2)) > 59:
            raise Rejected(field, f"{field} {_quoted(text)}: {part!r} is not a time like '08:00'")
        times.add(f"{int(match.group(1)):02d}:{match.group(2)}")
    return sorted(times)


def parse_condition(text: str, field: str = "condition") -> str:
    found = condition_named(text)
    if found is None:
        raise Rejected(
            field, f"{field} {_quoted(text)} is not a condition we run a plan for: write {' or '.join(CONDITIONS)}"
        )
    return found


def condition_named(text: Optional[str]) -> Optional[str]:
    """The plan a word or code names (hypertension, 高血压, I10, 44054006...), or None."""
    cleaned = (text or "").strip()
    if not cleaned:
        return None
    found = _CONDITION_WORDS.get(cleaned.lower()) or _CONDITION_WORDS.get(cleaned)
    if found:
        return found
    for condition, pattern in _CONDITION_ICD10:
        if pattern.fullmatch(cleaned.upper()):
            return condition
    return None


def parse_phone(text: str, field: str = "phone") -> str:
    try:
        return patients.normalize_mobile(text)
    except InvalidPhone as error:
        raise Rejected(field, f"{field} {_quoted(text)} is not a valid mobile number ({error})") from None


def parse_name(text: str, field: str = "name") -> str:
    try:
        return patients.normalize_name(text)
    except InvalidName as error:
        raise Rejected(field, f"{field} {_quoted(text)} is not a person's name ({error})") from None


def parse_card_no(text: str, field: str = "card_no") -> str:
    cleaned = text.strip()
    if not _CARD_NO.fullmatch(cleaned):
        raise Rejected(field, f"{field} {_quoted(cleaned)} is not a card number (1-20 letters, digits or '-')")
    return cleaned


def parse_openid(text: str, field: str = "wechat_openid") -> str:
    cleaned = text.strip()
    if not _OPENID.fullmatch(cleaned):
        raise Rejected(field, f"{field} {_quoted(cleaned)} is not a WeChat openid (6-128 letters, digits, '-', '_')")
    return cleaned


def parse_locale(text: str, field: str = "locale") -> str:
    """'zh_CN', 'zh-CN', 'en' -> 'zh_CN', 'zh_CN', 'en' (the form Patient.locale stores)."""
    match = _LOCALE.fullmatch(text.strip())
    value = f"{match.group(1).lower()}_{match.group(2).upper()}" if match and match.group(2) else None
    value = value or (match.group(1).lower() if match else None)
    try:
        if value is None:
            raise UnknownLocaleError(text)
        Locale.parse(value)
    except (UnknownLocaleError, ValueError):
        raise Rejected(field, f"{field} {_quoted(text)} is not a locale like 'zh_CN' or 'en'") from None
    return value


def parse_timezone(text: str, field: str = "timezone") -> str:
    cleaned = text.strip()
    try:
        ZoneInfo(cleaned)
    except (ZoneInfoNotFoundError, ValueError):
        raise Rejected(field, f"{field} {_quoted(cleaned)} is not a time zone like 'Asia/Shanghai'") from None
    return cleaned


def parse_birth_date(text: str, field: str, tz: ZoneInfo) -> date:
    return check_birth_date(parse_day(text, field, tz), field)


def check_birth_date(born: date, field: str = "birth_date") -> date:
    if born > clock.local_now().date() or born.year < 1900:
        raise Rejected(field, f"{field} {born.isoformat()} is not a plausible birth date")
    return born


def parse_his_id(text: str, field: str) -> str:
    cleaned = text.strip()
    if len(cleaned) > 200 or any(ord(char) < 32 for char in cleaned):
        raise Rejected(field, f"{field} {_quoted(cleaned)} is not an identifier (at most 200 printable characters)")
    return cleaned


def source_ref(prefix: str, his_id: str) -> str:
    """What a plan or prescription came from, unique per patient ('appointment:A123'); long ids are hashed to
    fit the 64-character column."""
    ref = f"{prefix}:{his_id}"
    return ref if len(ref) <= 64 else f"{prefix}:sha1:{hashlib.sha1(his_id.encode('utf-8')).hexdigest()}"


def anchor(moment: Moment, patient: Patient) -> datetime:
    """An aware instant: a bare day starts at midnight in the patient's own zone (plans count days there)."""
    if isinstance(moment, datetime):
        return moment
    return datetime.combine(moment, time(0), tzinfo=ZoneInfo(patient.timezone or get_settings().timezone))


def _local_text(moment: Moment) -> str:
    if isinstance(moment, datetime):
        return moment.astimezone(clock.local_tz()).strftime("%Y-%m-%d %H:%M")
    return moment.isoformat()


# ----------------------------------------------------------------------------------------------
# patients
# ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class PatientDetails:
    """What an import says about a patient; None means 'not given' (the CRM keeps what it has)."""

    name: str
    phone: str
    card_no: Optional[str] = None
    birth_date: Optional[date] = None
    locale: Optional[str] = None
    timezone: Optional[str] = None
    wechat_openid: Optional[str] = None


def _audit_import(
    session: Session, entity: str, entity_id: object, patient_id: int, at: Tuple[str, int], **detail: Any
) -> None:
    """The one audit entry of an imported record (`at`: format and row/entry number). No names, phones or
    openids: field names and references only."""
    audit.record(session, ACTOR, "import", entity, entity_id, patient_id, {"format": at[0], "record": at[1], **detail})


def upsert_patient(session: Session, details: PatientDetails) -> Tuple[Patient, List[str]]:
    """The patient with this name and mobile, registered when new and updated with what the import gives.
    Returns the patient and the names of what changed ([] when the CRM already had it all)."""
    patient = session.execute(
        select(Patient).where(Patient.phone == details.phone, Patient.name == details.name)
    ).scalar_one_or_none()
    if details.card_no:
        holder = session.execute(select(Patient).where(Patient.card_no == details.card_no)).scalar_one_or_none()
        if holder is not None and (patient is None or holder.id != patient.id):
            raise Rejected(
                "card_no",
                f"card_no {details.card_no} already belongs to a patient with another name or phone: check the row",
            )
    if details.wechat_openid:
        identity = session.execute(
            select(ChannelIdentity).where(
                ChannelIdentity.channel == Channel.WECHAT.value, ChannelIdentity.external_id == details.wechat_openid
            )
        ).scalar_one_or_none()
        if identity is not None and (patient is None or identity.patient_id != patient.id):
            raise Rejected(
                "wechat_openid",
                f"wechat_openid is already linked to another patient (id {identity.patient_id}): "
                "check the row, or unlink it there first",
            )
    changed = []
    if patient is None:
        patient, _ = patients.match_or_register(session, details.name, details.phone, actor=ACTOR)
        changed.append("created")
    for attribute in ("card_no", "birth_date", "locale", "timezone"):
        value = getattr(details, attribute)
        if value is not None and getattr(patient, attribute) != value:
            setattr(patient, attribute, value)
            changed.append(attribute)
    if details.wechat_openid and not _has_identity(session, patient, details.wechat_openid):
        patients.link_identity(session, patient, Channel.WECHAT.value, details.wechat_openid)
        changed.append("wechat_openid")
    session.flush()
    return patient, changed


def _has_identity(session: Session, patient: Patient, openid: str) -> bool:
    return (
        session.execute(
            select(ChannelIdentity.id).where(
                ChannelIdentity.patient_id == patient.id,
                ChannelIdentity.channel == Channel.WECHAT.value,
                ChannelIdentity.external_id == openid,
            )
        ).first()
        is not None
    )


class PatientSource(ABC):
    """How a clinical record names its patient."""

    @abstractmethod
    def patient(self, session: Session) -> Patient:
        """The patient, or Rejected saying who could not be found."""

    def record_written(self) -> None:  # noqa: B027 (only bundles track how their Patient entries fared)
        """The record that refers to this patient was written."""

    def record_rejected(self, number: int) -> None:  # noqa: B027
        """The record that refers to this patient was rejected."""


@dataclass(frozen=True)
class KnownPatient(PatientSource):
    """A patient already in the CRM, by card number or by mobile and name: clinical rows never register anyone,
    so a typo in a name cannot create a second patient."""

    card_no: Optional[str] = None
    phone: Optional[str] = None
    name: Optional[str] = None

    def patient(self, session: Session) -> Patient:
        if self.card_no:
            found = session.execute(select(Patient).where(Patient.card_no == self.card_no)).scalar_one_or_none()
            if found is None:
                raise Rejected(
                    "card_no",
                    f"no patient has card_no {self.card_no}: import the patient first (patients.csv), "
                    "or check the number",
                )
            if (self.phone and found.phone != self.phone) or (self.name and found.name != self.name):
                raise Rejected(
                    "card_no", f"card_no {self.card_no} belongs to a patient with another name or phone: check the row"
                )
            return found
        found = session.execute(
            select(Patient).where(Patient.phone == self.phone, Patient.name == self.name)
        ).scalar_one_or_none()
        if found is None:
            raise Rejected(
                "phone",
                f"no patient with this name and phone ({patients.mask_phone(self.phone or '')}): "
                "import them first (patients.csv), or check the spelling",
            )
        return found


# ----------------------------------------------------------------------------------------------
# records: what one row or entry writes
# ----------------------------------------------------------------------------------------------
@dataclass
class ImportRecord(ABC):
    number: int  # the row or entry number the report names
    source_format: str  # "csv" or "fhir"

    @property
    def at(self) -> Tuple[str, int]:
        return self.source_format, self.number

    @abstractmethod
    def write(self, session: Session) -> Outcome:
        """Write the record in the caller's savepoint; raise Rejected or NotApplicable to leave no trace."""


@dataclass
class PatientRecord(ImportRecord):
    details: PatientDetails

    def write(self, session: Session) -> Outcome:
        patient, changed = upsert_patient(session, self.details)
        if not changed:
            return Outcome.DUPLICATE
        _audit_import(session, "patient", patient.id, patient.id, self.at, fields=changed)
        return Outcome.IMPORTED


@dataclass
class ClinicalRecord(ImportRecord):
    """A record about one patient that enrols them in a plan; tells its patient source how it went."""

    patient_source: PatientSource

    def write(self, session: Session) -> Outcome:
        try:
            patient = self.patient_source.patient(session)
            outcome = self.write_for(session, patient)
        except NotApplicable:
            raise
        except Exception:
            self.patient_source.record_rejected(self.number)
            raise
        self.patient_source.record_written()
        return outcome

    @abstractmethod
    def write_for(self, session: Session, patient: Patient) -> Outcome: ...


def _existing_plan(session: Session, patient: Patient, template: str, ref: str) -> Optional[CarePlan]:
    return session.execute(
        select(CarePlan).where(
            CarePlan.patient_id == patient.id, CarePlan.template == template, CarePlan.source_ref == ref
        )
    ).scalar_one_or_none()


def _enroll(
    session: Session,
    patient: Patient,
    *,
    template: str,
    anchor_at: datetime,
    source: str,
    ref: str,
    params: Mapping[str, Any],
    field: str,
) -> CarePlan:
    try:
        return plans.enroll(
            session,
            patient_id=patient.id,
            template=template,
            anchor_at=anchor_at,
            source=source,
            source_ref=ref,
            params=params,
            actor=ACTOR,
        )
    except plans.PlanError as error:
        raise Rejected(field, f"{field}: {error}") from None


def _cancel_or_nothing(session: Session, plan: Optional[CarePlan], record: ImportRecord, status: str) -> Outcome:
    """A cancelled appointment or a stopped prescription: end the plan it had started, if any."""
    if plan is None:
        raise NotApplicable("status", f"{status}, and no plan had been started for it: nothing to do")
    if not plan.active:
        return Outcome.DUPLICATE
    plans.cancel(session, plan, actor=ACTOR)
    _audit_import(session, "care_plan", plan.id, plan.patient_id, record.at, source_ref=plan.source_ref, cancelled=True)
    return Outcome.IMPORTED


@dataclass
class DischargeRecord(ClinicalRecord):
    discharged_at: Moment
    his_id: Optional[str]
    template: str = DEFAULT_DISCHARGE_PLAN

    def write_for(self, session: Session, patient: Patient) -> Outcome:
        try:
            chosen = plans.get_template(self.template)
        except plans.PlanError as error:
            raise Rejected("plan", f"plan: {error}") from None
        if chosen.anchor != "discharge":
            raise Rejected(
                "plan", f"plan {self.template!r} starts at a {chosen.anchor or 'different event'}, not at a discharge"
            )
        at = anchor(self.discharged_at, patient)
        ref = source_ref("discharge", self.his_id or "at:" + clock.to_db(at).strftime("%Y%m%dT%H%MZ"))
        if _existing_plan(session, patient, chosen.name, ref) is not None:
            return Outcome.DUPLICATE
        plan = _enroll(
            session, patient, template=chosen.name, anchor_at=at, source="discharge", ref=ref, params={}, field="plan"
        )
        _audit_import(session, "care_plan", plan.id, patient.id, self.at, source_ref=ref, template=chosen.name)
        return Outcome.IMPORTED


@dataclass
class AppointmentRecord(ClinicalRecord):
    his_id: str
    start: Optional[datetime]  # None only for a cancellation
    department: str
    doctor: str = ""
    location: str = ""
    status: str = "booked"  # booked or cancelled

    def write_for(self, session: Session, patient: Patient) -> Outcome:
        ref = source_ref("appointment", self.his_id)
        existing = _existing_plan(session, patient, APPOINTMENT_PLAN, ref)
        if self.status != "booked":
            return _cancel_or_nothing(session, existing, self, "the appointment is cancelled")
        if existing is not None:
            return Outcome.DUPLICATE
        assert self.start is not None
        if self.start <= clock.now():
            raise NotApplicable("time", f"the appointment at {_local_text(self.start)} has passed: nothing to remind")
        params = {"department": self.department, "doctor": self.doctor, "location": self.location}
        plan = _enroll(
            session, patient, template=APPOINTMENT_PLAN, anchor_at=self.start, source="appointment", ref=ref,
            params=params, field="plan",
        )  # fmt: skip
        _audit_import(session, "care_plan", plan.id, patient.id, self.at, source_ref=ref, template=APPOINTMENT_PLAN)
        return Outcome.IMPORTED


@dataclass
class PrescriptionRecord(ClinicalRecord):
    his_id: Optional[str]
    drug: str
    dose: str
    times: List[str]
    start_day: date
    end_day: Optional[date]
    condition: str
    status: str = "active"  # active, or stopped (the plan it started ends)

    def write_for(self, session: Session, patient: Patient) -> Outcome:
        his_id = (
            self.his_id
            or "auto:"
            + hashlib.sha1(f"{self.drug}|{self.start_day.isoformat()}|{self.condition}".encode()).hexdigest()[:16]
        )
        ref = source_ref("prescription", his_id)
        prescription = session.execute(
            select(Prescription).where(Prescription.patient_id == patient.id, Prescription.source_ref == ref)
        ).scalar_one_or_none()
        plan = _existing_plan(session, patient, self.condition, ref)
        if self.status != "active":
            return _cancel_or_nothing(session, plan, self, "the prescription is stopped")
        if prescription is not None and plan is not None:
            return Outcome.DUPLICATE
        if self.end_day is not None and self.end_day < clock.local_now(patient.timezone).date():
            raise NotApplicable("end_date", f"the prescription ended on {self.end_day.isoformat()}: nothing to remind")
        if prescription is None:
            prescription = Prescription(
                patient_id=patient.id,
                drug=self.drug,
                dose=self.dose,
                times=list(self.times),
                start_date=datetime.combine(self.start_day, time(0)),
                end_date=datetime.combine(self.end_day, time(0)) if self.end_day else None,
                condition=self.condition,
                source_ref=ref,
            )
            session.add(prescription)
            session.flush()
        params = {"prescription_id": prescription.id, "drug": self.drug, "dose": self.dose, "times": list(self.times)}
        _enroll(
            session, patient, template=self.condition, anchor_at=anchor(self.start_day, patient),
            source="prescription", ref=ref, params=params, field="times",
        )  # fmt: skip
        _audit_import(
            session, "prescription", prescription.id, patient.id, self.at, source_ref=ref, template=self.condition
        )
        return Outcome.IMPORTED


# ----------------------------------------------------------------------------------------------
# CSV formats, one small class per kind, registered by name
# ----------------------------------------------------------------------------------------------
CSV_FORMATS: Dict[str, CsvFormat] = {}


def csv_format(cls: type) -> type:
    CSV_FORMATS[cls.kind] = cls()
    return cls


class CsvFormat(ABC):
    """The columns of one kind of CSV file and how a row becomes a record. Cells are stripped; an empty cell
    is 'not given'."""

    kind = ""
    required: Tuple[str, ...] = ()
    optional: Tuple[str, ...] = ()
    names_patient = True  # rows name an existing patient by card_no, or by phone + name

    def check_header(self, header: Sequence[str]) -> List[str]:
        """Raises UnusableInput naming the missing columns; returns notes about ignored ones."""
        patient_columns = ("card_no", "phone", "name") if self.names_patient else ()
        missing = [column for column in self.required if column not in header]
        if self.names_patient and "card_no" not in header and not {"phone", "name"} <= set(header):
            missing.append("card_no (or phone and name)")
        if missing:
            raise UnusableInput(
                f"{self.kind} file is missing column{'s' if len(missing) > 1 else ''}: {', '.join(missing)} "
                f"(the header row must name: {', '.join(self.columns(patient_columns))}; "
                "see scheduler/import_formats.md)"
            )
        known = set(self.required) | set(self.optional) | set(patient_columns)
        unknown = [column for column in header if column and column not in known]
        if unknown:
            return [f"ignored column{'s' if len(unknown) > 1 else ''}: {', '.join(unknown)} (not part of {self.kind})"]
        return []

    def columns(self, patient_columns: Sequence[str]) -> List[str]:
        return [*self.required, *(f"{column} (optional)" for column in (*patient_columns, *self.optional))]

    @abstractmethod
    def record(self, number: int, row: Mapping[str, str], tz: ZoneInfo) -> ImportRecord:
        """The row as a record, or Rejected / NotApplicable."""


def _cell(row: Mapping[str, str], column: str) -> str:
    return (row.get(column) or "").strip()


def _required(row: Mapping[str, str], column: str) -> str:
    value = _cell(row, column)
    if not value:
        raise Rejected(column, f"{column} is empty: it is required")
    return value


def _row_patient(row: Mapping[str, str]) -> KnownPatient:
    card_no, phone, name = _cell(row, "card_no"), _cell(row, "phone"), _cell(row, "name")
    if not (card_no or phone or name):
        raise Rejected("card_no", "the row names no patient: fill card_no, or phone and name")
    return KnownPatient(
        card_no=parse_card_no(card_no) if card_no else None,
        phone=parse_phone(phone) if phone or not card_no else None,
        name=parse_name(name) if name or not card_no else None,
    )


@csv_format
class PatientsCsv(CsvFormat):
    kind = "patients"
    required = ("name", "phone")
    optional = ("card_no", "birth_date", "locale", "timezone", "wechat_openid")
    names_patient = False

    def record(self, number: int, row: Mapping[str, str], tz: ZoneInfo) -> ImportRecord:
        def optional(column: str, parse: Callable[[str], Any]) -> Any:
            value = _cell(row, column)
            return parse(value) if value else None

        details = PatientDetails(
            name=parse_name(_required(row, "name")),
            phone=parse_phone(_required(row, "phone")),
            card_no=optional("card_no", parse_card_no),
            birth_date=optional("birth_date", lambda value: parse_birth_date(value, "birth_date", tz)),
            locale=optional("locale", parse_locale),
            timezone=optional("timezone", parse_timezone),
            wechat_openid=optional("wechat_openid", parse_openid),
        )
        return PatientRecord(number, "csv", details)


@csv_format
class AppointmentsCsv(CsvFormat):
    kind = "appointments"
    required = ("appointment_id", "time", "department")
    optional = ("doctor", "location", "status")

    def record(self, number: int, row: Mapping[str, str], tz: ZoneInfo) -> ImportRecord:
        status = (_cell(row, "status") or "booked").lower()
        if status not in ("booked", "cancelled"):
            raise Rejected("status", f"status {_quoted(status)} is not booked or cancelled")
        start = None
        if status == "booked" or _cell(row, "time"):
            start = parse_moment(_required(row, "time"), "time", tz)
        department = _required(row, "department") if status == "booked" else _cell(row, "department")
        return AppointmentRecord(
            number,
            "csv",
            _row_patient(row),
            his_id=parse_his_id(_required(row, "appointment_id"), "appointment_id"),
            start=start,
            department=department,
            doctor=_cell(row, "doctor"),
            location=_cell(row, "location") or department_location(department),
            status=status,
        )


@csv_format
class DischargesCsv(CsvFormat):
    kind = "discharges"
    required = ("discharged_at",)
    optional = ("discharge_id", "plan")

    def record(self, number: int, row: Mapping[str, str], tz: ZoneInfo) -> ImportRecord:
        his_id = _cell(row, "discharge_id")
        return DischargeRecord(
            number,
            "csv",
            _row_patient(row),
            discharged_at=parse_moment(_required(row, "discharged_at"), "discharged_at", tz, day_is_enough=True),
            his_id=parse_his_id(his_id, "discharge_id") if his_id else None,
            template=_cell(row, "plan") or DEFAULT_DISCHARGE_PLAN,
        )


@csv_format
class PrescriptionsCsv(CsvFormat):
    kind = "prescriptions"
    required = ("drug", "times", "start_date", "condition")
    optional = ("prescription_id", "dose", "end_date", "status")

    def record(self, number: int, row: Mapping[str, str], tz: ZoneInfo) -> ImportRecord:
        status = (_cell(row, "status") or "active").lower()
        if status not in ("active", "stopped"):
            raise Rejected("status", f"status {_quoted(status)} is not active or stopped")
        his_id = _cell(row, "prescription_id")
        start_day = parse_day(_required(row, "start_date"), "start_date", tz)
        end_day = parse_day(_cell(row, "end_date"), "end_date", tz) if _cell(row, "end_date") else None
        return prescription_record(
            number, "csv", _row_patient(row),
            his_id=parse_his_id(his_id, "prescription_id") if his_id else None,
            drug=_required(row, "drug"), dose=_cell(row, "dose"), times=parse_times(_required(row, "times")),
            start_day=start_day, end_day=end_day, condition=parse_condition(_required(row, "condition")),
            status=status,
        )  # fmt: skip


def prescription_record(number: int, source_format: str, patient: PatientSource, **values: Any) -> PrescriptionRecord:
    """A prescription record after the checks every format shares (lengths, end after start)."""
    if len(values["drug"]) > 128:
        raise Rejected("drug", "drug is longer than 128 characters")
    if len(values["dose"]) > 64:
        raise Rejected("dose", "dose is longer than 64 characters")
    if values["end_day"] is not None and values["end_day"] < values["start_day"]:
        raise Rejected(
            "end_date",
            f"end_date {values['end_day'].isoformat()} is before start_date {values['start_day'].isoformat()}",
        )
    return PrescriptionRecord(number, source_format, patient, **values)


def department_location(name: str) -> str:
    """Where a department is, from data/hospital/departments.yml, when the export did not say."""
    wanted = name.strip().lower()
    for info in catalog.departments().values():
        if wanted in (info.name.lower(), info.code.lower(), *(alias.lower() for alias in info.aliases)):
            return info.location
    return ""


@dataclass
class _Item:
    """One unit of work: its number in the report and how to build its record (building may reject it)."""

    number: int
    build: Callable[[], ImportRecord]


def _decode(data: bytes) -> str:
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise UnusableInput(
            f"the file is not UTF-8 (byte {error.start} is not valid UTF-8): save it as UTF-8 "
            "(Excel: Save As 'CSV UTF-8'; exports from Chinese Windows are often GBK)"
        ) from None


def read_csv(data: bytes, kind: str, tz: ZoneInfo) -> Tuple[List[_Item], List[str]]:
    """The rows of a CSV file of `kind` as work items (numbered like a spreadsheet: the header is row 1)."""
    form = CSV_FORMATS[kind]
    text = _decode(data)
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = [cell.strip().lower() for cell in next(reader)]
    except StopIteration:
        raise UnusableInput("the file is empty: it needs a header row naming the columns") from None
    except csv.Error as error:
        raise UnusableInput(f"the header row is not CSV: {error}") from None
    duplicated = sorted({column for column in header if column and header.count(column) > 1})
    if duplicated:
        raise UnusableInput(f"the header row names {', '.join(duplicated)} more than once")
    notes = form.check_header(header)
    items = []
    while True:
        number = reader.line_num + 1
        try:
            cells = next(reader)
        except StopIteration:
            break
        except csv.Error as error:
            raise UnusableInput(f"row {number} is not CSV: {error}") from None
        if not any(cell.strip() for cell in cells):
            continue
        items.append(_Item(number, functools.partial(_csv_record, form, number, header, cells, tz)))
    return items, notes


def _csv_record(form: CsvFormat, number: int, header: List[str], cells: List[str], tz: ZoneInfo) -> ImportRecord:
    if len(cells) > len(header):
        raise Rejected(
            "-", f"the row has {len(cells)} cells but the header has {len(header)}: quote values that contain commas"
        )
    return form.record(number, dict(zip(header, cells)), tz)


# ----------------------------------------------------------------------------------------------
# FHIR R4 bundles
# ----------------------------------------------------------------------------------------------
CLINICAL_TYPES = ("Appointment", "Encounter", "MedicationRequest")
REFERENCE_TYPES = ("Practitioner", "PractitionerRole", "Location", "Organization", "Medication", "Condition")
INPATIENT_CLASSES = ("IMP", "ACUTE", "NONAC")  # v3 ActCode: inpatient encounter, acute, non-acute
PLAN_EXTENSION = "care-plan-template"  # an extension whose url ends with this names the discharge plan
_CARD_SYSTEM = re.compile(r"(card[-_]?no|card-number)/?$", re.IGNORECASE)
_OPENID_SYSTEM = re.compile(r"openid", re.IGNORECASE)
_ACTIVE_APPOINTMENT = ("booked", "pending", "arrived", "checked-in")
_CANCELLED_APPOINTMENT = ("cancelled", "noshow", "entered-in-error")
_STOPPED_PRESCRIPTION = ("completed", "stopped", "cancelled", "entered-in-error")


@dataclass
class _Entry:
    number: int
    type: str
    raw: Mapping[str, Any]
    model: Any = None
    error: Optional[Rejected] = None


class BundlePatient(PatientSource):
    """A Patient entry of a bundle. It is written together with each clinical entry that refers to it (so a
    patient never arrives without the record that brought them) and reported as an entry of its own."""

    def __init__(self, entry: _Entry, details: Optional[PatientDetails], error: Optional[Rejected]) -> None:
        self.entry = entry
        self.details = details
        self.error = error
        self.outcome: Optional[Outcome] = None
        self.rejected_dependents: List[int] = []
        self.write_error: Optional[Rejected] = None
        self._changed: List[str] = []

    def patient(self, session: Session) -> Patient:
        if self.error is not None or self.details is None:
            raise Rejected(
                "subject", f"refers to patient entry {self.entry.number}, which is invalid: {self._error_reason()}"
            )
        try:
            patient, self._changed = upsert_patient(session, self.details)
        except Rejected as error:
            self.write_error = error
            raise Rejected(error.field, f"patient entry {self.entry.number}: {error.reason}") from None
        if self._changed:
            _audit_import(session, "patient", patient.id, patient.id, ("fhir", self.entry.number), fields=self._changed)
        return patient

    def _error_reason(self) -> str:
        return self.error.reason if self.error else "no details"

    def record_written(self) -> None:
        if self._changed or self.outcome is None:
            self.outcome = Outcome.IMPORTED if self._changed else Outcome.DUPLICATE
        self._changed = []

    def record_rejected(self, number: int) -> None:
        self.rejected_dependents.append(number)
        self._changed = []

    def own_record(self) -> ImportRecord:
        """The Patient entry as a unit of its own, run after every clinical entry."""
        if self.error is not None:
            raise self.error
        if self.outcome is not None:
            return _Settled(self.entry.number, "fhir", self.outcome)
        if self.write_error is not None:
            raise self.write_error
        if self.rejected_dependents:
            entries = ", ".join(str(number) for number in sorted(set(self.rejected_dependents)))
            raise Rejected(
                "-",
                f"not imported: the entries that refer to this patient ({entries}) were rejected, and a patient "
                "is imported together with its records; fix those and import the bundle again",
            )
        assert self.details is not None
        return PatientRecord(self.entry.number, "fhir", self.details)


@dataclass
class _Settled(ImportRecord):
    """A record whose outcome is already known (a Patient entry written along with its clinical entries)."""

    outcome: Outcome

    def write(self, session: Session) -> Outcome:
        return self.outcome


class FhirBundle:
    """A FHIR R4 Bundle read into work items. Each resource is validated with fhir.resources (R4 4.0.1) on its
    own, so one invalid entry is rejected while the others import."""

    def __init__(self, data: bytes, tz: ZoneInfo) -> None:
        self.tz = tz
        self.entries = [self._entry(number, raw) for number, raw in enumerate(_bundle_entries(data), start=1)]
        self.index: Dict[str, _Entry] = {}
        for entry in self.entries:
            self._index(entry)
        self.patients: Dict[int, BundlePatient] = {}
        for entry in self.entries:
            if entry.type == "Patient":
                self.patients[entry.number] = self._bundle_patient(entry)

    # -- reading ---------------------------------------------------------------------------------
    def _entry(self, number: int, raw: Any) -> _Entry:
        resource = raw.get("resource") if isinstance(raw, dict) else None
        if not isinstance(resource, dict):
            return _Entry(number, "", {}, error=Rejected("resource", "the entry has no resource"))
        kind = str(resource.get("resourceType") or "")
        entry = _Entry(number, kind, raw)
        if kind in ("Patient", *CLINICAL_TYPES, *REFERENCE_TYPES):
            entry.model, entry.error = _parse_resource(kind, resource)
        return entry

    def _index(self, entry: _Entry) -> None:
        full_url = entry.raw.get("fullUrl") if entry.raw else None
        if isinstance(full_url, str) and full_url:
            self.index[full_url] = entry
            tail = re.search(r"([A-Za-z]+/[A-Za-z0-9\-.]{1,64})$", full_url)
            if tail and not full_url.startswith("urn:"):
                self.index.setdefault(tail.group(1), entry)
        resource_id = entry.raw.get("resource", {}).get("id") if entry.raw else None
        if entry.type and resource_id:
            self.index.setdefault(f"{entry.type}/{resource_id}", entry)

    def resolve(self, reference: Any) -> Optional[_Entry]:
        text = getattr(reference, "reference", None)
        if not text:
            return None
        found = self.index.get(text)
        if found is None:
            tail = re.search(r"([A-Za-z]+/[A-Za-z0-9\-.]{1,64})(/_history/[^/]+)?$", text)
            found = self.index.get(tail.group(1)) if tail else None
        return found

    # -- work items ------------------------------------------------------------------------------
    def items(self) -> Tuple[List[_Item], List[str]]:
        """Clinical entries first (each with its patient), then the Patient entries, then the others."""
        clinical, others, reference_only = [], [], {}
        for entry in self.entries:
            if entry.type in CLINICAL_TYPES:
                clinical.append(_Item(entry.number, self._prepare(entry)))
            elif entry.type in REFERENCE_TYPES:
                reference_only[entry.type] = reference_only.get(entry.type, 0) + 1
            elif entry.type != "Patient":
                others.append(_Item(entry.number, functools.partial(_not_imported, entry)))
        patients_last = [_Item(number, patient.own_record) for number, patient in self.patients.items()]
        notes = [
            f"entry {entry.number} ({entry.type}) is not used: {entry.error.reason}"
            for entry in self.entries
            if entry.type in REFERENCE_TYPES and entry.error is not None
        ]
        if reference_only:
            counted = ", ".join(f"{kind} {count}" for kind, count in sorted(reference_only.items()))
            notes.append(f"entries used only to resolve references, not counted: {counted}")
        return clinical + patients_last + others, notes

    def _prepare(self, entry: _Entry) -> Callable[[], ImportRecord]:
        """Build the record now, while reading the bundle; the work item returns it or raises what building raised."""
        try:
            if entry.error is not None:
                raise entry.error
            built: Union[ImportRecord, Exception] = getattr(self, f"_{entry.type.lower()}")(entry)
        except (Rejected, NotApplicable) as error:
            built = error

        def build() -> ImportRecord:
            if isinstance(built, Exception):
                raise built
            return built

        return build

    # -- resources -------------------------------------------------------------------------------
    def _bundle_patient(self, entry: _Entry) -> BundlePatient:
        if entry.error is not None:
            return BundlePatient(entry, None, entry.error)
        try:
            return BundlePatient(entry, self._patient_details(entry.model), None)
        except Rejected as error:
            return BundlePatient(entry, None, error)

    def _patient_details(self, resource: Any) -> PatientDetails:
        card_no = openid = None
        for identifier in resource.identifier or []:
            system = identifier.system or ""
            codes = [coding.code for coding in (identifier.type.coding or [])] if identifier.type else []
            if identifier.value and (_CARD_SYSTEM.search(system) or "MR" in codes):
                card_no = parse_card_no(identifier.value, "identifier (card number)")
            elif identifier.value and _OPENID_SYSTEM.search(system):
                openid = parse_openid(identifier.value, "identifier (WeChat openid)")
        locale = None
        for communication in resource.communication or []:
            code = next((coding.code for coding in (communication.language.coding or []) if coding.code), None)
            if code and (communication.preferred or locale is None):
                locale = parse_locale(code, "communication.language")
        return PatientDetails(
            name=parse_name(_human_name(resource.name), "name"),
            phone=_mobile(resource.telecom or []),
            card_no=card_no,
            birth_date=check_birth_date(resource.birthDate, "birthDate") if resource.birthDate else None,
            locale=locale,
            wechat_openid=openid,
        )

    def _subject(self, entry: _Entry, reference: Any, field: str) -> PatientSource:
        if reference is None:
            raise Rejected(field, f"{entry.type}.{field} is missing: it must refer to the Patient")
        target = self.resolve(reference)
        if target is not None:
            if target.type != "Patient":
                raise Rejected(field, f"{entry.type}.{field} refers to a {target.type}, not a Patient")
            return self.patients[target.number]
        identifier = getattr(reference, "identifier", None)
        if identifier is not None and identifier.value and _CARD_SYSTEM.search(identifier.system or ""):
            return KnownPatient(card_no=parse_card_no(identifier.value, f"{field}.identifier"))
        raise Rejected(
            field,
            f"{entry.type}.{field} {getattr(reference, 'reference', None)!r} is not in the bundle: include the "
            "Patient resource, or refer to the patient by their card-number identifier",
        )

    def _appointment(self, entry: _Entry) -> ImportRecord:
        resource = entry.model
        status = resource.status
        if status not in _ACTIVE_APPOINTMENT and status not in _CANCELLED_APPOINTMENT:
            raise NotApplicable("status", f"status '{status}': only booked appointments get reminders")
        subject, doctor, location = None, "", ""
        for participant in resource.participant or []:
            actor = participant.actor
            target = self.resolve(actor) if actor is not None else None
            kind = target.type if target else str(getattr(actor, "reference", "") or "").split("/")[0]
            if kind == "Patient":
                if subject is not None:
                    raise Rejected("participant", "the Appointment has more than one Patient participant")
                subject = actor
            elif kind in ("Practitioner", "PractitionerRole") and not doctor:
                doctor = _display(target, actor)
            elif kind == "Location" and not location:
                location = _display(target, actor)
        department = _concept_text(*(resource.serviceType or []), *(resource.specialty or []))
        cancelled = status in _CANCELLED_APPOINTMENT
        if not department and not cancelled:
            raise Rejected("serviceType", "the Appointment names no department: give serviceType or specialty text")
        start = None
        if resource.start is not None:
            start = _fhir_moment(resource.start, "start", self.tz)
        elif not cancelled:
            raise Rejected("start", "the Appointment has no start time")
        return AppointmentRecord(
            entry.number, "fhir", self._subject(entry, subject, "participant"),
            his_id=_his_id(entry), start=start,
            department=department, doctor=doctor, location=location or department_location(department),
            status="cancelled" if cancelled else "booked",
        )  # fmt: skip

    def _encounter(self, entry: _Entry) -> ImportRecord:
        resource = entry.model
        code = resource.class_fhir.code if resource.class_fhir else None
        if code not in INPATIENT_CLASSES:
            raise NotApplicable("class", f"class {code!r} is not an inpatient stay (IMP): only discharges get a plan")
        if resource.status in ("planned", "cancelled", "entered-in-error"):
            raise NotApplicable("status", f"status '{resource.status}': not a discharge")
        end = resource.period.end if resource.period else None
        if end is None:
            raise NotApplicable("period.end", "the patient has not been discharged yet (no period.end)")
        template = DEFAULT_DISCHARGE_PLAN
        for extension in resource.extension or []:
            if (extension.url or "").rstrip("/").endswith(PLAN_EXTENSION):
                template = str(extension.valueCode or extension.valueString or template)
        return DischargeRecord(
            entry.number, "fhir", self._subject(entry, resource.subject, "subject"),
            discharged_at=_fhir_moment(end, "period.end", self.tz, day_is_enough=True),
            his_id=_his_id(entry), template=template,
        )  # fmt: skip

    def _medicationrequest(self, entry: _Entry) -> ImportRecord:
        resource = entry.model
        stopped = resource.status in _STOPPED_PRESCRIPTION
        if resource.status != "active" and not stopped:
            raise NotApplicable("status", f"status '{resource.status}': only active prescriptions get reminders")
        drug = _concept_text(resource.medicationCodeableConcept) if resource.medicationCodeableConcept else ""
        if not drug and resource.medicationReference is not None:
            target = self.resolve(resource.medicationReference)
            drug = _concept_text(target.model.code) if target and target.model and target.model.code else ""
            drug = drug or (resource.medicationReference.display or "")
        if not drug:
            raise Rejected("medicationCodeableConcept", "the MedicationRequest names no drug (text or coding display)")
        dosage = (resource.dosageInstruction or [None])[0]
        repeat = dosage.timing.repeat if dosage and dosage.timing else None
        clock_times = [moment.strftime("%H:%M") for moment in (repeat.timeOfDay or [])] if repeat else []
        if not clock_times and not stopped:
            raise Rejected(
                "dosageInstruction",
                "dosageInstruction.timing.repeat.timeOfDay is needed: the times to remind, e.g. '08:00:00'",
            )
        validity = resource.dispenseRequest.validityPeriod if resource.dispenseRequest else None
        start = (validity.start if validity else None) or resource.authoredOn
        if start is None:
            raise Rejected("dispenseRequest", "no start: give dispenseRequest.validityPeriod.start or authoredOn")
        end = validity.end if validity else None
        return prescription_record(
            entry.number, "fhir", self._subject(entry, resource.subject, "subject"),
            his_id=_his_id(entry), drug=drug, dose=_dose(dosage), times=sorted(set(clock_times)),
            start_day=_fhir_day(start, self.tz), end_day=_fhir_day(end, self.tz) if end else None,
            condition=self._condition(entry), status="stopped" if stopped else "active",
        )  # fmt: skip

    def _condition(self, entry: _Entry) -> str:
        resource = entry.model
        concepts = list(resource.reasonCode or [])
        for reference in resource.reasonReference or []:
            target = self.resolve(reference)
            if target is not None and target.model is not None and target.type == "Condition" and target.model.code:
                concepts.append(target.model.code)
        words = []
        for concept in concepts:
            words.append(concept.text)
            for coding in concept.coding or []:
                words.extend((coding.code, coding.display))
        for word in words:
            found = condition_named(word)
            if found:
                return found
        named = ", ".join(repr(word) for word in words if word) or "nothing"
        raise Rejected(
            "reasonCode",
            f"reasonCode names {named}: not a condition we run a plan for ({' or '.join(CONDITIONS)}, "
            "高血压/糖尿病, ICD-10 I10-I15/E10-E14)",
        )


def _bundle_entries(data: bytes) -> List[Any]:
    try:
        document = json.loads(_decode(data))
    except json.JSONDecodeError as error:
        raise UnusableInput(
            f"not JSON ({error.msg} at line {error.lineno}, column {error.colno}): send a FHIR R4 Bundle"
        ) from None
    if not isinstance(document, dict) or document.get("resourceType") != "Bundle":
        found = document.get("resourceType") if isinstance(document, dict) else type(document).__name__
        raise UnusableInput(
            f"not a FHIR Bundle (resourceType is {found!r}): send a Bundle (collection, batch or transaction) "
            "whose entries hold Patient, Appointment, Encounter and MedicationRequest resources"
        )
    entries = document.get("entry", [])
    if not isinstance(entries, list):
        raise UnusableInput("Bundle.entry is not a list of entries")
    return entries


def _parse_resource(kind: str, resource: Mapping[str, Any]) -> Tuple[Any, Optional[Rejected]]:
    from fhir.resources import get_fhir_model_class

    try:
        return get_fhir_model_class(kind).parse_obj(resource), None
    except ValidationError as error:
        problems = [
            f"{'.'.join(str(part) for part in problem['loc'] if part != '__root__') or kind}: {problem['msg']}"
            for problem in error.errors()[:3]
        ]
        first = error.errors()[0]["loc"][0] if error.errors() else "-"
        return None, Rejected(str(first), f"the {kind} is not valid FHIR R4: {'; '.join(problems)}")


def _not_imported(entry: _Entry) -> ImportRecord:
    if entry.error is not None:
        raise entry.error
    raise NotApplicable("resourceType", f"{entry.type or 'an entry without resourceType'} entries are not imported")


def _his_id(entry: _Entry) -> str:
    """The record's id in the HIS: its first identifier's value, else the resource id."""
    resource = entry.model
    for identifier in resource.identifier or []:
        if identifier.value:
            return parse_his_id(identifier.value, "identifier")
    if resource.id:
        return parse_his_id(resource.id, "id")
    raise Rejected("identifier", f"the {entry.type} has neither identifier nor id: a re-import could not recognise it")


def _human_name(names: Sequence[Any]) -> str:
    if not names:
        raise Rejected("name", "Patient.name is missing")
    chosen = next((name for name in names if name.use == "official"), names[0])
    if chosen.text:
        return chosen.text
    family, given = chosen.family or "", list(chosen.given or [])
    if _HAN.search(family + "".join(given)):
        return family + "".join(given)
    return " ".join([*given, family]).strip()


def _mobile(telecom: Sequence[Any]) -> str:
    phones = [point for point in telecom if point.system in ("phone", "sms") and point.value]
    phones.sort(key=lambda point: point.use != "mobile")
    if not phones:
        raise Rejected("telecom", "Patient.telecom has no phone: a mobile number is needed to reach the patient")
    first_error = None
    for point in phones:
        try:
            return parse_phone(point.value, "telecom")
        except Rejected as error:
            first_error = first_error or error
    assert first_error is not None
    raise first_error


def _concept_text(*concepts: Any) -> str:
    for concept in concepts:
        if concept is None:
            continue
        if concept.text:
            return str(concept.text).strip()
        for coding in concept.coding or []:
            if coding.display:
                return str(coding.display).strip()
    return ""


def _display(target: Optional[_Entry], reference: Any) -> str:
    model = target.model if target else None
    if model is not None:
        names = getattr(model, "name", None)
        if isinstance(names, str):
            return names
        if isinstance(names, list) and names:
            try:
                return _human_name(names)
            except Rejected:
                pass
    return str(getattr(reference, "display", "") or "")


def _dose(dosage: Any) -> str:
    if dosage is None:
        return ""
    for dose_and_rate in dosage.doseAndRate or []:
        quantity = dose_and_rate.doseQuantity
        if quantity is not None and quantity.value is not None:
            value = quantity.value
            number = format(value.normalize(), "f") if isinstance(value, Decimal) else str(value)
            return f"{number}{quantity.unit or ''}".strip()
    return str(dosage.text or "")


def _fhir_moment(value: Union[datetime, date], field: str, tz: ZoneInfo, *, day_is_enough: bool = False) -> Moment:
    if isinstance(value, datetime):
        return value if value.tzinfo is not None else localize(value, tz, field, value.isoformat())
    if not day_is_enough:
        raise Rejected(field, f"{field} {value.isoformat()} has no time of day")
    return value


def _fhir_day(value: Union[datetime, date], tz: ZoneInfo) -> date:
    if isinstance(value, datetime):
        return value.astimezone(tz).date() if value.tzinfo is not None else value.date()
    return value


# ----------------------------------------------------------------------------------------------
# running an import: one savepoint and one commit per record
# ----------------------------------------------------------------------------------------------
def guess_kind(filename: str) -> str:
    """'his_appointments_2026-11.csv' -> 'appointments'; '*.json' -> 'fhir'."""
    lowered = filename.lower()
    if lowered.endswith(".json"):
        return "fhir"
    found = [kind for kind in KINDS[:-1] if kind.rstrip("s") in lowered]
    if len(found) != 1:
        raise UnusableInput(
            f"cannot tell from the name {filename!r} what the file holds: pass --kind ({'|'.join(KINDS)})"
        )
    return found[0]


def import_file(
    path: Union[str, Path],
    kind: Optional[str] = None,
    *,
    dry_run: bool = False,
    progress: Optional[bool] = None,
    database_url: Optional[str] = None,
) -> ImportReport:
    """Import a CSV file or a FHIR bundle (kind guessed from the name when not given). Raises UnusableInput."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as error:
        raise UnusableInput(f"cannot read {path}: {error.strerror}") from None
    return import_data(
        data, kind or guess_kind(path.name), dry_run=dry_run, progress=progress, database_url=database_url
    )


def import_data(
    data: bytes,
    kind: str,
    *,
    dry_run: bool = False,
    progress: Optional[bool] = None,
    database_url: Optional[str] = None,
) -> ImportReport:
    """Import the bytes of a CSV file of `kind` or of a FHIR bundle (kind 'fhir'). Raises UnusableInput when the
    file cannot be read at all; otherwise every record is imported or reported."""
    if kind not in KINDS:
        raise UnusableInput(f"unknown kind {kind!r}: one of {', '.join(KINDS)}")
    tz = get_settings().tz
    if kind == "fhir":
        items, notes = FhirBundle(data, tz).items()
    else:
        items, notes = read_csv(data, kind, tz)
    report = ImportReport(kind=kind, unit="entry" if kind == "fhir" else "row", notes=notes, dry_run=dry_run)
    show = sys.stderr.isatty() if progress is None else progress
    _run(items, report, database_url=database_url, progress=show)
    report.rejected.sort(key=lambda item: item.number)
    report.ignored.sort(key=lambda item: item.number)
    logger.info(
        "import %s%s: %d records, %d imported, %d duplicates, %d ignored, %d rejected",
        kind, " (dry run)" if dry_run else "", report.total, report.imported, report.skipped_duplicates,
        len(report.ignored), len(report.rejected),
    )  # fmt: skip
    return report


def _run(items: Sequence[_Item], report: ImportReport, *, database_url: Optional[str], progress: bool) -> None:
    """Each record in its own savepoint; committed one by one, or all rolled back at the end of a dry run."""
    session: Session = get_session_factory(database_url)()
    try:
        _begin(session)
        for item in tqdm(items, desc=f"import {report.kind}", unit=report.unit, file=sys.stderr, disable=not progress):
            report.total += 1
            _write_one(session, item, report)
            if not report.dry_run:
                session.commit()
                _begin(session)
        session.rollback()  # a dry run ends here with nothing written; otherwise there is nothing left to roll back
    finally:
        session.close()


def _begin(session: Session) -> None:
    """Open a real transaction. pysqlite only BEGINs before INSERT/UPDATE/DELETE, so a SAVEPOINT issued first would
    start the transaction itself and its RELEASE would commit: a dry run would write and a rollback would not undo."""
    connection = session.connection()
    if connection.dialect.name != "sqlite":
        return
    fairy = connection.connection
    raw = getattr(fairy, "dbapi_connection", None) or fairy.connection
    if not raw.in_transaction:
        connection.exec_driver_sql("BEGIN")


def _write_one(session: Session, item: _Item, report: ImportReport) -> None:
    for attempt in (1, 2):
        try:
            with session.begin_nested():
                outcome = item.build().write(session)
        except Rejected as error:
            _reject(report, Rejection(item.number, error.field, error.reason))
        except NotApplicable as error:
            report.ignored.append(Rejection(item.number, error.field, error.reason))
        except plans.PlanError as error:
            _reject(report, Rejection(item.number, "plan", str(error)))
        except IntegrityError:
            if attempt == 1:  # another import wrote the same record meanwhile: the second try finds it
                continue
            _reject(
                report,
                Rejection(item.number, "-", "conflicts with a record written at the same time: import the file again"),
            )
        else:
            if outcome is Outcome.IMPORTED:
                report.imported += 1
            else:
                report.skipped_duplicates += 1
        return


def _reject(report: ImportReport, rejection: Rejection) -> None:
    report.rejected.append(rejection)
    logger.info("import %s: %s %d rejected (field %s)", report.kind, report.unit, rejection.number, rejection.field)


# ----------------------------------------------------------------------------------------------
# command line
# ----------------------------------------------------------------------------------------------
def main(argv: Optional[Sequence[str]] = None) -> int:
    """Exit 0 when every record was imported (or already there), 2 when some were rejected, 1 on unusable input."""
    parser = argparse.ArgumentParser(
        prog="python -m scheduler.importer",
        description="Import patients, appointments, discharges and prescriptions (CSV or a FHIR R4 Bundle) "
        "and enrol the patients in care plans. Formats: scheduler/import_formats.md",
    )
    parser.add_argument("file", type=Path)
    parser.add_argument("--kind", choices=KINDS, help="what the file holds (default: guessed from its name)")
    parser.add_argument("--dry-run", action="store_true", help="check and report, write nothing")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument("--progress", action="store_true", help="show a progress bar even when stderr is no TTY")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        report = import_file(args.file, args.kind, dry_run=args.dry_run, progress=True if args.progress else None)
    except UnusableInput as error:
        if args.json:
            print(json.dumps({"error": str(error)}, ensure_ascii=False))
        print(f"cannot import {args.file.name}: {error}", file=sys.stderr)
        return 1
    print(json.dumps(report.as_dict(), ensure_ascii=False, indent=2) if args.json else report.summary())
    return 0 if report.ok else 2


# ----------------------------------------------------------------------------------------------
# HTTP: POST /import?kind=...  (mounted by the scheduler process, scheduler/service.py)
# ----------------------------------------------------------------------------------------------
def routes(*, database_url: Optional[str] = None) -> List[web.RouteDef]:
    """`POST /import?kind=patients|appointments|discharges|prescriptions|fhir[&dry_run=1]` with the file as the body
    and `Authorization: Bearer $SCHEDULER_API_TOKEN`. 200 with the report as JSON, 400 for an unusable file, 401
    without the token, 413 beyond 20 MB, 503 when SCHEDULER_API_TOKEN is not set."""

    async def post_import(request: web.Request) -> web.Response:
        return await handle_import(request, database_url=database_url)

    return [web.post("/import", post_import)]


def _error(status: int, message: str, **headers: str) -> web.Response:
    return web.json_response({"error": message}, status=status, headers=headers or None, dumps=_dumps)


def _dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False)


def _authorized(request: web.Request, expected: str) -> bool:
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(token.strip().encode(), expected.encode())


async def _read_body(request: web.Request) -> Optional[bytes]:
    """The body, or None when it is larger than MAX_UPLOAD_BYTES (read in chunks: the app's client_max_size
    does not apply to the stream)."""
    chunks, size = [], 0
    while True:
        chunk = await request.content.read(1 << 16)
        if not chunk:
            return b"".join(chunks)
        size += len(chunk)
        if size > MAX_UPLOAD_BYTES:
            return None
        chunks.append(chunk)


async def handle_import(request: web.Request, *, database_url: Optional[str] = None) -> web.Response:
    expected = os.environ.get(TOKEN_ENV, "")
    if not expected:
        return _error(503, f"import API disabled: set {TOKEN_ENV}")
    if not _authorized(request, expected):
        return _error(
            401, "send the import token: Authorization: Bearer <token>", **{"WWW-Authenticate": 'Bearer realm="import"'}
        )
    kind = request.query.get("kind") or ("fhir" if "json" in (request.content_type or "") else "")
    if kind not in KINDS:
        return _error(400, f"say what the body holds: ?kind={'|'.join(KINDS)}")
    too_large = f"the file is larger than {MAX_UPLOAD_BYTES // (1024 * 1024)} MB: split it into smaller files"
    if request.content_length is not None and request.content_length > MAX_UPLOAD_BYTES:
        return _error(413, too_large)
    body = await _read_body(request)
    if body is None:
        return _error(413, too_large)
    dry_run = request.query.get("dry_run", "").lower() in ("1", "true", "yes")
    run = functools.partial(import_data, body, kind, dry_run=dry_run, progress=False, database_url=database_url)
    try:
        report = await asyncio.get_running_loop().run_in_executor(None, run)
    except UnusableInput as error:
        return _error(400, str(error))
    return web.json_response(report.as_dict(), dumps=_dumps)


if __name__ == "__main__":
    sys.exit(main())
