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


def test_each_event_is_stored_once_across_turns_and_new_sessions(sqlite_url, postgres_url) -> None:
    """Turn after turn the stored conversation equals the tracker: nothing doubled, nothing missing."""
    import asyncio

    from rasa.shared.core.events import SessionStarted

    async def scenario(store: ConfiguredSQLTrackerStore) -> None:
        tracker = await store.get_or_create_tracker("patient-2")
        for turn in range(3):
            tracker = await store.retrieve("patient-2") or tracker
            tracker.update(UserUttered(f"第{turn}句", {"name": "inform"}))
            tracker.update(BotUttered(f"回答{turn}"))
            tracker.update(ActionExecuted("action_listen"))
            await store.save(tracker)
            await store.save(tracker)  # a second save of the same tracker adds nothing
        tracker = await store.retrieve("patient-2")
        tracker.update(ActionExecuted("action_session_start"))
        tracker.update(SessionStarted())
        tracker.update(UserUttered("新的一天", {"name": "greet"}))
        await store.save(tracker)
        # a tracker built elsewhere (not loaded by this store) is saved the way Rasa does it
        latest = await store.retrieve("patient-2")
        outsider = DialogueStateTracker.from_events("patient-2", list(latest.events))
        outsider.update(BotUttered("早上好"))
        await store.save(outsider)

    loop = asyncio.new_event_loop()
    try:
        for url in (sqlite_url, postgres_url):
            store = ConfiguredSQLTrackerStore(Domain.empty(), url=url)
            loop.run_until_complete(scenario(store))
            full = loop.run_until_complete(store.retrieve_full_tracker("patient-2"))
            texts = [event.text for event in full.events if isinstance(event, (UserUttered, BotUttered))]
            assert texts == ["第0句", "回答0", "第1句", "回答1", "第2句", "回答2", "新的一天", "早上好"], url
            latest = loop.run_until_complete(store.retrieve("patient-2"))
            assert [e.text for e in latest.events if isinstance(e, UserUttered)] == ["新的一天"], url
    finally:
        loop.close()
