"""A channel's blueprint on a real Sanic server in a background thread, with a scripted bot behind it.

The server keeps running between requests, so what a channel does after answering (a push through the
customer-service API, an SMS sent after the webhook returned) really happens while the test waits for it.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, Dict, List, Optional
from urllib.parse import urljoin

import requests
from rasa.core.channels.channel import InputChannel, UserMessage
from sanic import Sanic

Bot = Callable[[UserMessage], Awaitable[Any]]


@dataclass
class ScriptedBot:
    """Answers like Rasa would: through the message's output channel. Records every turn it ran."""

    turns: List[UserMessage] = field(default_factory=list)
    delay: float = 0.0

    async def __call__(self, message: UserMessage) -> None:
        self.turns.append(message)
        if self.delay:
            await asyncio.sleep(self.delay)
        text = message.text or ""
        out, sender = message.output_channel, message.sender_id
        if text == "/boom":
            raise RuntimeError("the bot failed")
        if text in ("/buttons", "给我选项"):
            buttons = [
                {"title": "预约挂号", "payload": "/book_appointment"},
                {"title": "我的预约", "payload": "/query"},
            ]
            await out.send_text_with_buttons(sender, "请选择：", buttons)
            return
        if text == "/long":
            await out.send_text_message(sender, "。".join(["这是一段很长的就医须知" * 3] * 40) + "。")
            return
        if text == "/two":
            await out.send_text_message(sender, "第一条")
            await out.send_text_message(sender, "第二条")
            return
        await out.send_text_message(sender, f"收到：{text}")

    def texts(self) -> List[str]:
        return [turn.text or "" for turn in self.turns]


class ChannelServer:
    def __init__(self, channel: InputChannel, bot: Bot) -> None:
        self.channel = channel
        self.bot = bot
        self.loop = asyncio.new_event_loop()
        self.app = Sanic(f"channel_test_{uuid.uuid4().hex}")
        # Sanic rewrites its own methods ("touch-up") when an app starts; test mode keeps the originals, so a
        # second app in the same process can start too.
        Sanic.test_mode = True
        prefix = urljoin("/webhooks/", channel.url_prefix())
        self.app.blueprint(channel.blueprint(bot), url_prefix=prefix)
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self.base_url = ""
        self.prefix = prefix
        self.error: Optional[BaseException] = None

    def _serve(self) -> None:
        try:
            self._start()
        except BaseException as error:  # surfaced by __enter__
            self.error = error
            self._ready.set()
            return
        self.loop.run_forever()

    def _start(self) -> None:
        asyncio.set_event_loop(self.loop)

        # Sanic reads port=0 as "the default, 8000": bind an ephemeral port ourselves.
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))

        async def start() -> Any:
            server = await self.app.create_server(sock=sock, return_asyncio_server=True, access_log=False)
            await server.startup()
            return server

        self.server = self.loop.run_until_complete(start())
        port = self.server.server.sockets[0].getsockname()[1]
        self.base_url = f"http://127.0.0.1:{port}"
        self._ready.set()

    def __enter__(self) -> ChannelServer:
        self._thread.start()
        assert self._ready.wait(10), "the channel server did not start"
        if self.error is not None:
            raise self.error
        return self

    def __exit__(self, *exc: Any) -> None:
        async def stop() -> None:
            self.server.close()
            await self.server.wait_closed()

        asyncio.run_coroutine_threadsafe(stop(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)

    def url(self, path: str = "/") -> str:
        return self.base_url + self.prefix.rstrip("/") + path

    def post(
        self, path: str, *, params: Optional[Dict[str, str]] = None, data: Any = None, **kw: Any
    ) -> requests.Response:
        return requests.post(self.url(path), params=params, data=data, timeout=15, **kw)

    def get(self, path: str, *, params: Optional[Dict[str, str]] = None) -> requests.Response:
        return requests.get(self.url(path), params=params, timeout=15)


def wait_until(predicate: Callable[[], Any], timeout: float = 10.0, interval: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout:.1f} s")
        time.sleep(interval)
