"""Rasa conversation tests (tests/stories/*.yml): every flow with its unhappy paths, NLU and dialogue
policy together, run with the session's agent (no second model load)."""

from __future__ import annotations

import json
from pathlib import Path

from tests.conftest import PROJECT_ROOT

STORIES = PROJECT_ROOT / "tests" / "stories"


def test_every_conversation_story_passes(agent, event_loop_for_agent, tmp_path: Path) -> None:
    import rasa.core.test

    event_loop_for_agent.run_until_complete(
        rasa.core.test.test(str(STORIES), agent, out_directory=str(tmp_path), disable_plotting=True)
    )
    report = json.loads((tmp_path / "story_report.json").read_text())
    failed = (tmp_path / "failed_test_stories.yml").read_text()
    conversations = report["conversation_accuracy"]
    assert conversations["total"] >= 27
    assert conversations["correct"] == conversations["total"], failed


def test_each_flow_has_at_least_three_unhappy_paths() -> None:
    import yaml

    stories = [
        story["story"] for path in STORIES.glob("*.yml") for story in yaml.safe_load(path.read_text())["stories"]
    ]
    for flow in ("book", "cancel", "reschedule", "query", "hospital info"):
        unhappy = [name for name in stories if name.startswith(flow) and "unhappy" in name]
        assert len(unhappy) >= 3, f"{flow}: {unhappy}"


def test_the_model_reads_every_story_message_as_its_labelled_intent(agent, event_loop_for_agent) -> None:
    """The stories above take intents as given; this checks the NLU model produces them from the text."""
    import yaml

    wrong = []
    for path in sorted(STORIES.glob("*.yml")):
        for story in yaml.safe_load(path.read_text())["stories"]:
            for step in story["steps"]:
                if "user" not in step:
                    continue
                text = step["user"].strip()
                parsed = event_loop_for_agent.run_until_complete(agent.parse_message(text))
                if parsed["intent"]["name"] != step["intent"]:
                    wrong.append(f"{text!r}: labelled {step['intent']}, read as {parsed['intent']['name']}")
    assert not wrong, "\n".join(wrong)
