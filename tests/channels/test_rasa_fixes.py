"""The faster action-response validation still refuses what Rasa's own refuses."""

from __future__ import annotations

import pytest
from jsonschema import ValidationError
from rasa.core.actions.action import RemoteAction

import channels  # noqa: F401  (applies the fixes, as `rasa run` does when it loads our channels)
from channels import rasa_fixes


def test_the_fix_is_active_once_channels_is_imported() -> None:
    assert RemoteAction._validate_action_result is rasa_fixes._validate_action_result


def test_a_valid_action_server_response_is_accepted() -> None:
    action = RemoteAction("action_book_appointment", None)
    response = {
        "events": [{"event": "slot", "name": "department", "value": "cardiology"}],
        "responses": [{"response": "utter_booking_confirmed"}],
    }
    assert action._validate_action_result(response) is True


@pytest.mark.parametrize(
    "response",
    [
        {"events": "not a list"},
        {"events": [{"event": "no_such_event"}]},
        {"responses": [42]},
    ],
)
def test_a_malformed_action_server_response_is_refused_with_rasas_message(response) -> None:
    action = RemoteAction("action_book_appointment", None)
    with pytest.raises(ValidationError) as refused:
        action._validate_action_result(response)
    assert "Failed to validate Action server response" in refused.value.message


def test_event_types_resolve_as_in_rasa_with_the_table() -> None:
    from rasa.shared.core.events import ActionExecuted, Event, SlotSet, UserUttered

    assert Event.resolve_by_type("user") is UserUttered
    assert Event.resolve_by_type("slot") is SlotSet
    assert Event.resolve_by_type("action") is ActionExecuted
    assert Event.resolve_by_type("topic") is None
    assert Event.resolve_by_type("no_such_event", default=SlotSet) is SlotSet
    with pytest.raises(ValueError, match="Unknown event name 'no_such_event'"):
        Event.resolve_by_type("no_such_event")
    stored = Event.from_parameters({"event": "user", "text": "你好", "parse_data": {"intent": {"name": "greet"}}})
    assert isinstance(stored, UserUttered) and stored.text == "你好"
