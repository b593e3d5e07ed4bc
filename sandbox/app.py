"""Builds the sandbox's aiohttp application: fake WeChat and Twilio APIs, the control API and the page."""

from __future__ import annotations

from typing import Optional

from aiohttp import web

from sandbox import control, twilio_api, wechat_api
from sandbox.runtime import BOT_URL, STATE, start_http, stop_http
from sandbox.state import SandboxState

DEFAULT_BOT_URL = "http://127.0.0.1:5005"


def create_app(state: Optional[SandboxState] = None, *, bot_url: str = DEFAULT_BOT_URL) -> web.Application:
    """The whole sandbox. `bot_url` is where the page delivers what a patient writes (the Rasa server)."""
    app = web.Application(client_max_size=4 * 1024 * 1024)
    app[STATE] = state if state is not None else SandboxState()
    app[BOT_URL] = bot_url.rstrip("/")
    app.on_startup.append(start_http)
    app.on_cleanup.append(stop_http)
    wechat_api.add_routes(app)
    twilio_api.add_routes(app)
    control.add_routes(app)
    return app
