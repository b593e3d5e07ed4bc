"""The trained agent, loaded once per test session, talking to the real action server.

The action server runs as a subprocess (`rasa run actions`) on a fresh, seeded SQLite CRM, with the same
fixed clock as this process. Tests talk to the agent in-process, the way a channel would.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterator, List

import pytest

from tests.conftest import PROJECT_ROOT

MODEL = PROJECT_ROOT / "models" / "current.tar.gz"


@pytest.fixture(scope="session")
def event_loop_for_agent() -> Iterator[asyncio.AbstractEventLoop]:
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


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
