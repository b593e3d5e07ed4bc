"""Conversation storage chosen by configuration: Rasa's SQL tracker store built from one URL, on the same
engine settings as the CRM (bot.db.make_engine: pooled, WAL for SQLite; pre-ping for PostgreSQL).

SQLite file under var/ by default; TRACKER_DATABASE_URL (or DATABASE_URL) switches to PostgreSQL.
Rasa silently falls back to an in-memory store when a custom store cannot be imported, so a test
imports this class by its endpoints.yml path.
"""

from __future__ import annotations

from typing import Any, Optional

from rasa.core.brokers.broker import EventBroker
from rasa.core.tracker_store import SQLTrackerStore, create_engine_kwargs
from rasa.shared.core.domain import Domain
from sqlalchemy.engine.url import make_url
from sqlalchemy.orm import sessionmaker

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
