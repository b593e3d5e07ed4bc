"""SQLAlchemy models of the CRM store. Alembic migrations in bot/migrations mirror this file.

Times are stored as naive UTC datetimes (SQLite has no time zones); bot.clock converts for display.
"""

from __future__ import annotations

import enum
from datetime import datetime

from sqlalchemy import (
    JSON,
    Boolean,
    Column,
    Date,
    DateTime,
    Enum,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import declarative_base, relationship

Base = declarative_base()


def utcnow() -> datetime:
    return datetime.utcnow().replace(microsecond=0)


class Channel(str, enum.Enum):
    """Where a patient can be reached. The value is what channel identities and consent store."""

    WECHAT = "wechat"
    SMS = "sms"
    VOICE = "voice"
    WEBCHAT = "webchat"


class AppointmentStatus(str, enum.Enum):
    BOOKED = "booked"
    CANCELLED = "cancelled"
    RESCHEDULED = "rescheduled"  # replaced by a new appointment
    COMPLETED = "completed"
    NO_SHOW = "no_show"


class EscalationStatus(str, enum.Enum):
    OPEN = "open"
    CLAIMED = "claimed"
    RESOLVED = "resolved"


class DeliveryStatus(str, enum.Enum):
    """Where one outbound message stands. Twilio's status callbacks move SMS from sent to delivered/undelivered."""

    SENDING = "sending"  # handed to the provider, no answer yet
    SENT = "sent"  # the provider accepted it
    DELIVERED = "delivered"  # the provider confirmed it reached the handset
    UNDELIVERED = "undelivered"  # the provider accepted it but could not deliver it
    FAILED = "failed"  # refused or errored; `error_code` says why
    SKIPPED = "skipped"  # not attempted: no consent, or no identity on that channel


class OutboxStatus(str, enum.Enum):
    """Where a scheduled push stands. `pending` rows are claimed by a dispatcher when due."""

    PENDING = "pending"  # waiting for due_at / next_attempt_at
    SENDING = "sending"  # claimed by a dispatcher until claim_expires_at (then claimable again)
    SENT = "sent"
    FAILED = "failed"  # gave up after the retries; last_error says why
    SKIPPED = "skipped"  # not sent on purpose: opted out, plan ended, nothing to say
    CANCELLED = "cancelled"  # the plan or appointment was cancelled


class SurveyStatus(str, enum.Enum):
    IN_PROGRESS = "in_progress"
    PAUSED = "paused"  # the patient will go on later (暂停); the next trigger or 继续问卷 resumes it
    COMPLETED = "completed"
    REFUSED = "refused"  # the patient declined to go on (不做了)


def _status_type(enum_class: type, name: str) -> Enum:
    """A status column's type: the enum's string values in a VARCHAR(16), portable to SQLite."""
    return Enum(
        enum_class,
        name=name,
        native_enum=False,
        length=16,
        values_callable=lambda members: [member.value for member in members],
    )


class Patient(Base):
    """A person the hospital treats. Identified by name and mobile; a family may share one mobile."""

    __tablename__ = "patients"
    __table_args__ = (UniqueConstraint("phone", "name", name="uq_patients_phone_name"),)

    id = Column(Integer, primary_key=True)
    card_no = Column(String(20), nullable=False, unique=True)  # 就诊卡号, issued at registration (开卡)
    name = Column(String(64), nullable=False)
    phone = Column(String(20), nullable=False, index=True)  # E.164, e.g. +8613800138000
    locale = Column(String(16), nullable=False, default="zh_CN")
    timezone = Column(String(40), nullable=False, default="Asia/Shanghai")
    birth_date = Column(Date, nullable=True)  # birthday greetings, age-aware triage
    created_at = Column(DateTime, nullable=False, default=utcnow)

    identities = relationship("ChannelIdentity", back_populates="patient", cascade="all, delete-orphan")


class ChannelIdentity(Base):
    """One way a patient writes to us: a WeChat openid, a phone number, a web-chat session id."""

    __tablename__ = "channel_identities"
    __table_args__ = (UniqueConstraint("channel", "external_id", name="uq_identity_channel_external"),)

    id = Column(Integer, primary_key=True)
    patient_id = Column(Integer, ForeignKey("patients.id", ondelete="CASCADE"), nullable=False, index=True)
    channel = Column(String(16), nullable=False)
    external_id = Column(String(128), nullable=False)
    created_at = Column(DateTime, nullable=False, default=utcnow)

    patient = relationship("Patient", back_populates="identities")


class Department(Base):
    """A clinical department; `code` is the stable identifier triage and evaluation use."""

    __tablename__ = "departments"

    code = Column(String(40), primary_key=True)
    name = Column(String(64), nullable=False)
    location = Column(String(128), nullable=False, default="")

    doctors = relationship("Doctor", back_populates="department")


class Doctor(Base):
    __tablename__ = "doctors"

    id = Column(Integer, primary_key=True)
    name = Column(String(64), nullable=False)
    title = Column(String(32), nullable=False)  # 主任医师, 副主任医师, 主治医师
    department_code = Column(String(40), ForeignKey("departments.code"), nullable=False, index=True)
    specialty = Column(String(255), nullable=False, default="")
    room = Column(String(64), nullable=False, default="")

    department = relationship("Department", back_populates="doctors")


class ScheduleSlot(Base):
    """One bookable consultation with one doctor at one time."""

    __tablename__ = "schedule_slots"
    __table_args__ = (
        UniqueConstraint("doctor_id", "start_at", name="uq_slot_doctor_start"),
        Index("ix_slots_start", "start_at"),
    )

    id = Column(Integer, primary_key=True)
    doctor_id = Column(Integer, ForeignKey("doctors.id"), nullable=False)
    start_at = Column(DateTime, nullable=False)  # UTC
    end_at = Column(DateTime, nullable=False)  # UTC

    doctor = relationship("Doctor")


class Appointment(Base):
    """A patient's booking of a slot.

    The partial unique index `uq_appointments_active_slot` lets at most one *booked* appointment hold a
    slot: double booking is impossible at the database level, whatever the application does.
    """

    __tablename__ = "appointments"
    __table_args__ = (
        Index(
            "uq_appointments_active_slot",
            "slot_id",
            unique=True,
            sqlite_where=text("status = 'booked'"),
            postgresql_where=text("status = 'booked'"),
        ),
        Index("ix_appointments_patient_status", "patient_id", "status"),
    )

    id = Column(Integer, primary_key=True)
    patient_id = Column(Integer, ForeignKey("patients.id", ondelete="CASCADE"), nullable=False)
    booked_by_patient_id = Column(Integer, ForeignKey("patients.id", ondelete="SET NULL"), nullable=True)
    slot_id = Column(Integer, ForeignKey("schedule_slots.id"), nullable=False)
    status = Column(
        _status_type(AppointmentStatus, "appointment_status"),
        nullable=False,
        default=AppointmentStatus.BOOKED,
    )
    channel = Column(String(16), nullable=True)
    replaces_appointment_id = Column(Integer, ForeignKey("appointments.id"), nullable=True)
    created_at = Column(DateTime, nullable=False, default=utcnow)
    cancelled_at = Column(DateTime, nullable=True)

    patient = relationship("Patient", foreign_keys=[patient_id])
    booked_by = relationship("Patient", foreign_keys=[booked_by_patient_id])
    slot = relationship("ScheduleSlot")


class Escalation(Base):
    """A conversation handed to a human, with why and how urgent (1 = most urgent)."""

    __tablename__ = "escalations"
    __table_args__ = (
        Index("ix_escalations_status_priority", "status", "priority", "created_at"),
        Index("ix_escalations_claimed_by", "claimed_by_id"),
    )

    id = Column(Integer, primary_key=True)
    patient_id = Column(Integer, ForeignKey("patients.id", ondelete="SET NULL"), nullable=True)
    sender_id = Column(String(128), nullable=False)
    channel = Column(String(16), nullable=True)
    reason = Column(String(40), nullable=False)
    priority = Column(Integer, nullable=False, default=3)
    summary = Column(Text, nullable=False, default="")
    status = Column(
        _status_type(EscalationStatus, "escalation_status"),
        nullable=False,
        default=EscalationStatus.OPEN,
    )
    created_at = Column(DateTime, nullable=False, default=utcnow)
    department_code = Column(String(40), nullable=True)  # the queue's department filter (triage or booking)
    pauses_bot = Column(Boolean, nullable=False, default=False)  # the bot went quiet when it was opened
    claimed_by_id = Column(Integer, ForeignKey("staff_users.id"), nullable=True)
    claimed_at = Column(DateTime, nullable=True)
    resolved_by_id = Column(Integer, ForeignKey("staff_users.id"), nullable=True)
    resolved_at = Column(DateTime, nullable=True)
    resolution = Column(String(200), nullable=True)
    deadline_alerted_at = Column(DateTime, nullable=True)  # the on-call nurse was alerted (once)

    claimed_by = relationship("StaffUser", foreign_keys=[claimed_by_id])
    resolved_by = relationship("StaffUser", foreign_keys=[resolved_by_id])


class StaffRole(str, enum.Enum):
    NURSE = "nurse"
    ADMIN = "admin"


class StaffUser(Base):
    """A console login. `password_hash` is scrypt (console.auth); `phone` is the on-call alert number."""

    __tablename__ = "staff_users"

    id = Column(Integer, primary_key=True)
    username = Column(String(64), nullable=False, unique=True)
    display_name = Column(String(64), nullable=False)
    password_hash = Column(String(255), nullable=False)
    role = Column(_status_type(StaffRole, "staff_role"), nullable=False, default=StaffRole.NURSE)
    department_code = Column(String(40), nullable=True)
    phone = Column(String(20), nullable=True)
    on_call = Column(Boolean, nullable=False, default=False)
    active = Column(Boolean, nullable=False, default=True)
    created_at = Column(DateTime, nullable=False, default=utcnow)
    last_login_at = Column(DateTime, nullable=True)


class ConsoleSession(Base):
    """A logged-in console session. `id` is the SHA-256 of the cookie's random token: a stolen database
    does not give working cookies. Logout or expiry deletes the row."""

    __tablename__ = "console_sessions"

    id = Column(String(64), primary_key=True)
    user_id = Column(Integer, ForeignKey("staff_users.id", ondelete="CASCADE"), nullable=False, index=True)
    csrf_token = Column(String(64), nullable=False)
    created_at = Column(DateTime, nullable=False, default=utcnow)
    expires_at = Column(DateTime, nullable=False)
    last_seen_at = Column(DateTime, nullable=False, default=utcnow)

    user = relationship("StaffUser")


class PatientTag(Base):
    """A label staff put on a patient (高血压随访, 行动不便, 需家属陪同), shown in the console's patient panel."""

    __tablename__ = "patient_tags"
    __table_args__ = (UniqueConstraint("patient_id", "tag", name="uq_patient_tags"),)

    id = Column(Integer, primary_key=True)
    patient_id = Column(Integer, ForeignKey("patients.id", ondelete="CASCADE"), nullable=False, index=True)
    tag = Column(String(32), nullable=False)
    created_by = Column(String(64), nullable=False)
    created_at = Column(DateTime, nullable=False, default=utcnow)


class Consent(Base):
    """Whether a channel identity accepts messages. An opt-out is never overridden by a reminder, and an
    unknown sender can opt out before they ever register."""

    __tablename__ = "consents"
    __table_args__ = (UniqueConstraint("channel", "external_id", name="uq_consent_channel_external"),)

    id = Column(Integer, primary_key=True)
    patient_id = Column(Integer, ForeignKey("patients.id", ondelete="CASCADE"), nullable=True, index=True)
    channel = Column(String(16), nullable=False)
    external_id = Column(String(128), nullable=False)
    opted_in = Column(Boolean, nullable=False, default=True)
    updated_at = Column(DateTime, nullable=False, default=utcnow, onupdate=utcnow)


class AuditEntry(Base):
    """Who read or changed what. `detail` never holds names or phone numbers."""

    __tablename__ = "audit_log"
    __table_args__ = (Index("ix_audit_entity", "entity", "entity_id"),)

    id = Column(Integer, primary_key=True)
    at = Column(DateTime, nullable=False, default=utcnow, index=True)
    actor = Column(String(64), nullable=False)
    action = Column(String(32), nullable=False)
    entity = Column(String(32), nullable=False)
    entity_id = Column(String(64), nullable=False)
    patient_id = Column(Integer, nullable=True, index=True)
    detail = Column(JSON, nullable=True)


class SurveyResponse(Base):
    """One run of a questionnaire (PHQ-9, GAD-7, satisfaction) by one patient; answers are stored item by item."""

    __tablename__ = "survey_responses"
    __table_args__ = (Index("ix_survey_responses_sender_status", "sender_id", "status"),)

    id = Column(Integer, primary_key=True)
    patient_id = Column(Integer, ForeignKey("patients.id", ondelete="CASCADE"), nullable=True, index=True)
    sender_id = Column(String(128), nullable=False)  # the conversation it runs in
    channel = Column(String(16), nullable=True)
    instrument = Column(String(32), nullable=False)  # data/surveys/instruments.yml
    status = Column(_status_type(SurveyStatus, "survey_status"), nullable=False, default=SurveyStatus.IN_PROGRESS)
    trigger = Column(String(32), nullable=False, default="patient")  # patient, scheduler, console
    appointment_id = Column(Integer, ForeignKey("appointments.id", ondelete="SET NULL"), nullable=True)
    total_score = Column(Integer, nullable=True)
    band = Column(String(32), nullable=True)  # minimal, mild, moderate... (scored instruments)
    started_at = Column(DateTime, nullable=False, default=utcnow)
    updated_at = Column(DateTime, nullable=False, default=utcnow, onupdate=utcnow)
    completed_at = Column(DateTime, nullable=True)

    answers = relationship(
        "SurveyAnswer", back_populates="response", cascade="all, delete-orphan", order_by="SurveyAnswer.id"
    )


class SurveyAnswer(Base):
    """A patient's answer to one item; a skipped item is stored as skipped. Answering again replaces it."""

    __tablename__ = "survey_answers"
    __table_args__ = (UniqueConstraint("response_id", "item", name="uq_survey_answers_item"),)

    id = Column(Integer, primary_key=True)
    response_id = Column(Integer, ForeignKey("survey_responses.id", ondelete="CASCADE"), nullable=False, index=True)
    item = Column(String(32), nullable=False)
    value = Column(Integer, nullable=True)  # the score (0-3, 1-5, 0-10)
    text = Column(Text, nullable=True)  # free text (comment)
    skipped = Column(Boolean, nullable=False, default=False)
    answered_at = Column(DateTime, nullable=False, default=utcnow)

    response = relationship("SurveyResponse", back_populates="answers")


class TriageRecord(Base):
    """The outcome of one triage: urgency and departments, for follow-up and the dashboard. No message text."""

    __tablename__ = "triage_records"

    id = Column(Integer, primary_key=True)
    patient_id = Column(Integer, ForeignKey("patients.id", ondelete="SET NULL"), nullable=True, index=True)
    sender_id = Column(String(128), nullable=False)
    level = Column(Integer, nullable=False)
    categories = Column(JSON, nullable=False, default=list)  # red-flag categories and reading kinds
    departments = Column(JSON, nullable=False, default=list)  # [{"code", "score"}]
    created_at = Column(DateTime, nullable=False, default=utcnow, index=True)


class Delivery(Base):
    """One attempt to send one message to one patient address on one channel.

    A fallback (WeChat refused, then SMS) is a second row pointing at the first through `fallback_of_id`,
    so a nurse or a report sees every attempt and why it failed.
    """

    __tablename__ = "deliveries"
    __table_args__ = (
        Index("ix_deliveries_provider_message", "provider_message_id"),
        Index("ix_deliveries_patient_created", "patient_id", "created_at"),
    )

    id = Column(Integer, primary_key=True)
    patient_id = Column(Integer, ForeignKey("patients.id", ondelete="SET NULL"), nullable=True)
    channel = Column(String(16), nullable=False)
    address = Column(String(128), nullable=False)  # openid or E.164 phone: never logged
    kind = Column(String(16), nullable=False)  # reply, custom, template, subscribe, sms, call
    purpose = Column(String(32), nullable=False, default="conversation")  # conversation, reminder, nurse, alert
    body = Column(Text, nullable=False, default="")
    choices = Column(JSON, nullable=True)  # [{"title", "payload"}]: numbered on SMS/WeChat, keys on a call
    status = Column(_status_type(DeliveryStatus, "delivery_status"), nullable=False, default=DeliveryStatus.SENDING)
    provider_message_id = Column(String(64), nullable=True)  # Twilio SM…/CA… sid, WeChat msgid
    error_code = Column(String(16), nullable=True)
    error = Column(String(255), nullable=True)
    fallback_of_id = Column(Integer, ForeignKey("deliveries.id", ondelete="SET NULL"), nullable=True)
    created_at = Column(DateTime, nullable=False, default=utcnow)
    updated_at = Column(DateTime, nullable=False, default=utcnow, onupdate=utcnow)


class CarePlan(Base):
    """One patient enrolled in one care-plan template (data/care_plans/), anchored at a time (a discharge, an
    appointment, a prescription's start). `params` holds what the template needs (drug, dose times...)."""

    __tablename__ = "care_plans"
    __table_args__ = (UniqueConstraint("patient_id", "template", "source_ref", name="uq_care_plans_source"),)

    id = Column(Integer, primary_key=True)
    patient_id = Column(Integer, ForeignKey("patients.id", ondelete="CASCADE"), nullable=False, index=True)
    template = Column(String(40), nullable=False)
    anchor_at = Column(DateTime, nullable=False)  # UTC
    source = Column(String(24), nullable=False, default="manual")  # discharge, appointment, prescription, import
    source_ref = Column(String(64), nullable=False, default="")  # the record it came from, for idempotent imports
    params = Column(JSON, nullable=False, default=dict)
    active = Column(Boolean, nullable=False, default=True)
    expanded_until = Column(DateTime, nullable=True)  # outbox rows exist up to here (UTC)
    created_at = Column(DateTime, nullable=False, default=utcnow)


class OutboxMessage(Base):
    """A push due at a time. Enrolment writes these ahead; dispatchers claim due rows, send through
    bot.outbound (or Rasa's trigger_intent) and record the outcome. `idempotency_key` makes expansion safe to
    repeat and makes two schedulers agree on what exists."""

    __tablename__ = "outbox"
    __table_args__ = (
        UniqueConstraint("idempotency_key", name="uq_outbox_idempotency"),
        Index("ix_outbox_due", "status", "next_attempt_at"),
        Index("ix_outbox_patient", "patient_id", "due_at"),
    )

    id = Column(Integer, primary_key=True)
    patient_id = Column(Integer, ForeignKey("patients.id", ondelete="CASCADE"), nullable=False)
    plan_id = Column(Integer, ForeignKey("care_plans.id", ondelete="CASCADE"), nullable=True, index=True)
    step = Column(String(40), nullable=False, default="")
    message = Column(String(64), nullable=False)  # catalog entry (bot/locale)
    params = Column(JSON, nullable=False, default=dict)
    conversation = Column(JSON, nullable=True)  # {"intent", "entities"}: pushed through Rasa's trigger_intent
    channel_policy = Column(String(40), nullable=False, default="wechat,sms,voice")
    urgent = Column(Boolean, nullable=False, default=False)  # ignores quiet hours
    due_at = Column(DateTime, nullable=False)  # UTC, when the plan wants it
    next_attempt_at = Column(DateTime, nullable=False)  # UTC: due_at, or later (quiet hours, retries)
    status = Column(_status_type(OutboxStatus, "outbox_status"), nullable=False, default=OutboxStatus.PENDING)
    attempts = Column(Integer, nullable=False, default=0)
    claimed_by = Column(String(64), nullable=True)
    claim_expires_at = Column(DateTime, nullable=True)
    delivery_id = Column(Integer, ForeignKey("deliveries.id", ondelete="SET NULL"), nullable=True)
    channel = Column(String(16), nullable=True)  # the channel that took it
    last_error = Column(String(255), nullable=True)
    idempotency_key = Column(String(160), nullable=False)
    created_at = Column(DateTime, nullable=False, default=utcnow)
    sent_at = Column(DateTime, nullable=True)


class Prescription(Base):
    """A medication the patient takes at set local times (e.g. ["08:00", "20:00"])."""

    __tablename__ = "prescriptions"
    __table_args__ = (UniqueConstraint("patient_id", "source_ref", name="uq_prescriptions_source"),)

    id = Column(Integer, primary_key=True)
    patient_id = Column(Integer, ForeignKey("patients.id", ondelete="CASCADE"), nullable=False, index=True)
    drug = Column(String(128), nullable=False)
    dose = Column(String(64), nullable=False, default="")
    times = Column(JSON, nullable=False, default=list)
    start_date = Column(DateTime, nullable=False)  # UTC midnight of the local start day
    end_date = Column(DateTime, nullable=True)
    condition = Column(String(40), nullable=True)  # hypertension, diabetes: which plan it enrols in
    source_ref = Column(String(64), nullable=False, default="")
    created_at = Column(DateTime, nullable=False, default=utcnow)


class MedicationDose(Base):
    """One scheduled dose and what became of it: adherence is the share of doses taken."""

    __tablename__ = "medication_doses"
    __table_args__ = (UniqueConstraint("prescription_id", "scheduled_at", name="uq_doses_scheduled"),)

    id = Column(Integer, primary_key=True)
    prescription_id = Column(Integer, ForeignKey("prescriptions.id", ondelete="CASCADE"), nullable=False)
    patient_id = Column(Integer, ForeignKey("patients.id", ondelete="CASCADE"), nullable=False, index=True)
    scheduled_at = Column(DateTime, nullable=False)  # UTC
    status = Column(String(16), nullable=False, default="due")  # due, taken, missed
    taken_at = Column(DateTime, nullable=True)
    reasked_at = Column(DateTime, nullable=True)


class MeasurementReading(Base):
    """A reading a patient reported (chat, import): blood pressure, glucose, heart rate, SpO2, weight..."""

    __tablename__ = "readings"
    __table_args__ = (Index("ix_readings_patient_kind", "patient_id", "kind", "taken_at"),)

    id = Column(Integer, primary_key=True)
    patient_id = Column(Integer, ForeignKey("patients.id", ondelete="CASCADE"), nullable=False)
    kind = Column(String(24), nullable=False)  # blood_pressure, glucose, heart_rate, spo2, temperature, weight
    value = Column(JSON, nullable=False)  # {"systolic": 150, "diastolic": 95} or {"value": 6.1}
    unit = Column(String(16), nullable=False)
    taken_at = Column(DateTime, nullable=False)  # UTC
    source = Column(String(16), nullable=False, default="chat")
    level = Column(Integer, nullable=True)  # triage urgency of the reading (1 most urgent), when judged
    created_at = Column(DateTime, nullable=False, default=utcnow)
