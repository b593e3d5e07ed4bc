"""Survey responses in the CRM: started, answered item by item, paused, resumed, refused, scored."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from sqlalchemy import select
from sqlalchemy.orm import Session

from bot.clock import utc_now_naive
from bot.crm import audit
from bot.crm.models import SurveyAnswer, SurveyResponse, SurveyStatus
from bot.surveys.instruments import NPS, RATING, Instrument, Item, get

OPEN = (SurveyStatus.IN_PROGRESS, SurveyStatus.PAUSED)


@dataclass(frozen=True)
class Outcome:
    """A finished response: its score and band (scored instruments), and what needs a person."""

    response_id: int
    instrument: str
    status: str
    total: Optional[int]
    band: Optional[str]
    band_label: Optional[str]
    positive: bool  # at or above the screening cut-off
    safety_alert: bool  # PHQ-9 item 9 above 0
    low_ratings: bool  # satisfaction: a rating of 2 or less, or NPS 6 or less


def open_response(session: Session, sender_id: str, instrument: Optional[str] = None) -> Optional[SurveyResponse]:
    """The conversation's unfinished response (the latest), optionally of one instrument."""
    query = select(SurveyResponse).where(SurveyResponse.sender_id == sender_id, SurveyResponse.status.in_(OPEN))
    if instrument:
        query = query.where(SurveyResponse.instrument == instrument)
    return session.scalars(query.order_by(SurveyResponse.updated_at.desc(), SurveyResponse.id.desc())).first()


def start(
    session: Session,
    *,
    sender_id: str,
    instrument: str,
    channel: Optional[str] = None,
    patient_id: Optional[int] = None,
    trigger: str = "patient",
    appointment_id: Optional[int] = None,
) -> SurveyResponse:
    """Resume this conversation's unfinished response of `instrument`, or start a new one."""
    get(instrument)  # unknown instruments fail here, before anything is written
    response = open_response(session, sender_id, instrument)
    if response is None:
        response = SurveyResponse(
            sender_id=sender_id,
            instrument=instrument,
            channel=channel,
            patient_id=patient_id,
            trigger=trigger,
            appointment_id=appointment_id,
        )
        session.add(response)
        session.flush()
        detail = {"instrument": instrument, "trigger": trigger}
        audit.record(session, "assistant", "create", "survey_response", response.id, patient_id, detail)
    else:
        response.patient_id = response.patient_id or patient_id
    response.status = SurveyStatus.IN_PROGRESS
    response.updated_at = utc_now_naive()
    return response


def next_item(response: SurveyResponse) -> Optional[Item]:
    done = {answer.item for answer in response.answers}
    return next((item for item in get(response.instrument).items if item.id not in done), None)


def position(response: SurveyResponse, item: Item) -> int:
    """1-based number of `item` in its questionnaire."""
    return [i.id for i in get(response.instrument).items].index(item.id) + 1


def record(
    session: Session,
    response: SurveyResponse,
    item: Item,
    *,
    value: Optional[int] = None,
    text: Optional[str] = None,
    skipped: bool = False,
) -> SurveyAnswer:
    """Store one answer (replacing an earlier answer to the same item)."""
    answer = next((a for a in response.answers if a.item == item.id), None)
    if answer is None:
        answer = SurveyAnswer(item=item.id)
        response.answers.append(answer)
    answer.value, answer.text, answer.skipped = value, text, skipped
    answer.answered_at = utc_now_naive()
    response.updated_at = utc_now_naive()
    session.flush()
    return answer


def pause(session: Session, response: SurveyResponse) -> None:
    response.status = SurveyStatus.PAUSED
    response.updated_at = utc_now_naive()
    session.flush()


def refuse(session: Session, response: SurveyResponse) -> None:
    response.status = SurveyStatus.REFUSED
    response.updated_at = utc_now_naive()
    session.flush()
    audit.record(session, "assistant", "refuse", "survey_response", response.id, response.patient_id, {})


def finish(session: Session, response: SurveyResponse) -> Outcome:
    """Score (scored instruments: skipped items count as missing, not as 0) and mark the response completed."""
    instrument = get(response.instrument)
    response.status = SurveyStatus.COMPLETED
    response.completed_at = response.updated_at = utc_now_naive()
    outcome = evaluate(response, instrument)
    response.total_score, response.band = outcome.total, outcome.band
    session.flush()
    audit.record(
        session,
        "assistant",
        "complete",
        "survey_response",
        response.id,
        response.patient_id,
        {"instrument": response.instrument, "total": outcome.total, "band": outcome.band},
    )
    return outcome


def evaluate(response: SurveyResponse, instrument: Instrument) -> Outcome:
    values = {a.item: a.value for a in response.answers if not a.skipped and a.value is not None}
    total = band = label = None
    positive = False
    if instrument.scored:
        total = sum(values.get(item.id, 0) for item in instrument.items)
        found = instrument.band(total)
        band, label = (found.code, found.label) if found else (None, None)
        positive = instrument.positive_from is not None and total >= int(instrument.positive_from)
    safety = any(item.safety and (values.get(item.id) or 0) > 0 for item in instrument.items)
    low = any(
        (item.scale == RATING and item.id in values and values[item.id] <= 2)
        or (item.scale == NPS and item.id in values and values[item.id] <= 6)
        for item in instrument.items
    )
    status = SurveyStatus(response.status).value
    return Outcome(response.id, response.instrument, status, total, band, label, positive, safety, low)
