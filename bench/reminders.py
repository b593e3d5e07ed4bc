"""Reminders at scale: our outbox and dispatcher next to APScheduler with one job per reminder, in one run.

The scheduler keeps reminders as outbox rows and runs a few periodic jobs (scheduler/service.py), never one
APScheduler job per reminder. This measures whether that design holds its targets, with the rejected design
beside it on the same machine and the same kind of database:

1. Dispatch throughput: 100,000 due reminders for 1,000 patients, each with a WeChat openid, sent by the real
   dispatcher (rate limits off; notices rendered from the catalogs; every attempt a Delivery row) through the
   real wechatpy client to the sandbox (`python -m sandbox`, its own process). `--processes` dispatcher
   processes of `--workers` threads share the outbox. The sandbox keeps WeChat's quota of 5 customer-service
   messages per patient message, so most reminders go out as template messages after a 45047 refusal, as
   they would at WeChat for patients who have not written lately. A round that outlasts `--time-limit` is
   stopped and measured on what it sent by then. Below target, a few more reminders go through one
   dispatcher under cProfile (CPU time, every thread) to show what each step of a reminder costs.
   Target: >= 1,000 messages/s on 2 cores.
2. Pending reminders: 1,000,000 rows due next month and the scheduler process (`python -m scheduler`)
   running its dispatch job every second over them (nothing due): its memory, the cost of an idle dispatch
   pass, its restart time (process start -> /health answers 200); then a few thousand due reminders
   dispatched among the pending rows. Targets: < 300 MB, restart < 5 s.
3. APScheduler, one job per reminder: a BackgroundScheduler with SQLAlchemyJobStore (its own schema or file)
   and 100,000 date jobs added while it runs (stopped at `--time-limit`, then extrapolated): time to schedule,
   memory, restart (process start -> start() returned, then every job listed, as our /health lists its jobs),
   and how fast it fires 10,000 due jobs (no-op jobs: an upper bound for that design).

PostgreSQL (PG_TEST_URL, default postgresql://postgres@127.0.0.1:5432/test) is used in fresh schemas when it
answers, else temporary SQLite files; the output says which. The clock is fixed (HOSPITAL_FAKE_NOW, a Monday
09:00 in Shanghai), so quiet hours never defer a reminder; Redis shares the WeChat access token when reachable.
The machine's other processes are measured too (CPU "other processes"): run it on an otherwise idle machine.

    .venv/bin/python -m bench.reminders                     # ~12 min on 2 cores
    .venv/bin/python -m bench.reminders --quick             # 10,000 due, 100,000 pending, 10,000 jobs: ~2-3 min
    .venv/bin/python -m bench.reminders --processes 1 --workers 16 --database sqlite
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import resource
import shutil
import socket
import statistics
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence

from zoneinfo import ZoneInfo

if __package__ in (None, ""):  # run as a file: make `bench` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._common import (
    FAKE_NOW,
    PROJECT_ROOT,
    PYTHON,
    Process,
    base_env,
    format_table,
    http_status,
    machine_info,
    raise_on_sigterm,
    verdict,
    wait_until,
    write_json,
)

NAME = "reminders"
TARGET_MESSAGES_PER_S = 1000.0
TARGET_PENDING_RSS_MB = 300.0
TARGET_RESTART_S = 5.0
PG_URL = os.environ.get("PG_TEST_URL", "postgresql://postgres@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("REDIS_URL") or "redis://127.0.0.1:6379/14"
MESSAGE = "appointment_reminder_24h"  # {name} {datetime} {department} {doctor} {location}
DEPARTMENTS = ("心内科", "内分泌科", "呼吸内科", "消化内科", "神经内科")
APS_TABLE = "apscheduler_jobs"
# The code under measurement: the tree may be dirty, so the record names each file's content (sha1).
MEASURED_SOURCES = ("scheduler/dispatcher.py", "scheduler/service.py", "bot/outbound/service.py",
                    "bot/outbound/providers.py", "bot/notices.py", "bot/db.py")  # fmt: skip
CLK_TCK = os.sysconf("SC_CLK_TCK")
UTC = ZoneInfo("UTC")


# ----------------------------------------------------------------------------------------------
# what a process costs: memory and CPU from /proc (psutil is not a dependency)
# ----------------------------------------------------------------------------------------------
def memory_mb(pid: int) -> Dict[str, Optional[float]]:
    """Resident memory now and at its peak (VmRSS, VmHWM) in MB; None when the process is gone."""
    found: Dict[str, Optional[float]] = {"rss_mb": None, "peak_rss_mb": None}
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return found
    for key, name in (("VmRSS", "rss_mb"), ("VmHWM", "peak_rss_mb")):
        match = re.search(rf"^{key}:\s+(\d+) kB", text, re.MULTILINE)
        if match:
            found[name] = int(match.group(1)) / 1024
    return found


def _stat_fields(pid: str) -> Optional[List[str]]:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return raw[raw.rindex(")") + 2 :].split()  # fields from `state` on; comm may contain spaces


def process_cpu_s(pid: int) -> Optional[float]:
    fields = _stat_fields(str(pid))
    return (int(fields[11]) + int(fields[12])) / CLK_TCK if fields else None


def postgres_cpu_s() -> Optional[float]:
    """CPU of every local PostgreSQL process, including backends that have exited (the postmaster's children
    time), so the difference between two readings is what the server spent in between."""
    total, seen = 0.0, False
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            comm = (entry / "comm").read_text().strip()
        except OSError:
            continue
        if comm != "postgres":
            continue
        fields = _stat_fields(entry.name)
        if fields:
            seen = True
            total += sum(int(value) for value in fields[11:15]) / CLK_TCK
    return total if seen else None


def machine_busy_s() -> float:
    """CPU seconds the whole machine has spent busy (all cores), from /proc/stat."""
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = values[3] + (values[4] if len(values) > 4 else 0)
    return (sum(values[:8]) - idle) / CLK_TCK


def own_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def own_peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def source_digests() -> Dict[str, str]:
    digests = {}
    for name in MEASURED_SOURCES:
        path = PROJECT_ROOT / name
        digests[name] = hashlib.sha1(path.read_bytes()).hexdigest()[:10] if path.exists() else "missing"
    return digests


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def reachable(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


# ----------------------------------------------------------------------------------------------
# the databases: a fresh PostgreSQL schema each (CRM, APScheduler's job store), or temporary SQLite files
# ----------------------------------------------------------------------------------------------
@dataclass
class BenchDatabases:
    kind: str  # "postgresql" or "sqlite"
    crm_url: str
    jobstore_url: str
    schemas: List[str] = field(default_factory=list)

    def drop(self) -> None:
        """Drop the schemas (the SQLite files go with the temporary directory)."""
        if not self.schemas:
            return
        from sqlalchemy import create_engine, text

        admin = create_engine(PG_URL, future=True)
        try:
            with admin.begin() as connection:
                connection.execute(text("SET lock_timeout = '20s'"))
                for schema in self.schemas:
                    connection.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
        finally:
            admin.dispose()
        self.schemas.clear()


def postgres_available() -> bool:
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine.url import make_url

    url = make_url(PG_URL)
    if not reachable(url.host or "127.0.0.1", url.port or 5432):
        return False
    engine = create_engine(PG_URL, future=True, connect_args={"connect_timeout": 3})
    try:
        with engine.connect() as connection:
            connection.execute(text("SELECT 1"))
        return True
    except Exception as error:  # a server that refuses us: say so and fall back to SQLite
        print(f"PostgreSQL at {PG_URL} refused the connection ({type(error).__name__}); using SQLite", flush=True)
        return False
    finally:
        engine.dispose()


def open_databases(choice: str, work: Path) -> BenchDatabases:
    if choice == "postgresql" or (choice == "auto" and postgres_available()):
        from sqlalchemy import create_engine, text
        from sqlalchemy.engine.url import make_url

        run = uuid.uuid4().hex[:10]
        databases = BenchDatabases("postgresql", "", "")
        admin = create_engine(PG_URL, future=True)
        try:
            urls = []
            for prefix in ("bench_reminders", "bench_apscheduler"):
                schema = f"{prefix}_{run}"
                with admin.begin() as connection:
                    connection.execute(text(f'CREATE SCHEMA "{schema}"'))
                databases.schemas.append(schema)
                url = make_url(PG_URL).update_query_dict({"options": f"-csearch_path={schema}"})
                urls.append(url.render_as_string(hide_password=False))
        finally:
            admin.dispose()
        databases.crm_url, databases.jobstore_url = urls
        return databases
    return BenchDatabases("sqlite", f"sqlite:///{work / 'crm.sqlite'}", f"sqlite:///{work / 'jobs.sqlite'}")


def describe(databases: BenchDatabases) -> str:
    if databases.kind == "postgresql":
        return f"PostgreSQL {PG_URL} (schemas {', '.join(databases.schemas)})"
    return "SQLite (temporary files; PostgreSQL was not used)"


# ----------------------------------------------------------------------------------------------
# data: patients with a WeChat identity, outbox rows written in bulk the way enrolment writes them
# ----------------------------------------------------------------------------------------------
def fake_now() -> datetime:
    return datetime.fromisoformat(FAKE_NOW)


def _naive_utc(moment: datetime) -> datetime:
    return moment.astimezone(UTC).replace(tzinfo=None)


def register_patients(url: str, count: int) -> List[int]:
    from bot.crm import patients
    from bot.db import session_scope

    ids = []
    with session_scope(url) as session:
        for number in range(count):
            patient, _ = patients.match_or_register(session, f"测试{number:05d}", f"+86139{number:08d}", actor="bench")
            patients.link_identity(session, patient, "wechat", f"obench{number:021d}")
            ids.append(patient.id)
    return ids


def outbox_rows(patient_ids: Sequence[int], start: int, stop: int, first_due: datetime, tag: str) -> Iterator[dict]:
    """Rows `start`..`stop` of a batch: an appointment reminder each, one second apart from `first_due`."""
    for index in range(start, stop):
        due = first_due + timedelta(seconds=index % 86_400)
        stored = _naive_utc(due)
        yield {
            "patient_id": patient_ids[index % len(patient_ids)],
            "plan_id": None,
            "step": "bench",
            "message": MESSAGE,
            "params": {
                "department": DEPARTMENTS[index % len(DEPARTMENTS)],
                "doctor": "李",
                "location": "门诊楼3层",
                "anchor": (due + timedelta(days=1)).isoformat(),
            },
            "conversation": None,
            "channel_policy": "wechat,sms,voice",
            "urgent": False,
            "due_at": stored,
            "next_attempt_at": stored,
            "status": "pending",
            "attempts": 0,
            "idempotency_key": f"bench:{tag}:{index}",
            "created_at": _naive_utc(fake_now()),
        }


def insert_reminders(
    url: str, patient_ids: Sequence[int], count: int, first_due: datetime, tag: str, chunk: int = 20_000
) -> float:
    """Insert `count` rows with scheduler.plans.insert_ignoring_duplicates; returns the seconds it took."""
    from bot.db import session_scope
    from scheduler.plans import insert_ignoring_duplicates

    start = time.perf_counter()
    for offset in range(0, count, chunk):
        rows = list(outbox_rows(patient_ids, offset, min(count, offset + chunk), first_due, tag))
        with session_scope(url) as session:
            insert_ignoring_duplicates(session, rows)
    return time.perf_counter() - start


def outbox_counts(url: str, tag: str) -> Dict[str, int]:
    from sqlalchemy import func, select

    from bot.crm.models import OutboxMessage
    from bot.db import session_scope

    with session_scope(url) as session:
        rows = session.execute(
            select(OutboxMessage.status, func.count())
            .where(OutboxMessage.idempotency_key.like(f"bench:{tag}:%"))
            .group_by(OutboxMessage.status)
        ).all()
    return {getattr(status, "value", str(status)): int(count) for status, count in rows}


def analyze(databases: BenchDatabases) -> None:
    """Fresh planner statistics after a bulk insert, as autovacuum would give a long-lived table."""
    from sqlalchemy import text

    from bot.db import session_scope

    with session_scope(databases.crm_url) as session:
        session.execute(text("ANALYZE outbox" if databases.kind == "postgresql" else "ANALYZE"))


# ----------------------------------------------------------------------------------------------
# part 1: dispatch throughput
# ----------------------------------------------------------------------------------------------
@dataclass
class Stack:
    """What the dispatcher and scheduler processes share: the work directory, the environment, the sandbox."""

    work: Path
    databases: BenchDatabases
    env: Dict[str, str]
    sandbox: Process
    sandbox_url: str
    token_store: str
    processes: List[Process]


def start_stack(work: Path, databases: BenchDatabases, processes: List[Process]) -> Stack:
    port = free_port()
    sandbox_url = f"http://127.0.0.1:{port}"
    env = base_env(
        {
            "DATABASE_URL": databases.crm_url,
            "SANDBOX_URL": sandbox_url,
            "HOSPITAL_FAKE_NOW": FAKE_NOW,
            "RASA_URL": "",  # notices only: no conversation pushes through Rasa
        }
    )
    env.pop("WECHAT_API_BASE", None)
    token_store = "memory (one token per process)"
    if reachable("127.0.0.1", 6379) or os.environ.get("REDIS_URL"):
        env["REDIS_URL"] = REDIS_URL
        token_store = f"redis ({REDIS_URL})"
    else:
        env.pop("REDIS_URL", None)
    sandbox = Process(
        "sandbox", [PYTHON, "-m", "sandbox", "--port", str(port)], PROJECT_ROOT, env, work / "sandbox.log"
    )
    processes.append(sandbox)
    wait_until(lambda: http_status(f"{sandbox_url}/sandbox/api/stats") == 200, sandbox, 60, "the sandbox")
    return Stack(work, databases, env, sandbox, sandbox_url, token_store, processes)


def sandbox_stats(stack: Stack) -> Dict[str, Any]:
    import urllib.request

    with urllib.request.urlopen(f"{stack.sandbox_url}/sandbox/api/stats", timeout=60) as response:
        stats = json.loads(response.read())
    query = "provider=wechat&kind=custom&status=delivered"
    with urllib.request.urlopen(f"{stack.sandbox_url}/sandbox/api/messages?{query}", timeout=120) as response:
        stats["custom_delivered"] = len(json.loads(response.read()))
    return stats


def dispatch_round(
    stack: Stack, label: str, rows: int, args: argparse.Namespace, processes: int, profile: bool = False
) -> Dict[str, Any]:
    """Start the dispatchers, let them all begin at once, wait until the outbox is drained (or the time limit
    is reached: then they are stopped and what was sent by then is counted)."""
    round_dir = stack.work / label
    round_dir.mkdir()
    go = round_dir / "go"
    before = sandbox_stats(stack)
    dispatchers = []
    for index in range(processes):
        cmd = [PYTHON, "-m", "bench.reminders", "--worker", "dispatch", "--workers", str(args.workers),
               "--batch", str(args.batch), "--result", str(round_dir / f"result-{index}.json"),
               "--ready", str(round_dir / f"ready-{index}"), "--go", str(go)]  # fmt: skip
        if profile:
            cmd += ["--profile-to", str(round_dir / f"profile-{index}.pstats")]
        process = Process(f"dispatcher {index}", cmd, PROJECT_ROOT, stack.env, round_dir / f"dispatcher-{index}.log")
        stack.processes.append(process)
        dispatchers.append(process)
    for index, process in enumerate(dispatchers):
        wait_until(lambda i=index: (round_dir / f"ready-{i}").exists(), process, 120, f"dispatcher {index} ready")
    pids = [process.popen.pid for process in dispatchers]
    cpu_before = cpu_readings(stack, pids)
    go_at = time.time()
    go.touch()
    watched = watch(dispatchers, deadline=time.monotonic() + args.time_limit)
    stopped_at = time.time()
    cpu_after = cpu_readings(stack, pids, last_seen=watched["cpu_s"])
    for process in dispatchers:
        process.stop()
        if not watched["timed_out"] and process.popen.returncode != 0:
            raise RuntimeError(f"{process.name} exited with {process.popen.returncode}:\n{process.log_tail()}")
    outbox = outbox_counts(stack.databases.crm_url, label)
    if watched["timed_out"]:  # leave nothing due for the next round
        cancel_unsent(stack.databases.crm_url, label)
    after = sandbox_stats(stack)
    results = [json.loads(path.read_text()) for path in sorted(round_dir.glob("result-*.json"))]
    wall = stopped_at - go_at if watched["timed_out"] else max(r["finished_at"] for r in results) - go_at
    sent = outbox.get("sent", 0)
    cpu = {name: _delta(cpu_before.get(name), cpu_after.get(name)) for name in ("dispatchers", "sandbox", "postgres")}
    if len(results) == processes:  # each dispatcher's own account of its CPU from go to its end
        cpu["dispatchers"] = sum(result["cpu_s"] for result in results)
    if stack.databases.kind != "postgresql":
        cpu["postgres"] = None
    machine = _delta(cpu_before["machine"], cpu_after["machine"])
    known = sum(v for v in cpu.values() if v is not None)
    cpu["other processes"] = machine - known if machine is not None else None
    totals: Counter = Counter()
    for result in results:
        totals.update(result["stats"])
    delivered = after["statuses"].get("delivered", 0) - before["statuses"].get("delivered", 0)
    custom = after["custom_delivered"] - before["custom_delivered"]
    return {
        "label": label,
        "rows": rows,
        "processes": processes,
        "workers_per_process": args.workers,
        "batch": args.batch,
        "timed_out": watched["timed_out"],
        "time_limit_s": args.time_limit,
        "wall_s": wall,
        "sent": sent,
        "messages_per_s": sent / wall if wall > 0 else None,
        "dispatch_stats": dict(totals),
        "outbox": outbox,
        "sandbox": {
            "delivered": delivered,
            "custom": custom,
            "template": delivered - custom,
            "rejected": after["statuses"].get("rejected", 0) - before["statuses"].get("rejected", 0),
        },
        "peak_rss_mb": watched["peak_rss_mb"],
        "cpu_s": cpu,
        "machine_cpu_s": machine,
        "cpu_ms_per_message": {k: (v * 1000 / sent if v is not None and sent else None) for k, v in cpu.items()},
        "cores_busy": machine / wall if machine is not None and wall > 0 else None,
        "profiles": [str(path) for path in sorted(round_dir.glob("profile-*.pstats"))],
    }


def _delta(before: Optional[float], after: Optional[float]) -> Optional[float]:
    return None if before is None or after is None else after - before


def cpu_readings(stack: Stack, pids: Sequence[int], last_seen: Optional[Sequence[float]] = None) -> Dict[str, Any]:
    """CPU seconds so far of the dispatchers (their last reading when they have exited), the sandbox, the local
    PostgreSQL server and the whole machine."""
    current = [process_cpu_s(pid) for pid in pids]
    dispatchers = [now if now is not None else (last_seen[i] if last_seen else 0.0) for i, now in enumerate(current)]
    return {
        "dispatchers": sum(value or 0.0 for value in dispatchers),
        "sandbox": process_cpu_s(stack.sandbox.popen.pid),
        "postgres": postgres_cpu_s(),
        "machine": machine_busy_s(),
    }


def watch(processes: Sequence[Process], deadline: float) -> Dict[str, Any]:
    """Each process's peak memory (VmHWM) and CPU, read until it exits or the deadline passes."""
    peaks: List[Optional[float]] = [None] * len(processes)
    cpu: List[float] = [0.0] * len(processes)
    while any(process.running() for process in processes) and time.monotonic() < deadline:
        for index, process in enumerate(processes):
            peak, spent = memory_mb(process.popen.pid)["peak_rss_mb"], process_cpu_s(process.popen.pid)
            if peak is not None and spent is not None:
                peaks[index], cpu[index] = peak, spent
        time.sleep(0.1)
    return {"peak_rss_mb": peaks, "cpu_s": cpu, "timed_out": any(process.running() for process in processes)}


def cancel_unsent(url: str, tag: str) -> None:
    from sqlalchemy import update

    from bot.crm.models import OutboxMessage, OutboxStatus
    from bot.db import session_scope

    with session_scope(url) as session:
        session.execute(
            update(OutboxMessage)
            .where(OutboxMessage.idempotency_key.like(f"bench:{tag}:%"), OutboxMessage.status != OutboxStatus.SENT)
            .values(status=OutboxStatus.CANCELLED)
            .execution_options(synchronize_session=False)
        )


# ----------------------------------------------------------------------------------------------
# where a dispatcher's CPU goes: cProfile on CPU time (thread_time) in every dispatch thread of one process
# ----------------------------------------------------------------------------------------------
# (label, file the function is in, function name): the steps of a reminder and what they cost; steps the
# dispatcher of the day does not have are left out of the table.
PROFILE_WATCH = [
    ("claim a batch", "scheduler/dispatcher.py", "claim"),
    ("prepare a batch", "scheduler/dispatcher.py", "prepare"),
    ("one reminder: Dispatcher.process", "scheduler/dispatcher.py", "process"),
    ("one reminder: Dispatcher.deliver", "scheduler/dispatcher.py", "deliver"),
    ("render_notice (catalog, Babel dates)", "scheduler/dispatcher.py", "render_notice"),
    ("  babel Locale.parse", "babel/core.py", "parse"),
    ("send_to_patient", "bot/outbound/service.py", "send_to_patient"),
    ("attempt_sends", "bot/outbound/service.py", "attempt_sends"),
    ("record_outcomes", "bot/outbound/service.py", "record_outcomes"),
    ("consent check", "bot/crm/consent.py", "accepts_messages"),
    ("Delivery row before the send", "bot/outbound/service.py", "_new_row"),
    ("Delivery row after the send", "bot/outbound/service.py", "_close_attempt"),
    ("WeChat API call (provider)", "bot/outbound/providers.py", "_call"),
    ("  HTTP request (requests)", "requests/sessions.py", "request"),
    ("  requests prepare_request", "requests/sessions.py", "prepare_request"),
    ("ORM Session.get", "sqlalchemy/orm/session.py", "get"),
    ("ORM Session.execute", "sqlalchemy/orm/session.py", "execute"),
    ("ORM Session.commit (flush included)", "sqlalchemy/orm/session.py", "commit"),
    ("SQL statements (do_execute)", "sqlalchemy/engine/default.py", "do_execute"),
    ("DB commits (do_commit)", "sqlalchemy/engine/default.py", "do_commit"),
    ("pool checkout", "sqlalchemy/pool/base.py", "_checkout"),
    ("  pre-ping SELECT 1 (pool_pre_ping)", "", "do_ping"),
]


def profile_table(paths: Sequence[str], messages: int, cpu_ms_per_message: Optional[float]) -> List[List[Any]]:
    """Calls per message and share of the dispatcher's CPU of each watched step, and that share of the
    unprofiled CPU per message."""
    import pstats

    if not paths or not messages:
        return []
    stats = pstats.Stats(*paths)
    total = stats.total_tt or 1e-9
    rows = []
    for label, where, name in PROFILE_WATCH:
        # the outermost function of that name in that file (Session.commit, not the SessionTransaction.commit
        # it calls): the entry with the largest cumulative time
        calls, cumulative = 0, 0.0
        for (filename, _line, function), (_cc, primitive, _tt, ct, _callers) in stats.stats.items():  # type: ignore[attr-defined]
            if function == name and filename.endswith(where) and ct > cumulative:
                calls, cumulative = primitive, ct
        if not calls:
            continue
        share = cumulative / total
        ms = share * cpu_ms_per_message if cpu_ms_per_message else None
        rows.append([label, f"{calls / messages:.2f}", f"{share * 100:.0f}%", _f(ms, 2)])
    return rows


# ----------------------------------------------------------------------------------------------
# part 2: the scheduler process with a million pending rows
# ----------------------------------------------------------------------------------------------
def start_scheduler(stack: Stack, name: str) -> Dict[str, Any]:
    port = free_port()
    env = {**stack.env, "DISPATCH_SECONDS": "1", "SCHEDULER_PORT": str(port)}
    launched = time.perf_counter()
    process = Process(name, [PYTHON, "-m", "scheduler", "--port", str(port)], PROJECT_ROOT, env,
                      stack.work / f"{name}.log")  # fmt: skip
    stack.processes.append(process)
    url = f"http://127.0.0.1:{port}/health"
    while http_status(url, timeout=1) != 200:
        if not process.running():
            raise RuntimeError(f"{name} exited with {process.popen.returncode}:\n{process.log_tail()}")
        if time.perf_counter() - launched > 120:
            raise RuntimeError(f"{name}: /health did not answer within 120 s:\n{process.log_tail()}")
        time.sleep(0.02)
    return {"process": process, "ready_s": time.perf_counter() - launched}


def scheduler_memory(stack: Stack, pending: int, observe_s: float) -> Dict[str, Any]:
    """Start the scheduler, let it run dispatch passes over the pending rows, read its memory; restart twice."""
    first = start_scheduler(stack, "scheduler-1")
    process: Process = first["process"]
    samples = []
    deadline = time.monotonic() + observe_s
    while time.monotonic() < deadline:
        samples.append(memory_mb(process.popen.pid))
        time.sleep(0.5)
    memory = memory_mb(process.popen.pid)
    passes = process.count_in_log('Running job "dispatch')
    cpu = process_cpu_s(process.popen.pid)
    process.stop()
    restarts = []
    for attempt in (2, 3):
        started = start_scheduler(stack, f"scheduler-{attempt}")
        restarts.append(started["ready_s"])
        started["process"].stop()
    return {
        "pending": pending,
        "observed_s": observe_s,
        "dispatch_passes": passes,
        "rss_mb": memory["rss_mb"],
        "peak_rss_mb": max([memory["peak_rss_mb"] or 0.0] + [s["peak_rss_mb"] or 0.0 for s in samples]),
        "cpu_s": cpu,
        "first_start_s": first["ready_s"],
        "restart_s": restarts,
    }


def idle_pass(stack: Stack, passes: int = 5) -> Dict[str, Any]:
    """How long one dispatch pass takes when nothing is due among the pending rows (what the scheduler does
    every few seconds), measured in a dispatcher process of its own."""
    result = stack.work / "idle-pass.json"
    process = Process("idle pass", [PYTHON, "-m", "bench.reminders", "--worker", "idle-pass", "--passes",
                                    str(passes), "--result", str(result)], PROJECT_ROOT, stack.env,
                      stack.work / "idle-pass.log")  # fmt: skip
    stack.processes.append(process)
    if process.wait(timeout=600) != 0:
        raise RuntimeError(f"the idle dispatch pass failed:\n{process.log_tail()}")
    return json.loads(result.read_text())


# ----------------------------------------------------------------------------------------------
# part 3: APScheduler with one job per reminder
# ----------------------------------------------------------------------------------------------
def apscheduler_phase(stack: Stack, phase: str, args: argparse.Namespace) -> Dict[str, Any]:
    result = stack.work / f"aps-{phase}.json"
    cmd = [PYTHON, "-m", "bench.reminders", "--worker", f"aps-{phase}", "--jobstore", stack.databases.jobstore_url,
           "--apscheduler-jobs", str(args.apscheduler_jobs), "--apscheduler-fire", str(args.apscheduler_fire),
           "--time-limit", str(args.time_limit), "--result", str(result)]  # fmt: skip
    machine, postgres = machine_busy_s(), postgres_cpu_s()
    launched = time.time()
    process = Process(f"apscheduler {phase}", cmd, PROJECT_ROOT, stack.env, stack.work / f"aps-{phase}.log")
    stack.processes.append(process)
    if process.wait(timeout=6 * 3600) != 0:
        raise RuntimeError(f"APScheduler {phase} failed:\n{process.log_tail()}")
    record = json.loads(result.read_text())
    wall = time.time() - launched
    record["machine_cores_busy"] = (machine_busy_s() - machine) / wall
    spent = _delta(postgres, postgres_cpu_s())
    if "cpu_s" in record and record["jobs"]:
        record["cpu_ms_per_job"] = record["cpu_s"] * 1000 / record["jobs"]
        record["postgres_ms_per_job"] = (
            spent * 1000 / record["jobs"] if spent and stack.databases.kind == "postgresql" else None
        )
    if "started_at" in record:
        record["restart_s"] = record["started_at"] - launched
        record["restart_with_listing_s"] = record["listed_at"] - launched
    return record


# Job functions live at module level so the job store can name them ("bench.reminders:fire_reminder").
_fired = 0
_fired_lock = threading.Lock()


def fire_reminder(patient_id: int, message: str, params: Dict[str, Any]) -> None:
    """A job of the rejected design: one per reminder. A no-op here, so firing measures APScheduler alone."""
    global _fired
    with _fired_lock:
        _fired += 1


def build_apscheduler(jobstore_url: str) -> Any:
    from apscheduler.jobstores.sqlalchemy import SQLAlchemyJobStore
    from apscheduler.schedulers.background import BackgroundScheduler

    return BackgroundScheduler(
        jobstores={"default": SQLAlchemyJobStore(url=jobstore_url, tablename=APS_TABLE)},
        job_defaults={"coalesce": False, "max_instances": 1, "misfire_grace_time": None},
        timezone="Asia/Shanghai",
    )


def analyze_job_table(scheduler: Any) -> None:
    """ANALYZE the job table, as autovacuum would after it grew by a tenth. Without fresh statistics PostgreSQL
    flips to sequential scans for APScheduler's next-run-time queries once the table has some 20,000 jobs (10 ms
    of server CPU per added job instead of 0.7), and the test server here runs with autovacuum off."""
    from sqlalchemy import text

    engine = scheduler._lookup_jobstore("default").engine
    with engine.begin() as connection:
        connection.execute(text(f"ANALYZE {APS_TABLE}"))


def aps_add(scheduler: Any, count: int, first_due: datetime, tag: str, time_limit: float = 1e9) -> Dict[str, Any]:
    """Add up to `count` date jobs as the rejected design would on enrolment, one add_job per reminder, while the
    scheduler runs; stops at the time limit. Returns how many were added and how long it took."""
    start = time.perf_counter()
    added, analyzed = 0, 0
    for row in outbox_rows(list(range(1, 1001)), 0, count, first_due, tag):
        scheduler.add_job(
            "bench.reminders:fire_reminder",
            "date",
            run_date=row["due_at"].replace(tzinfo=UTC),
            args=[row["patient_id"], row["message"], row["params"]],
            id=row["idempotency_key"],
        )
        added += 1
        if added >= max(1000, analyzed * 1.1):
            analyze_job_table(scheduler)
            analyzed = added
        if added % 500 == 0 and time.perf_counter() - start > time_limit:
            break
    return {"jobs": added, "seconds": time.perf_counter() - start}


def aps_schedule_worker(args: argparse.Namespace) -> Dict[str, Any]:
    scheduler = build_apscheduler(args.jobstore)
    scheduler.start()
    cpu = own_cpu_s()
    added = aps_add(scheduler, args.apscheduler_jobs, fake_now() + timedelta(days=30), "reminder", args.time_limit)
    cpu = own_cpu_s() - cpu
    memory = memory_mb(os.getpid())
    scheduler.shutdown(wait=True)
    return {"jobs": added["jobs"], "schedule_s": added["seconds"], "cpu_s": cpu, "rss_mb": memory["rss_mb"],
            "peak_rss_mb": own_peak_rss_mb()}  # fmt: skip


def aps_restart_worker(args: argparse.Namespace) -> Dict[str, Any]:
    """A restart: a new scheduler over the stored jobs, started; then every job listed (what /health does in
    scheduler/service.py); then, optionally, a batch of due jobs fired."""
    scheduler = build_apscheduler(args.jobstore)
    scheduler.start()
    started_at = time.time()
    memory_started = memory_mb(os.getpid())
    listed = len(scheduler.get_jobs())
    listed_at = time.time()
    memory_listed = memory_mb(os.getpid())
    record: Dict[str, Any] = {
        "started_at": started_at,
        "listed_at": listed_at,
        "jobs_listed": listed,
        "rss_mb_started": memory_started["rss_mb"],
        "rss_mb_listed": memory_listed["rss_mb"],
    }
    if args.apscheduler_fire:
        from bench import reminders as jobs  # the module the job store imports (this one runs as __main__)

        scheduler.pause()
        now = datetime.now(UTC)
        record["fire_add_s"] = aps_add(scheduler, args.apscheduler_fire, now - timedelta(days=1), "due")["seconds"]
        begin = time.perf_counter()
        scheduler.resume()
        deadline = begin + 1800
        while jobs._fired < args.apscheduler_fire and time.perf_counter() < deadline:
            time.sleep(0.01)
        record["fire_s"] = time.perf_counter() - begin
        record["fired"] = jobs._fired
    scheduler.shutdown(wait=True)
    record["peak_rss_mb"] = own_peak_rss_mb()
    return record


# ----------------------------------------------------------------------------------------------
# the dispatcher processes (python -m bench.reminders --worker dispatch|idle-pass)
# ----------------------------------------------------------------------------------------------
def dispatch_worker(args: argparse.Namespace) -> Dict[str, Any]:
    from sqlalchemy import text

    from bot.db import session_scope
    from bot.outbound import get_providers
    from scheduler.dispatcher import Dispatcher, DispatchSettings

    settings = DispatchSettings(rate_limits={}, rasa_url=None, workers=args.workers, batch=args.batch)
    dispatcher = Dispatcher(settings=settings)
    get_providers().get("wechat").client.access_token  # noqa: B018  (fetch the token before the clock starts)
    with session_scope() as session:  # open the pool's first connection
        session.execute(text("SELECT 1"))
    Path(args.ready).touch()
    while not Path(args.go).exists():
        time.sleep(0.005)
    profiles = profile_threads() if args.profile_to else None
    started_at, cpu_start = time.time(), own_cpu_s()
    stats = dispatcher.run_until_idle(max_batches=10**9)
    finished_at = time.time()
    if profiles:
        import pstats

        threading.setprofile(None)
        pstats.Stats(*profiles).dump_stats(args.profile_to)
    return {
        "started_at": started_at,
        "finished_at": finished_at,
        "stats": {
            name: getattr(stats, name) for name in ("claimed", "sent", "deferred", "retried", "failed", "skipped")
        },
        "cpu_s": own_cpu_s() - cpu_start,
        "peak_rss_mb": own_peak_rss_mb(),
    }


def profile_threads() -> List[Any]:
    """cProfile on CPU time (thread_time) in this thread and in every thread started from now on: cProfile sees
    only the thread it is enabled in, so a hook enables a profiler of its own in each new thread."""
    import cProfile

    profilers: List[Any] = []
    lock = threading.Lock()

    def start(*_event: Any) -> None:  # also the hook: a new thread's first event replaces it by a profiler
        profiler = cProfile.Profile(time.thread_time)
        with lock:
            profilers.append(profiler)
        profiler.enable()

    threading.setprofile(start)
    start()
    return profilers


def idle_pass_worker(args: argparse.Namespace) -> Dict[str, Any]:
    from scheduler.dispatcher import Dispatcher, DispatchSettings

    dispatcher = Dispatcher(settings=DispatchSettings(rate_limits={}, rasa_url=None))
    dispatcher.run_once()  # warm: imports, the pool's first connection
    timings = []
    for _ in range(args.passes):
        start = time.perf_counter()
        stats = dispatcher.run_once()
        timings.append((time.perf_counter() - start) * 1000)
        if stats.claimed:
            raise RuntimeError(f"an idle pass claimed {stats.claimed} rows: something was due")
    return {"pass_ms": timings, "median_ms": statistics.median(timings)}


def run_worker(args: argparse.Namespace) -> int:
    handlers = {
        "dispatch": dispatch_worker,
        "idle-pass": idle_pass_worker,
        "aps-schedule": aps_schedule_worker,
        "aps-restart": aps_restart_worker,
    }
    record = handlers[args.worker](args)
    Path(args.result).write_text(json.dumps(record), encoding="utf-8")
    return 0


# ----------------------------------------------------------------------------------------------
# the run
# ----------------------------------------------------------------------------------------------
def run(args: argparse.Namespace) -> Dict[str, Any]:
    processes: List[Process] = []
    work = Path(tempfile.mkdtemp(prefix="bench-reminders-"))
    databases: Optional[BenchDatabases] = None
    record: Dict[str, Any] = {"benchmark": NAME, "machine": machine_info(), "sources": source_digests()}
    failed = True
    try:
        databases = open_databases(args.database, work)
        record["database"] = databases.kind
        print(f"database: {describe(databases)}", flush=True)
        print("code measured (sha1): " + ", ".join(f"{k} {v}" for k, v in record["sources"].items()), flush=True)
        setup = prepare(databases, args)
        patient_ids = setup.pop("patient_ids")
        record["setup"] = setup
        stack = start_stack(work, databases, processes)
        record["token_store"] = stack.token_store
        print(f"sandbox at {stack.sandbox_url}; WeChat access token shared through {stack.token_store}", flush=True)

        print(
            f"\n[1] dispatching {args.reminders:,} due reminders: {args.processes} dispatcher process(es) x "
            f"{args.workers} threads, rate limits off (stopped after {args.time_limit:.0f} s)",
            flush=True,
        )
        record["dispatch"] = dispatch_round(stack, "due", args.reminders, args, args.processes)
        print_dispatch(record["dispatch"])
        if record["dispatch"]["messages_per_s"] < TARGET_MESSAGES_PER_S and args.profile_rows:
            record["profile"] = profiled_round(stack, patient_ids, args, record["dispatch"])

        print(f"\n[2] {args.pending:,} pending reminders due next month", flush=True)
        insert_s = insert_reminders(
            databases.crm_url, patient_ids, args.pending, fake_now() + timedelta(days=30), "pending"
        )
        analyze(databases)
        print(f"  inserted in {insert_s:.1f} s; the scheduler runs over them", flush=True)
        record["pending"] = {"insert_s": insert_s, "idle_pass": idle_pass(stack)}
        record["pending"].update(scheduler_memory(stack, args.pending, args.observe))
        print_pending(record["pending"])

        if args.due_among_pending:
            count = args.due_among_pending
            print(f"\n[2b] dispatching {count:,} due reminders among the {args.pending:,} pending", flush=True)
            insert_reminders(databases.crm_url, patient_ids, count, fake_now() - timedelta(days=1, hours=1), "due2")
            analyze(databases)
            record["dispatch_among_pending"] = dispatch_round(stack, "due2", count, args, args.processes)
            print_dispatch(record["dispatch_among_pending"])

        if args.apscheduler_jobs:
            print(
                f"\n[3] APScheduler, one job per reminder: {args.apscheduler_jobs:,} date jobs in its "
                f"SQLAlchemyJobStore ({databases.kind}, stopped after {args.time_limit:.0f} s)",
                flush=True,
            )
            schedule = apscheduler_phase(stack, "schedule", args)
            print(f"  {schedule['jobs']:,} jobs scheduled in {schedule['schedule_s']:.1f} s; restarting", flush=True)
            restart = apscheduler_phase(stack, "restart", args)
            restart.pop("machine_cores_busy", None)
            record["apscheduler"] = {**restart, **schedule, "peak_rss_mb_restart": restart["peak_rss_mb"]}
            print_apscheduler(record["apscheduler"])
        failed = False
    except BaseException:
        print(f"\nlogs kept in {work}", file=sys.stderr)
        raise
    finally:
        for process in reversed(processes):
            process.stop()
        if databases is not None:
            databases.drop()
        for path in work.glob("*.sqlite*"):
            path.unlink()
        if args.keep and not failed:
            print(f"logs kept in {work}", flush=True)
        elif not failed:
            shutil.rmtree(work, ignore_errors=True)
    return finish(record, args)


def prepare(databases: BenchDatabases, args: argparse.Namespace) -> Dict[str, Any]:
    from bot.db import upgrade

    start = time.perf_counter()
    upgrade(databases.crm_url)
    migrated = time.perf_counter() - start
    patient_ids = register_patients(databases.crm_url, args.patients)
    registered = time.perf_counter() - start - migrated
    insert_s = insert_reminders(
        databases.crm_url, patient_ids, args.reminders, fake_now() - timedelta(days=1, hours=1), "due"
    )
    analyze(databases)
    print(f"migrated in {migrated:.1f} s; {args.patients:,} patients with a WeChat identity in {registered:.1f} s; "
          f"{args.reminders:,} due reminders inserted in {insert_s:.1f} s", flush=True)  # fmt: skip
    return {"patients": args.patients, "migrate_s": migrated, "insert_due_s": insert_s, "patient_ids": patient_ids}


def profiled_round(
    stack: Stack, patient_ids: Sequence[int], args: argparse.Namespace, measured: Dict[str, Any]
) -> Dict[str, Any]:
    """Below target: send a few more reminders through one dispatcher under cProfile (CPU time per thread) and
    show what each step of a reminder costs."""
    print(f"\n[1p] below target: where a dispatcher's CPU goes ({args.profile_rows:,} more reminders, one process "
          f"under cProfile)", flush=True)  # fmt: skip
    insert_reminders(stack.databases.crm_url, patient_ids, args.profile_rows, fake_now() - timedelta(days=1), "prof")
    result = dispatch_round(stack, "prof", args.profile_rows, args, 1, profile=True)
    per_message = measured["cpu_ms_per_message"]["dispatchers"]
    rows = profile_table(result["profiles"], result["sent"], per_message)
    print(format_table(["step (inclusive)", "calls per message", "share of CPU", "≈ ms per message"], rows))
    print(f"(≈ ms: the share times the unprofiled {per_message:.1f} ms of dispatcher CPU per message in [1])")
    return {"rows": result["sent"], "steps": rows}


# ----------------------------------------------------------------------------------------------
# reporting
# ----------------------------------------------------------------------------------------------
def _f(value: Optional[float], digits: int = 1) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def print_dispatch(result: Dict[str, Any]) -> None:
    sandbox, stats, per, cpu = (
        result["sandbox"],
        result["dispatch_stats"],
        result["cpu_ms_per_message"],
        result["cpu_s"],
    )
    stopped = f" (stopped at the {result['time_limit_s']:.0f} s limit)" if result["timed_out"] else ""
    rows = [
        ["wall time (s)", _f(result["wall_s"]) + stopped],
        ["messages/s", _f(result["messages_per_s"])],
        ["outbox rows by status", ", ".join(f"{k} {v:,}" for k, v in sorted(result["outbox"].items()))],
        ["retried, failed, deferred, skipped",
         ", ".join(str(stats.get(k, 0)) for k in ("retried", "failed", "deferred", "skipped"))],
        ["sandbox: delivered (custom + template)",
         f"{sandbox['delivered']:,} ({sandbox['custom']:,} + {sandbox['template']:,})"],
        ["sandbox: refused 45047 (quota of 5), then template", f"{sandbox['rejected']:,}"],
        ["peak RSS per dispatcher (MB)", ", ".join(_f(v, 0) for v in result["peak_rss_mb"])],
    ]  # fmt: skip
    for name in ("dispatchers", "sandbox", "postgres", "other processes"):
        rows.append([f"CPU: {name} (s; ms per message)", f"{_f(cpu[name])}; {_f(per[name], 2)}"])
    rows.append(["cores busy, whole machine", _f(result["cores_busy"], 2)])
    print(format_table(["", "value"], rows))


def print_pending(pending: Dict[str, Any]) -> None:
    print(format_table(
        ["", "value"],
        [["pending rows", f"{pending['pending']:,}"],
         ["bulk insert (s)", _f(pending["insert_s"])],
         ["idle dispatch pass (claim finds nothing), median (ms)", _f(pending["idle_pass"]["median_ms"])],
         [f"scheduler RSS after {pending['observed_s']:.0f} s (MB)", _f(pending["rss_mb"])],
         ["scheduler peak RSS (MB)", _f(pending["peak_rss_mb"])],
         ["dispatch passes it ran", str(pending["dispatch_passes"])],
         ["its CPU meanwhile (s)", _f(pending["cpu_s"], 2)],
         ["first start to /health 200 (s)", _f(pending["first_start_s"], 2)],
         ["restarts to /health 200 (s)", ", ".join(_f(v, 2) for v in pending["restart_s"])]],
    ))  # fmt: skip


def print_apscheduler(aps: Dict[str, Any]) -> None:
    rows = [
        ["jobs", f"{aps['jobs']:,}"],
        ["time to schedule (s)", _f(aps["schedule_s"])],
        ["jobs scheduled per s", _f(aps["jobs"] / aps["schedule_s"], 0)],
        [
            "CPU ms per job: scheduler process; PostgreSQL",
            f"{_f(aps.get('cpu_ms_per_job'), 2)}; {_f(aps.get('postgres_ms_per_job'), 2)}",
        ],
        ["cores busy while scheduling, whole machine", _f(aps.get("machine_cores_busy"), 2)],
        ["RSS after scheduling (MB)", _f(aps["rss_mb"])],
        ["restart: process start to start() returned (s)", _f(aps["restart_s"], 2)],
        ["restart: every job listed, as /health does (s)", _f(aps["restart_with_listing_s"], 2)],
        ["RSS after start() / after listing (MB)", f"{_f(aps['rss_mb_started'])} / {_f(aps['rss_mb_listed'])}"],
    ]
    if aps.get("fire_s"):
        rows.append([f"{aps['fired']:,} due no-op jobs fired in (s)", _f(aps["fire_s"])])
        rows.append(["jobs fired per s", _f(aps["fired"] / aps["fire_s"], 0)])
    print(format_table(["", "value"], rows))


def finish(record: Dict[str, Any], args: argparse.Namespace) -> Dict[str, Any]:
    dispatch, pending, aps = record["dispatch"], record["pending"], record.get("apscheduler")
    full = args.pending >= 1_000_000
    restart = max(pending["restart_s"])
    stats = dispatch["dispatch_stats"]
    clean = not (stats.get("retried") or stats.get("failed")) and dispatch["sandbox"]["delivered"] >= dispatch["sent"]
    rate_ok = clean and dispatch["messages_per_s"] >= TARGET_MESSAGES_PER_S
    memory_ok = pending["peak_rss_mb"] < TARGET_PENDING_RSS_MB if full else None
    record["targets"] = {
        "messages_per_s": {"target": TARGET_MESSAGES_PER_S, "value": dispatch["messages_per_s"], "passed": rate_ok},
        "pending_rss_mb": {"target": TARGET_PENDING_RSS_MB, "value": pending["peak_rss_mb"], "passed": memory_ok,
                           "pending": args.pending},
        "restart_s": {"target": TARGET_RESTART_S, "value": restart, "passed": restart < TARGET_RESTART_S},
    }  # fmt: skip
    record["settings"] = {k: v for k, v in vars(args).items() if v is not None and k != "worker"}

    print(f"\n=== side by side ({describe_kind(record['database'])}, {os.cpu_count()} cores) ===")
    ours_rate = args.pending / pending["insert_s"]
    aps_rate = aps["jobs"] / aps["schedule_s"] if aps else None
    among = record.get("dispatch_among_pending")
    rows = [
        ["reminders stored", f"{args.pending:,} outbox rows", f"{aps['jobs']:,} jobs" if aps else "-"],
        ["time to store them (s)", _f(pending["insert_s"]), _f(aps["schedule_s"]) if aps else "-"],
        ["stored per s", _f(ours_rate, 0), _f(aps_rate, 0)],
        ["time to store 1,000,000 (s)", _f(1_000_000 / ours_rate),
         f"{_f(1_000_000 / aps_rate)} (extrapolated)" if aps_rate else "-"],
        ["memory with them stored (RSS MB)", f"{_f(pending['peak_rss_mb'], 0)} (scheduler process)",
         f"{_f(aps['rss_mb_started'], 0)} started, {_f(aps['rss_mb_listed'], 0)} once listed" if aps else "-"],
        ["restart until running (s)", f"{_f(restart, 2)} (to /health 200)",
         f"{_f(aps['restart_s'], 2)} start(), {_f(aps['restart_with_listing_s'], 2)} listed" if aps else "-"],
        ["due reminders per s", f"{_f(dispatch['messages_per_s'], 0)} sent through the sandbox"
         + (f" ({_f(among['messages_per_s'], 0)} among the pending)" if among else ""),
         f"{_f(aps['fired'] / aps['fire_s'], 0)} no-op jobs fired" if aps and aps.get("fire_s") else "-"],
    ]  # fmt: skip
    print(format_table(["", "our outbox + dispatcher", "APScheduler, one job per reminder"], rows))
    print()
    memory_note = "" if full else f" (measured with {args.pending:,} pending, not 1,000,000)"
    print(
        f"target >= {TARGET_MESSAGES_PER_S:.0f} messages/s on {os.cpu_count()} cores: "
        f"{dispatch['messages_per_s']:.0f} ({args.processes} processes x {args.workers} threads): {verdict(rate_ok)}"
    )
    print(
        f"target scheduler memory < {TARGET_PENDING_RSS_MB:.0f} MB with 1,000,000 pending: "
        f"{pending['peak_rss_mb']:.0f} MB{memory_note}: {verdict(memory_ok)}"
    )
    print(f"target restart < {TARGET_RESTART_S:.0f} s: {restart:.2f} s: {verdict(restart < TARGET_RESTART_S)}")
    print(f"JSON: {write_json(NAME, record)}")  # fmt: skip
    return record


def describe_kind(kind: str) -> str:
    return "PostgreSQL" if kind == "postgresql" else "SQLite"


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.reminders", description=__doc__.split("\n\n")[0])
    add = parser.add_argument
    add("--reminders", type=int, default=100_000, help="due reminders to dispatch (default 100000)")
    add("--patients", type=int, default=1000, help="patients they go to, each with a WeChat openid (default 1000)")
    add("--pending", type=int, default=1_000_000, help="reminders due next month (default 1000000)")
    add("--processes", type=int, default=2, help="dispatcher processes sharing the outbox (default 2)")
    add("--workers", type=int, default=8, help="threads per dispatcher process (default 8)")
    add("--batch", type=int, default=200, help="rows a dispatcher claims at a time (default 200)")
    add("--time-limit", type=float, default=240.0, help="seconds a dispatch round or the APScheduler scheduling "
        "may take before it is stopped and what was done by then is measured (default 240)")  # fmt: skip
    add("--due-among-pending", type=int, default=5_000, help="due reminders sent among the pending (default 5000)")
    add("--apscheduler-jobs", type=int, default=100_000, help="APScheduler jobs (default 100000; 0: skip)")
    add("--apscheduler-fire", type=int, default=10_000, help="due APScheduler jobs fired (default 10000)")
    add("--observe", type=float, default=10.0, help="seconds the scheduler runs before its memory is read")
    add("--profile-rows", type=int, default=2_000, help="below target: reminders sent under cProfile (0: none)")
    add("--database", choices=["auto", "postgresql", "sqlite"], default="auto", help="default: PostgreSQL if up")
    add("--keep", action="store_true", help="keep the logs in the temporary directory")
    add("--quick", action="store_true", help="a smoke run: 10,000 due, 100,000 pending, 10,000 APScheduler jobs")
    add("--worker", help=argparse.SUPPRESS)
    for internal in ("--result", "--ready", "--go", "--jobstore", "--profile-to"):
        add(internal, help=argparse.SUPPRESS)
    add("--passes", type=int, default=5, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.quick:
        args.reminders, args.pending, args.due_among_pending = 10_000, 100_000, 1_000
        args.apscheduler_jobs, args.apscheduler_fire, args.observe, args.profile_rows = 10_000, 2_000, 5.0, 1_000
    return args


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    if args.worker:
        return run_worker(args)
    raise_on_sigterm()
    run(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
