"""Answers to care-plan reminders: 吃了 records the dose, a reading sent in chat is stored with its unit and
checked against the thresholds (an urgent one reaches a nurse). Readings in the emergency range never get
here: the red-flag detector turns them into the `emergency` intent first."""

from __future__ import annotations

import logging
from typing import Any, Dict, List

from rasa_sdk import Action, Tracker
from rasa_sdk.events import EventType
from rasa_sdk.executor import CollectingDispatcher
from rasa_sdk.types import DomainDict

from actions.common import in_db, known_patient_id, latest_text
from actions.escalation import escalate
from bot import clock
from bot.crm import care
from bot.triage import readings

logger = logging.getLogger(__name__)
URGENT_LEVEL = 3


def describe(reading: readings.Reading) -> str:
    """'血压 150/95 mmHg', '血糖 6.2 mmol/L': how the assistant repeats a reading back."""
    names = {"blood_pressure": "血压", "heart_rate": "心率", "spo2": "血氧", "glucose": "血糖", "temperature": "体温",
             "weight": "体重", "hba1c": "糖化血红蛋白"}  # fmt: skip
    values = reading.values
    if reading.kind == "blood_pressure":
        number = (
            f"{values.get('systolic', '?'):g}/{values.get('diastolic', '?'):g}"
            if len(values) == 2
            else ("/".join(f"{v:g}" for v in values.values()))
        )
    else:
        number = "/".join(f"{value:g}" for value in values.values())
    return f"{names.get(reading.kind, reading.kind)} {number} {reading.unit}"


class MedicationTaken(Action):
    def name(self) -> str:
        return "action_medication_taken"

    async def run(self, dispatcher: CollectingDispatcher, tracker: Tracker, domain: DomainDict) -> List[EventType]:
        patient_id = await known_patient_id(tracker)
        if patient_id is not None:
            dose = await in_db(lambda session: care.record_taken(session, patient_id, clock.now()))
            logger.info("dose confirmed for patient %s: %s", patient_id, dose.id if dose else "no open dose")
        dispatcher.utter_message(response="utter_medication_taken_ack")
        return []


class RecordMeasurement(Action):
    def name(self) -> str:
        return "action_record_measurement"

    async def run(self, dispatcher: CollectingDispatcher, tracker: Tracker, domain: DomainDict) -> List[EventType]:
        text = latest_text(tracker)
        found = readings.parse(text)
        if not found:
            dispatcher.utter_message(response="utter_measurement_unclear")
            return []
        findings = readings.judge(found, text)
        levels: Dict[int, int] = {}
        for finding in findings:
            key = id(finding.reading)
            levels[key] = min(levels.get(key, 9), finding.level)
        patient_id = await known_patient_id(tracker)
        if patient_id is not None:
            now = clock.now()

            def store(session: Any) -> None:
                for reading in found:
                    care.record_reading(session, patient_id, reading.kind, reading.values, reading.unit, now,
                                        level=levels.get(id(reading)))  # fmt: skip

            await in_db(store)
        summary = "，".join(describe(reading) for reading in found)
        urgent = [finding for finding in findings if finding.level <= URGENT_LEVEL]
        if urgent:
            await escalate(tracker, "abnormal_reading", "；".join(f.reason for f in urgent))
            dispatcher.utter_message(response="utter_measurement_urgent", summary=summary,
                                     reasons="；".join(f.reason for f in urgent))  # fmt: skip
        else:
            dispatcher.utter_message(response="utter_measurement_recorded", summary=summary)
        return []
