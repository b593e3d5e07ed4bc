"""The hospital's exports come in: CSV files and FHIR R4 bundles become patients, prescriptions and care plans
with their reminders, on SQLite and on the real PostgreSQL. A bad record is reported with its row and what to
fix, and leaves no trace; importing the same file again changes nothing."""

from __future__ import annotations

import asyncio
import copy
import json
import logging
import subprocess
import sys
from datetime import date, datetime
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from sqlalchemy import func, select
from zoneinfo import ZoneInfo

from bot.crm.models import AuditEntry, CarePlan, ChannelIdentity, OutboxMessage, Patient, Prescription
from bot.db import session_scope
from scheduler import importer, plans
from scheduler.importer import ImportReport, Rejected, UnusableInput

FIXTURES = Path(__file__).parent / "fixtures"
PROJECT_ROOT = Path(__file__).resolve().parents[2]
SHANGHAI = ZoneInfo("Asia/Shanghai")
TABLES = (Patient, ChannelIdentity, CarePlan, Prescription, OutboxMessage)
# what the fixtures hold that must never reach a log line or an audit detail
PERSONAL = ("王建国", "李秀英", "刘芳", "Zhang Wei", "13800138001", "13900138002", "13600136004", "1380013", "oWx_")


def run(url: str, name: str, **options: Any) -> ImportReport:
    return importer.import_file(FIXTURES / name, database_url=url, progress=False, **options)


def counts(url: str) -> Dict[str, int]:
    with session_scope(url) as session:
        return {model.__tablename__: session.query(model).count() for model in TABLES}


def patient_by_phone(session: Any, phone: str) -> Patient:
    return session.execute(select(Patient).where(Patient.phone == phone)).scalar_one()


def plans_of(session: Any, patient: Patient) -> Dict[str, CarePlan]:
    found = session.execute(select(CarePlan).where(CarePlan.patient_id == patient.id)).scalars()
    return {plan.source_ref: plan for plan in found}


def outbox_steps(session: Any, plan: CarePlan) -> List[tuple]:
    rows = session.execute(
        select(OutboxMessage.step, OutboxMessage.due_at).where(OutboxMessage.plan_id == plan.id)
        .order_by(OutboxMessage.due_at)
    ).all()  # fmt: skip
    return [(step, due) for step, due in rows]


@pytest.fixture
def registered(crm_url: str) -> str:
    """The CRM on each backend with the patients of patients.csv."""
    assert run(crm_url, "patients.csv").imported == 3
    return crm_url


@pytest.fixture
def bundle() -> Dict[str, Any]:
    return json.loads((FIXTURES / "bundle.json").read_text(encoding="utf-8"))


def entries(bundle: Dict[str, Any], *types: str) -> Dict[str, Any]:
    kept = copy.deepcopy(bundle)
    kept["entry"] = [entry for entry in kept["entry"] if entry["resource"]["resourceType"] in types]
    return kept


def import_bundle(url: str, document: Dict[str, Any], **options: Any) -> ImportReport:
    data = json.dumps(document, ensure_ascii=False).encode("utf-8")
    return importer.import_data(data, "fhir", database_url=url, progress=False, **options)


# ----------------------------------------------------------------------------------------------
# CSV, one kind at a time
# ----------------------------------------------------------------------------------------------
def test_patients_csv_registers_patients_with_their_wechat_birthday_and_language(crm_url: str) -> None:
    report = run(crm_url, "patients.csv")
    assert (report.total, report.imported, report.rejected) == (3, 3, [])
    with session_scope(crm_url) as session:
        wang = patient_by_phone(session, "+8613800138001")
        assert (wang.name, wang.card_no, wang.birth_date) == ("王建国", "JZ0000000001", date(1958, 3, 12))
        assert [(i.channel, i.external_id) for i in wang.identities] == [("wechat", "oWx_wangjianguo01")]
        li = patient_by_phone(session, "+8613900138002")  # '+86 139-0013-8002' in the file
        assert (li.name, li.locale, li.timezone) == ("李秀英", "zh_CN", "Asia/Shanghai")
        zhang = patient_by_phone(session, "+8613700137003")
        assert (zhang.name, zhang.locale, zhang.timezone, zhang.birth_date) == ("Zhang Wei", "en", "Asia/Urumqi", None)
        imports = session.execute(select(AuditEntry).where(AuditEntry.action == "import")).scalars().all()
        assert sorted(entry.patient_id for entry in imports) == sorted([wang.id, li.id, zhang.id])
        assert all(entry.actor == "import" and entry.entity == "patient" for entry in imports)
        assert not any(word in json.dumps(entry.detail, ensure_ascii=False) for entry in imports for word in PERSONAL)


def test_a_patient_row_updates_what_changed_and_refuses_an_openid_of_someone_else(registered: str) -> None:
    rows = (
        "name,phone,birth_date,wechat_openid,nickname\n"
        "王建国,13800138001,1958-03-13,,老王\n"
        "李秀英,13900138002,,oWx_wangjianguo01,\n"
    )
    report = importer.import_data(rows.encode(), "patients", database_url=registered, progress=False)
    assert (report.imported, report.skipped_duplicates) == (1, 0)
    assert [(item.number, item.field) for item in report.rejected] == [(3, "wechat_openid")]
    assert report.notes == ["ignored column: nickname (not part of patients)"]
    with session_scope(registered) as session:
        assert patient_by_phone(session, "+8613800138001").birth_date == date(1958, 3, 13)
        updated = session.execute(select(AuditEntry.detail).where(AuditEntry.action == "import")).scalars().all()
        assert {"format": "csv", "record": 2, "fields": ["birth_date"]} in updated


def test_appointments_csv_enrols_reminders_at_the_hospitals_local_time(registered: str) -> None:
    report = run(registered, "appointments.csv")
    assert (report.imported, report.rejected) == (2, [])
    with session_scope(registered) as session:
        wang = plans_of(session, patient_by_phone(session, "+8613800138001"))["appointment:A20261125001"]
        assert (wang.template, wang.source) == ("appointment_reminders", "appointment")
        assert wang.anchor_at == datetime(2026, 11, 25, 1, 30)  # 09:30 in Shanghai, stored as naive UTC
        assert wang.params == {"department": "心血管内科", "doctor": "陈明", "location": "门诊楼3层心内科诊区"}
        assert outbox_steps(session, wang) == [
            ("before_24h", datetime(2026, 11, 24, 1, 30)),
            ("before_2h", datetime(2026, 11, 24, 23, 30)),
        ]
        # by card number, with its own offset; the location comes from data/hospital when the export has none
        li = plans_of(session, patient_by_phone(session, "+8613900138002"))["appointment:A20261126002"]
        assert li.anchor_at == datetime(2026, 11, 26, 6, 0)
        assert li.params["department"] == "内分泌科" and li.params["location"]


def test_a_passed_appointment_and_a_cancellation_of_nothing_have_nothing_to_import(registered: str) -> None:
    rows = (
        "appointment_id,card_no,time,department,status\n"
        "A1,JZ0000000001,2026-11-23 08:30,心血管内科,\n"  # half an hour before the fixed clock
        "A2,JZ0000000001,,,cancelled\n"
        "A3,JZ0000000404,2026-11-24 08:30,心血管内科,\n"
    )
    report = importer.import_data(rows.encode(), "appointments", database_url=registered, progress=False)
    assert [(item.number, item.field) for item in report.ignored] == [(2, "time"), (3, "status")]
    assert "has passed" in report.ignored[0].reason
    assert report.message(report.rejected[0]) == (
        "row 4: no patient has card_no JZ0000000404: import the patient first (patients.csv), or check the number"
    )
    assert (report.total, report.imported, report.ok) == (3, 0, False)


def test_discharges_csv_enrols_the_after_surgery_plan_from_the_discharge(registered: str) -> None:
    report = run(registered, "discharges.csv")
    assert (report.imported, report.rejected) == (2, [])
    with session_scope(registered) as session:
        wang = plans_of(session, patient_by_phone(session, "+8613800138001"))["discharge:ZY2026-0456"]
        assert (wang.template, wang.anchor_at) == ("after_surgery", datetime(2026, 11, 22, 7, 0))
        # day 1 (10:00 local) is 2026-11-23 10:00 Shanghai: still ahead of the fixed clock (09:00)
        assert ("day1_checkin", datetime(2026, 11, 23, 2, 0)) in outbox_steps(session, wang)
        li = plans_of(session, patient_by_phone(session, "+8613900138002"))["discharge:ZY2026-0457"]
        assert li.anchor_at == datetime(2026, 11, 22, 16, 0)  # a bare day: midnight in the patient's zone


def test_prescriptions_csv_writes_the_prescription_and_enrols_its_condition_plan(registered: str) -> None:
    report = run(registered, "prescriptions.csv")
    assert (report.imported, report.rejected) == (2, [])
    with session_scope(registered) as session:
        wang = patient_by_phone(session, "+8613800138001")
        rx = session.execute(select(Prescription).where(Prescription.patient_id == wang.id)).scalar_one()
        assert (rx.drug, rx.dose, rx.times, rx.condition) == ("苯磺酸氨氯地平片", "5mg", ["08:00"], "hypertension")
        assert (rx.start_date, rx.end_date) == (datetime(2026, 11, 23), datetime(2027, 2, 22))
        plan = plans_of(session, wang)["prescription:RX-88001"]
        assert plan.template == "hypertension"
        assert plan.params == {"prescription_id": rx.id, "drug": "苯磺酸氨氯地平片", "dose": "5mg", "times": ["08:00"]}
        first = outbox_steps(session, plan)[0]
        assert first == ("medication", datetime(2026, 11, 24, 0, 0))  # tomorrow 08:00 local; today's has passed
        li = patient_by_phone(session, "+8613900138002")
        diabetes = plans_of(session, li)["prescription:RX-88002"]  # condition written as 糖尿病
        assert diabetes.template == "diabetes" and diabetes.params["times"] == ["08:00", "20:00"]


def test_bad_rows_are_reported_with_their_row_and_the_good_rows_imported(registered: str) -> None:
    report = run(registered, "prescriptions_with_errors.csv")
    assert (report.total, report.imported) == (6, 2)
    assert [(item.number, item.field) for item in report.rejected] == [
        (3, "phone"),  # invalid phone
        (4, "phone"),  # nobody with that name and phone
        (5, "start_date"),  # month 13
        (6, "condition"),  # hyperlipidemia
    ]
    messages = [entry["message"] for entry in report.as_dict()["rejected"]]
    assert messages[0].startswith("row 3: phone '1380013' is not a valid mobile number")
    assert "import them first" in messages[1]
    assert "'2026-13-01'" in messages[2]
    assert "write hypertension or diabetes" in messages[3]
    assert "row 6: condition 'hyperlipidemia'" in report.summary()
    with session_scope(registered) as session:
        refs = sorted(session.execute(select(Prescription.source_ref)).scalars())
        assert refs == ["prescription:RX-90001", "prescription:RX-90006"]
        assert session.execute(select(func.count()).select_from(CarePlan)).scalar() == 2


def test_importing_the_same_files_again_creates_nothing_new(crm_url: str) -> None:
    names = ["patients.csv", "appointments.csv", "discharges.csv", "prescriptions.csv", "bundle.json"]
    first = [run(crm_url, name) for name in names]
    assert all(report.ok and report.imported == report.total for report in first)
    before = counts(crm_url)
    again = [run(crm_url, name) for name in names]
    assert counts(crm_url) == before
    assert [(report.imported, report.skipped_duplicates) for report in again] == [(0, report.total) for report in first]


def test_a_row_that_fails_midway_leaves_no_prescription_plan_or_audit(
    registered: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The prescription row is written, then the plan's expansion fails: the savepoint takes both back."""

    def broken_expand(*args: Any, **kwargs: Any) -> int:
        raise plans.PlanError("hypertension.yml step medication: broken for this test")

    monkeypatch.setattr(plans, "expand", broken_expand)
    report = run(registered, "prescriptions.csv")
    assert report.imported == 0 and [item.number for item in report.rejected] == [2, 3]
    assert "broken for this test" in report.rejected[0].reason
    with session_scope(registered) as session:
        assert session.execute(select(func.count()).select_from(Prescription)).scalar() == 0
        assert session.execute(select(func.count()).select_from(CarePlan)).scalar() == 0
        audited = session.execute(select(AuditEntry.entity).where(AuditEntry.action.in_(["import", "enroll"])))
        assert set(audited.scalars()) == {"patient"}  # only the patients.csv import


def test_dry_run_reports_everything_and_writes_nothing(crm_url: str) -> None:
    before = counts(crm_url)
    report = run(crm_url, "patients.csv", dry_run=True)
    assert (report.imported, report.dry_run) == (3, True)
    assert "dry run: nothing was written" in report.summary()
    bundle_report = run(crm_url, "bundle.json", dry_run=True)
    assert bundle_report.imported == 4
    assert counts(crm_url) == before
    with session_scope(crm_url) as session:
        assert session.execute(select(func.count()).select_from(AuditEntry)).scalar() == 0


# ----------------------------------------------------------------------------------------------
# FHIR bundles
# ----------------------------------------------------------------------------------------------
def test_a_fhir_bundle_imports_patient_discharge_prescription_and_appointment(crm_url: str) -> None:
    report = run(crm_url, "bundle.json")
    assert (report.kind, report.unit, report.total, report.imported, report.rejected) == ("fhir", "entry", 4, 4, [])
    assert "Practitioner 1" in report.notes[0]
    with session_scope(crm_url) as session:
        liu = patient_by_phone(session, "+8613600136004")
        assert (liu.name, liu.card_no, liu.birth_date) == ("刘芳", "JZ0000000103", date(1955, 9, 18))
        assert [(i.channel, i.external_id) for i in liu.identities] == [("wechat", "oWx_liufang000103")]
        found = plans_of(session, liu)
        assert set(found) == {"discharge:ZY2026-0801", "prescription:RX-77001", "appointment:A20261127003"}
        assert found["discharge:ZY2026-0801"].anchor_at == datetime(2026, 11, 22, 2, 0)
        appointment = found["appointment:A20261127003"]
        assert appointment.anchor_at == datetime(2026, 11, 27, 2, 0)
        assert appointment.params == {"department": "心血管内科", "doctor": "陈明", "location": "门诊楼3层心内科诊区"}
        rx = session.execute(select(Prescription).where(Prescription.patient_id == liu.id)).scalar_one()
        assert (rx.drug, rx.dose, rx.times, rx.condition) == ("缬沙坦胶囊", "80mg", ["08:00", "20:00"], "hypertension")
        assert found["prescription:RX-77001"].params["prescription_id"] == rx.id


def test_a_patient_comes_in_only_with_a_record_that_imports(crm_url: str, bundle: Dict[str, Any]) -> None:
    """An Encounter asking for an unknown plan is rejected, and the Patient it brought is not left behind."""
    document = entries(bundle, "Patient", "Encounter")
    document["entry"][1]["resource"]["extension"] = [
        {"url": "https://his.example-hospital.cn/fhir/StructureDefinition/care-plan-template", "valueCode": "spa_week"}
    ]
    report = import_bundle(crm_url, document)
    assert report.imported == 0
    assert [(item.number, item.field) for item in report.rejected] == [(1, "-"), (2, "plan")]
    assert "unknown care-plan template 'spa_week'" in report.rejected[1].reason
    assert "entries that refer to this patient (2) were rejected" in report.rejected[0].reason
    with session_scope(crm_url) as session:
        assert session.execute(select(Patient).where(Patient.phone == "+8613600136004")).first() is None


def test_an_invalid_patient_entry_is_reported_with_its_entries(crm_url: str, bundle: Dict[str, Any]) -> None:
    document = entries(bundle, "Patient", "Appointment", "Practitioner", "Location", "Observation")
    document["entry"][0]["resource"]["telecom"][0]["value"] = "1360013"
    document["entry"].append({"resource": {"resourceType": "Observation", "status": "final", "code": {"text": "BP"}}})
    report = import_bundle(crm_url, document)
    assert [(item.number, item.field) for item in report.rejected] == [(1, "telecom"), (4, "subject")]
    assert "telecom '1360013' is not a valid mobile number" in report.rejected[0].reason
    assert "refers to patient entry 1, which is invalid" in report.rejected[1].reason
    assert [(item.number, item.reason) for item in report.ignored] == [(5, "Observation entries are not imported")]
    assert report.total == 3  # Practitioner and Location only serve references


def test_invalid_resources_and_cancellations_in_a_bundle(crm_url: str, bundle: Dict[str, Any]) -> None:
    assert import_bundle(crm_url, bundle).imported == 4
    cancelled = entries(bundle, "Patient", "Appointment", "MedicationRequest")
    cancelled["entry"][1]["resource"]["status"] = "stopped"
    cancelled["entry"][2]["resource"]["status"] = "cancelled"
    cancelled["entry"].append({"resource": {"resourceType": "Encounter", "status": "finished", "class": "IMP"}})
    report = import_bundle(crm_url, cancelled)
    assert report.imported == 2 and report.skipped_duplicates == 1  # two plans ended; the patient was known
    assert [(item.number, item.field) for item in report.rejected] == [(4, "class")]
    assert "not valid FHIR R4" in report.rejected[0].reason
    with session_scope(crm_url) as session:
        active = session.execute(select(CarePlan.template).where(CarePlan.active.is_(True))).scalars().all()
        assert active == ["after_surgery"]


def test_a_broken_bundle_is_refused_with_what_is_wrong() -> None:
    with pytest.raises(UnusableInput, match=r"not JSON \(.* at line \d+, column \d+\)"):
        importer.import_file(FIXTURES / "broken_bundle.json", database_url="sqlite://")
    with pytest.raises(UnusableInput, match=r"not a FHIR Bundle \(resourceType is 'Patient'\)"):
        importer.import_file(FIXTURES / "not_a_bundle.json", database_url="sqlite://")


# ----------------------------------------------------------------------------------------------
# unusable files and values
# ----------------------------------------------------------------------------------------------
def test_unusable_csv_files_are_refused_naming_what_to_fix() -> None:
    with pytest.raises(UnusableInput, match=r"missing columns: appointment_id, department"):
        importer.import_data("name,phone,time\n王建国,13800138001,2026-11-25 09:30\n".encode(), "appointments")
    with pytest.raises(UnusableInput, match=r"missing column: card_no \(or phone and name\)"):
        importer.import_data(b"discharged_at,name\n2026-11-22,x\n", "discharges")
    with pytest.raises(UnusableInput, match=r"not UTF-8 .*GBK"):
        importer.import_data("name,phone\n王建国,13800138001\n".encode("gbk"), "patients")
    with pytest.raises(UnusableInput, match="pass --kind"):
        importer.guess_kind("export.csv")
    assert importer.guess_kind("HIS_Appointments_2026-11.csv") == "appointments"
    assert importer.guess_kind("his.json") == "fhir"


def test_times_are_local_unless_they_carry_an_offset() -> None:
    assert importer.parse_moment("2026-11-25 09:30", "time", SHANGHAI) == datetime(2026, 11, 25, 9, 30, tzinfo=SHANGHAI)
    moment = importer.parse_moment("2026/11/25T01:30Z", "time", SHANGHAI)
    assert moment == datetime(2026, 11, 25, 9, 30, tzinfo=SHANGHAI)
    assert importer.parse_moment("2026-11-25", "discharged_at", SHANGHAI, day_is_enough=True) == date(2026, 11, 25)
    with pytest.raises(Rejected, match="has no time of day"):
        importer.parse_moment("2026-11-25", "time", SHANGHAI)
    with pytest.raises(Rejected, match="does not exist in America/New_York"):
        importer.parse_moment("2026-03-08 02:30", "time", ZoneInfo("America/New_York"))
    assert importer.parse_times("20:00；8:00, 08:00") == ["08:00", "20:00"]
    assert importer.parse_condition("E11.9") == "diabetes"
    with pytest.raises(Rejected, match="'25:00' is not a time"):
        importer.parse_times("08:00;25:00")


# ----------------------------------------------------------------------------------------------
# the command line and the logs
# ----------------------------------------------------------------------------------------------
def test_cli_exit_codes(crm_default: str, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert importer.main([str(FIXTURES / "patients.csv")]) == 0
    assert "patients: 3 rows, 3 imported" in capsys.readouterr().out

    assert importer.main([str(FIXTURES / "prescriptions_with_errors.csv"), "--json"]) == 2
    printed = json.loads(capsys.readouterr().out)
    assert [entry["number"] for entry in printed["rejected"]] == [3, 4, 5, 6]

    missing = tmp_path / "appointments.csv"
    missing.write_text("name,phone,time\n", encoding="utf-8")
    assert importer.main([str(missing)]) == 1
    assert "missing columns: appointment_id, department" in capsys.readouterr().err

    assert importer.main([str(FIXTURES / "not_a_bundle.json")]) == 1
    assert "not a FHIR Bundle" in capsys.readouterr().err

    before = counts(crm_default)
    assert importer.main([str(FIXTURES / "bundle.json"), "--dry-run", "--progress"]) == 0
    output = capsys.readouterr()
    assert "4 would be imported" in output.out and "import fhir" in output.err  # the progress bar
    assert counts(crm_default) == before


def test_python_dash_m_runs_the_importer(crm_default: str) -> None:
    env = {**__import__("os").environ, "DATABASE_URL": crm_default}
    done = subprocess.run(
        [sys.executable, "-m", "scheduler.importer", str(FIXTURES / "patients.csv"), "--kind", "patients", "--json"],
        cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["imported"] == 3


def test_logs_never_carry_names_or_phone_numbers(registered: str, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.DEBUG, logger="scheduler.importer"):
        run(registered, "prescriptions_with_errors.csv")
        run(registered, "bundle.json")
    assert "row 3 rejected (field phone)" in caplog.text
    assert not [word for word in PERSONAL if word in caplog.text]


# ----------------------------------------------------------------------------------------------
# HTTP: POST /import
# ----------------------------------------------------------------------------------------------
@pytest.fixture
def migrated(sqlite_url: str) -> Iterator[str]:
    from bot import db

    db.upgrade(sqlite_url)
    yield sqlite_url


async def _post(url: str, path: str, body: Any, token: Optional[str], **headers: str) -> tuple:
    app = web.Application(client_max_size=20 * 1024 * 1024)  # as scheduler/service.py mounts it
    app.router.add_routes(importer.routes(database_url=url))
    async with TestClient(TestServer(app)) as client:
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        response = await client.post(path, data=body, headers=headers)
        return response.status, await response.json()


def post(url: str, path: str, body: Any, token: Optional[str] = "s3cret", **headers: str) -> tuple:
    return asyncio.run(_post(url, path, body, token, **headers))


def test_http_import_needs_the_token_and_returns_the_report(migrated: str, monkeypatch: pytest.MonkeyPatch) -> None:
    patients_csv = (FIXTURES / "patients.csv").read_bytes()
    monkeypatch.delenv("SCHEDULER_API_TOKEN", raising=False)
    assert post(migrated, "/import?kind=patients", patients_csv) == (
        503, {"error": "import API disabled: set SCHEDULER_API_TOKEN"},
    )  # fmt: skip

    monkeypatch.setenv("SCHEDULER_API_TOKEN", "s3cret")
    assert post(migrated, "/import?kind=patients", patients_csv, token=None)[0] == 401
    assert post(migrated, "/import?kind=patients", patients_csv, token="guess")[0] == 401
    assert counts(migrated)["patients"] == 0

    status, report = post(migrated, "/import?kind=patients", patients_csv)
    assert (status, report["imported"], report["rejected"]) == (200, 3, [])
    with_errors = (FIXTURES / "prescriptions_with_errors.csv").read_bytes()
    status, report = post(migrated, "/import?kind=prescriptions", with_errors)
    assert status == 200 and [entry["number"] for entry in report["rejected"]] == [3, 4, 5, 6]
    fhir_json = {"Content-Type": "application/fhir+json"}  # no ?kind=: the content type says it
    status, report = post(migrated, "/import?dry_run=1", (FIXTURES / "bundle.json").read_bytes(), **fhir_json)
    assert (status, report["kind"], report["imported"], report["dry_run"]) == (200, "fhir", 4, True)

    status, error = post(migrated, "/import?kind=fhir", (FIXTURES / "not_a_bundle.json").read_bytes())
    assert status == 400 and error["error"].startswith("not a FHIR Bundle")
    status, error = post(migrated, "/import", b"name,phone\n")
    assert status == 400 and "?kind=" in error["error"]


def test_http_import_refuses_bodies_over_20_mb(migrated: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SCHEDULER_API_TOKEN", "s3cret")
    oversized = b"name,phone\n" + b"x" * (20 * 1024 * 1024)
    status, error = post(migrated, "/import?kind=patients", oversized)
    assert status == 413 and "larger than 20 MB" in error["error"]

    async def streamed() -> Any:  # chunked: no Content-Length to look at, the limit applies while reading
        yield b"name,phone\n"
        for _ in range(21):
            yield b"x" * (1024 * 1024)

    status, error = post(migrated, "/import?kind=patients", streamed())
    assert status == 413
