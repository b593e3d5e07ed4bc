"""Live updates for the console: one poller per process pushes queue changes and new turns to websockets.

Every `interval` seconds the poller reads the active escalations and the tracker events above the last id it
saw for their conversations (two indexed queries, whatever the number of nurses watching), then sends:
``{"type": "queue", "items": [...]}`` to every socket when the queue changed, and ``{"type": "turn", ...}`` to
the sockets watching that conversation. A patient's red flag written while the bot is paused moves the
escalation to the top of the queue.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Set

from aiohttp import web

from bot.crm import escalations
from bot.db import session_scope
from console.conversations import History, Turn

logger = logging.getLogger(__name__)

EMERGENCY_INTENT = "emergency"


@dataclass(eq=False)
class Watcher:
    socket: web.WebSocketResponse
    user_id: int
    watching: Optional[str] = None  # a conversation's sender id


@dataclass
class Hub:
    history: History
    describe_queue: Callable[[Any], List[Dict[str, Any]]]  # session -> the queue as JSON items
    interval: float = 1.0
    watchers: Set[Any] = field(default_factory=set)
    last_event_id: int = 0
    queue_items: List[Dict[str, Any]] = field(default_factory=list)
    _task: Optional[asyncio.Task] = None

    async def start(self, app: web.Application) -> None:
        self.last_event_id = await asyncio.to_thread(self.history.last_id)
        self._task = asyncio.create_task(self._run())

    async def stop(self, app: web.Application) -> None:
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        for watcher in list(self.watchers):
            await watcher.socket.close()

    async def _run(self) -> None:
        while True:
            try:
                await self.poll()
            except asyncio.CancelledError:
                raise
            except Exception:  # a database restart: keep polling, the next round catches up
                logger.exception("console live poll failed")
            await asyncio.sleep(self.interval)

    async def poll(self) -> None:
        items, turns = await asyncio.to_thread(self._read)
        if items != self.queue_items:
            self.queue_items = items
            await self._send_all({"type": "queue", "items": items})
        for turn in turns:
            message = {"type": "turn", "turn": turn.as_json()}
            for watcher in list(self.watchers):
                if watcher.watching == turn.sender_id:
                    await self._send(watcher, message)

    def _read(self) -> tuple[List[Dict[str, Any]], List[Turn]]:
        with session_scope() as session:
            active = escalations.queue(session)
            senders = {e.sender_id: e for e in active}
            turns = self.history.since(self.last_event_id, senders)
            for turn in turns:
                self.last_event_id = max(self.last_event_id, turn.id)
                escalation = senders.get(turn.sender_id)
                urgent = turn.author == "patient" and turn.intent == EMERGENCY_INTENT and escalation is not None
                if urgent and escalations.raise_priority(session, escalation, 1, "等待期间出现危险信号"):
                    logger.warning("escalation %s raised to priority 1: red flag while waiting", escalation.id)
            session.flush()
            items = self.describe_queue(session)
        return items, turns

    async def _send_all(self, message: Dict[str, Any]) -> None:
        for watcher in list(self.watchers):
            await self._send(watcher, message)

    async def _send(self, watcher: Watcher, message: Dict[str, Any]) -> None:
        try:
            await watcher.socket.send_json(message)
        except (ConnectionError, RuntimeError):
            self.watchers.discard(watcher)
