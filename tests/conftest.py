"""Shared fixtures: fresh CRM databases (SQLite and the real PostgreSQL), a fixed clock, the trained
Rasa agent loaded once per session, and the real action server in a subprocess.

PostgreSQL (PG_TEST_URL) and Redis (REDIS_TEST_URL) are real servers. When one is down, its tests are
skipped with a plain message; with CI=true a missing server fails the run instead.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from datetime import datetime
from pathlib import Path
from typing import Callable, Iterator

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine.url import make_url
from zoneinfo import ZoneInfo

# A fixed Monday morning in Shanghai, for every process this test run starts (see bot.clock).
FAKE_NOW = datetime(2026, 11, 23, 9, 0, tzinfo=ZoneInfo("Asia/Shanghai"))
os.environ.setdefault("HOSPITAL_FAKE_NOW", FAKE_NOW.isoformat())
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("RASA_TELEMETRY_ENABLED", "false")

from bot import clock  # noqa: E402  (reads HOSPITAL_FAKE_NOW at import)

PROJECT_ROOT = Path(__file__).resolve().parent.parent
PG_TEST_URL = os.environ.get("PG_TEST_URL", "postgresql://postgres@127.0.0.1:5432/test")
REDIS_TEST_URL = os.environ.get("REDIS_TEST_URL", "redis://127.0.0.1:6379/15")
IN_CI = os.environ.get("CI", "").lower() == "true"


def _reachable(url: str, default_port: int) -> bool:
    parsed = make_url(url) if "://" in url else None
    host = (parsed.host if parsed else None) or "127.0.0.1"
    port = (parsed.port if parsed else None) or default_port
    try:
        with socket.create_connection((host, port), timeout=2):
            return True
    except OSError:
        return False


def require_server(name: str, url: str, default_port: int, how_to_start: str) -> None:
    if _reachable(url, default_port):
        return
    message = f"{name} is not reachable at {url}. Start it with: {how_to_start}"
    if IN_CI:
        pytest.fail(f"CI=true requires {name}: {message}", pytrace=False)
    pytest.skip(message)


def pytest_sessionstart(session: pytest.Session) -> None:
    """Say plainly which real servers are missing; with CI=true that ends the run as a failure."""
    missing = [
        f"{name} ({url})"
        for name, url, port in (("PostgreSQL", PG_TEST_URL, 5432), ("Redis", REDIS_TEST_URL, 6379))
        if not _reachable(url, port)
    ]
    if not missing:
        return
    message = "not reachable: " + ", ".join(missing) + "; the tests that need them are skipped"
    if IN_CI:
        pytest.exit(f"CI=true requires every server, but {message}", returncode=1)
    print(f"\nNOTE: {message}.", flush=True)


def pytest_report_header(config: pytest.Config) -> list:
    lines = []
    for name, url, port in (("PostgreSQL", PG_TEST_URL, 5432), ("Redis", REDIS_TEST_URL, 6379)):
        state = "reachable" if _reachable(url, port) else "NOT reachable: its tests will be skipped"
        lines.append(f"{name} {url}: {state}{' (CI=true: missing servers fail)' if IN_CI else ''}")
    return lines


@pytest.fixture(autouse=True)
def fixed_clock() -> Iterator[datetime]:
    """Every test starts on the fixed Monday morning; tests may move clock.now_override."""
    clock.now_override = FAKE_NOW
    yield FAKE_NOW
    clock.now_override = FAKE_NOW


# ----------------------------------------------------------------------------------------------
# databases
# ----------------------------------------------------------------------------------------------
def migrate_and_seed(url: str, days: int = 14) -> str:
    from bot import db, seed

    db.upgrade(url)
    seed.seed(days=days, url=url)
    return url


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'crm.sqlite'}"


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A fresh schema in the real PostgreSQL for one test, dropped afterwards."""
    require_server(
        "PostgreSQL", PG_TEST_URL, 5432, "pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start"
    )
    schema = f"t_{uuid.uuid4().hex[:12]}"
    admin = create_engine(PG_TEST_URL, future=True)
    with admin.begin() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    url = make_url(PG_TEST_URL).update_query_dict({"options": f"-csearch_path={schema}"})
    yield url.render_as_string(hide_password=False)
    from bot.db import get_engine

    get_engine(url.render_as_string(hide_password=False)).dispose()
    with admin.begin() as conn:
        conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
    admin.dispose()


@pytest.fixture(params=["sqlite", "postgres"])
def crm_url(request: pytest.FixtureRequest) -> str:
    """A migrated, seeded CRM on each backend."""
    url = request.getfixturevalue("sqlite_url" if request.param == "sqlite" else "postgres_url")
    return migrate_and_seed(url)


def forget_process_settings() -> None:
    """Clear what bot/ reads from the environment once per process: settings, engines, provider settings and
    clients, the key-value store. The next use reads the (test's) environment again."""
    from bot import config, db, kv
    from bot.outbound import providers, settings

    for cached in (config.get_settings, db.get_engine, db.get_session_factory, settings.get_provider_settings,
                   kv.get_store):  # fmt: skip
        cached.cache_clear()
    providers._default = None


@pytest.fixture
def process_settings(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., None]]:
    """`process_settings(DATABASE_URL=..., SANDBOX_URL=...)`: this process's bot/ on that environment for the
    test; everything read from it is forgotten again afterwards."""

    def point(**environment: str) -> None:
        for name, value in environment.items():
            monkeypatch.setenv(name, value)
        forget_process_settings()

    yield point
    forget_process_settings()


@pytest.fixture
def crm(crm_url: str, process_settings: Callable[..., None]) -> str:
    """Point bot.db's default engine (what actions use) at the test database."""
    process_settings(DATABASE_URL=crm_url)
    return crm_url


# ----------------------------------------------------------------------------------------------
# the action server, shared by the in-process agent (tests/dialogue) and the Rasa server (tests/e2e)
# ----------------------------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session")
def dialogue_db(tmp_path_factory: pytest.TempPathFactory) -> str:
    url = f"sqlite:///{tmp_path_factory.mktemp('dialogue') / 'crm.sqlite'}"
    return migrate_and_seed(url)


@pytest.fixture(scope="session")
def action_server(dialogue_db: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    port = _free_port()
    log = tmp_path_factory.mktemp("logs") / "actions.log"
    env = {**os.environ, "DATABASE_URL": dialogue_db}
    with open(log, "w") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "rasa_sdk", "--port", str(port), "--actions", "actions"],
            cwd=PROJECT_ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 60
    while time.time() < deadline:
        if process.poll() is not None:
            pytest.fail(f"action server exited: {log.read_text()[-2000:]}")
        try:
            urllib.request.urlopen(f"{url}/health", timeout=1)
            break
        except OSError:
            time.sleep(0.3)
    else:
        process.kill()
        pytest.fail("action server did not start within 60 s")
    yield f"{url}/webhook"
    process.terminate()
    process.wait(timeout=10)
    errors = [line for line in log.read_text().splitlines() if "Traceback" in line]
    assert not errors, f"the action server raised during the tests; see {log}"


# ----------------------------------------------------------------------------------------------
# the provider sandbox (WeChat and Twilio APIs on loopback), one per session
# ----------------------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def sandbox_server() -> Iterator[object]:
    from sandbox.testing import run_sandbox

    with run_sandbox() as running:
        yield running


@pytest.fixture
def sandbox(sandbox_server: object) -> Iterator[object]:
    """The session's sandbox with nothing recorded and no faults armed."""
    sandbox_server.reset()  # type: ignore[attr-defined]
    yield sandbox_server


@pytest.fixture
def providers_env(
    sandbox: object, sqlite_url: str, monkeypatch: pytest.MonkeyPatch, process_settings: Callable[..., None]
) -> object:
    """The real wechatpy and twilio clients of `bot.outbound` aimed at the sandbox, a migrated SQLite CRM as the
    default database, and a fresh in-memory key-value store (seen messages, choices, the WeChat token)."""
    migrate_and_seed(sqlite_url, days=2)
    for name in ("WECHAT_API_BASE", "TWILIO_API_BASE", "REDIS_URL"):
        monkeypatch.delenv(name, raising=False)
    process_settings(DATABASE_URL=sqlite_url, SANDBOX_URL=sandbox.url)  # type: ignore[attr-defined]
    return sandbox


@pytest.fixture
def crm_default(sqlite_url: str, process_settings: Callable[..., None]) -> str:
    """A migrated, seeded SQLite CRM as bot.db's default database."""
    migrate_and_seed(sqlite_url, days=2)
    process_settings(DATABASE_URL=sqlite_url)
    return sqlite_url
