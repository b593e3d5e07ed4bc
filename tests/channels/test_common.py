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


def test_a_turn_is_run_again_while_a_store_restarts_and_sends_one_answer() -> None:
    import asyncio

    from rasa.core.channels.channel import CollectingOutputChannel, UserMessage
    from sqlalchemy.exc import OperationalError

    from channels.common import retrying

    calls = []

    async def bot(message: UserMessage) -> str:
        calls.append(message.text)
        await message.output_channel.send_text_message(message.sender_id, f"answer {len(calls)}")
        if len(calls) < 3:
            raise OperationalError("SELECT 1", {}, Exception("server closed the connection unexpectedly"))
        return "done"

    output = CollectingOutputChannel()
    result = asyncio.run(retrying(bot, first_wait=0.01)(UserMessage("你好", output, "p1")))
    assert result == "done" and calls == ["你好"] * 3
    assert [m["text"] for m in output.messages] == ["answer 3"]  # the failed attempts' answers are dropped


def test_a_bug_is_not_retried_and_a_long_outage_gives_up() -> None:
    import asyncio

    import pytest
    from rasa.core.channels.channel import CollectingOutputChannel, UserMessage
    from rasa.core.lock_store import LockError

    from channels.common import retrying

    calls = []

    async def broken(message: UserMessage) -> None:
        calls.append(1)
        raise KeyError("a bug")

    with pytest.raises(KeyError):
        asyncio.run(retrying(broken, first_wait=0.01)(UserMessage("x", CollectingOutputChannel(), "p")))
    assert len(calls) == 1

    async def locked(message: UserMessage) -> None:
        calls.append(2)
        raise LockError("redis down")

    with pytest.raises(LockError):
        asyncio.run(retrying(locked, deadline=0.2, first_wait=0.05)(UserMessage("x", CollectingOutputChannel(), "p")))
    assert 2 <= calls.count(2) <= 4
