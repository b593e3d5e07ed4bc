"""Latency and throughput of one booking turn through Rasa's REST webhook, next to `rasa init`'s assistant.

A booking turn (我想挂明天上午心内科的号 from a new sender) is the most expensive first message the assistant
gets: the Chinese NLU pipeline, the rules, the booking form, a call to the action server, which reads the CRM,
and the conversation written to the SQL tracker store. Milliseconds alone do not say whether that is slow for
this machine, so the same run measures Rasa's own starter assistant (`rasa init`, a "hello there" -> greet ->
utter_greet turn: default English pipeline, no action server, in-memory tracker store) the same way, and
prints the ratio. Both stacks are started fresh, one after the other, never at the same time.

Our stack runs as in production (scripts/run.sh): `python -m rasa_sdk` and `rasa run` as separate processes,
on a temporary SQLite CRM migrated and seeded like the tests do (tests/conftest.py), with the tests' fixed
clock (HOSPITAL_FAKE_NOW) so the same slots exist on every run, and a temporary SQLite tracker store.

Each turn uses a fresh sender. At concurrency c, c clients send in parallel, each one turn at a time; every
request's latency is recorded. Targets for our stack: p95 <= 300 ms and >= 30 turns/s at concurrency 8, and
no slower than `rasa init` (ratio ours/init <= 1.0).

    .venv/bin/python -m bench.latency                        # 200 turns at concurrency 1 and 8, both stacks
    .venv/bin/python -m bench.latency --turns 20 --skip-baseline
    .venv/bin/python -m bench.latency --concurrency 1 4 8 16 --ports 5105 5155 5106
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import socket
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import yaml

if __package__ in (None, ""):  # run as a file: make `bench` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._common import (
    FAKE_NOW,
    OUT_DIR,
    PROJECT_ROOT,
    PYTHON,
    RASA,
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

NAME = "latency"
BOOKING_MESSAGE = "我想挂明天上午心内科的号"
BASELINE_MESSAGE = "hello there"
MODEL = PROJECT_ROOT / "models" / "current.tar.gz"
RASA_INIT_DIR = OUT_DIR / "rasa_init"

TARGET_CONCURRENCY = 8
TARGET_P95_MS = 300.0
TARGET_TURNS_PER_S = 30.0
TARGET_RATIO = 1.0

SEED_SCRIPT = "import sys; from bot import db, seed; url = sys.argv[1]; db.upgrade(url); seed.seed(url=url)"


# ---------------------------------------------------------------------------------------------
# measuring
# ---------------------------------------------------------------------------------------------
@dataclass
class PhaseResult:
    """Every request of one phase (one stack, one concurrency)."""

    concurrency: int
    latencies_ms: List[float] = field(default_factory=list)  # successful turns only
    errors: int = 0
    error_samples: List[str] = field(default_factory=list)
    wall_s: float = 0.0
    reply_sample: Optional[str] = None

    def summary(self) -> Dict[str, Any]:
        ordered = sorted(self.latencies_ms)
        return {
            "concurrency": self.concurrency,
            "turns": len(ordered) + self.errors,
            "ok": len(ordered),
            "errors": self.errors,
            "p50_ms": percentile(ordered, 50),
            "p95_ms": percentile(ordered, 95),
            "p99_ms": percentile(ordered, 99),
            "mean_ms": sum(ordered) / len(ordered) if ordered else None,
            "max_ms": ordered[-1] if ordered else None,
            "turns_per_s": len(ordered) / self.wall_s if self.wall_s > 0 else None,
            "wall_s": self.wall_s,
            "reply_sample": self.reply_sample,
            "error_samples": self.error_samples,
        }


def percentile(ordered: Sequence[float], pct: float) -> Optional[float]:
    """Linear interpolation between closest ranks (numpy's default) over sorted values."""
    if not ordered:
        return None
    rank = (len(ordered) - 1) * pct / 100.0
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def _reply_text(payload: Any) -> Optional[str]:
    """The bot's messages joined, or None when the reply is not a non-empty list of messages."""
    if not isinstance(payload, list) or not payload:
        return None
    return " | ".join(str(m.get("text") or m.get("buttons") or m) for m in payload if isinstance(m, dict))


async def run_phase(
    url: str, message: str, turns: int, concurrency: int, label: str, request_timeout: float
) -> PhaseResult:
    """`turns` turns, each from a new sender, spread over `concurrency` clients sending one at a time."""
    import aiohttp

    result = PhaseResult(concurrency=concurrency)
    counter = iter(range(turns))
    run_id = uuid.uuid4().hex[:8]
    timeout = aiohttp.ClientTimeout(total=request_timeout)

    async def client(session: aiohttp.ClientSession) -> None:
        for index in counter:  # shared iterator: clients take the next turn until none is left
            body = {"sender": f"bench-{label}-{run_id}-{index}", "message": message}
            start = time.perf_counter()
            problem: Optional[str] = None
            try:
                async with session.post(url, json=body) as response:
                    payload = await response.json(content_type=None) if response.status == 200 else None
                    if response.status != 200:
                        problem = f"HTTP {response.status}: {(await response.text())[:200]}"
            except (aiohttp.ClientError, asyncio.TimeoutError, ValueError) as error:
                problem, payload = f"{type(error).__name__}: {error}", None
            elapsed_ms = (time.perf_counter() - start) * 1000.0
            text = _reply_text(payload) if problem is None else None
            if problem is None and text is None:
                problem = f"empty or unexpected reply: {str(payload)[:200]}"
            if problem is not None:
                result.errors += 1
                if len(result.error_samples) < 5:
                    result.error_samples.append(problem)
                continue
            result.latencies_ms.append(elapsed_ms)
            if result.reply_sample is None:
                result.reply_sample = text

    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        start = time.perf_counter()
        await asyncio.gather(*(client(session) for _ in range(concurrency)))
        result.wall_s = time.perf_counter() - start
    return result


def measure(
    base_url: str, message: str, label: str, warmup: int, turns: int, concurrencies: Sequence[int], timeout: float
) -> Dict[str, Any]:
    url = f"{base_url}/webhooks/rest/webhook"
    print(f"  [{label}] warm-up: {warmup} turns", flush=True)
    warm = asyncio.run(run_phase(url, message, warmup, 1, f"{label}-warmup", timeout))
    if warmup and not warm.latencies_ms:
        raise RuntimeError(f"[{label}] every warm-up turn failed: {warm.error_samples}")
    phases = {}
    for concurrency in concurrencies:
        print(f"  [{label}] {turns} turns at concurrency {concurrency}", flush=True)
        phase = asyncio.run(run_phase(url, message, turns, concurrency, f"{label}-c{concurrency}", timeout))
        phases[str(concurrency)] = phase.summary()
    return {
        "message": message,
        "warmup": {"turns": warmup, "errors": warm.errors, "reply_sample": warm.reply_sample},
        "phases": phases,
    }


# ---------------------------------------------------------------------------------------------
# the two stacks
# ---------------------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_rasa(process: Process, base_url: str, timeout: float) -> float:
    """Until the model is loaded. GET /status needs --enable-api, which neither stack passes (a 404 then);
    `rasa run` loads the model before it starts listening, so any answer, plus the REST channel's health
    route answering 200, means it is ready (scripts/run.sh waits the same way)."""

    def ready() -> bool:
        status = http_status(f"{base_url}/status")
        if status == 200:
            return True
        return status is not None and http_status(f"{base_url}/webhooks/rest/") == 200

    return wait_until(ready, process, timeout, f"{process.name} at {base_url}")


def our_endpoints(action_port: int) -> Dict[str, Any]:
    """The project's endpoints.yml with the action server moved to its port; the tracker store block kept."""
    project = yaml.safe_load((PROJECT_ROOT / "endpoints.yml").read_text(encoding="utf-8")) or {}
    tracker_store = project.get("tracker_store") or {"type": "channels.stores.ConfiguredSQLTrackerStore"}
    return {
        "action_endpoint": {"url": f"http://127.0.0.1:{action_port}/webhook"},
        "tracker_store": tracker_store,
    }


def bench_ours(
    work: Path, rasa_port: int, action_port: int, args: argparse.Namespace, processes: List[Process]
) -> Dict[str, Any]:
    if not MODEL.exists():
        raise FileNotFoundError(f"no trained model at {MODEL}: run `make train`")
    crm_url = f"sqlite:///{work / 'crm.sqlite'}"
    env = base_env(
        {
            "DATABASE_URL": crm_url,
            "TRACKER_DATABASE_URL": f"sqlite:///{work / 'tracker.sqlite'}",
            "HOSPITAL_FAKE_NOW": FAKE_NOW,
        }
    )
    print("our stack: migrating and seeding a temporary SQLite CRM", flush=True)
    seeding = Process("migrate+seed", [PYTHON, "-c", SEED_SCRIPT, crm_url], PROJECT_ROOT, env, work / "seed.log")
    try:
        if seeding.wait(timeout=300) != 0:
            raise RuntimeError(f"migrating/seeding the CRM failed:\n{seeding.log_tail()}")
    finally:
        seeding.stop()

    # `make train` builds the triage model; build it here too, or the action server would train it in the
    # background while the turns are measured.
    print("our stack: the triage model (trained once per data change)", flush=True)
    building = Process("triage model", [PYTHON, "-m", "bot.triage.departments"], PROJECT_ROOT, env, work / "triage.log")
    try:
        if building.wait(timeout=900) != 0:
            raise RuntimeError(f"building the triage model failed:\n{building.log_tail()}")
    finally:
        building.stop()

    endpoints = work / "endpoints.yml"
    endpoints.write_text(yaml.safe_dump(our_endpoints(action_port), sort_keys=False), encoding="utf-8")

    actions = Process(
        "action server",
        [PYTHON, "-m", "rasa_sdk", "--port", str(action_port), "--actions", "actions"],
        PROJECT_ROOT,
        env,
        work / "actions.log",
    )
    processes.append(actions)
    action_url = f"http://127.0.0.1:{action_port}"
    wait_until(lambda: http_status(f"{action_url}/health") == 200, actions, 120, f"action server at {action_url}")

    rasa = Process(
        "rasa server (ours)",
        [
            RASA,
            "run",
            "--model",
            str(MODEL.relative_to(PROJECT_ROOT)),
            "--port",
            str(rasa_port),
            "--interface",
            "127.0.0.1",
            "--endpoints",
            str(endpoints),
            "--credentials",
            "credentials.yml",
        ],
        PROJECT_ROOT,
        env,
        work / "rasa.log",
    )
    processes.append(rasa)
    record = _load_and_measure(
        rasa, [actions], rasa_port, f"our stack: loading the model ({MODEL.name})", args.message, "ours", args
    )
    record["action_server_tracebacks"] = actions.count_in_log("Traceback")
    return record


def ensure_rasa_init_model(timeout: float) -> Path:
    """`rasa init` once into bench/out/rasa_init (it trains its model: ~2 minutes of both cores); cached."""
    models = RASA_INIT_DIR / "models"
    existing = sorted(models.glob("*.tar.gz")) if models.is_dir() else []
    if existing:
        print(f"baseline: reusing {existing[-1].relative_to(PROJECT_ROOT)}", flush=True)
        return existing[-1]
    RASA_INIT_DIR.mkdir(parents=True, exist_ok=True)  # --no-prompt refuses a directory that does not exist
    print(f"baseline: rasa init --no-prompt --init-dir {RASA_INIT_DIR} (trains a model, a few minutes)", flush=True)
    init = Process(
        "rasa init",
        [RASA, "init", "--no-prompt", "--init-dir", str(RASA_INIT_DIR)],
        PROJECT_ROOT,
        base_env(),
        OUT_DIR / "rasa_init.log",
    )
    try:
        code = init.wait(timeout=timeout)
    finally:
        init.stop()
    existing = sorted(models.glob("*.tar.gz")) if models.is_dir() else []
    if code != 0 or not existing:
        raise RuntimeError(f"rasa init failed (code {code}); log {init.log_path}:\n{init.log_tail()}")
    return existing[-1]


def bench_baseline(work: Path, port: int, args: argparse.Namespace, processes: List[Process]) -> Dict[str, Any]:
    model = ensure_rasa_init_model(args.startup_timeout * 3)
    rasa = Process(
        "rasa server (rasa init)",
        [
            RASA,
            "run",
            "--model",
            str(model),
            "--port",
            str(port),
            "--interface",
            "127.0.0.1",
            "--endpoints",
            "endpoints.yml",
            "--credentials",
            "credentials.yml",
        ],
        RASA_INIT_DIR,
        base_env(),
        work / "rasa_init_server.log",
    )
    processes.append(rasa)
    record = _load_and_measure(rasa, [], port, f"baseline: loading {model.name}", args.baseline_message, "init", args)
    record["model"] = str(model.relative_to(PROJECT_ROOT))
    return record


def _load_and_measure(
    rasa: Process,
    helpers: List[Process],
    port: int,
    announce: str,
    message: str,
    label: str,
    args: argparse.Namespace,
) -> Dict[str, Any]:
    """Wait for the model to load, measure every concurrency, then stop the servers."""
    base_url = f"http://127.0.0.1:{port}"
    print(f"{announce} at {base_url}", flush=True)
    load_s = wait_for_rasa(rasa, base_url, args.startup_timeout)
    print(f"  ready after {load_s:.1f} s", flush=True)
    try:
        record = measure(base_url, message, label, args.warmup, args.turns, args.concurrency, args.request_timeout)
    finally:
        for process in (rasa, *helpers):
            process.stop()
    record["startup_s"] = load_s
    record["rasa_server_tracebacks"] = rasa.count_in_log("Traceback")
    return record


# ---------------------------------------------------------------------------------------------
# report
# ---------------------------------------------------------------------------------------------
def _ratio(ours: Optional[float], base: Optional[float]) -> Optional[float]:
    return ours / base if ours is not None and base else None


def _ms(value: Optional[float]) -> Optional[float]:
    return round(value, 1) if value is not None else None


def print_report(ours: Dict[str, Any], base: Optional[Dict[str, Any]], concurrencies: Sequence[int]) -> Dict:
    print()
    print(f"Latency of one turn through /webhooks/rest/webhook (ms); ours: {ours['message']!r}", end="")
    print(f", rasa init: {base['message']!r}" if base else " (baseline skipped)")
    rows = []
    for stack, record in (("ours", ours), ("rasa init", base)):
        if record is None:
            continue
        for c in concurrencies:
            s = record["phases"][str(c)]
            rows.append(
                [
                    stack,
                    c,
                    s["turns"],
                    s["errors"],
                    _ms(s["p50_ms"]),
                    _ms(s["p95_ms"]),
                    _ms(s["p99_ms"]),
                    _ms(s["mean_ms"]),
                    round(s["turns_per_s"], 1) if s["turns_per_s"] is not None else None,
                ]
            )
    print(format_table(["stack", "conc", "turns", "errors", "p50", "p95", "p99", "mean", "turns/s"], rows))

    ratios: Dict[str, Dict[str, Optional[float]]] = {}
    if base is not None:
        print()
        print("Side by side: ours vs rasa init (ratio = ours / rasa init; below 1.0 means ours is faster)")
        side = []
        for c in concurrencies:
            o, b = ours["phases"][str(c)], base["phases"][str(c)]
            r50, r95 = _ratio(o["p50_ms"], b["p50_ms"]), _ratio(o["p95_ms"], b["p95_ms"])
            ratios[str(c)] = {"p50": r50, "p95": r95}
            side.append(
                [
                    c,
                    _ms(o["p50_ms"]),
                    _ms(b["p50_ms"]),
                    round(r50, 2) if r50 is not None else None,
                    _ms(o["p95_ms"]),
                    _ms(b["p95_ms"]),
                    round(r95, 2) if r95 is not None else None,
                ]
            )
        print(format_table(["conc", "ours p50", "init p50", "ratio", "ours p95", "init p95", "ratio"], side))

    print()
    for label, record in (("ours", ours), ("rasa init", base)):
        if record is None:
            continue
        print(f"sample reply ({label}): {record['phases'][str(concurrencies[0])]['reply_sample']}")
        samples = [e for c in concurrencies for e in record["phases"][str(c)]["error_samples"]]
        if samples:
            print(f"error samples ({label}): {samples[:3]}")
    if ours.get("action_server_tracebacks") or ours.get("rasa_server_tracebacks"):
        print(
            f"WARNING: tracebacks in our logs: action server {ours['action_server_tracebacks']}, "
            f"rasa {ours['rasa_server_tracebacks']}"
        )

    at_target = ours["phases"].get(str(TARGET_CONCURRENCY))
    targets: Dict[str, Any] = {}
    p95 = at_target["p95_ms"] if at_target else None
    tps = at_target["turns_per_s"] if at_target else None
    targets["p95_ms_at_8"] = {
        "value": p95,
        "max": TARGET_P95_MS,
        "passed": None if p95 is None else p95 <= TARGET_P95_MS,
    }
    targets["turns_per_s_at_8"] = {
        "value": tps,
        "min": TARGET_TURNS_PER_S,
        "passed": None if tps is None else tps >= TARGET_TURNS_PER_S,
    }
    for c, pair in ratios.items():
        for stat, value in pair.items():
            targets[f"ratio_{stat}_c{c}"] = {
                "value": value,
                "max": TARGET_RATIO,
                "passed": None if value is None else value <= TARGET_RATIO,
            }
    if base is None:
        targets["ratio_to_rasa_init"] = {"value": None, "max": TARGET_RATIO, "passed": None}

    print()
    print("Targets (ours)")
    lines = [
        ["p95 at concurrency 8 <= 300 ms", _ms(p95), verdict(targets["p95_ms_at_8"]["passed"])],
        [
            "throughput at concurrency 8 >= 30 turns/s",
            round(tps, 1) if tps is not None else None,
            verdict(targets["turns_per_s_at_8"]["passed"]),
        ],
    ]
    for c, pair in ratios.items():
        for stat, value in pair.items():
            target = targets[f"ratio_{stat}_c{c}"]
            lines.append(
                [
                    f"ratio to rasa init <= 1.0 ({stat}, concurrency {c})",
                    round(value, 2) if value is not None else None,
                    verdict(target["passed"]),
                ]
            )
    if base is None:
        lines.append(["ratio to rasa init <= 1.0 (baseline skipped)", None, verdict(None)])
    print(format_table(["target", "value", "verdict"], lines))
    return {"ratios": ratios, "targets": targets}


def run(args: argparse.Namespace) -> Dict[str, Any]:
    concurrencies = sorted(set(args.concurrency))
    args.concurrency = concurrencies
    rasa_port, action_port, baseline_port = args.ports or (free_port(), free_port(), free_port())
    record: Dict[str, Any] = {
        "benchmark": NAME,
        "machine": machine_info(),
        "turns": args.turns,
        "warmup": args.warmup,
        "concurrency": concurrencies,
    }
    processes: List[Process] = []
    work = Path(tempfile.mkdtemp(prefix="bench-latency-"))
    try:
        ours = bench_ours(work, rasa_port, action_port, args, processes)
        base = None if args.skip_baseline else bench_baseline(work, baseline_port, args, processes)
    except BaseException:
        print(f"\nlogs kept in {work}", file=sys.stderr)
        raise
    finally:
        for process in reversed(processes):  # idempotent; covers exceptions and Ctrl-C mid-phase
            process.stop()
    shutil.rmtree(work, ignore_errors=True)
    record["ours"] = ours
    record["rasa_init"] = base
    record.update(print_report(ours, base, concurrencies))
    print(f"\nJSON: {write_json(NAME, record)}")
    return record


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.latency", description=__doc__.split("\n\n")[0])
    parser.add_argument("--turns", type=int, default=200, help="measured turns per concurrency (default 200)")
    parser.add_argument(
        "--concurrency", type=int, nargs="+", default=[1, 8], help="parallel clients, a list (default: 1 8)"
    )
    parser.add_argument("--warmup", type=int, default=20, help="turns before measuring, not recorded (default 20)")
    parser.add_argument("--skip-baseline", action="store_true", help="do not measure rasa init's assistant")
    parser.add_argument(
        "--ports",
        type=int,
        nargs=3,
        metavar=("RASA", "ACTIONS", "BASELINE"),
        help="ports for our Rasa server, our action server and the rasa init server (default: free ports)",
    )
    parser.add_argument("--message", default=BOOKING_MESSAGE, help="our turn's message")
    parser.add_argument("--baseline-message", default=BASELINE_MESSAGE, help="rasa init's turn's message")
    parser.add_argument("--request-timeout", type=float, default=30.0, help="seconds before a turn is an error")
    parser.add_argument("--startup-timeout", type=float, default=300.0, help="seconds to wait for a model to load")
    args = parser.parse_args(argv)
    if args.turns < 1 or args.warmup < 0 or min(args.concurrency) < 1:
        parser.error("--turns and --concurrency must be positive, --warmup not negative")
    return args


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    raise_on_sigterm()
    run(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
