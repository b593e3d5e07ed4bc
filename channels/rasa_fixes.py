"""Fixes to Rasa 3.6.21's server, each measured in bench/latency.py.

Imported by channels/__init__.py, so every `rasa run` that loads our channels or tracker store has them.

- RemoteAction validated each action-server response with `jsonschema.validate()`, which checks the schema
  itself and builds a new validator on every call: 58% of the Rasa server's CPU on a booking turn (py-spy,
  8 concurrent senders). The response is still validated, against a validator compiled once.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any, Dict

import jsonschema
from jsonschema.exceptions import best_match
from rasa.core.actions.action import RemoteAction
from rasa.shared.constants import DOCS_BASE_URL


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


def apply() -> None:
    RemoteAction._validate_action_result = _validate_action_result  # type: ignore[method-assign]
