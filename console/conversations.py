"""A conversation as the nurse sees it, and the Rasa calls that pause, answer and resume it.

History is read straight from the tracker store's `events` table (Rasa's SQLTrackerStore, one row per event):
every patient, bot and nurse turn, including what the patient wrote while the bot was paused. Rows only ever
grow, so the live view polls for ids above the last one it sent.

Writes go through Rasa's HTTP API (`--enable-api`, token in RASA_TOKEN), which holds the conversation's lock:
a nurse's turn is a `bot` event with `metadata.nurse`; pause and resume are Rasa's own events (RASA_NOTES.md:
a bare resume breaks the next turn, so `action_listen` follows it).
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence
from urllib.parse import quote

import aiohttp
from sqlalchemy import Column, Float, Integer, MetaData, String, Table, Text, select
from sqlalchemy.engine import Engine

from bot.config import get_settings
from bot.db import make_engine

_metadata = MetaData()
# The columns of Rasa's SQLTrackerStore.SQLEvent that the console reads (rasa/core/tracker_store.py).
EVENTS = Table(
    "events",
    _metadata,
    Column("id", Integer, primary_key=True),
    Column("sender_id", String(255)),
    Column("type_name", String(255)),
    Column("timestamp", Float),
    Column("intent_name", String(255)),
    Column("action_name", String(255)),
    Column("data", Text),
)
SHOWN = ("user", "bot", "pause", "resume")


@dataclass(frozen=True)
class Turn:
    """One line of the conversation view."""

    id: int
    sender_id: str
    at: datetime  # UTC
    author: str  # patient, bot, nurse, system
    text: str
    nurse: Optional[str] = None
    intent: Optional[str] = None
    channel: Optional[str] = None
    choices: Sequence[str] = field(default_factory=tuple)

    def as_json(self) -> Dict[str, Any]:
        return {
            "id": self.id,
            "sender_id": self.sender_id,
            "at": self.at.isoformat(),
            "author": self.author,
            "text": self.text,
            "nurse": self.nurse,
            "intent": self.intent,
            "channel": self.channel,
            "choices": list(self.choices),
        }


def _turn(row: Mapping[str, Any]) -> Optional[Turn]:
    try:
        data = json.loads(row["data"] or "{}")
    except ValueError:
        data = {}
    at = datetime.fromtimestamp(float(row["timestamp"] or 0), tz=timezone.utc)
    kind = row["type_name"]
    base = {"id": int(row["id"]), "sender_id": row["sender_id"], "at": at}
    if kind == "user":
        return Turn(
            **base,
            author="patient",
            text=data.get("text") or "",
            intent=row["intent_name"],
            channel=data.get("input_channel"),
        )
    if kind == "bot":
        metadata = data.get("metadata") or {}
        buttons = (data.get("data") or {}).get("buttons") or []
        nurse = metadata.get("nurse")
        return Turn(
            **base,
            author="nurse" if nurse else "bot",
            text=data.get("text") or "",
            nurse=nurse,
            choices=tuple(str(b.get("title", "")) for b in buttons if isinstance(b, dict)),
        )
    if kind == "pause":
        return Turn(**base, author="system", text="paused")
    if kind == "resume":
        return Turn(**base, author="system", text="resumed")
    return None


class History:
    """Reads conversations from the tracker store (the database of TRACKER_DATABASE_URL)."""

    def __init__(self, url: Optional[str] = None, engine: Optional[Engine] = None) -> None:
        self.engine = engine or make_engine(url or get_settings().tracker_database_url)

    def _rows(self, query: Any) -> List[Turn]:
        with self.engine.connect() as connection:
            rows = connection.execute(query).mappings().all()
        return [turn for turn in (_turn(row) for row in rows) if turn is not None]

    def turns(self, sender_id: str, after_id: int = 0, limit: int = 1000) -> List[Turn]:
        """The conversation's turns, oldest first (the latest `limit` of them)."""
        query = (
            select(EVENTS)
            .where(EVENTS.c.sender_id == sender_id, EVENTS.c.type_name.in_(SHOWN), EVENTS.c.id > after_id)
            .order_by(EVENTS.c.id.desc())
            .limit(limit)
        )
        return list(reversed(self._rows(query)))

    def since(self, after_id: int, sender_ids: Iterable[str]) -> List[Turn]:
        """New turns of the given conversations: what the live view pushes."""
        senders = list(sender_ids)
        if not senders:
            return []
        query = (
            select(EVENTS)
            .where(EVENTS.c.id > after_id, EVENTS.c.sender_id.in_(senders), EVENTS.c.type_name.in_(SHOWN))
            .order_by(EVENTS.c.id)
            .limit(2000)
        )
        return self._rows(query)

    def last_id(self) -> int:
        with self.engine.connect() as connection:
            try:
                return int(connection.execute(select(EVENTS.c.id).order_by(EVENTS.c.id.desc()).limit(1)).scalar() or 0)
            except Exception:  # no conversation yet: Rasa creates the table on its first start
                return 0

    def is_paused(self, sender_id: str) -> bool:
        query = (
            select(EVENTS.c.type_name)
            .where(EVENTS.c.sender_id == sender_id, EVENTS.c.type_name.in_(("pause", "resume", "session_started")))
            .order_by(EVENTS.c.id.desc())
            .limit(1)
        )
        with self.engine.connect() as connection:
            return connection.execute(query).scalar() == "pause"


def _path(sender_id: str) -> str:
    """A conversation id in a Rasa URL. Sanic does not percent-decode path parameters, so the characters our
    sender ids use (+8613800138000, voice:+86..., openids) stay as they are."""
    return quote(sender_id, safe="+:@-_.~")


class RasaUnavailable(RuntimeError):
    pass


class Rasa:
    """The Rasa server's conversation API, as the console uses it."""

    def __init__(self, url: Optional[str] = None, token: Optional[str] = None, timeout: float = 30) -> None:
        self.url = (url or os.environ.get("RASA_URL") or "http://127.0.0.1:5005").rstrip("/")
        self.token = token if token is not None else os.environ.get("RASA_TOKEN", "")
        self.timeout = aiohttp.ClientTimeout(total=timeout)

    def _params(self, **extra: str) -> Dict[str, str]:
        params = {k: v for k, v in extra.items() if v}
        if self.token:
            params["token"] = self.token
        return params

    async def _post(self, path: str, body: Any, **params: str) -> None:
        try:
            async with aiohttp.ClientSession(timeout=self.timeout) as http, http.post(
                f"{self.url}{path}", json=body, params=self._params(**params)
            ) as response:
                if response.status != 200:
                    detail = (await response.text())[:200]
                    raise RasaUnavailable(f"Rasa answered {response.status} to {path.split('/')[-1]}: {detail}")
        except (aiohttp.ClientError, OSError, TimeoutError) as error:
            raise RasaUnavailable(f"Rasa server unreachable ({type(error).__name__})") from error

    async def append(self, sender_id: str, events: List[Dict[str, Any]]) -> None:
        await self._post(f"/conversations/{_path(sender_id)}/tracker/events", events, include_events="NONE")

    async def record_nurse_turn(self, sender_id: str, text: str, nurse: str, nurse_id: int) -> None:
        event = {
            "event": "bot",
            "text": text,
            "timestamp": time.time(),
            "metadata": {"nurse": nurse, "nurse_id": nurse_id},
        }
        await self.append(sender_id, [event])

    async def pause(self, sender_id: str) -> None:
        await self.append(sender_id, [{"event": "pause", "timestamp": time.time()}])

    async def resume(self, sender_id: str) -> None:
        """Hand back: resume, leave any form the conversation was in, and listen (RASA_NOTES.md)."""
        now = time.time()
        await self.append(
            sender_id,
            [
                {"event": "resume", "timestamp": now},
                {"event": "active_loop", "name": None, "timestamp": now},
                {"event": "slot", "name": "requested_slot", "value": None, "timestamp": now},
                {"event": "action", "name": "action_listen", "timestamp": now},
            ],
        )

    async def trigger(
        self, sender_id: str, intent: str, channel: str, entities: Optional[Mapping[str, Any]] = None
    ) -> None:
        await self._post(
            f"/conversations/{_path(sender_id)}/trigger_intent",
            {"name": intent, "entities": dict(entities or {})},
            output_channel=channel,
        )
