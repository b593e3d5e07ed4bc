"""Answers to care-plan reminders in chat: a reading is stored with its unit and checked, 吃了 records the dose."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import select

from bot import clock
from bot.crm import care, patients
from bot.crm.models import Escalation, MeasurementReading, MedicationDose, Prescription
from bot.db import session_scope


def _known(conversation, dialogue_db: str, name: str, phone: str) -> int:
    with session_scope(dialogue_db) as session:
        patient, _ = patients.match_or_register(session, name, phone)
        patients.link_identity(session, patient, conversation.channel, conversation.sender_id)
        return patient.id


def test_a_reading_is_stored_with_its_unit(conversation, dialogue_db) -> None:
    patient_id = _known(conversation, dialogue_db, "蒋血压", "13700137001")
    reply = conversation.say_text("今天早上血压138/88，心率72")
    assert "已记录" in reply and "138/88 mmHg" in reply and "72" in reply
    with session_scope(dialogue_db) as session:
        stored = session.execute(
            select(MeasurementReading.kind, MeasurementReading.value, MeasurementReading.unit)
            .where(MeasurementReading.patient_id == patient_id).order_by(MeasurementReading.id)
        ).all()  # fmt: skip
    assert stored == [("blood_pressure", {"systolic": 138.0, "diastolic": 88.0}, "mmHg"),
                      ("heart_rate", {"value": 72.0}, "/min")]  # fmt: skip


def test_an_urgent_reading_reaches_a_nurse(conversation, dialogue_db) -> None:
    patient_id = _known(conversation, dialogue_db, "韩偏高", "13700137002")
    reply = conversation.say_text("血压185/100")
    assert "需要重视" in reply and "复测" in reply
    with session_scope(dialogue_db) as session:
        reading = session.execute(
            select(MeasurementReading).where(MeasurementReading.patient_id == patient_id)
        ).scalar_one()
        escalation = session.execute(
            select(Escalation).where(Escalation.sender_id == conversation.sender_id)
        ).scalar_one()
    assert reading.level == 3
    assert (escalation.reason, escalation.priority) == ("abnormal_reading", 2)


def test_taken_closes_the_open_dose(conversation, dialogue_db) -> None:
    patient_id = _known(conversation, dialogue_db, "杨按时", "13700137003")
    due = clock.now() - timedelta(minutes=30)
    with session_scope(dialogue_db) as session:
        prescription = Prescription(patient_id=patient_id, drug="二甲双胍", dose="0.5g", times=["08:30"],
                                    start_date=due.replace(tzinfo=None) - timedelta(days=1))  # fmt: skip
        session.add(prescription)
        session.flush()
        dose_id = care.due_dose(session, prescription.id, patient_id, due).id
    assert "已记录" in conversation.say_text("吃了")
    with session_scope(dialogue_db) as session:
        assert session.get(MedicationDose, dose_id).status == "taken"
