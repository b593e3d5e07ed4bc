"""The whole assistant as it runs in production: `rasa run` with the WeChat, SMS and voice channels, the action
server, the CRM, Redis (when reachable) for the channels' shared state, and the provider sandbox standing in for
WeChat and Twilio. One Rasa server per test session (loading the model takes a while)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterator, List

import pytest
import requests

from tests.conftest import PROJECT_ROOT, REDIS_TEST_URL, _free_port, _reachable, require_server

MODEL = PROJECT_ROOT / "models" / "current.tar.gz"
CREDENTIALS = """
channels.wechat.WeChatInput:
channels.twilio_sms.TwilioSmsInput:
channels.twilio_voice.TwilioVoiceInput:
channels.metrics.MetricsInput:
"""
ENDPOINTS = """
action_endpoint:
  url: "{actions}"
tracker_store:
  type: channels.stores.ConfiguredSQLTrackerStore
"""


@dataclass
class RasaServer:
    url: str
    log: Path
    tracker_db: str

    def tracker(self, sender_id: str) -> Dict[str, Any]:
        response = requests.get(f"{self.url}/conversations/{sender_id}/tracker", timeout=30)
        response.raise_for_status()
        return response.json()

    def user_texts(self, sender_id: str) -> List[str]:
        return [e.get("text") for e in self.tracker(sender_id)["events"] if e.get("event") == "user"]

    def bot_texts(self, sender_id: str) -> List[str]:
        return [e.get("text") or "" for e in self.tracker(sender_id)["events"] if e.get("event") == "bot"]


def pytest_collection_modifyitems(items: List[pytest.Item]) -> None:
    for item in items:
        if "tests/e2e" in str(item.fspath):
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session")
def rasa_server(
    action_server: str, dialogue_db: str, sandbox_server: Any, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RasaServer]:
    if not MODEL.exists():
        pytest.fail(f"no trained model at {MODEL}: run `make train` (make test does it)")
    workdir = tmp_path_factory.mktemp("rasa_server")
    (workdir / "credentials.yml").write_text(CREDENTIALS, encoding="utf-8")
    (workdir / "endpoints.yml").write_text(ENDPOINTS.format(actions=action_server), encoding="utf-8")
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    tracker_db = f"sqlite:///{workdir / 'tracker.sqlite'}"
    env = {
        **os.environ,
        "DATABASE_URL": dialogue_db,
        "TRACKER_DATABASE_URL": tracker_db,
        "SANDBOX_URL": sandbox_server.url,
        "PUBLIC_BASE_URL": url,
    }
    for name in ("WECHAT_API_BASE", "TWILIO_API_BASE"):
        env.pop(name, None)
    if os.environ.get("CI", "").lower() == "true" or _reachable(REDIS_TEST_URL, 6379):
        require_server("Redis", REDIS_TEST_URL, 6379, "redis-server --daemonize yes --port 6379")
        env["REDIS_URL"] = REDIS_TEST_URL  # the channels' seen-message and choice state, shared like production
    log = workdir / "rasa.log"
    command = [
        str(Path(sys.executable).with_name("rasa")),
        "run",
        "--model", str(MODEL),
        "--port", str(port),
        "--interface", "127.0.0.1",
        "--enable-api",
        "--credentials", str(workdir / "credentials.yml"),
        "--endpoints", str(workdir / "endpoints.yml"),
    ]  # fmt: skip
    with open(log, "w") as out:
        process = subprocess.Popen(command, cwd=PROJECT_ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    deadline = time.time() + 300
    while time.time() < deadline:
        if process.poll() is not None:
            pytest.fail(f"rasa run exited: {log.read_text()[-3000:]}")
        try:
            urllib.request.urlopen(f"{url}/webhooks/wechat/health", timeout=1)
            break
        except OSError:
            time.sleep(0.5)
    else:
        process.kill()
        pytest.fail("rasa run did not start within 300 s")
    try:
        yield RasaServer(url, log, tracker_db)
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
    text = log.read_text()
    if "Traceback" in text:
        first = text.index("Traceback")
        excerpt = text[max(0, first - 600) : first + 3000]
        raise AssertionError(f"the Rasa server raised during the tests ({log}):\n{excerpt}")
