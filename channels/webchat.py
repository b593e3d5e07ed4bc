"""Browser chat page for developing and demoing the hospital assistant.

Patients reach the assistant through WeChat, SMS and voice; none of those is handy while writing
stories or showing the bot to colleagues. This channel serves a small self-contained chat page
(``channels/static/webchat.html``, no external resources) and a JSON webhook for it, so a
developer can talk to a locally running ``rasa run`` from any browser. It has no authentication
and is not meant to be exposed to patients.

Enable it in ``credentials.yml`` with an empty entry::

    channels.webchat.WebChatInput:

Routes, mounted by Rasa under ``/webhooks/webchat``:

* ``GET  /``        the chat page
* ``GET  /health``  ``{"status": "ok"}``
* ``POST /webhook`` ``{"sender", "message", "metadata"?}`` -> list of bot messages, the same
  contract as Rasa's REST channel.

Unlike ``RestInput`` the webhook validates its input (400 with ``{"error": ...}``), always records
``input_channel="webchat"`` (RestInput lets the client pick it) and reports handler failures as 500
instead of answering 200 with whatever was collected.
"""

import json
import logging
import re
from functools import lru_cache
from pathlib import Path
from typing import Any, Awaitable, Callable, Dict, Optional, Tuple

from rasa.core.channels.channel import CollectingOutputChannel, UserMessage
from rasa.core.channels.rest import RestInput
from sanic import Blueprint, response
from sanic.request import Request
from sanic.response import HTTPResponse

from bot.observability import metered
from channels.common import retrying

logger = logging.getLogger(__name__)

PAGE_PATH = Path(__file__).resolve().parent / "static" / "webchat.html"
MAX_MESSAGE_CHARS = 2000
SENDER_ID_PATTERN = re.compile(r"[A-Za-z0-9_-]{1,64}")

# The page is self-contained: it may only run its inline code and call back to this server.
PAGE_HEADERS = {
    "Cache-Control": "no-cache",
    "X-Content-Type-Options": "nosniff",
    "Content-Security-Policy": (
        "default-src 'none'; style-src 'unsafe-inline'; script-src 'unsafe-inline'; "
        "connect-src 'self'; img-src 'self' https: data:; base-uri 'none'; form-action 'none'"
    ),
}

Metadata = Optional[Dict[str, Any]]


class BadRequest(ValueError):
    """A malformed webhook request; the message is returned to the client as is."""


@lru_cache(maxsize=1)
def load_page() -> str:
    """Reads the chat page once, on the first request."""
    return PAGE_PATH.read_text(encoding="utf-8")


def parse_webhook_body(raw: bytes) -> Tuple[str, str, Metadata]:
    """Validates a webhook body and returns (sender id, stripped message, metadata)."""
    try:
        body = json.loads(raw or b"")
    except ValueError:  # covers JSONDecodeError and UnicodeDecodeError
        raise BadRequest("request body must be a JSON object") from None
    if not isinstance(body, dict):
        raise BadRequest("request body must be a JSON object")

    sender = body.get("sender")
    if not isinstance(sender, str):
        raise BadRequest("'sender' is required and must be a string")
    if not SENDER_ID_PATTERN.fullmatch(sender):
        raise BadRequest("'sender' must be 1-64 characters of A-Z, a-z, 0-9, '_' or '-'")

    message = body.get("message")
    if not isinstance(message, str):
        raise BadRequest("'message' is required and must be a string")
    text = message.strip()
    if not text:
        raise BadRequest("'message' must not be empty")
    if len(text) > MAX_MESSAGE_CHARS:
        raise BadRequest(f"'message' must be at most {MAX_MESSAGE_CHARS} characters")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # lone surrogates smuggled in via \ud83d-style escapes
        raise BadRequest("'message' must be valid Unicode text") from None

    metadata = body.get("metadata")
    if metadata is not None and not isinstance(metadata, dict):
        raise BadRequest("'metadata' must be a JSON object")
    return sender, text, metadata


class WebChatInput(RestInput):
    """Developer web chat: an HTML page plus a validating REST-style webhook."""

    @classmethod
    def name(cls) -> str:
        return "webchat"

    def blueprint(self, on_new_message: Callable[[UserMessage], Awaitable[Any]]) -> Blueprint:
        # counted and timed; run again while a store restarts (the patient's message is not lost)
        on_new_message = metered(retrying(on_new_message, deadline=20.0), "webchat")
        # RestInput.blueprint already binds GET "/" to its health check, which clashes with the
        # page, and it does no validation, so the routes are defined here from scratch.
        webchat = Blueprint(f"custom_webhook_{type(self).__name__}")

        @webchat.route("/", methods=["GET"])
        async def page(request: Request) -> HTTPResponse:
            return response.html(load_page(), headers=PAGE_HEADERS)

        @webchat.route("/health", methods=["GET"])
        async def health(request: Request) -> HTTPResponse:
            return response.json({"status": "ok"})

        @webchat.route("/webhook", methods=["POST"])
        async def receive(request: Request) -> HTTPResponse:
            try:
                sender_id, text, metadata = parse_webhook_body(request.body)
            except BadRequest as error:
                return response.json({"error": str(error)}, status=400)

            collector = CollectingOutputChannel()
            message = UserMessage(text, collector, sender_id, input_channel=self.name(), metadata=metadata)
            try:
                await on_new_message(message)
            except Exception:
                logger.exception("webchat: failed to handle a message from %s", sender_id)
                return response.json({"error": "the assistant failed to handle the message"}, status=500)
            return response.json(collector.messages)

        return webchat
