"""What the WeChat, SMS and voice channels share: dropping provider retries, numbered choices, merging the
bot's messages into one, masking addresses for logs, and reading form bodies the way Twilio signs them.

State lives in `bot.kv` (Redis when `REDIS_URL` is set), so several Rasa processes agree on it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
from typing import Any, Dict, Iterable, List, Optional, Sequence
from urllib.parse import parse_qsl

from bot.kv import KeyValueStore, get_store
from bot.outbound.providers import Choice, OutboundMessage, numbered_text

logger = logging.getLogger(__name__)

SEEN_TTL = 24 * 3600.0  # providers retry within minutes; a day is generous and bounded
CHOICES_TTL = 24 * 3600.0
_DIGITS = str.maketrans("０１２３４５６７８９", "0123456789")
_CHOICE_REPLY = re.compile(r"^\s*(?:第|选)?\s*(\d{1,2})\s*(?:个|号|项)?\s*[。.!！]?\s*$")


class Deduplicator:
    """Remembers which provider message ids were handled, so a retry is answered without a second turn."""

    def __init__(self, namespace: str, store: Optional[KeyValueStore] = None, ttl: float = SEEN_TTL) -> None:
        self.namespace = namespace
        self.ttl = ttl
        self._store = store

    @property
    def store(self) -> KeyValueStore:
        return self._store or get_store()

    def first_time(self, message_key: str) -> bool:
        """True exactly once per key across every process sharing the store.

        Fails open: when the store cannot be reached the message is handled (a rare duplicate answer beats a
        lost patient message), and the error is logged."""
        try:
            return self.store.add(f"seen:{self.namespace}:{message_key}", "processing", self.ttl)
        except Exception as error:  # redis.ConnectionError, TimeoutError...
            logger.warning(
                "%s: seen-message store unavailable (%s): handling the message anyway",
                self.namespace,
                type(error).__name__,
            )
            return True

    def remember_reply(self, message_key: str, reply: str) -> None:
        """Keep the answer given to a message, for a retry that arrives after it (the first answer was lost)."""
        try:
            self.store.set(f"seen:{self.namespace}:{message_key}", "reply:" + reply, self.ttl)
        except Exception as error:
            logger.warning("%s: could not keep a reply (%s)", self.namespace, type(error).__name__)

    def reply_for(self, message_key: str) -> Optional[str]:
        try:
            value = self.store.get(f"seen:{self.namespace}:{message_key}")
        except Exception:
            return None
        return value[len("reply:") :] if value and value.startswith("reply:") else None


def choices_of(messages: Sequence[Dict[str, Any]]) -> List[Choice]:
    """The buttons of the bot's messages (of the last message that has any: those are the open question)."""
    for message in reversed(messages):
        buttons = message.get("buttons") or []
        if buttons:
            return [Choice(str(b.get("title", "")), str(b.get("payload", ""))) for b in buttons if b.get("title")]
    return []


def merge_messages(messages: Sequence[Dict[str, Any]]) -> OutboundMessage:
    """Several bot messages as one text, the open question's buttons as numbered choices at the end."""
    texts = [str(m.get("text")).strip() for m in messages if m.get("text")]
    texts += [str(m["image"]) for m in messages if m.get("image")]
    custom = [m.get("custom") for m in messages if isinstance(m.get("custom"), dict)]
    texts += [str(c.get("text")) for c in custom if c.get("text")]
    return OutboundMessage(text="\n".join(t for t in texts if t), choices=tuple(choices_of(messages)))


def render(messages: Sequence[Dict[str, Any]]) -> str:
    return numbered_text(merge_messages(messages))


class ChoiceMemory:
    """The numbered choices last shown to a conversation, so that a reply of '1' means the first button."""

    def __init__(self, namespace: str, store: Optional[KeyValueStore] = None) -> None:
        self.namespace = namespace
        self._store = store

    @property
    def store(self) -> KeyValueStore:
        return self._store or get_store()

    def remember(self, sender_id: str, choices: Iterable[Choice]) -> None:
        payloads = [choice.payload for choice in choices]
        key = f"choices:{self.namespace}:{sender_id}"
        try:
            if payloads:
                self.store.set(key, json.dumps(payloads, ensure_ascii=False), CHOICES_TTL)
            else:
                self.store.delete(key)
        except Exception as error:  # the patient can still answer in words
            logger.warning("%s: could not keep the choices shown (%s)", self.namespace, type(error).__name__)

    def resolve(self, sender_id: str, text: str) -> Optional[str]:
        """The payload of the chosen button when `text` is a number among the last choices, else None.
        A choice is used once: the next message is read as text again."""
        match = _CHOICE_REPLY.match((text or "").translate(_DIGITS))
        if not match:
            return None
        key = f"choices:{self.namespace}:{sender_id}"
        try:
            stored = self.store.get(key)
        except Exception as error:
            logger.warning(
                "%s: choices unavailable (%s): reading '%s' as text",
                self.namespace,
                type(error).__name__,
                match.group(1),
            )
            return None
        if not stored:
            return None
        payloads = json.loads(stored)
        index = int(match.group(1)) - 1
        if not 0 <= index < len(payloads):
            return None
        with contextlib.suppress(Exception):  # at worst the same number picks the same choice again
            self.store.delete(key)
        return payloads[index] or None


def mask(address: str) -> str:
    """An address for logs: '+8613800138000' -> '+86*******8000', an openid -> 'oAbC…xYz9'."""
    if not address:
        return "-"
    if address.startswith("+") or address.isdigit():
        return address[:3] + "*" * max(0, len(address) - 7) + address[-4:]
    return address[:4] + "…" + address[-4:] if len(address) > 10 else "****"


def parse_form(body: bytes) -> Dict[str, str]:
    """A form body with blank fields kept (Twilio signs `FromCity=` too; Sanic's request.form drops it).
    Raises ValueError on bytes that are not UTF-8."""
    text = body.decode("utf-8")
    return dict(parse_qsl(text, keep_blank_values=True))


def transient(error: BaseException) -> bool:
    """A store that is restarting or unreachable (PostgreSQL, Redis, the lock store): worth trying again."""
    import redis
    from rasa.core.lock_store import LockError
    from sqlalchemy import exc

    if isinstance(error, (exc.OperationalError, exc.InterfaceError, redis.exceptions.ConnectionError,
                          redis.exceptions.TimeoutError, LockError, ConnectionError)):  # fmt: skip
        return True
    return isinstance(error, exc.DBAPIError) and bool(error.connection_invalidated)


def retrying(on_new_message: Any, deadline: float = 60.0, first_wait: float = 0.5) -> Any:
    """Run a turn again while the stores are coming back (a PostgreSQL or Redis restart), for up to `deadline`
    seconds, so the patient's message is not lost. A failed turn sent nothing (the channels collect the answer
    and send it after the turn), so a retry gives one answer; other errors are raised at once."""
    import asyncio
    import functools
    import time

    @functools.wraps(on_new_message)
    async def handle(message: Any) -> Any:
        started, wait = time.monotonic(), first_wait
        while True:
            try:
                return await on_new_message(message)
            except Exception as error:
                if not transient(error) or time.monotonic() - started + wait > deadline:
                    raise
                logger.warning("turn for %s failed (%s); trying again in %.1f s", mask(message.sender_id),
                               type(error).__name__, wait)  # fmt: skip
                if hasattr(message.output_channel, "messages"):
                    message.output_channel.messages.clear()  # nothing of the failed attempt is sent
                await asyncio.sleep(wait)
                wait = min(wait * 2, 8.0)

    return handle
