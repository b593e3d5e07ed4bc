"""The Rasa server's Prometheus metrics after real traffic: messages in and out per channel, turn latency."""

from __future__ import annotations

import re
from typing import Any

import requests

from tests.e2e.conftest import RasaServer
from tests.e2e.patients import SmsPatient


def _value(text: str, name: str, labels: str) -> float:
    match = re.search(rf"^{re.escape(name)}\{{{re.escape(labels)}\}} ([0-9.e+]+)$", text, re.M)
    return float(match.group(1)) if match else 0.0


def test_an_sms_turn_is_counted_and_timed(rasa_server: RasaServer, sandbox: Any) -> None:
    before = requests.get(f"{rasa_server.url}/webhooks/metrics/", timeout=10).text
    patient = SmsPatient(rasa_server.url, sandbox, "+8613700009911")
    patient.say("你好")
    after = requests.get(f"{rasa_server.url}/webhooks/metrics/", timeout=10).text
    assert (
        _value(after, "hospital_messages_in_total", 'channel="sms"')
        == _value(before, "hospital_messages_in_total", 'channel="sms"') + 1
    )
    assert _value(after, "hospital_messages_out_total", 'channel="sms",kind="reply"') > _value(
        before, "hospital_messages_out_total", 'channel="sms",kind="reply"'
    )
    assert _value(after, "hospital_turn_seconds_count", 'channel="sms"') >= 1
    assert "13700009911" not in after  # counts only
