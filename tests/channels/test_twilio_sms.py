"""Patients texting the hospital over Twilio SMS (channels/twilio_sms.py), with the sandbox playing Twilio.

Each test writes as a patient would (a webhook signed the way Twilio signs it) and checks what the patient's
phone received at the sandbox, what the bot was told, and what the CRM recorded. No trained model: a stand-in
answers with the domain's own responses.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Iterator, List

import pytest
import requests

from bot.crm.models import DeliveryStatus
from bot.outbound import OutboundMessage
from bot.outbound.providers import SMS_SEGMENT_LIMIT
from channels.twilio_common import MAX_BODY_BYTES
from channels.twilio_sms import EMPTY_TWIML, TwilioSmsInput
from sandbox.patient import twilio_signature, twilio_sms_form
from tests.channels.twilio_helpers import (
    FORM_HEADERS,
    HOSPITAL_NUMBER,
    LONG_ADVICE,
    TwilioWorld,
    domain_text,
    new_phone,
    twilio_world,
)

GREETING_CHOICES = "1. 预约挂号\n2. 我的预约\n3. 医院信息"


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TwilioWorld]:
    def make_channel(providers, store):  # type: ignore[no-untyped-def]
        return TwilioSmsInput(providers=providers, store=store)

    with twilio_world(tmp_path_factory.mktemp("twilio_sms"), make_channel) as running:
        yield running


def text(world: TwilioWorld, phone: str, body: str, **extra: str):  # type: ignore[no-untyped-def]
    """The patient sends an SMS; Twilio posts it to the webhook, signed."""
    return world.bot.post_signed("/webhook", twilio_sms_form(phone, HOSPITAL_NUMBER, body, **extra))


def settle(world: TwilioWorld) -> None:
    """Let every turn the webhook started finish (the answer is sent after the webhook returned)."""
    world.bot.run(world.bot.channel.turns.drain())


def received(world: TwilioWorld, phone: str) -> List[str]:
    return [record["body"] for record in world.sandbox.messages(to=phone, provider="sms")]


def assert_acknowledged(reply) -> None:  # type: ignore[no-untyped-def]
    assert reply.status_code == 200, reply.text
    assert reply.headers["Content-Type"].startswith("text/xml")
    assert reply.text == EMPTY_TWIML


def test_health(world: TwilioWorld) -> None:
    reply = requests.get(world.bot.url("/health"), timeout=5)
    assert reply.status_code == 200
    assert reply.json() == {"status": "ok"}


def test_patient_gets_one_sms_with_numbered_choices_and_answers_with_a_number(world: TwilioWorld) -> None:
    phone = new_phone()
    assert_acknowledged(text(world, phone, "你好", message_sid="SM" + "a" * 32))

    (greeting,) = world.sandbox.wait_for(1, to=phone, provider="sms")
    assert greeting["from"] == HOSPITAL_NUMBER
    assert greeting["body"].startswith("您好！我是医院智能助手")
    assert greeting["body"].endswith(GREETING_CHOICES)
    assert "/book_appointment" not in greeting["body"]  # payloads stay hidden

    (turn,) = world.rasa.wait_for_turns(phone)
    assert turn.text == "你好"
    assert turn.input_channel == "sms"
    assert turn.metadata == {"channel": "sms", "message_sid": "SM" + "a" * 32}

    assert_acknowledged(text(world, phone, "1"))
    turns = world.rasa.wait_for_turns(phone, 2)
    assert turns[1].text == "/book_appointment"
    answers = world.sandbox.wait_for(2, to=phone, provider="sms")
    assert answers[1]["body"] == "好的，请问您想挂哪个科室？"

    # The choice was used: a second "1" is just text again.
    text(world, phone, "1")
    assert world.rasa.wait_for_turns(phone, 3)[2].text == "1"


def test_several_bot_messages_go_out_as_one_sms(world: TwilioWorld) -> None:
    phone = new_phone()
    text(world, phone, "/ask_hospital_info")
    settle(world)
    assert received(world, phone) == ["本院地址：上海市徐汇区医院路1号。\n您想了解哪方面？\n1. 门诊时间\n2. 停车"]
    text(world, phone, "２")  # a full-width digit from a Chinese keyboard
    assert world.rasa.wait_for_turns(phone, 2)[1].text == '/ask_hospital_info{"topic":"parking"}'


def test_blank_fields_twilio_signed_are_part_of_the_signature(world: TwilioWorld) -> None:
    phone = new_phone()
    form = twilio_sms_form(phone, HOSPITAL_NUMBER, "我想挂号")
    assert form["FromCity"] == "" and form["ToZip"] == ""
    without_blanks = {name: value for name, value in form.items() if value}

    # What a server that drops blank fields (Sanic's request.form) would check: it must not be what we check.
    assert world.bot.post_signed("/webhook", form, signed_form=without_blanks).status_code == 403
    assert_acknowledged(world.bot.post_signed("/webhook", form))
    assert world.rasa.wait_for_turns(phone)[0].text == "我想挂号"


@pytest.mark.parametrize(
    "forgery",
    [
        {"signature": ""},  # no header at all
        {"signature": "bm90IGEgc2lnbmF0dXJl"},
        {"auth_token": "someone-elses-token"},
        {"signed_url": "https://attacker.example/webhooks/twilio_sms/webhook"},
    ],
    ids=["missing", "garbage", "wrong auth token", "other URL"],
)
def test_forged_webhooks_are_refused(world: TwilioWorld, forgery: dict) -> None:
    phone = new_phone()
    reply = world.bot.post_signed("/webhook", twilio_sms_form(phone, HOSPITAL_NUMBER, "你好"), **forgery)
    assert reply.status_code == 403
    assert reply.headers["Content-Type"].startswith("text/plain")
    assert "X-Twilio-Signature" in reply.text
    settle(world)
    assert world.rasa.turns_of(phone) == []
    assert received(world, phone) == []


def test_a_tampered_body_is_refused(world: TwilioWorld) -> None:
    phone = new_phone()
    form = twilio_sms_form(phone, HOSPITAL_NUMBER, "你好")
    signed_for_original = twilio_signature(world.bot.url("/webhook"), form, "sandbox-twilio-auth-token")
    reply = world.bot.post_signed("/webhook", {**form, "Body": "退订"}, signature=signed_for_original)
    assert reply.status_code == 403


def test_malformed_requests_are_bad_requests(world: TwilioWorld) -> None:
    phone = new_phone()
    handled_before = len(world.rasa.received)
    cases = {
        "json body": (json.dumps({"From": phone, "Body": "hi"}).encode(), {"Content-Type": "application/json"}),
        "not utf-8": (b"From=%2B85291234567&Body=\xff\xfe&MessageSid=SM1", FORM_HEADERS),
        "too large": (b"Body=" + b"a" * (MAX_BODY_BYTES + 1), FORM_HEADERS),
    }
    for name, (body, headers) in cases.items():
        reply = world.bot.post_raw("/webhook", body, headers)
        assert reply.status_code == 400, name
        assert reply.headers["Content-Type"].startswith("text/plain"), name
        assert reply.text, name

    # Signed by Twilio but missing what every message has.
    for missing in ("From", "MessageSid"):
        form = twilio_sms_form(phone, HOSPITAL_NUMBER, "你好")
        del form[missing]
        reply = world.bot.post_signed("/webhook", form)
        assert reply.status_code == 400
        assert f"'{missing}' is required" in reply.text
    reply = world.bot.post_signed("/webhook", twilio_sms_form(phone, HOSPITAL_NUMBER, "你好", NumMedia="many"))
    assert reply.status_code == 400
    settle(world)
    assert len(world.rasa.received) == handled_before


def test_twilio_retries_are_answered_without_a_second_turn(world: TwilioWorld) -> None:
    phone = new_phone()
    form = twilio_sms_form(phone, HOSPITAL_NUMBER, "我想挂号")
    for _ in range(3):
        assert_acknowledged(world.bot.post_signed("/webhook", form))
    settle(world)
    assert len(world.rasa.turns_of(phone)) == 1
    assert received(world, phone) == ["好的，请问您想挂哪个科室？"]


def test_a_picture_without_text_is_acknowledged_and_passed_on(world: TwilioWorld) -> None:
    phone = new_phone()
    media = {
        "NumMedia": "2",
        "MediaUrl0": "https://api.twilio.com/2010-04-01/Accounts/AC0/Messages/MM1/Media/ME1",
        "MediaContentType0": "image/jpeg",
        "MediaUrl1": "https://api.twilio.com/2010-04-01/Accounts/AC0/Messages/MM1/Media/ME2",
        "MediaContentType1": "image/png",
    }
    assert_acknowledged(text(world, phone, "", **media))
    (turn,) = world.rasa.wait_for_turns(phone)
    assert turn.text == '/share_media{"media_type":"image"}'
    assert [item["url"] for item in turn.metadata["media"]] == [media["MediaUrl0"], media["MediaUrl1"]]
    assert turn.metadata["media"][0]["content_type"] == "image/jpeg"
    settle(world)
    assert received(world, phone) == [domain_text("utter_media_received")]


def test_tuiding_opts_out_and_confirms(world: TwilioWorld) -> None:
    phone = new_phone()
    assert_acknowledged(text(world, phone, "退订"))
    settle(world)
    assert world.consent("sms", phone) is False
    assert [turn.text for turn in world.rasa.turns_of(phone)] == ["/opt_out"]
    assert received(world, phone) == [domain_text("utter_opted_out")]

    text(world, phone, "订阅")
    settle(world)
    assert world.consent("sms", phone) is True
    assert received(world, phone)[-1] == domain_text("utter_opted_in")


@pytest.mark.parametrize(
    ("keyword", "intent", "opted_in"),
    [
        ("STOP", "/opt_out", False),
        ("stop ", "/opt_out", False),
        ("Unsubscribe", "/opt_out", False),
        ("START", "/opt_in", True),
        ("HELP", "/greet", None),
    ],
)
def test_twilio_keywords_are_recorded_but_twilio_answers_them(
    world: TwilioWorld, keyword: str, intent: str, opted_in: object
) -> None:
    phone = new_phone()
    assert_acknowledged(text(world, phone, keyword))
    settle(world)
    assert [turn.text for turn in world.rasa.turns_of(phone)] == [intent]
    assert world.consent("sms", phone) is opted_in
    assert received(world, phone) == []  # Twilio already replied to the patient


def test_stop_inside_a_sentence_is_just_text(world: TwilioWorld) -> None:
    phone = new_phone()
    text(world, phone, "yes please stop the reminders")
    assert world.rasa.wait_for_turns(phone)[0].text == "yes please stop the reminders"
    settle(world)
    assert world.consent("sms", phone) is None


def test_a_turn_without_an_answer_sends_nothing(world: TwilioWorld) -> None:
    phone = new_phone()
    text(world, phone, "/quiet")
    settle(world)
    assert world.rasa.turns_of(phone)
    assert received(world, phone) == []
    assert world.deliveries(phone) == []


def test_a_long_answer_is_split_on_sentence_boundaries(world: TwilioWorld) -> None:
    phone = new_phone()
    text(world, phone, "检查注意事项")
    settle(world)
    parts = received(world, phone)
    assert len(parts) >= 3
    assert all(len(part) <= SMS_SEGMENT_LIMIT for part in parts)
    assert all(part.endswith("。") for part in parts)
    assert "".join(parts) == LONG_ADVICE


def test_status_callbacks_move_the_delivery_row(world: TwilioWorld) -> None:
    reachable, unreachable = new_phone(), new_phone()
    world.sandbox.set_unreachable(unreachable, 30003)
    text(world, reachable, "我想挂号")
    text(world, unreachable, "我想挂号")

    def final_status(phone: str):  # type: ignore[no-untyped-def]
        rows = world.deliveries(phone, "sms")
        return rows and rows[-1].status in (DeliveryStatus.DELIVERED, DeliveryStatus.UNDELIVERED) and rows[-1]

    delivered = world.wait_until(lambda: final_status(reachable), "a delivered status callback")
    assert delivered.status == DeliveryStatus.DELIVERED
    assert delivered.body == "好的，请问您想挂哪个科室？"
    assert delivered.provider_message_id.startswith("SM")

    undelivered = world.wait_until(lambda: final_status(unreachable), "an undelivered status callback")
    assert undelivered.status == DeliveryStatus.UNDELIVERED
    assert undelivered.error_code == "30003"


def test_forged_status_callbacks_change_nothing(world: TwilioWorld) -> None:
    phone = new_phone()
    text(world, phone, "我想挂号")
    row = world.wait_until(
        lambda: [r for r in world.deliveries(phone, "sms") if r.status == DeliveryStatus.DELIVERED], "delivery"
    )[-1]
    forged = {"MessageSid": row.provider_message_id, "MessageStatus": "undelivered", "ErrorCode": "30007"}
    reply = world.bot.post_signed("/status", forged, auth_token="forger")
    assert reply.status_code == 403
    assert world.bot.post_signed("/status", forged, signature="").status_code == 403
    assert world.deliveries(phone, "sms")[-1].status == DeliveryStatus.DELIVERED


def test_status_callbacks_for_unknown_or_incomplete_messages(world: TwilioWorld) -> None:
    reply = world.bot.post_signed("/status", {"MessageSid": "SM" + "0" * 32, "MessageStatus": "delivered"})
    assert reply.status_code == 200
    reply = world.bot.post_signed("/status", {"MessageSid": "SM" + "0" * 32})
    assert reply.status_code == 400
    assert "'MessageStatus' is required" in reply.text


def test_an_answer_twilio_refuses_is_recorded_not_raised(world: TwilioWorld) -> None:
    phone = new_phone()
    world.sandbox.set_unsubscribed(phone)  # texted STOP to Twilio earlier: sends fail with 21610
    assert_acknowledged(text(world, phone, "我想挂号"))
    settle(world)
    (row,) = world.deliveries(phone, "sms")
    assert row.status == DeliveryStatus.FAILED
    assert row.error_code == "21610"


def test_a_failing_turn_is_logged_and_twilio_still_gets_its_answer(
    world: TwilioWorld, caplog: pytest.LogCaptureFixture
) -> None:
    phone = new_phone()
    with caplog.at_level(logging.ERROR, logger="channels.twilio_sms"):
        assert_acknowledged(text(world, phone, "/boom"))
        settle(world)
    assert any("background turn failed" in record.getMessage() for record in caplog.records)
    assert received(world, phone) == []


def test_pushes_go_out_at_once_and_respect_an_opt_out(world: TwilioWorld) -> None:
    phone, opted_out = new_phone(), new_phone()
    output = world.bot.channel.get_output_channel()
    assert output.name() == "sms"
    buttons = [{"title": "开始问卷", "payload": "/take_survey"}, {"title": "以后再说", "payload": "/deny"}]
    world.bot.run(output.send_response(phone, {"text": "请完成满意度调查。", "buttons": buttons}))
    assert received(world, phone) == ["请完成满意度调查。\n1. 开始问卷\n2. 以后再说"]
    text(world, phone, "1")
    assert world.rasa.wait_for_turns(phone)[0].text == "/take_survey"

    text(world, opted_out, "退订")
    settle(world)
    world.bot.run(output.send_text_message(opted_out, "明天上午9点复诊。"))
    assert received(world, opted_out) == [domain_text("utter_opted_out")]
    assert world.deliveries(opted_out, "sms")[-1].status == DeliveryStatus.SKIPPED


def test_sending_never_blocks_other_webhooks(world: TwilioWorld, monkeypatch: pytest.MonkeyPatch) -> None:
    provider = world.providers.get("sms")
    real_send = provider.send

    def slow_send(address: str, message: OutboundMessage, delivery_id=None):  # type: ignore[no-untyped-def]
        time.sleep(1.0)  # a slow Twilio API: the SDK blocks its thread
        return real_send(address, message, delivery_id=delivery_id)

    monkeypatch.setattr(provider, "send", slow_send)
    slow, quick = new_phone(), new_phone()
    text(world, slow, "我想挂号")
    world.wait_until(lambda: world.deliveries(slow, "sms"), "the slow send to start")

    started = time.monotonic()
    assert_acknowledged(text(world, quick, "你好"))
    assert world.rasa.wait_for_turns(quick)
    assert time.monotonic() - started < 0.5  # served while the other send is still blocked
    monkeypatch.undo()
    settle(world)
    assert received(world, slow) == ["好的，请问您想挂哪个科室？"]
