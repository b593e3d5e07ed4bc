"""Tests of the developer web chat channel (channels/webchat.py) without a trained model.

sanic-testing is not installed alongside Rasa, so the channel's blueprint is mounted on a real Sanic
app served on an ephemeral localhost port and driven with aiohttp. One event loop, owned by the
module fixture, runs both the server and the client requests, so the tests themselves stay sync.
"""

import asyncio
import json
import uuid
from dataclasses import dataclass
from typing import Any, Dict, Iterator, List, Optional
from urllib.parse import urljoin

import aiohttp
import pytest
from rasa.core.channels.channel import UserMessage
from sanic import Sanic

from channels.webchat import WebChatInput

PREFIX = "/webhooks/webchat"
SENDER = "web-0123456789ab"


@dataclass
class Reply:
    status: int
    content_type: str
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)

    def text(self) -> str:
        return self.body.decode("utf-8")


class ChatServer:
    """A running Sanic app with the webchat blueprint, plus a sync HTTP client for it."""

    def __init__(self, loop: asyncio.AbstractEventLoop, base_url: str, received: List[UserMessage]):
        self.loop = loop
        self.base_url = base_url
        self.received = received

    def request(self, method: str, path: str, **kwargs: Any) -> Reply:
        return self.loop.run_until_complete(self._request(method, path, **kwargs))

    def post(self, payload: Any = None, raw: Optional[bytes] = None) -> Reply:
        data = raw if raw is not None else json.dumps(payload).encode("utf-8")
        headers = {"Content-Type": "application/json"}
        return self.request("POST", "/webhook", data=data, headers=headers)

    async def _request(self, method: str, path: str, **kwargs: Any) -> Reply:
        timeout = aiohttp.ClientTimeout(total=5)
        async with aiohttp.ClientSession(timeout=timeout) as session, session.request(
            method, self.base_url + path, **kwargs
        ) as response:
            return Reply(response.status, response.headers.get("Content-Type", ""), await response.read())


@pytest.fixture(scope="module")
def chat() -> Iterator[ChatServer]:
    received: List[UserMessage] = []

    async def on_new_message(message: UserMessage) -> None:
        received.append(message)
        if message.text == "/boom":
            raise RuntimeError("handler failure")
        if message.text == "/buttons":
            buttons = [{"title": "挂号", "payload": "/book"}, {"title": "取消", "payload": "/cancel"}]
            await message.output_channel.send_text_with_buttons(message.sender_id, "请选择", buttons)
            return
        await message.output_channel.send_text_message(message.sender_id, "echo:" + message.text)

    channel = WebChatInput()
    app = Sanic(f"webchat_test_{uuid.uuid4().hex}")
    # Same prefix as rasa.core.channels.channel.register(..., route="/webhooks/").
    app.blueprint(channel.blueprint(on_new_message), url_prefix=urljoin("/webhooks/", channel.url_prefix()))

    async def start() -> Any:
        server = await app.create_server(host="127.0.0.1", port=0, return_asyncio_server=True, access_log=False)
        # Sanic 21.12 has already awaited the AsyncioServer (the socket is bound); startup() finalizes
        # the routes. Awaiting it a second time would fail with "cannot reuse already awaited coroutine".
        await server.startup()
        return server

    loop = asyncio.new_event_loop()
    server = loop.run_until_complete(start())
    port = server.server.sockets[0].getsockname()[1]
    try:
        yield ChatServer(loop, f"http://127.0.0.1:{port}{PREFIX}", received)
    finally:
        server.close()
        loop.run_until_complete(server.wait_closed())
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()


def test_page_is_served_as_html(chat: ChatServer) -> None:
    reply = chat.request("GET", "/")
    assert reply.status == 200
    assert reply.content_type.startswith("text/html")
    assert "charset=utf-8" in reply.content_type.lower()
    page = reply.text()
    assert "<title>智慧医院助手</title>" in page
    for testid in ("chat-input", "chat-send", "bot-message", "bot-button"):
        assert f'data-testid="{testid}"' in page or f'"data-testid", "{testid}"' in page
    # Self-contained: no external scripts, stylesheets or fonts.
    assert "<link" not in page
    assert 'src="http' not in page
    assert "@import" not in page


def test_health(chat: ChatServer) -> None:
    reply = chat.request("GET", "/health")
    assert reply.status == 200
    assert reply.json() == {"status": "ok"}


def test_message_round_trips_on_webchat_channel(chat: ChatServer) -> None:
    reply = chat.post(
        {"sender": SENDER, "message": "  你好  ", "metadata": {"source": "test"}, "input_channel": "rest"}
    )
    assert reply.status == 200
    assert reply.json() == [{"recipient_id": SENDER, "text": "echo:你好"}]
    message = chat.received[-1]
    assert message.input_channel == "webchat"  # the client cannot override it
    assert message.sender_id == SENDER
    assert message.text == "你好"
    assert message.metadata == {"source": "test"}


def test_emoji_message_round_trips_intact(chat: ChatServer) -> None:
    reply = chat.post({"sender": SENDER, "message": "我想挂号😀"})
    assert reply.status == 200
    assert reply.json() == [{"recipient_id": SENDER, "text": "echo:我想挂号😀"}]
    assert chat.received[-1].text == "我想挂号😀"


def test_buttons_are_returned(chat: ChatServer) -> None:
    reply = chat.post({"sender": SENDER, "message": "/buttons"})
    assert reply.status == 200
    assert reply.json() == [
        {
            "recipient_id": SENDER,
            "text": "请选择",
            "buttons": [{"title": "挂号", "payload": "/book"}, {"title": "取消", "payload": "/cancel"}],
        }
    ]


@pytest.mark.parametrize("sender", ["a", "x" * 64, "Web_user-01", SENDER])
def test_valid_sender_ids_and_longest_message_are_accepted(chat: ChatServer, sender: str) -> None:
    reply = chat.post({"sender": sender, "message": "挂" * 2000})
    assert reply.status == 200
    assert reply.json()[0]["recipient_id"] == sender


BAD_REQUESTS: Dict[str, Dict[str, Any]] = {
    "not json": {"raw": b"sender=web-1&message=hi"},
    "not utf-8": {"raw": b'{"sender": "web-1", "message": "\xff\xfe"}'},
    "empty body": {"raw": b""},
    "json array": {"payload": [SENDER, "hi"]},
    "missing sender": {"payload": {"message": "hi"}},
    "sender not a string": {"payload": {"sender": 12345, "message": "hi"}},
    "empty sender": {"payload": {"sender": "", "message": "hi"}},
    "sender too long": {"payload": {"sender": "x" * 65, "message": "hi"}},
    "sender with space": {"payload": {"sender": "web 1", "message": "hi"}},
    "sender with slash": {"payload": {"sender": "../web", "message": "hi"}},
    "sender with trailing newline": {"payload": {"sender": "web-1\n", "message": "hi"}},
    "non-ascii sender": {"payload": {"sender": "患者1", "message": "hi"}},
    "missing message": {"payload": {"sender": SENDER}},
    "message not a string": {"payload": {"sender": SENDER, "message": ["hi"]}},
    "empty message": {"payload": {"sender": SENDER, "message": ""}},
    "blank message": {"payload": {"sender": SENDER, "message": " \n\t　"}},
    "message too long": {"payload": {"sender": SENDER, "message": "挂" * 2001}},
    "lone surrogate": {"raw": b'{"sender": "web-1", "message": "\\ud83d"}'},
    "metadata not an object": {"payload": {"sender": SENDER, "message": "hi", "metadata": "x"}},
}


@pytest.mark.parametrize("case", BAD_REQUESTS.values(), ids=BAD_REQUESTS.keys())
def test_bad_requests_are_rejected(chat: ChatServer, case: Dict[str, Any]) -> None:
    handled_before = len(chat.received)
    reply = chat.post(case.get("payload"), raw=case.get("raw"))
    assert reply.status == 400
    assert reply.content_type.startswith("application/json")
    error = reply.json()["error"]
    assert isinstance(error, str)
    assert error
    assert len(chat.received) == handled_before  # never reaches the assistant


def test_handler_failure_is_a_json_500(chat: ChatServer) -> None:
    reply = chat.post({"sender": SENDER, "message": "/boom"})
    assert reply.status == 500
    assert "error" in reply.json()
