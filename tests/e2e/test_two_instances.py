"""Two of everything on this machine's PostgreSQL and Redis: two Rasa servers behind a round-robin proxy, two
action servers behind another, one SMS conversation whose messages alternate between the Rasa servers with 6 in
flight. The atomic Redis lock store (channels/lock_store.py) must serialise the turns: every message stored once,
turns never interleaved, no LockError. (With Rasa's own RedisLockStore, RASA_NOTES.md measured 15-28 of 30.)
"""

from __future__ import annotations

import concurrent.futures
import os
import shutil
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any, Dict, Iterator, List

import pytest
import requests
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from tests.conftest import PG_TEST_URL, PROJECT_ROOT, REDIS_TEST_URL, _free_port, migrate_and_seed, require_server
from tests.e2e.conftest import MODEL
from tests.e2e.patients import SmsPatient
from tests.e2e.proxy import round_robin

MESSAGES = 30
IN_FLIGHT = 6
CREDENTIALS = "channels.twilio_sms.TwilioSmsInput:\nchannels.wechat.WeChatInput:\n"
ENDPOINTS = """
action_endpoint:
  url: "{actions}/webhook"
tracker_store:
  type: channels.stores.ConfiguredSQLTrackerStore
lock_store:
  type: channels.lock_store.AtomicRedisLockStore
  url: "{redis}"
  key_prefix: "{prefix}"
"""


def _wait(url: str, process: subprocess.Popen, log: Path, seconds: float) -> None:
    deadline = time.time() + seconds
    while time.time() < deadline:
        if process.poll() is not None:
            pytest.fail(f"{url} exited: {log.read_text()[-3000:]}")
        try:
            urllib.request.urlopen(url, timeout=1)
            return
        except OSError:
            time.sleep(0.5)
    pytest.fail(f"{url} did not answer within {seconds} s")


@pytest.fixture(scope="module")
def pg_schema() -> Iterator[str]:
    require_server(
        "PostgreSQL", PG_TEST_URL, 5432, "pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start"
    )
    require_server("Redis", REDIS_TEST_URL, 6379, "redis-server --daemonize yes --port 6379")
    schema = f"two_{uuid.uuid4().hex[:10]}"
    admin = create_engine(PG_TEST_URL, pool_pre_ping=True)  # the fault tests restart PostgreSQL
    with admin.begin() as connection:
        connection.execute(text(f'CREATE SCHEMA "{schema}"'))
    url = make_url(PG_TEST_URL).update_query_dict({"options": f"-csearch_path={schema}"})
    rendered = url.render_as_string(hide_password=False)
    migrate_and_seed(rendered, days=2)
    yield rendered
    from bot.db import get_engine

    get_engine(rendered).dispose()
    with admin.begin() as connection:
        connection.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
    admin.dispose()


@pytest.fixture(scope="module")
def stack(pg_schema: str, sandbox_server: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Dict[str, Any]]:
    if not MODEL.exists():
        pytest.fail(f"no trained model at {MODEL}: run `make train`")
    workdir = tmp_path_factory.mktemp("two_instances")
    env = {**os.environ, "DATABASE_URL": pg_schema, "TRACKER_DATABASE_URL": pg_schema,
           "SANDBOX_URL": sandbox_server.url, "REDIS_URL": REDIS_TEST_URL}  # fmt: skip
    for name in ("WECHAT_API_BASE", "TWILIO_API_BASE"):
        env.pop(name, None)
    processes: List[subprocess.Popen] = []
    logs: List[Path] = []

    def launch(command: List[str], name: str, extra: Dict[str, str]) -> subprocess.Popen:
        log = workdir / f"{name}.log"
        logs.append(log)
        with open(log, "w") as out:
            process = subprocess.Popen(command, cwd=PROJECT_ROOT, env={**env, **extra}, stdout=out,
                                       stderr=subprocess.STDOUT)  # fmt: skip
        processes.append(process)
        return process

    try:
        action_ports = [_free_port(), _free_port()]
        for index, port in enumerate(action_ports):
            process = launch([sys.executable, "-m", "rasa_sdk", "--port", str(port), "--actions", "actions"],
                             f"actions{index}", {})  # fmt: skip
            _wait(f"http://127.0.0.1:{port}/health", process, logs[-1], 60)
        with round_robin([f"http://127.0.0.1:{p}" for p in action_ports]) as (actions_url, actions_served):
            rasa_ports = [_free_port(), _free_port()]
            with round_robin([f"http://127.0.0.1:{p}" for p in rasa_ports]) as (public_url, rasa_served):
                endpoints = workdir / "endpoints.yml"
                endpoints.write_text(ENDPOINTS.format(actions=actions_url, redis=REDIS_TEST_URL,
                                                      prefix=f"t{uuid.uuid4().hex[:8]}"))  # fmt: skip
                (workdir / "credentials.yml").write_text(CREDENTIALS)
                for index, port in enumerate(rasa_ports):
                    launch([str(Path(sys.executable).with_name("rasa")), "run", "--model", str(MODEL), "--port",
                            str(port), "--interface", "127.0.0.1", "--enable-api", "--credentials",
                            str(workdir / "credentials.yml"), "--endpoints", str(endpoints)],
                           f"rasa{index}", {"PUBLIC_BASE_URL": public_url})  # fmt: skip
                for index, port in enumerate(rasa_ports):
                    _wait(f"http://127.0.0.1:{port}/webhooks/twilio_sms/health", processes[2 + index],
                          logs[2 + index], 300)  # fmt: skip
                yield {"url": public_url, "rasa": [f"http://127.0.0.1:{p}" for p in rasa_ports],
                       "rasa_served": rasa_served, "actions_served": actions_served, "logs": logs}  # fmt: skip
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()


def test_one_conversation_alternating_between_two_rasa_servers_keeps_every_turn_in_order(
    stack: Dict[str, Any], sandbox: Any
) -> None:
    patient = SmsPatient(stack["url"], sandbox, f"+86137{uuid.uuid4().int % 10**8:08d}")
    # hospital questions: each turn runs a custom action, so the action servers take turns as well
    sent = [f"停车方便吗？第{k}次问" for k in range(MESSAGES)]

    def post(message: str) -> int:
        return patient.post(message).status_code

    with concurrent.futures.ThreadPoolExecutor(IN_FLIGHT) as pool:
        statuses = list(pool.map(post, sent))
    assert statuses == [200] * MESSAGES
    deadline = time.monotonic() + 180
    events: List[Dict[str, Any]] = []
    while time.monotonic() < deadline:
        tracker = requests.get(f"{stack['rasa'][0]}/conversations/{patient.phone}/tracker", timeout=30).json()
        events = tracker["events"]
        users = [e for e in events if e.get("event") == "user"]
        listening = events and events[-1].get("name") == "action_listen"
        if len(users) >= MESSAGES and listening:
            break
        time.sleep(1)
    written = [e.get("text") for e in events if e.get("event") == "user"]
    assert sorted(written) == sorted(sent), f"{len(written)} of {MESSAGES} stored"  # every message, once
    # turns are never interleaved: after each message the bot finished its turn before the next one was read
    since_listen = True
    for event in events:
        if event.get("event") == "user":
            assert since_listen, "a message was read while another turn was still running"
            since_listen = False
        elif event.get("event") == "action" and event.get("name") == "action_listen":
            since_listen = True
    assert all(count >= MESSAGES // 3 for count in stack["rasa_served"].values()), stack["rasa_served"]
    assert all(count > 0 for count in stack["actions_served"].values()), stack["actions_served"]
    for log in stack["logs"]:
        content = log.read_text()
        assert "LockError" not in content and "Traceback" not in content, f"{log}:\n{content[-3000:]}"


# ------------------------------------------------------------------------------------------------------------
# faults: the stores restart under traffic
# ------------------------------------------------------------------------------------------------------------
def restart_postgresql() -> None:
    version = sorted(os.listdir("/etc/postgresql"))[-1]
    subprocess.run(["pg_ctlcluster", "--skip-systemctl-redirect", version, "main", "restart"], check=True,
                   capture_output=True, timeout=60)  # fmt: skip


def restart_redis() -> None:
    subprocess.run(["redis-cli", "-p", "6379", "shutdown", "nosave"], capture_output=True, timeout=30)
    time.sleep(1.5)  # messages arriving now find no Redis at all
    subprocess.run(["redis-server", "--daemonize", "yes", "--bind", "127.0.0.1", "--port", "6379", "--save", "",
                    "--appendonly", "no"], check=True, capture_output=True, timeout=30)  # fmt: skip
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if subprocess.run(["redis-cli", "-p", "6379", "ping"], capture_output=True).stdout.strip() == b"PONG":
            return
        time.sleep(0.2)
    raise AssertionError("Redis did not come back")


def _fault_capable() -> None:
    if not Path("/etc/postgresql").exists() or not shutil.which("pg_ctlcluster") or not shutil.which("redis-server"):
        pytest.skip("restarting the stores needs this machine's PostgreSQL cluster and redis-server")


def _conversation_while(
    restart: Any, stack: Dict[str, Any], sandbox: Any, per_patient: int = 6, ordered: bool = True
) -> None:
    """Three SMS patients write while `restart` runs; every message must be stored once and answered, and in
    the order written when `ordered`."""
    patients = [SmsPatient(stack["url"], sandbox, f"+86136{uuid.uuid4().int % 10**8:08d}") for _ in range(3)]
    texts = [f"停车方便吗？第{k}次问" for k in range(per_patient)]

    def talk(patient: SmsPatient) -> List[int]:
        statuses = []
        for message in texts:
            statuses.append(patient.post(message).status_code)
            time.sleep(0.6)
        return statuses

    with concurrent.futures.ThreadPoolExecutor(len(patients) + 1) as pool:
        talking = [pool.submit(talk, patient) for patient in patients]
        time.sleep(1.0)
        pool.submit(restart).result(timeout=120)
        statuses = [future.result(timeout=300) for future in talking]
    assert statuses == [[200] * per_patient] * len(patients)  # the webhook never failed the provider
    for patient in patients:
        deadline = time.monotonic() + 120
        written: List[str] = []
        while time.monotonic() < deadline:
            try:
                events = requests.get(f"{stack['rasa'][0]}/conversations/{patient.phone}/tracker", timeout=30).json()
                written = [e.get("text") for e in events["events"] if e.get("event") == "user"]
                if len(written) >= per_patient and events["events"][-1].get("name") == "action_listen":
                    break
            except (requests.RequestException, ValueError):
                pass  # the server is reconnecting
            time.sleep(1)
        if ordered:
            assert written == texts, f"{patient.phone}: {written}"  # every turn, once, in order
        else:
            assert sorted(written) == sorted(texts), f"{patient.phone}: {written}"  # every turn, once
        assert len(patient.texts()) >= per_patient  # and each was answered


def test_postgresql_restart_during_traffic_loses_no_turn(stack: Dict[str, Any], sandbox: Any) -> None:
    _fault_capable()
    _conversation_while(restart_postgresql, stack, sandbox)


def test_redis_restart_during_traffic_loses_no_turn(stack: Dict[str, Any], sandbox: Any) -> None:
    """With no Redis there is no lock to queue behind: each server retries its message until Redis is back, so
    two messages written during the outage may be read in either order; none is lost or read twice."""
    _fault_capable()
    _conversation_while(restart_redis, stack, sandbox, ordered=False)


def test_postgresql_restart_during_a_dispatch_loses_no_reminder(
    stack: Dict[str, Any], pg_schema: str, sandbox: Any, tmp_path: Path
) -> None:
    _fault_capable()
    from datetime import datetime

    from bot.crm import patients as crm_patients
    from bot.crm.models import OutboxMessage
    from bot.db import session_scope
    from scheduler import plans

    phones = [f"+86135{uuid.uuid4().int % 10**8:08d}" for _ in range(20)]
    rows = []
    with session_scope(pg_schema) as session:
        for index, phone in enumerate(phones):
            patient, _ = crm_patients.match_or_register(session, f"故障{index}", phone)
            crm_patients.link_identity(session, patient, "sms", phone)
            for k in range(5):
                rows.append({"patient_id": patient.id, "step": "fault", "message": "appointment_reminder_24h",
                             "params": {"department": "心内科", "doctor": "李医生", "location": "门诊楼3层",
                                        "anchor": "2030-01-02T09:00:00+08:00"},
                             "conversation": None, "channel_policy": "sms", "urgent": True,
                             "due_at": datetime(2020, 1, 1), "next_attempt_at": datetime(2020, 1, 1),
                             "status": "pending", "attempts": 0, "idempotency_key": f"fault:{phone}:{k}"})  # fmt: skip
        plans.insert_ignoring_duplicates(session, rows)
    env = {**os.environ, "DATABASE_URL": pg_schema, "SANDBOX_URL": sandbox.url, "RASA_URL": "",
           "DISPATCH_SECONDS": "1", "SCHEDULER_PORT": str(_free_port())}  # fmt: skip
    log = tmp_path / "scheduler.log"
    with open(log, "w") as out:
        scheduler = subprocess.Popen([sys.executable, "-m", "scheduler", "serve"], cwd=PROJECT_ROOT, env=env,
                                     stdout=out, stderr=subprocess.STDOUT)  # fmt: skip
    try:
        sandbox.wait_until(lambda: len(sandbox.messages(provider="sms")) >= 5, timeout=60, what="first reminders")
        restart_postgresql()
        keys = [row["idempotency_key"] for row in rows]

        def all_sent() -> bool:
            with session_scope(pg_schema) as session:
                statuses = session.execute(
                    text("SELECT status, count(*) FROM outbox WHERE idempotency_key LIKE 'fault:%' GROUP BY status")
                ).all()
            return dict(statuses).get("sent", 0) == len(keys)

        sandbox.wait_until(all_sent, timeout=180, what="every reminder sent")
    finally:
        scheduler.terminate()
        scheduler.wait(timeout=30)
    delivered = [m for m in sandbox.messages(provider="sms") if m["to"] in set(phones)]
    assert len(keys) <= len(delivered) <= len(keys) + 8, log.read_text()[-3000:]  # duplicates ≤ sends in flight
    assert {m["to"] for m in delivered} == set(phones)
    with session_scope(pg_schema) as session:
        assert session.query(OutboxMessage).filter(OutboxMessage.status == "failed").count() == 0
