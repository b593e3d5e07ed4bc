"""A survey response as a FHIR R4 QuestionnaireResponse, validated by the fhir.resources R4 models.

PHQ-9 and GAD-7 use their LOINC panel as the questionnaire (http://loinc.org/q/44249-1), LOINC item codes as
linkIds, LOINC answer codes (LA6568-5...) for the answers and the LOINC total-score code for the total.
Skipped items are listed without an answer. The patient is a reference to the CRM id, never a name.
"""

from __future__ import annotations

import json
from typing import Any, Dict, List, Optional

from fhir.resources.bundle import Bundle
from fhir.resources.questionnaireresponse import QuestionnaireResponse

from bot.clock import from_db
from bot.crm.models import SurveyResponse, SurveyStatus
from bot.surveys.instruments import FREQUENCY, TEXT, get

LOINC = "http://loinc.org"
LOCAL_QUESTIONNAIRES = "urn:hospital-assistant:questionnaire:"
FHIR_STATUS = {
    SurveyStatus.IN_PROGRESS: "in-progress",
    SurveyStatus.PAUSED: "in-progress",
    SurveyStatus.COMPLETED: "completed",
    SurveyStatus.REFUSED: "stopped",
}


def questionnaire_response(response: SurveyResponse) -> Dict[str, Any]:
    instrument = get(response.instrument)
    answers = {answer.item: answer for answer in response.answers}
    items: List[Dict[str, Any]] = []
    for item in instrument.items:
        answer = answers.get(item.id)
        if answer is None:
            continue
        entry: Dict[str, Any] = {"linkId": item.link_id, "text": item.text}
        if not answer.skipped:
            entry["answer"] = [_value(instrument, item.scale, answer.value, answer.text)]
        items.append(entry)
    if instrument.scored and response.total_score is not None:
        items.append(
            {
                "linkId": instrument.loinc_total or "total",
                "text": "总分",
                "answer": [{"valueInteger": int(response.total_score)}],
            }
        )
    resource: Dict[str, Any] = {
        "resourceType": "QuestionnaireResponse",
        "id": f"survey-{response.id}",
        "identifier": {"system": "urn:hospital-assistant:survey-response", "value": str(response.id)},
        "questionnaire": f"{LOINC}/q/{instrument.loinc_panel}"
        if instrument.loinc_panel
        else f"{LOCAL_QUESTIONNAIRES}{instrument.key}",
        "status": FHIR_STATUS[SurveyStatus(response.status)],
        "authored": from_db(response.completed_at or response.updated_at).isoformat(),
        "item": items,
    }
    if response.patient_id:
        resource["subject"] = {"reference": f"Patient/{response.patient_id}"}
    if not items:
        del resource["item"]
    return json.loads(QuestionnaireResponse.parse_obj(resource).json())


def _value(instrument, scale: str, value: Optional[int], text: Optional[str]) -> Dict[str, Any]:
    if scale == TEXT:
        return {"valueString": text or ""}
    if scale == FREQUENCY:
        option = next(o for o in instrument.options[scale] if o.value == value)
        if option.code:
            return {"valueCoding": {"system": LOINC, "code": option.code, "display": option.display or option.label}}
    return {"valueInteger": int(value)}  # ratings 1-5, NPS 0-10


def bundle(responses: List[SurveyResponse]) -> Dict[str, Any]:
    """Several responses as a FHIR R4 collection Bundle."""
    resource = {
        "resourceType": "Bundle",
        "type": "collection",
        "entry": [{"resource": questionnaire_response(response)} for response in responses],
    }
    return json.loads(Bundle.parse_obj(resource).json())
