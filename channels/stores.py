"""Conversation storage chosen by configuration: Rasa's SQL tracker store built from one URL, on the same
engine settings as the CRM (bot.db.make_engine: pooled, WAL for SQLite; pre-ping for PostgreSQL).

SQLite file under var/ by default; TRACKER_DATABASE_URL (or DATABASE_URL) switches to PostgreSQL.
Rasa silently falls back to an in-memory store when a custom store cannot be imported, so a test
imports this class by its endpoints.yml path.
"""

from __future__ import annotations

import asyncio
import itertools
import json
from typing import Any, Dict, Iterator, List, Optional

from rasa.core.brokers.broker import EventBroker
from rasa.core.tracker_store import SQLTrackerStore, create_engine_kwargs
from rasa.shared.core.constants import ACTION_LISTEN_NAME
from rasa.shared.core.domain import Domain
from rasa.shared.core.events import ActionExecuted, Event
from rasa.shared.core.trackers import DialogueStateTracker
from sqlalchemy.engine.url import make_url
from sqlalchemy.orm import Session, sessionmaker

from bot.config import get_settings
from bot.db import make_engine


class ConfiguredSQLTrackerStore(SQLTrackerStore):
    def __init__(
        self,
        domain: Optional[Domain] = None,
        host: Optional[str] = None,
        event_broker: Optional[EventBroker] = None,
        url: Optional[str] = None,
        **kwargs: Any,
    ) -> None:
        parsed = make_url(url or get_settings().tracker_database_url)
        super().__init__(
            domain=domain,
            dialect=parsed.drivername,
            host=parsed.host,
            port=parsed.port,
            db=parsed.database,
            username=parsed.username,
            password=parsed.password,
            event_broker=event_broker,
            query=dict(parsed.query) or None,
        )
        # Rasa builds a plain engine (SQLite: a new connection per session, fsync per commit): replace it.
        self.engine.dispose()
        url = self.engine.url
        self.engine = make_engine(url.render_as_string(hide_password=False), **create_engine_kwargs(url))
        self.sessionmaker = sessionmaker(bind=self.engine)

    # Rasa's save() counts the stored events of the session with a query on every save, and create_tracker()
    # writes a new conversation before its first turn, then the turn writes it again: a third of a turn's
    # tracker-store time. A tracker this store loaded or created remembers how many of its events are stored
    # (the lock store serialises a conversation's turns, so nobody else appends meanwhile); any other tracker
    # falls back to Rasa's count.

    # Rasa's _retrieve loads whole ORM rows on the event loop; a busy server then answered webhooks late
    # (py-spy: a quarter of the CPU under 20 concurrent WeChat patients). Only the JSON column is read, and
    # the query and decoding run on a worker thread.

    async def _retrieve(self, sender_id: str, fetch_events_from_all_sessions: bool) -> Optional[DialogueStateTracker]:
        events = await asyncio.get_running_loop().run_in_executor(
            None, self._load_events, sender_id, fetch_events_from_all_sessions
        )
        if not events or not self.domain:
            return None
        tracker = DialogueStateTracker.from_dict(sender_id, events, self.domain.slots)
        if not fetch_events_from_all_sessions:
            _mark_stored(tracker, len(tracker.events))
        return tracker

    def _load_events(self, sender_id: str, fetch_events_from_all_sessions: bool) -> List[Dict[str, Any]]:
        with self.session_scope() as session:
            query = self._event_query(session, sender_id, fetch_events_from_all_sessions)
            rows = query.with_entities(self.SQLEvent.data).all()
        return [json.loads(data) for (data,) in rows]

    async def create_tracker(self, sender_id: str, append_action_listen: bool = True) -> DialogueStateTracker:
        tracker = self.init_tracker(sender_id)
        if append_action_listen:
            tracker.update(ActionExecuted(ACTION_LISTEN_NAME))
        _mark_stored(tracker, 0)  # stored with the turn that follows, in one transaction
        return tracker

    def _additional_events(self, session: Session, tracker: DialogueStateTracker) -> Iterator[Event]:
        stored = tracker.__dict__.get(_STORED_EVENTS)
        if stored is None or tracker.events.maxlen is not None:
            return super()._additional_events(session, tracker)
        _mark_stored(tracker, len(tracker.events))
        return itertools.islice(tracker.events, stored, None)


_STORED_EVENTS = "_hospital_stored_events"


def _mark_stored(tracker: DialogueStateTracker, count: int) -> None:
    tracker.__dict__[_STORED_EVENTS] = count
