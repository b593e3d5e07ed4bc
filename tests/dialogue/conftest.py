"""The trained agent, loaded once per test session, talking to the real action server.

The action server runs as a subprocess (`rasa run actions`) on a fresh, seeded SQLite CRM, with the same
fixed clock as this process. Tests talk to the agent in-process, the way a channel would.
"""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterator, List

import pytest

from tests.conftest import PROJECT_ROOT, migrate_and_seed

MODEL = PROJECT_ROOT / "models" / "current.tar.gz"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session")
def event_loop_for_agent() -> Iterator[asyncio.AbstractEventLoop]:
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


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


@pytest.fixture(scope="session")
def agent(action_server: str, event_loop_for_agent: asyncio.AbstractEventLoop) -> Any:
    if not MODEL.exists():
        pytest.fail(f"no trained model at {MODEL}: run `make train` (make test does it)")
    import logging

    from rasa.core.agent import Agent
    from rasa.utils.endpoints import EndpointConfig
    from rasa.utils.log_utils import configure_structlog

    configure_structlog(logging.WARNING)
    asyncio.set_event_loop(event_loop_for_agent)
    return event_loop_for_agent.run_until_complete(_load(Agent, MODEL, EndpointConfig(action_server)))


async def _load(agent_class: Any, model: Path, endpoint: Any) -> Any:
    return agent_class.load(str(model), action_endpoint=endpoint)


@dataclass
class Conversation:
    """One patient writing to the assistant on a channel; `say` returns the bot's messages."""

    agent: Any
    loop: asyncio.AbstractEventLoop
    sender_id: str
    channel: str = "webchat"
    transcript: List[str] = field(default_factory=list)

    def say(self, text: str) -> List[Dict[str, Any]]:
        from rasa.core.channels.channel import CollectingOutputChannel, UserMessage

        output = CollectingOutputChannel()
        message = UserMessage(text, output, self.sender_id, input_channel=self.channel)
        self.loop.run_until_complete(self.agent.handle_message(message))
        self.transcript.append(f"patient: {text}")
        self.transcript.extend(f"bot: {m.get('text')}" for m in output.messages)
        return output.messages

    def say_text(self, text: str) -> str:
        """All the bot's replies to `text`, joined, with button titles."""
        parts = []
        for message in self.say(text):
            parts.append(message.get("text") or "")
            parts.extend(button["title"] for button in message.get("buttons") or [])
        return "\n".join(parts)

    def tracker(self) -> Any:
        return self.loop.run_until_complete(self.agent.tracker_store.retrieve(self.sender_id))


@pytest.fixture
def conversation(agent: Any, event_loop_for_agent: asyncio.AbstractEventLoop, request: pytest.FixtureRequest):
    sender = f"t-{request.node.name[:40]}-{time.time_ns() % 10**9}"
    return Conversation(agent, event_loop_for_agent, sender)


def pytest_collection_modifyitems(items: List[pytest.Item]) -> None:
    for item in items:
        if "tests/dialogue" in str(item.fspath):
            item.add_marker(pytest.mark.slow)
