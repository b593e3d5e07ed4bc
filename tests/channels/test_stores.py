"""Conversations are stored where endpoints.yml says, never silently in memory."""

from __future__ import annotations

from rasa.core.tracker_store import InMemoryTrackerStore, TrackerStore
from rasa.shared.core.domain import Domain
from rasa.shared.core.events import ActionExecuted, BotUttered, UserUttered
from rasa.shared.core.trackers import DialogueStateTracker
from rasa.utils.endpoints import read_endpoint_config

from channels.stores import ConfiguredSQLTrackerStore
from tests.conftest import PROJECT_ROOT


def _round_trip(store: TrackerStore, loop) -> list:
    tracker = DialogueStateTracker.from_events(
        "patient-1",
        [
            ActionExecuted("action_listen"),
            UserUttered("我想挂号😀", {"name": "book_appointment"}),
            BotUttered("请问挂哪个科室？"),
        ],
    )
    loop.run_until_complete(store.save(tracker))
    restored = loop.run_until_complete(store.retrieve("patient-1"))
    return [event.text for event in restored.events if isinstance(event, (UserUttered, BotUttered))]


def test_endpoints_yml_selects_the_sql_store() -> None:
    from rasa.core.tracker_store import TrackerStore as Factory

    config = read_endpoint_config(str(PROJECT_ROOT / "endpoints.yml"), "tracker_store")
    store = Factory.create(config, Domain.empty())
    assert not isinstance(store, InMemoryTrackerStore)
    assert isinstance(getattr(store, "_tracker_store", store), ConfiguredSQLTrackerStore)


def test_turns_survive_in_sqlite_and_postgres(sqlite_url, postgres_url) -> None:
    import asyncio

    loop = asyncio.new_event_loop()
    try:
        for url in (sqlite_url, postgres_url):
            store = ConfiguredSQLTrackerStore(Domain.empty(), url=url)
            assert _round_trip(store, loop) == ["我想挂号😀", "请问挂哪个科室？"]
    finally:
        loop.close()
