"""Masked logs and the Prometheus metrics every process exposes."""

from __future__ import annotations

import asyncio
import json
import logging
from datetime import timedelta
from typing import Any

import pytest
from prometheus_client import REGISTRY
from rasa.core.channels.channel import CollectingOutputChannel, UserMessage

from bot import observability
from bot.crm.models import Escalation, EscalationStatus, OutboxMessage, OutboxStatus, Patient, utcnow
from bot.db import session_scope


@pytest.mark.parametrize(
    ("raw", "masked"),
    [
        ("from +8613812345678 today", "from +86138****5678 today"),
        ("mobile 13812345678", "mobile 138****5678"),
        ("手机 138 1234 5678。", "手机 138****5678。"),
        ("us +14155550100", "us +1" + "*" * 6 + "0100"),
        ("openid oAbCdEfGhIjKlMnOpQrStUvWxYz1 said", "openid oAbCdE… said"),
    ],
)
def test_phone_numbers_and_openids_are_masked(raw: str, masked: str) -> None:
    assert observability.mask_text(raw) == masked


def test_ids_that_are_not_phones_are_left_alone() -> None:
    text = "msg 23456789012345678 escalation 12 delivery 138"
    assert observability.mask_text(text) == text


def test_every_log_record_is_masked_whoever_logs_it(caplog: pytest.LogCaptureFixture) -> None:
    observability.install_masking()
    with caplog.at_level(logging.INFO):
        logging.getLogger("some.library").info("reply to %s failed", "+8613812345678")
    assert caplog.records[-1].getMessage() == "reply to +86138****5678 failed"
    assert "12345678" not in caplog.text


def test_json_logs_carry_the_service_and_no_phone() -> None:
    observability.install_masking()
    record = logging.getLogger("x").makeRecord("x", logging.WARNING, __file__, 1, "sms to %s", ("13912345678",), None)
    line = json.loads(observability.JsonFormatter("scheduler").format(record))
    assert line["service"] == "scheduler" and line["level"] == "warning" and line["message"] == "sms to 139****5678"


def _sample(name: str, labels: dict) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_a_metered_turn_counts_the_message_its_replies_and_its_latency() -> None:
    before_in = _sample("hospital_messages_in_total", {"channel": "testchan"})
    before_out = _sample("hospital_messages_out_total", {"channel": "testchan", "kind": "reply"})
    before_turns = _sample("hospital_turn_seconds_count", {"channel": "testchan"})

    async def bot(message: UserMessage) -> None:  # what Rasa does: one send_response per bot message
        await message.output_channel.send_response(message.sender_id, {"text": "您好"})
        await message.output_channel.send_response(message.sender_id, {"text": "请问有什么可以帮您？"})

    handler = observability.metered(bot, "testchan")
    output = CollectingOutputChannel()
    asyncio.run(handler(UserMessage("你好", output, "p1")))
    assert [m["text"] for m in output.messages] == ["您好", "请问有什么可以帮您？"]
    assert _sample("hospital_messages_in_total", {"channel": "testchan"}) == before_in + 1
    assert _sample("hospital_messages_out_total", {"channel": "testchan", "kind": "reply"}) == before_out + 2
    assert _sample("hospital_turn_seconds_count", {"channel": "testchan"}) == before_turns + 1


def test_store_gauges_report_the_waiting_escalations_and_the_late_outbox(crm_default: str) -> None:
    now = utcnow()
    with session_scope() as session:
        patient = Patient(card_no="M1", name="测试", phone="+8613800000099")
        session.add(patient)
        session.flush()
        session.add(Escalation(sender_id="s1", reason="red_flag", priority=1, summary="", status=EscalationStatus.OPEN,
                               created_at=now - timedelta(minutes=7)))  # fmt: skip
        session.add(OutboxMessage(patient_id=patient.id, message="medication_reminder", params={},
                                  due_at=now - timedelta(minutes=3), next_attempt_at=now - timedelta(minutes=3),
                                  status=OutboxStatus.PENDING, idempotency_key="k1"))  # fmt: skip
    families = {family.name: family for family in observability.StoreMetrics(ttl=0).collect()}
    waiting = {s.labels["priority"]: s.value for s in families["hospital_escalations_waiting"].samples}
    assert waiting == {"1": 1, "2": 0, "3": 0, "4": 0}
    assert 400 <= families["hospital_escalation_oldest_wait_seconds"].samples[0].value < 500
    pending = {s.labels["status"]: s.value for s in families["hospital_outbox_rows"].samples}
    assert pending["pending"] == 1
    assert 170 <= families["hospital_outbox_oldest_due_seconds"].samples[0].value < 300


def test_store_gauges_say_when_the_database_is_down(process_settings: Any) -> None:
    process_settings(DATABASE_URL="postgresql://nobody@127.0.0.1:1/none")
    families = {family.name: family for family in observability.StoreMetrics(ttl=0).collect()}
    assert families["hospital_store_up"].samples[0].value == 0
