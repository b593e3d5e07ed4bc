"""Privacy and retention (bot/privacy.py) on SQLite and on the real PostgreSQL: export one patient, erase one
patient (all or nothing in the CRM, conversations afterwards, finished by a re-run), purge old conversations."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Callable, Dict, List

import pytest
from sqlalchemy import event, func, select

from bot import clock, privacy
from bot.crm import booking, patients, surveys
from bot.crm.escalations import open_escalation
from bot.crm.models import (
    Appointment,
    AuditEntry,
    CarePlan,
    ChannelIdentity,
    Consent,
    Delivery,
    DeliveryStatus,
    Escalation,
    MeasurementReading,
    MedicationDose,
    OutboxMessage,
    Patient,
    PatientTag,
    Prescription,
    SurveyAnswer,
    SurveyResponse,
    TriageRecord,
)
from bot.db import make_engine, session_scope
from bot.errors import UnknownPatient
from bot.surveys.instruments import get as instrument
from console.conversations import EVENTS

NAME, PHONE, OPENID = "王小明", "+8613800138000", "oWX_patient_a_openid_0001"
OTHER_NAME, OTHER_PHONE, OTHER_OPENID = "李四", "+8613933334444", "oWX_patient_b_openid_0002"
A_SENDERS = (OPENID, PHONE, "voice:" + PHONE)


@dataclass
class World:
    crm_url: str
    tracker_url: str
    patient_id: int
    other_id: int
    slot_id: int
    other_slot_id: int


@pytest.fixture
def stores(crm_url: str, process_settings: Callable[..., None], tmp_path: Path) -> Dict[str, str]:
    """The CRM and a tracker store with Rasa's events table: a second SQLite file, or the same PostgreSQL schema."""
    tracker_url = f"sqlite:///{tmp_path / 'tracker.sqlite'}" if crm_url.startswith("sqlite") else crm_url
    engine = make_engine(tracker_url)
    EVENTS.metadata.create_all(engine)
    engine.dispose()
    process_settings(DATABASE_URL=crm_url, TRACKER_DATABASE_URL=tracker_url)
    return {"crm": crm_url, "tracker": tracker_url}


def _add_events(tracker_url: str, sender_id: str, texts: List[str], age: timedelta = timedelta(hours=1)) -> None:
    at = (clock.now() - age).timestamp()
    rows = []
    for offset, text in enumerate(texts):
        data = {"event": "user", "timestamp": at + offset, "text": text, "parse_data": {"intent": {"name": "inform"}}}
        rows.append(
            {
                "sender_id": sender_id,
                "type_name": "user",
                "timestamp": at + offset,
                "intent_name": "inform",
                "data": json.dumps(data, ensure_ascii=False),
            }
        )
    engine = make_engine(tracker_url)
    with engine.begin() as connection:
        connection.execute(EVENTS.insert(), rows)
    engine.dispose()


def _events(tracker_url: str) -> Dict[str, int]:
    engine = make_engine(tracker_url)
    with engine.connect() as connection:
        rows = connection.execute(select(EVENTS.c.sender_id, func.count()).group_by(EVENTS.c.sender_id)).all()
    engine.dispose()
    return {sender: count for sender, count in rows}


def _free_slots(url: str, department: str, limit: int = 40) -> List[booking.SlotOffer]:
    with session_scope(url) as session:
        return booking.free_slots(session, department_code=department, limit=limit)


@pytest.fixture
def world(stores: Dict[str, str]) -> World:
    """Patient A with everything the CRM can hold about someone, patient B with some of it, and conversations."""
    url = stores["crm"]
    slot, other_slot = _free_slots(url, "cardiology")[0], _free_slots(url, "dermatology")[0]
    now = clock.utc_now_naive()
    with session_scope(url) as session:
        a = patients.match_or_register(session, NAME, PHONE)[0]
        b = patients.match_or_register(session, OTHER_NAME, OTHER_PHONE)[0]
        patients.link_identity(session, a, "wechat", OPENID)
        patients.link_identity(session, a, "sms", PHONE)
        patients.link_identity(session, b, "wechat", OTHER_OPENID)
        session.add(Consent(patient_id=a.id, channel="wechat", external_id=OPENID, opted_in=False))
        session.add(Consent(channel="voice", external_id=PHONE, opted_in=False))  # opted out before registering
        session.add(Consent(patient_id=b.id, channel="wechat", external_id=OTHER_OPENID, opted_in=True))
        booking.book_slot(session, patient_id=a.id, slot_id=slot.slot_id, channel="wechat")
        booking.book_slot(session, patient_id=b.id, slot_id=other_slot.slot_id, channel="wechat")
        response = surveys.start(session, sender_id=OPENID, instrument="phq9", channel="wechat", patient_id=a.id)
        surveys.record(session, response, instrument("phq9").items[0], value=2, text=f"{NAME}说睡不好")
        early = surveys.start(session, sender_id=PHONE, instrument="phq9", channel="sms")  # before registering
        surveys.record(session, early, instrument("phq9").items[0], value=1)
        open_escalation(
            session, sender_id=OPENID, channel="wechat", reason="red_flag", summary=f"{NAME} 胸痛", patient_id=a.id
        )
        open_escalation(
            session,
            sender_id=OTHER_OPENID,
            channel="wechat",
            reason="human",
            summary=f"{OTHER_NAME} 要人工",
            patient_id=b.id,
        )
        session.add(TriageRecord(patient_id=a.id, sender_id=OPENID, level=2, categories=["chest_pain"], departments=[]))
        session.add(TriageRecord(patient_id=b.id, sender_id=OTHER_OPENID, level=4, categories=[], departments=[]))
        for pid, address in ((a.id, PHONE), (None, PHONE), (b.id, OTHER_PHONE)):
            session.add(
                Delivery(
                    patient_id=pid,
                    channel="sms",
                    address=address,
                    kind="sms",
                    body=f"{NAME}您好" if address == PHONE else f"{OTHER_NAME}您好",
                    status=DeliveryStatus.SENT,
                )
            )
        plan = CarePlan(patient_id=a.id, template="hypertension", anchor_at=now)
        prescription = Prescription(patient_id=a.id, drug="氨氯地平", dose="5mg", times=["08:00"], start_date=now)
        session.add_all([plan, prescription])
        session.flush()
        session.add(
            OutboxMessage(
                patient_id=a.id,
                plan_id=plan.id,
                message="bp_reminder",
                due_at=now,
                next_attempt_at=now,
                idempotency_key=f"test:{a.id}:bp",
            )
        )
        session.add(MedicationDose(prescription_id=prescription.id, patient_id=a.id, scheduled_at=now))
        for pid in (a.id, b.id):
            session.add(
                MeasurementReading(
                    patient_id=pid,
                    kind="blood_pressure",
                    value={"systolic": 150, "diastolic": 95},
                    unit="mmHg",
                    taken_at=now,
                )
            )
        session.add(PatientTag(patient_id=a.id, tag="高血压随访", created_by="nurse1"))
        session.flush()
        ids = (a.id, b.id)
    for sender in A_SENDERS:
        _add_events(stores["tracker"], sender, [f"我叫{NAME}", "胸口疼"])
    _add_events(stores["tracker"], OTHER_OPENID, [f"我叫{OTHER_NAME}"])
    return World(url, stores["tracker"], ids[0], ids[1], slot.slot_id, other_slot.slot_id)


def _rows_of(url: str, patient_id: int) -> Dict[str, int]:
    """How many rows of each kind the CRM holds for the patient."""
    queries = {
        "patients": select(func.count()).select_from(Patient).where(Patient.id == patient_id),
        "identities": select(func.count()).select_from(ChannelIdentity).where(ChannelIdentity.patient_id == patient_id),
        "consents": select(func.count()).select_from(Consent).where(Consent.patient_id == patient_id),
        "appointments": select(func.count()).select_from(Appointment).where(Appointment.patient_id == patient_id),
        "surveys": select(func.count()).select_from(SurveyResponse).where(SurveyResponse.patient_id == patient_id),
        "escalations": select(func.count()).select_from(Escalation).where(Escalation.patient_id == patient_id),
        "triage": select(func.count()).select_from(TriageRecord).where(TriageRecord.patient_id == patient_id),
        "deliveries": select(func.count()).select_from(Delivery).where(Delivery.patient_id == patient_id),
        "care_plans": select(func.count()).select_from(CarePlan).where(CarePlan.patient_id == patient_id),
        "outbox": select(func.count()).select_from(OutboxMessage).where(OutboxMessage.patient_id == patient_id),
        "prescriptions": select(func.count()).select_from(Prescription).where(Prescription.patient_id == patient_id),
        "doses": select(func.count()).select_from(MedicationDose).where(MedicationDose.patient_id == patient_id),
        "readings": select(func.count())
        .select_from(MeasurementReading)
        .where(MeasurementReading.patient_id == patient_id),
        "tags": select(func.count()).select_from(PatientTag).where(PatientTag.patient_id == patient_id),
    }
    with session_scope(url) as session:
        return {name: session.execute(query).scalar_one() for name, query in queries.items()}


def _pending(tracker_url: str) -> int:
    engine = make_engine(tracker_url)
    try:
        privacy.PENDING.create(engine, checkfirst=True)
        with engine.connect() as connection:
            return connection.execute(select(func.count()).select_from(privacy.PENDING)).scalar_one()
    finally:
        engine.dispose()


def _audit_details(url: str) -> str:
    with session_scope(url) as session:
        rows = session.execute(select(AuditEntry.action, AuditEntry.entity_id, AuditEntry.detail)).all()
    return json.dumps([list(row) for row in rows], ensure_ascii=False)


# ----------------------------------------------------------------------------------------------
# export
# ----------------------------------------------------------------------------------------------
def test_export_holds_everything_about_the_patient_as_json(world: World) -> None:
    data = privacy.export_patient(world.patient_id, actor="dpo")
    text = json.dumps(data, ensure_ascii=False)  # serialisable as it is
    assert data["patient"]["name"] == NAME and data["patient"]["phone"] == PHONE
    assert {(i["channel"], i["external_id"]) for i in data["channel_identities"]} == {
        ("wechat", OPENID),
        ("sms", PHONE),
    }
    assert {(c["channel"], c["opted_in"]) for c in data["consents"]} == {("wechat", False), ("voice", False)}
    [appointment] = data["appointments"]
    assert appointment["slot_id"] == world.slot_id and appointment["status"] == "booked"
    assert appointment["department"]["code"] == "cardiology" and appointment["doctor"]["name"]
    assert appointment["slot"]["start_at"].endswith("+00:00")
    assert {s["sender_id"] for s in data["surveys"]} == {OPENID, PHONE}  # also the one before registering
    assert any(answer["text"] == f"{NAME}说睡不好" for s in data["surveys"] for answer in s["answers"])
    assert [e["summary"] for e in data["escalations"]] == [f"{NAME} 胸痛"]
    assert [t["level"] for t in data["triage_records"]] == [2]
    assert len(data["deliveries"]) == 2 and all(d["address"] == PHONE for d in data["deliveries"])
    assert len(data["care_plans"]) == len(data["outbox"]) == len(data["prescriptions"]) == 1
    assert len(data["medication_doses"]) == len(data["readings"]) == len(data["tags"]) == 1
    assert {entry["action"] for entry in data["audit_log"]} >= {"create", "link"}
    conversations = {c["sender_id"]: c["events"] for c in data["conversations"]}
    assert set(conversations) == set(A_SENDERS)
    assert conversations[OPENID][0]["text"] == f"我叫{NAME}" and conversations[OPENID][0]["event"] == "user"
    assert OTHER_NAME not in text and OTHER_OPENID not in text and OTHER_PHONE not in text
    with session_scope(world.crm_url) as session:
        entry = session.execute(select(AuditEntry).where(AuditEntry.action == "export")).scalar_one()
        assert (entry.actor, entry.entity, entry.patient_id) == ("dpo", "patient", world.patient_id)
        assert entry.detail["sections"]["conversations"] == 3
    assert NAME not in _audit_details(world.crm_url) and PHONE not in _audit_details(world.crm_url)


def test_export_of_an_unknown_patient_is_refused(stores: Dict[str, str]) -> None:
    with pytest.raises(UnknownPatient):
        privacy.export_patient(987654, actor="dpo")


# ----------------------------------------------------------------------------------------------
# erase
# ----------------------------------------------------------------------------------------------
def test_erase_removes_the_patient_and_their_conversations_and_nothing_else(world: World) -> None:
    other_before = _rows_of(world.crm_url, world.other_id)
    report = privacy.erase_patient(world.patient_id, actor="dpo")

    assert report["already_erased"] is False
    assert report["conversations"] == 3 and report["tracker_events"] == 6
    crm = report["crm"]
    assert crm["patients"] == 1 and crm["channel_identities"] == 2 and crm["appointments"] == 1
    assert crm["survey_responses"] == 2 and crm["survey_answers"] == 2 and crm["deliveries"] == 2
    assert crm["consents"] == 2 and crm["escalations_scrubbed"] == 1 and crm["triage_records_scrubbed"] == 1
    assert crm["outbox"] == crm["care_plans"] == crm["prescriptions"] == crm["medication_doses"] == 1
    assert crm["readings"] == crm["patient_tags"] == 1

    assert set(_rows_of(world.crm_url, world.patient_id).values()) == {0}
    assert _rows_of(world.crm_url, world.other_id) == other_before
    assert _events(world.tracker_url) == {OTHER_OPENID: 1}
    assert _pending(world.tracker_url) == 0
    with session_scope(world.crm_url) as session:
        assert session.execute(select(func.count()).select_from(Consent)).scalar_one() == 1  # B's
        assert session.execute(select(func.count()).select_from(SurveyAnswer)).scalar_one() == 0
        deliveries = session.execute(select(Delivery.address)).scalars().all()
        assert deliveries == [OTHER_PHONE]
        # kept as anonymous statistics: no text, no sender, no patient, out of the nurses' queue
        scrubbed = session.execute(select(Escalation).where(Escalation.sender_id == privacy.ERASED)).scalar_one()
        assert (scrubbed.patient_id, scrubbed.summary, scrubbed.status.value) == (None, "", "resolved")
        assert scrubbed.reason == "red_flag"
        assert session.execute(select(Escalation.summary).where(Escalation.patient_id == world.other_id)).scalar_one()
        triage = session.execute(select(TriageRecord).where(TriageRecord.sender_id == privacy.ERASED)).scalar_one()
        assert (triage.patient_id, triage.level) == (None, 2)
        entry = session.execute(select(AuditEntry).where(AuditEntry.action == "erase")).scalar_one()
        assert (entry.actor, entry.entity, entry.entity_id) == ("dpo", "patient", str(world.patient_id))
        assert entry.detail["counts"] == crm
        # the audit log is kept: what was recorded about the patient before is still there
        assert (
            session.execute(
                select(func.count()).select_from(AuditEntry).where(AuditEntry.patient_id == world.patient_id)
            ).scalar_one()
            > 3
        )
    audit_text = _audit_details(world.crm_url)
    for personal in (NAME, PHONE, PHONE[3:], OPENID):
        assert personal not in audit_text

    # the slot is free again: someone else books it
    with session_scope(world.crm_url) as session:
        newcomer = patients.match_or_register(session, "赵六", "+8613755556666")[0]
        booking.book_slot(session, patient_id=newcomer.id, slot_id=world.slot_id)
    with session_scope(world.crm_url) as session:
        assert booking.count_booked(session, world.slot_id) == 1

    with pytest.raises(UnknownPatient):
        privacy.export_patient(world.patient_id, actor="dpo")
    again = privacy.erase_patient(world.patient_id, actor="dpo")
    assert again["already_erased"] is True and again["tracker_events"] == 0 and again["crm"] == {}


def test_erase_is_all_or_nothing_in_the_crm(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    before = _rows_of(world.crm_url, world.patient_id)
    events_before = _events(world.tracker_url)

    def fail(session, footprint, counts) -> None:  # type: ignore[no-untyped-def]
        raise RuntimeError("disk full")

    # midway: surveys, care data, deliveries, appointments and escalations are already deleted or scrubbed
    steps = list(privacy.ERASE_STEPS)
    monkeypatch.setattr(privacy, "ERASE_STEPS", [*steps[:5], fail, *steps[5:]])
    with pytest.raises(RuntimeError, match="disk full"):
        privacy.erase_patient(world.patient_id, actor="dpo")

    assert _rows_of(world.crm_url, world.patient_id) == before
    assert _events(world.tracker_url) == events_before
    assert _pending(world.tracker_url) == 0
    with session_scope(world.crm_url) as session:
        assert (
            session.execute(
                select(func.count()).select_from(AuditEntry).where(AuditEntry.action == "erase")
            ).scalar_one()
            == 0
        )
        assert session.execute(select(Escalation.summary).where(Escalation.patient_id == world.patient_id)).scalar_one()
        assert booking.count_booked(session, world.slot_id) == 1

    monkeypatch.setattr(privacy, "ERASE_STEPS", steps)
    assert privacy.erase_patient(world.patient_id, actor="dpo")["crm"]["patients"] == 1


def test_an_interrupted_conversation_deletion_is_finished_by_running_erase_again(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    def tracker_down(*args, **kwargs) -> int:  # type: ignore[no-untyped-def]
        raise ConnectionError("tracker store unreachable")

    monkeypatch.setattr(privacy, "_delete_events", tracker_down)
    with pytest.raises(ConnectionError):
        privacy.erase_patient(world.patient_id, actor="dpo")
    assert _rows_of(world.crm_url, world.patient_id)["patients"] == 0  # the CRM part is committed
    assert _events(world.tracker_url)[OPENID] == 2
    assert _pending(world.tracker_url) == 1

    monkeypatch.undo()
    report = privacy.erase_patient(world.patient_id, actor="dpo")
    assert report["already_erased"] is True
    assert (report["conversations"], report["tracker_events"]) == (3, 6)
    assert _events(world.tracker_url) == {OTHER_OPENID: 1}
    assert _pending(world.tracker_url) == 0
    with session_scope(world.crm_url) as session:
        actions = session.execute(
            select(AuditEntry.action).where(AuditEntry.action.like("erase%")).order_by(AuditEntry.id)
        ).scalars()
        assert list(actions) == ["erase", "erase_conversations"]
    assert PHONE not in _audit_details(world.crm_url)


def test_erase_keeps_a_family_members_number_and_opt_out(stores: Dict[str, str]) -> None:
    """Two patients registered with one mobile: erasing one keeps the SMS conversation and the opt-out of that
    number (the other is still reached there), and erases the WeChat identity that was only theirs."""
    url = stores["crm"]
    with session_scope(url) as session:
        mother = patients.match_or_register(session, "王芳", PHONE)[0]
        son = patients.match_or_register(session, NAME, PHONE)[0]
        patients.link_identity(session, son, "wechat", OPENID)
        session.add(Consent(patient_id=son.id, channel="sms", external_id=PHONE, opted_in=False))
        session.add(Consent(patient_id=son.id, channel="wechat", external_id=OPENID, opted_in=True))
        ids = (mother.id, son.id)
    _add_events(stores["tracker"], OPENID, ["我想挂号"])
    _add_events(stores["tracker"], PHONE, ["不要再发短信了"])

    report = privacy.erase_patient(ids[1], actor="dpo")

    assert (report["crm"]["consents_detached"], report["crm"]["consents"]) == (1, 1)
    assert _events(stores["tracker"]) == {PHONE: 1}
    with session_scope(url) as session:
        consent = session.execute(select(Consent)).scalar_one()
        assert (consent.channel, consent.opted_in, consent.patient_id) == ("sms", False, None)
        assert session.get(Patient, ids[0]) is not None


# ----------------------------------------------------------------------------------------------
# retention
# ----------------------------------------------------------------------------------------------
def test_purge_deletes_only_events_older_than_the_retention_in_batches(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    _add_events(world.tracker_url, OPENID, ["去年的消息"] * 5, age=timedelta(days=400))
    _add_events(world.tracker_url, OTHER_OPENID, ["去年的消息"] * 2, age=timedelta(days=366))
    _add_events(world.tracker_url, OTHER_OPENID, ["上个月"], age=timedelta(days=30))
    before = _events(world.tracker_url)

    deletes = []
    make = privacy.make_engine

    def spying_engine(url: str, **options):  # type: ignore[no-untyped-def]
        engine = make(url, **options)

        @event.listens_for(engine, "before_cursor_execute")
        def _seen(conn, cursor, statement, parameters, context, executemany) -> None:  # type: ignore[no-untyped-def]
            if statement.lstrip().upper().startswith("DELETE"):
                deletes.append(statement)

        return engine

    monkeypatch.setattr(privacy, "make_engine", spying_engine)
    assert privacy.purge_conversations(365, actor="retention-job", batch_size=3) == 7
    assert len(deletes) == 3  # 3 + 3 + 1 rows, one transaction each

    after = _events(world.tracker_url)
    assert after[OPENID] == before[OPENID] - 5 and after[OTHER_OPENID] == before[OTHER_OPENID] - 2
    assert privacy.purge_conversations(365, actor="retention-job") == 0
    with session_scope(world.crm_url) as session:
        entries = session.execute(select(AuditEntry).where(AuditEntry.action == "purge").order_by(AuditEntry.id))
        details = [entry.detail for entry in entries.scalars()]
    assert [d["events"] for d in details] == [7, 0] and details[0]["older_than_days"] == 365
    # `now` moves the cutoff: a year from now, everything of today is old
    assert privacy.purge_conversations(365, actor="retention-job", now=clock.now() + timedelta(days=366)) == sum(
        after.values()
    )


def test_cli(world: World, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    assert privacy.main(["export", "--patient", str(world.patient_id)]) == 0
    exported = json.loads(capsys.readouterr().out)
    assert exported["patient"]["id"] == world.patient_id

    assert privacy.main(["erase", "--patient", str(world.patient_id), "--actor", "dpo"]) == 2
    assert "--yes" in capsys.readouterr().err
    assert _rows_of(world.crm_url, world.patient_id)["patients"] == 1
    assert privacy.main(["erase", "--patient", "987654", "--actor", "dpo", "--yes"]) == 1
    assert "no patient" in capsys.readouterr().err
    assert privacy.main(["erase", "--patient", str(world.patient_id), "--actor", "dpo", "--yes"]) == 0
    assert json.loads(capsys.readouterr().out)["crm"]["patients"] == 1

    _add_events(world.tracker_url, OTHER_OPENID, ["旧"], age=timedelta(days=100))
    monkeypatch.delenv(privacy.RETENTION_ENV, raising=False)
    assert privacy.main(["purge-conversations", "--actor", "cron"]) == 1
    assert privacy.RETENTION_ENV in capsys.readouterr().err
    monkeypatch.setenv(privacy.RETENTION_ENV, "90")
    assert privacy.main(["purge-conversations", "--actor", "cron"]) == 0
    assert json.loads(capsys.readouterr().out) == {"older_than_days": 90, "events_deleted": 1}
    assert privacy.main(["purge-conversations", "--older-than-days", "0", "--actor", "cron"]) == 1


def test_every_foreign_key_to_patients_has_an_erasure_decision() -> None:
    """A new table pointing at patients.id needs a line in privacy.REFERENCES (deleted, scrubbed or detached)
    and, when it is not simply deleted, a step in privacy.ERASE_STEPS."""
    found = {(table, column) for table, column, _ondelete in privacy.patient_references()}
    assert found == set(privacy.REFERENCES)
