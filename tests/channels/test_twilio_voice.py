"""Patients on the phone with the hospital's assistant (channels/twilio_voice.py).

Inbound calls are driven with signed webhooks as Twilio sends them and the TwiML answers read as Twilio would;
outbound calls go through the real TwilioVoiceProvider to the sandbox, which rings the simulated patient,
fetches the call's script from the bot and records what the patient heard and pressed.
"""

from __future__ import annotations

import xml.etree.ElementTree as ElementTree
from typing import Iterator, List, Tuple

import pytest
import yaml

from bot.crm.models import DeliveryStatus
from bot.outbound import Choice, OutboundMessage, send_to_address
from channels.twilio_voice import (
    PHRASES_FILE,
    SAY_LIMIT,
    TwilioVoiceInput,
    VoicePushUnsupported,
    speakable,
    voice_phrases,
)
from sandbox.patient import twilio_voice_form
from tests.channels.twilio_helpers import (
    EMERGENCY_ADVICE,
    FORM_HEADERS,
    HOSPITAL_NUMBER,
    LONG_ADVICE,
    TwilioWorld,
    new_phone,
    twilio_world,
)

PHRASES = voice_phrases("zh_CN")
MEDICATION_REMINDER = OutboundMessage(
    text="您好，这里是市第一人民医院。提醒您今晚八点服用降压药。",
    choices=(Choice("已服药", "/medication_taken"), Choice("稍后提醒", "/remind_later")),
    purpose="reminder",
)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TwilioWorld]:
    def make_channel(providers, store):  # type: ignore[no-untyped-def]
        return TwilioVoiceInput(store=store)

    with twilio_world(tmp_path_factory.mktemp("twilio_voice"), make_channel) as running:
        yield running


def parse(reply) -> ElementTree.Element:  # type: ignore[no-untyped-def]
    assert reply.status_code == 200, reply.text
    assert reply.headers["Content-Type"].startswith("text/xml")
    root = ElementTree.fromstring(reply.content)
    assert root.tag == "Response"
    return root


def spoken(root: ElementTree.Element) -> List[str]:
    return [say.text or "" for say in root.iter("Say")]


def call_in(world: TwilioWorld, phone: str) -> Tuple[str, ElementTree.Element]:
    """The patient phones the hospital; returns the call sid and the TwiML the bot answered with."""
    form = twilio_voice_form(phone, HOSPITAL_NUMBER)
    return form["CallSid"], parse(world.bot.post_signed("/webhook", form))


def gather(world: TwilioWorld, call_sid: str, phone: str, query: str = "", **fields: str) -> ElementTree.Element:
    """What Twilio posts to the Gather's action (or the Redirect after it) during an inbound call."""
    form = twilio_voice_form(phone, HOSPITAL_NUMBER, call_sid, CallStatus="in-progress", **fields)
    return parse(world.bot.post_signed("/gather" + query, form))


def test_an_inbound_call_is_greeted_in_mandarin_with_keys(world: TwilioWorld) -> None:
    phone = new_phone()
    call_sid, root = call_in(world, phone)

    (turn,) = world.rasa.turns_of("voice:" + phone)
    assert turn.text == "/greet"
    assert turn.input_channel == "voice"
    assert turn.metadata == {"channel": "voice", "call_sid": call_sid}

    verbs = list(root)
    assert [verb.tag for verb in verbs] == ["Gather", "Redirect"]
    listen = verbs[0]
    assert listen.get("input") == "speech dtmf"
    assert listen.get("language") == "zh-CN"
    assert listen.get("action") == world.bot.url("/gather")
    assert listen.get("numDigits") == "1"
    assert listen.get("timeout") == "5"
    assert listen.get("speechTimeout") == "auto"
    says = listen.findall("Say")
    assert all(say.get("language") == "cmn-CN" and say.get("voice") == "Polly.Zhiyu" for say in says)
    assert says[0].text.startswith("您好！我是医院智能助手")
    assert says[-1].text == "请按1预约挂号；按2我的预约；按3医院信息。"
    assert verbs[1].text == world.bot.url("/gather?silence=1")


def test_keys_and_speech_reach_the_bot(world: TwilioWorld) -> None:
    phone = new_phone()
    call_sid, _ = call_in(world, phone)

    root = gather(world, call_sid, phone, Digits="1")
    assert world.rasa.turns_of("voice:" + phone)[-1].text == "/book_appointment"
    assert spoken(root) == ["好的，请问您想挂哪个科室？"]
    assert root.find("Gather").get("numDigits") is None  # no choices: the patient answers by voice

    root = gather(world, call_sid, phone, SpeechResult="心内科。", Confidence="0.92")
    assert world.rasa.turns_of("voice:" + phone)[-1].text == "心内科。"
    assert spoken(root) == ["收到：心内科。"]

    root = gather(world, call_sid, phone, Digits="7")  # not among the choices: passed on as it is
    assert world.rasa.turns_of("voice:" + phone)[-1].text == "7"


def test_silence_gets_one_reprompt_then_a_polite_goodbye(world: TwilioWorld) -> None:
    phone = new_phone()
    call_sid, first = call_in(world, phone)
    redirect = first.find("Redirect").text
    assert redirect.endswith("/gather?silence=1")

    reprompt = gather(world, call_sid, phone, query="?silence=1")
    says = spoken(reprompt)
    assert says[0].startswith(PHRASES.reprompt)
    assert "您好！我是医院智能助手" in says[0]  # the question again
    assert says[-1] == "请按1预约挂号；按2我的预约；按3医院信息。"
    assert reprompt.find("Redirect").text.endswith("/gather?silence=2")

    goodbye = gather(world, call_sid, phone, query="?silence=2")
    assert [verb.tag for verb in goodbye] == ["Say", "Hangup"]
    assert spoken(goodbye) == [PHRASES.goodbye]
    assert len(world.rasa.turns_of("voice:" + phone)) == 1  # silence never reached the bot


def test_keys_still_work_after_a_reprompt(world: TwilioWorld) -> None:
    phone = new_phone()
    call_sid, _ = call_in(world, phone)
    gather(world, call_sid, phone, query="?silence=1")
    root = gather(world, call_sid, phone, Digits="3")
    assert world.rasa.turns_of("voice:" + phone)[-1].text == "/ask_hospital_info"
    assert spoken(root)[-1] == "请按1门诊时间；按2停车。"


@pytest.mark.parametrize("answer", [{"Digits": "0"}, {"SpeechResult": "好的，再见。"}], ids=["key 0", "再见"])
def test_key_zero_or_saying_goodbye_ends_the_call(world: TwilioWorld, answer: dict) -> None:
    phone = new_phone()
    call_sid, _ = call_in(world, phone)
    root = gather(world, call_sid, phone, **answer)
    assert world.rasa.turns_of("voice:" + phone)[-1].text == "/goodbye"
    assert [verb.tag for verb in root] == ["Say", "Hangup"]
    assert spoken(root) == ["再见，祝您早日康复！有需要随时找我。"]


def test_a_sentence_mentioning_goodbye_is_not_a_goodbye(world: TwilioWorld) -> None:
    phone = new_phone()
    call_sid, _ = call_in(world, phone)
    root = gather(world, call_sid, phone, SpeechResult="我想问一下再见到医生要等多久")
    assert root.find("Hangup") is None
    assert world.rasa.turns_of("voice:" + phone)[-1].text == "我想问一下再见到医生要等多久"


def test_say_text_is_speakable_and_short(world: TwilioWorld) -> None:
    phone = new_phone()
    call_sid, _ = call_in(world, phone)
    root = gather(world, call_sid, phone, SpeechResult="急救")
    assert spoken(root) == ["请立即拨打120 <急救> & 前往急诊。本院急诊24小时开放"]

    root = gather(world, call_sid, phone, SpeechResult="检查注意事项")
    parts = spoken(root)
    assert len(parts) > 1
    assert all(len(part) <= SAY_LIMIT for part in parts)
    assert "".join(parts) == LONG_ADVICE


def test_speakable_strips_emoji_and_xml_breaking_characters() -> None:
    assert speakable(EMERGENCY_ADVICE) == "请立即拨打120 <急救> & 前往急诊。本院急诊24小时开放"
    assert speakable("体温38.5℃\x00，请就医👍🏽") == "体温38.5℃，请就医"
    assert speakable("第一行。\n\n第二行") == "第一行。第二行"


@pytest.mark.parametrize("route", ["/webhook", "/gather", "/outbound?delivery=1", "/status"])
def test_forged_requests_are_refused(world: TwilioWorld, route: str) -> None:
    phone = new_phone()
    form = twilio_voice_form(phone, HOSPITAL_NUMBER, Digits="1", CallStatus="completed")
    assert world.bot.post_signed(route, form, auth_token="forger").status_code == 403
    assert world.bot.post_signed(route, form, signature="").status_code == 403
    # The query string is signed too: the same request for another delivery is refused.
    assert world.bot.post_signed(route, form, signed_url=world.bot.url(route) + "&x=1").status_code == 403
    assert world.rasa.turns_of("voice:" + phone) == []


def test_malformed_requests_are_bad_requests(world: TwilioWorld) -> None:
    form = twilio_voice_form(new_phone(), HOSPITAL_NUMBER)
    del form["CallSid"]
    reply = world.bot.post_signed("/webhook", form)
    assert reply.status_code == 400
    assert "'CallSid' is required" in reply.text
    assert (
        world.bot.post_raw("/webhook", b'{"CallSid": "CA1"}', {"Content-Type": "application/json"}).status_code == 400
    )
    assert world.bot.post_raw("/gather", b"CallSid=\xff", FORM_HEADERS).status_code == 400
    reply = world.bot.post_signed("/status", {"CallSid": "CA" + "0" * 32})
    assert reply.status_code == 400


def test_a_turn_without_an_answer_still_asks_something(world: TwilioWorld) -> None:
    phone = new_phone()
    call_sid, _ = call_in(world, phone)
    root = gather(world, call_sid, phone, SpeechResult="/quiet")
    assert spoken(root) == [PHRASES.anything_else]
    assert root.find("Gather") is not None


def test_a_failing_turn_apologises_and_hangs_up(world: TwilioWorld) -> None:
    phone = new_phone()
    call_sid, _ = call_in(world, phone)
    root = gather(world, call_sid, phone, SpeechResult="/boom")
    assert [verb.tag for verb in root] == ["Say", "Hangup"]
    assert spoken(root) == [PHRASES.unavailable]


def test_an_outbound_reminder_call_reads_keys_and_answers_go_to_the_patients_conversation(world: TwilioWorld) -> None:
    phone = new_phone()
    report = send_to_address("voice", phone, MEDICATION_REMINDER, providers=world.providers)
    assert report.kind == "call"

    heard = world.sandbox.wait_for(2, to=phone, provider="voice", kind="call_say")
    assert [record["body"] for record in heard] == [MEDICATION_REMINDER.text, "请按1已服药；按2稍后提醒。"]
    assert all(r["detail"]["language"] == "cmn-CN" and r["detail"]["voice"] == "Polly.Zhiyu" for r in heard)
    call_sid = heard[0]["detail"]["call_sid"]
    (call,) = world.sandbox.messages(to=phone, provider="voice", kind="call")
    assert call["from"] == HOSPITAL_NUMBER
    fetched = call["detail"]["twiml"][0]
    assert fetched["url"] == world.bot.url(f"/outbound?delivery={report.delivery_id}")
    assert fetched["http_status"] == 200

    answer = world.sandbox.press(call_sid, "1")
    turns = world.rasa.turns_of("voice:" + phone)  # the patient's conversation, never the hospital number's
    assert [turn.text for turn in turns] == ["/medication_taken"]
    assert turns[0].metadata == {"channel": "voice", "call_sid": call_sid}
    assert world.rasa.turns_of("voice:" + HOSPITAL_NUMBER) == []
    assert [record["body"] for record in answer if record["kind"] == "call_say"] == [
        "好的，已记录您今天按时服药，祝您身体健康。"
    ]

    world.sandbox.press(call_sid, "0")
    world.wait_until(lambda: world.sandbox.call_status(call_sid) == "completed", "the call to end")
    row = world.wait_until(
        lambda: [r for r in world.deliveries(phone, "voice") if r.status == DeliveryStatus.DELIVERED],
        "the completed call's status callback",
    )[0]
    assert row.id == report.delivery_id
    assert row.provider_message_id == call_sid


def test_an_outbound_call_nobody_answers_is_reprompted_once_then_ended(world: TwilioWorld) -> None:
    phone = new_phone()
    send_to_address("voice", phone, MEDICATION_REMINDER, providers=world.providers)
    call_sid = world.sandbox.wait_for(2, to=phone, provider="voice", kind="call_say")[0]["detail"]["call_sid"]

    reprompt = [r["body"] for r in world.sandbox.stay_silent(call_sid) if r["kind"] == "call_say"]
    assert reprompt == [f"{PHRASES.reprompt} {MEDICATION_REMINDER.text}", "请按1已服药；按2稍后提醒。"]
    goodbye = [r["body"] for r in world.sandbox.stay_silent(call_sid) if r["kind"] == "call_say"]
    assert goodbye == [PHRASES.goodbye]
    world.wait_until(lambda: world.sandbox.call_status(call_sid) == "completed", "the call to end")
    assert world.rasa.turns_of("voice:" + phone) == []


def test_an_unknown_or_foreign_delivery_is_never_read_out(world: TwilioWorld) -> None:
    phone, other = new_phone(), new_phone()
    report = send_to_address("voice", other, MEDICATION_REMINDER, providers=world.providers)
    outbound = twilio_voice_form(HOSPITAL_NUMBER, phone, CallStatus="in-progress", Direction="outbound-api")
    for delivery in ("999999", str(report.delivery_id), "abc", ""):
        root = parse(world.bot.post_signed(f"/outbound?delivery={delivery}", outbound))
        assert [verb.tag for verb in root] == ["Say", "Hangup"], delivery
        assert spoken(root) == [PHRASES.unknown_call]


def test_voice_cannot_push_outside_a_call(world: TwilioWorld) -> None:
    output = world.bot.channel.get_output_channel()
    with pytest.raises(VoicePushUnsupported, match="outbound"):
        world.bot.run(output.send_text_message("voice:" + new_phone(), "明天复诊"))


def test_every_locale_of_the_phrase_catalog_has_every_phrase() -> None:
    catalog = yaml.safe_load(PHRASES_FILE.read_text(encoding="utf-8"))
    assert set(catalog) >= {"zh_CN", "en"}
    assert len({frozenset(entry) for entry in catalog.values()}) == 1
    for locale in catalog:
        assert voice_phrases(locale).goodbye
    assert voice_phrases("fr_FR") == PHRASES  # unknown locales fall back to Mandarin
