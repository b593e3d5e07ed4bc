"""The Rasa project's data is consistent: `rasa data validate` is clean, and every response an action sends
exists in domain.yml."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import yaml

from tests.conftest import PROJECT_ROOT

UNUSED = re.compile(r"The utterance '(utter_\w+)' is not used in any story or rule\.")
NO_EXAMPLES = re.compile(r"The intent '(\w+)' is listed in the domain file, but is not found in the NLU training data")
# Intents that never come from the classifier: the red-flag detector sets `emergency`, trigger_intent sends
# EXTERNAL_start_survey.
INTENTS_WITHOUT_EXAMPLES = {
    "emergency",
    "EXTERNAL_start_survey",
    # sent by the channels as /intent payloads (WeChat events, menu clicks, media)
    "subscribed",
    "share_media",
    "voice_unrecognized",
    "start_triage",
    # sent by the scheduler through trigger_intent
    "EXTERNAL_medication_reminder",
    "EXTERNAL_measurement_request",
    "EXTERNAL_revisit_reminder",
    # sent by the nurse console when a nurse hands a conversation back
    "EXTERNAL_handback",
}


def _domain_responses() -> set:
    return set(yaml.safe_load((PROJECT_ROOT / "domain.yml").read_text(encoding="utf-8"))["responses"])


def _responses_sent_by_actions() -> set:
    code = "\n".join(path.read_text(encoding="utf-8") for path in (PROJECT_ROOT / "actions").glob("*.py"))
    return set(re.findall(r'"(utter_\w+)"', code))


def test_every_response_an_action_sends_is_in_the_domain() -> None:
    missing = _responses_sent_by_actions() - _domain_responses()
    assert not missing, f"actions send responses that domain.yml lacks: {sorted(missing)}"


def test_rasa_data_validate_is_clean() -> None:
    """Rasa warns about every response not named in a rule; ours are sent by custom actions or asked by
    forms (utter_ask_<slot>). Any other warning, or an unused response, fails."""
    result = subprocess.run(
        [sys.executable, "-m", "rasa", "data", "validate", "--data", "data/nlu", "data/dialogue"],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "SQLALCHEMY_SILENCE_UBER_WARNING": "1"},
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    output = result.stdout + result.stderr
    warnings = [line for line in output.splitlines() if "UserWarning" in line or "WARNING" in line]
    sent = _responses_sent_by_actions()
    asked_by_forms = {r for r in _domain_responses() if r.startswith("utter_ask_")}
    unexpected = []
    for line in warnings:
        match = UNUSED.search(line)
        if match and (match.group(1) in sent or match.group(1) in asked_by_forms):
            continue
        match = NO_EXAMPLES.search(line)
        if match and match.group(1) in INTENTS_WITHOUT_EXAMPLES:
            continue
        unexpected.append(line.strip())
    assert not unexpected, "\n".join(unexpected)
