"""What the channels share: repeats, numbered choices, merged answers, masked addresses, Twilio-style forms."""

from __future__ import annotations

import pytest

from bot.kv import KeyValueStore, MemoryStore
from bot.outbound.providers import split_text
from channels.common import ChoiceMemory, Deduplicator, mask, merge_messages, parse_form, render


class BrokenStore(MemoryStore):
    """Redis down: every call raises."""

    def add(self, key: str, value: str, ttl: float) -> bool:
        raise ConnectionError("redis down")

    def get(self, key: str):  # type: ignore[no-untyped-def]
        raise ConnectionError("redis down")

    def set(self, key: str, value: str, ttl: float) -> None:
        raise ConnectionError("redis down")


def test_a_message_is_first_once_and_its_reply_is_kept() -> None:
    seen = Deduplicator("t", MemoryStore())
    assert seen.first_time("m1") is True
    assert seen.first_time("m1") is False
    seen.remember_reply("m1", "您好")
    assert seen.reply_for("m1") == "您好" and seen.reply_for("m2") is None


def test_store_down_fails_open_so_no_patient_message_is_lost(caplog: pytest.LogCaptureFixture) -> None:
    store: KeyValueStore = BrokenStore()
    seen, choices = Deduplicator("t", store), ChoiceMemory("t", store)
    assert seen.first_time("m1") is True and seen.first_time("m1") is True
    seen.remember_reply("m1", "x")
    choices.remember("p", merge_messages([{"text": "选", "buttons": [{"title": "甲", "payload": "/a"}]}]).choices)
    assert choices.resolve("p", "1") is None  # read as text
    assert "unavailable" in caplog.text


def test_choices_are_numbered_and_used_once() -> None:
    messages = [
        {"text": "您好"},
        {
            "text": "请选择：",
            "buttons": [{"title": "挂号", "payload": "/book"}, {"title": "查询", "payload": "/query"}],
        },
    ]
    assert render(messages) == "您好\n请选择：\n1. 挂号\n2. 查询"
    memory = ChoiceMemory("t", MemoryStore())
    memory.remember("p", merge_messages(messages).choices)
    assert memory.resolve("p", "３") is None  # out of range: text
    assert memory.resolve("p", "第2个") == "/query"
    assert memory.resolve("p", "2") is None  # used


def test_long_text_splits_after_sentence_ends() -> None:
    text = "第一句话。" * 30 + "最后一句没有句号"
    parts = split_text(text, 50)
    assert all(len(part) <= 50 for part in parts)
    assert all(part.endswith("。") for part in parts[:-1])
    assert "".join(parts) == text


def test_addresses_are_masked_for_logs() -> None:
    assert mask("+8613800138000") == "+86*******8000"
    assert "13800138" not in mask("+8613800138000")
    assert mask("oAbCdEfGhIjKlMnOpQrStUvWx") == "oAbC…UvWx"


def test_form_parsing_keeps_blank_fields_twilio_signs() -> None:
    assert parse_form(b"From=%2B85291234567&FromCity=&Body=%E4%BD%A0%E5%A5%BD") == {
        "From": "+85291234567",
        "FromCity": "",
        "Body": "你好",
    }
    with pytest.raises(ValueError):
        parse_form(b"Body=\xff")
