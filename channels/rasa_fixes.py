"""Fixes to Rasa 3.6.21's server, each measured in bench/latency.py.

Imported by channels/__init__.py, so every `rasa run` that loads our channels or tracker store has them.

- RemoteAction validated each action-server response with `jsonschema.validate()`, which checks the schema
  itself and builds a new validator on every call: 58% of the Rasa server's CPU on a booking turn (py-spy,
  8 concurrent senders). The response is still validated, against a validator compiled once.
- A conversation records the channel a patient writes on as `wechat`, `sms` or `voice` (what identities and
  consent are keyed by), while the Twilio input channels are named `twilio_sms` and `twilio_voice` (their
  webhook paths). `trigger_intent?output_channel=latest` (or `=sms`) looks channels up by name, so it found
  none and collected the answer instead of sending it: the lookup now follows these aliases.
- `Event.resolve_by_type` walked every subclass of Event for every stored event it deserialised (9% of the
  server's CPU under 20 concurrent WeChat patients): the type names are now looked up in a table built once
  (and rebuilt when a name is missing, so events defined later still resolve).
"""

from __future__ import annotations

import logging
from functools import lru_cache
from typing import Any, Dict

import jsonschema
from jsonschema.exceptions import best_match
from rasa.core.actions.action import RemoteAction
from rasa.shared.constants import DOCS_BASE_URL

# conversation channel -> the name of the input channel that can send on it
OUTPUT_CHANNEL_ALIASES = {"sms": "twilio_sms", "voice": "twilio_voice"}

logger = logging.getLogger(__name__)


@lru_cache(maxsize=1)
def _action_response_validator() -> Any:
    schema = RemoteAction.action_response_format_spec()
    validator_class = jsonschema.validators.validator_for(schema)
    validator_class.check_schema(schema)
    return validator_class(schema)


def _validate_action_result(self: RemoteAction, result: Dict[str, Any]) -> bool:
    """Same contract and error as Rasa's: raise jsonschema.ValidationError for a malformed response."""
    error = best_match(_action_response_validator().iter_errors(result))
    if error is not None:
        error.message += (
            ". Failed to validate Action server response from API, make sure your response from the Action "
            f"endpoint is valid. For more information about the format visit {DOCS_BASE_URL}/custom-actions"
        )
        raise error
    return True


_EVENT_TYPES: Dict[str, Any] = {}


def _resolve_event_type(type_name: str, default: Any = None) -> Any:
    """Rasa's Event.resolve_by_type with the subclass walk cached; the first match wins, as in Rasa."""
    found = _EVENT_TYPES.get(type_name)
    if found is None:
        from rasa.shared.core.events import Event
        from rasa.shared.utils.common import all_subclasses

        for cls in all_subclasses(Event):
            _EVENT_TYPES.setdefault(cls.type_name, cls)
        found = _EVENT_TYPES.get(type_name)
    if found is not None:
        return found
    if type_name == "topic":
        return None  # as Rasa: old TopicSet events are ignored
    if default is not None:
        return default
    raise ValueError(f"Unknown event name '{type_name}'.")


def _with_channel_aliases(original: Any) -> Any:
    def get_output_channel(request: Any, tracker: Any) -> Any:
        requested = request.args.get("output_channel")
        if requested == "latest" and tracker is not None:
            requested = tracker.get_latest_input_channel()
        alias = OUTPUT_CHANNEL_ALIASES.get(requested or "")
        channels = getattr(request.app.ctx, "input_channels", None) or []
        if alias and not any(channel.name() == requested for channel in channels):
            for channel in channels:
                if channel.name() == alias:
                    return channel.get_output_channel() or original(request, tracker)
        return original(request, tracker)

    get_output_channel.__wrapped__ = original  # type: ignore[attr-defined]
    return get_output_channel


def _raise_store_errors() -> None:
    """Rasa wraps every tracker store in FailSafeTrackerStore: when the database is unreachable, `retrieve`
    answers "no such conversation" (the turn then runs on an empty conversation) and `save` writes to process
    memory, so a PostgreSQL restart silently loses turns (measured: 1 of 18 messages in
    tests/e2e/test_two_instances.py). The errors are raised instead; the channels run the turn again once the
    store is back (channels.common.retrying)."""
    from rasa.core.tracker_store import FailSafeTrackerStore

    async def retrieve(self: Any, sender_id: str) -> Any:
        return await self._tracker_store.retrieve(sender_id)

    async def retrieve_full_tracker(self: Any, sender_id: str) -> Any:
        return await self._tracker_store.retrieve_full_tracker(sender_id)

    async def save(self: Any, tracker: Any) -> None:
        await self._tracker_store.save(tracker)

    FailSafeTrackerStore.retrieve = retrieve  # type: ignore[method-assign]
    FailSafeTrackerStore.retrieve_full_tracker = retrieve_full_tracker  # type: ignore[method-assign]
    FailSafeTrackerStore.save = save  # type: ignore[method-assign]


STORE_RETRY_SECONDS = 40.0  # inside the conversation lock (LOCK_LIFETIME 60 s): later messages wait their turn


def _retry_turns_inside_the_lock() -> None:
    """A turn that failed because the tracker store or the CRM was unreachable is run again while the
    conversation's lock is still held, so the patient's later messages wait behind it and are read in the order
    they were written (retrying outside the lock let message 4 overtake message 3 during a PostgreSQL restart)."""
    import asyncio
    import time

    from rasa.core.agent import Agent

    from channels.common import transient

    if getattr(Agent.handle_message, "__wrapped__", None):
        return
    original = Agent.handle_message

    async def handle_message(self: Any, message: Any) -> Any:
        if not self.is_ready():
            return await original(self, message)
        async with self.lock_store.lock(message.sender_id):
            started, wait = time.monotonic(), 0.25
            while True:
                try:
                    return await self.processor.handle_message(message)
                except Exception as error:
                    if not transient(error) or time.monotonic() - started + wait > STORE_RETRY_SECONDS:
                        raise
                    logger.warning("a store is unreachable (%s): the turn runs again in %.2f s",
                                   type(error).__name__, wait)  # fmt: skip
                    if hasattr(message.output_channel, "messages"):
                        message.output_channel.messages.clear()
                    await asyncio.sleep(wait)
                    wait = min(wait * 2, 4.0)

    handle_message.__wrapped__ = original  # type: ignore[attr-defined]
    Agent.handle_message = handle_message  # type: ignore[method-assign]


def apply() -> None:
    _raise_store_errors()
    _retry_turns_inside_the_lock()
    RemoteAction._validate_action_result = _validate_action_result  # type: ignore[method-assign]
    import rasa.server
    from rasa.shared.core.events import Event

    Event.resolve_by_type = staticmethod(_resolve_event_type)  # type: ignore[method-assign]
    if not hasattr(rasa.server._get_output_channel, "__wrapped__"):
        rasa.server._get_output_channel = _with_channel_aliases(rasa.server._get_output_channel)
