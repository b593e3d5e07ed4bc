"""The WeChat official-account channel, driven with requests built exactly as WeChat sends them (signed, and
AES-encrypted in safe mode, by sandbox.patient) against a real Sanic server; pushes reach the sandbox through
the real wechatpy client. The bot behind the channel is scripted (tests/channels/harness.py); whole
conversations with the trained model are in tests/e2e."""

from __future__ import annotations

import base64
import os
import time
from dataclasses import replace
from typing import Any, Dict, Iterator

import pytest
from sqlalchemy import select

from bot.outbound.settings import get_provider_settings
from channels.wechat import MAX_BODY_BYTES, WeChatInput
from sandbox import patient as wx
from tests.channels.harness import ChannelServer, ScriptedBot, wait_until

OPENID = "oPatient0000000000000000001"


@pytest.fixture
def bot() -> ScriptedBot:
    return ScriptedBot()


@pytest.fixture
def server(providers_env: Any, bot: ScriptedBot) -> Iterator[ChannelServer]:
    settings = replace(get_provider_settings().wechat, passive_deadline=1.0)
    with ChannelServer(WeChatInput(settings), bot) as running:
        running.settings = settings  # type: ignore[attr-defined]
        yield running


def send(server: ChannelServer, xml: str, *, safe: bool = False, aes_key: str = "", **overrides: str) -> Any:
    settings = server.settings  # type: ignore[attr-defined]
    key = aes_key or (settings.aes_key if safe else None)
    request = wx.wechat_request(xml, token=settings.token, appid=settings.appid, aes_key=key)
    query = {**request.query, **overrides}
    return server.post("/", params=query, data=request.body, headers={"Content-Type": "text/xml"})


def reply_of(server: ChannelServer, response: Any) -> Dict[str, Any]:
    settings = server.settings  # type: ignore[attr-defined]
    return wx.read_reply(response.content, token=settings.token, appid=settings.appid, aes_key=settings.aes_key)


def text(content: str, msg_id: int, openid: str = OPENID) -> str:
    return wx.text_xml(openid, content, msg_id)


# URL verification -----------------------------------------------------------------------------
def test_url_verification_echoes_echostr(server: ChannelServer) -> None:
    query = wx.wechat_verify_query(server.settings.token, "echo-1234")  # type: ignore[attr-defined]
    response = server.get("/", params=query)
    assert response.status_code == 200 and response.text == "echo-1234"


def test_url_verification_with_a_wrong_signature_is_refused(server: ChannelServer) -> None:
    query = wx.wechat_verify_query("not-our-token", "echo-1234")
    response = server.get("/", params=query)
    assert response.status_code == 403 and "echo-1234" not in response.text


# messages -------------------------------------------------------------------------------------
def test_text_gets_a_passive_reply_to_the_patient(server: ChannelServer, bot: ScriptedBot) -> None:
    response = send(server, text("我想挂号😀", 1001))
    assert response.status_code == 200
    reply = reply_of(server, response)
    assert reply["MsgType"] == "text" and reply["ToUserName"] == OPENID
    assert reply["Content"] == "收到：我想挂号😀"
    turn = bot.turns[-1]
    assert (turn.sender_id, turn.input_channel, turn.text) == (OPENID, "wechat", "我想挂号😀")


def test_safe_mode_reply_is_encrypted_and_plain_mode_reply_is_not(server: ChannelServer) -> None:
    encrypted = send(server, text("你好", 1002), safe=True)
    assert encrypted.status_code == 200 and b"<Encrypt>" in encrypted.content
    assert reply_of(server, encrypted)["Content"] == "收到：你好"
    plain = send(server, text("你好", 1003))
    assert b"<Encrypt>" not in plain.content and reply_of(server, plain)["Content"] == "收到：你好"


def test_previous_aes_key_still_accepted_during_a_rotation(providers_env: Any, bot: ScriptedBot) -> None:
    old_key = base64.b64encode(os.urandom(32)).decode()[:43]
    settings = replace(get_provider_settings().wechat, previous_aes_key=old_key, passive_deadline=1.0)
    with ChannelServer(WeChatInput(settings), bot) as running:
        running.settings = settings  # type: ignore[attr-defined]
        response = send(running, text("旧密钥", 1004), aes_key=old_key)
        assert response.status_code == 200
    assert bot.texts() == ["旧密钥"]


@pytest.mark.parametrize(
    "tamper, status",
    [
        ({"signature": "0" * 40}, 403),
        ({"timestamp": str(int(time.time()) - 3600)}, 403),
    ],
)
def test_bad_signatures_and_replays_are_refused(
    server: ChannelServer, bot: ScriptedBot, tamper: Dict[str, str], status: int
) -> None:
    response = send(server, text("伪造", 1005), **tamper)
    assert response.status_code == status
    assert bot.turns == []


def test_bad_msg_signature_in_safe_mode_is_refused(server: ChannelServer, bot: ScriptedBot) -> None:
    response = send(server, text("伪造", 1006), safe=True, msg_signature="0" * 40)
    assert response.status_code == 403 and "msg_signature" in response.text
    assert bot.turns == []


def test_a_key_that_is_not_ours_cannot_be_decrypted(server: ChannelServer, bot: ScriptedBot) -> None:
    stranger = base64.b64encode(os.urandom(32)).decode()[:43]
    response = send(server, text("伪造", 1007), aes_key=stranger)
    assert response.status_code == 400 and "decrypt" in response.text
    assert bot.turns == []


@pytest.mark.parametrize(
    "body, status, words",
    [
        (b"", 400, "empty"),
        (b"not xml at all", 400, "not a WeChat XML"),
        (b"<xml><MsgType>text</MsgType></xml>", 400, "FromUserName"),
        (b'<?xml version="1.0"?><!DOCTYPE x [<!ENTITY a "b">]><xml>&a;</xml>', 400, "DTD"),
        (b"<xml>" + b"a" * (MAX_BODY_BYTES + 1) + b"</xml>", 413, "larger"),
        ("<xml><Content>\udcff</Content></xml>".encode("utf-8", "surrogateescape"), 400, "not a WeChat XML"),
    ],
)
def test_malformed_bodies_get_a_clear_4xx(
    server: ChannelServer, bot: ScriptedBot, body: bytes, status: int, words: str
) -> None:
    settings = server.settings  # type: ignore[attr-defined]
    query = wx.wechat_request(text("x", 1), token=settings.token, appid=settings.appid).query
    response = server.post("/", params=query, data=body)
    assert response.status_code == status
    assert words in response.text
    assert bot.turns == []


def test_three_deliveries_of_one_message_give_one_turn_and_one_answer(server: ChannelServer, bot: ScriptedBot) -> None:
    xml = text("复诊挂号", 2001)
    replies = [reply_of(server, send(server, xml)) for _ in range(3)]
    assert bot.texts() == ["复诊挂号"]
    # a retry (WeChat did not get the first answer) is given the same answer, never a second turn
    assert {reply["Content"] for reply in replies} == {"收到：复诊挂号"}


def test_buttons_become_numbered_choices_and_1_picks_the_first(server: ChannelServer, bot: ScriptedBot) -> None:
    reply = reply_of(server, send(server, text("给我选项", 2002)))
    assert reply["Content"] == "请选择：\n1. 预约挂号\n2. 我的预约"
    send(server, text("1", 2003))
    assert bot.texts()[-1] == "/book_appointment"
    send(server, text("1", 2004))  # a choice is used once; the next "1" is text again
    assert bot.texts()[-1] == "1"


def test_several_bot_messages_are_merged_into_one_reply(server: ChannelServer) -> None:
    assert reply_of(server, send(server, text("/two", 2005)))["Content"] == "第一条\n第二条"


# other message types and events ---------------------------------------------------------------
def test_voice_uses_the_recognition_text_else_asks_for_text(server: ChannelServer, bot: ScriptedBot) -> None:
    send(server, wx.voice_xml(OPENID, "media-1", "我想挂号", 3001))
    send(server, wx.voice_xml(OPENID, "media-2", "", 3002))
    assert bot.texts() == ["我想挂号", "/voice_unrecognized"]
    assert bot.turns[1].metadata["media_id"] == "media-2"


def test_image_location_and_link_are_acknowledged_and_kept(server: ChannelServer, bot: ScriptedBot) -> None:
    send(server, wx.image_xml(OPENID, "media-3", 3003, pic_url="http://img.example/x.jpg"))
    send(server, wx.location_xml(OPENID, 31.2, 121.5, "上海市", 3004))
    send(server, wx.link_xml(OPENID, "化验单", "血常规", "http://example/report", 3005))
    assert bot.texts() == [
        '/share_media{"media_type": "image"}',
        '/share_media{"media_type": "location"}',
        '/share_media{"media_type": "link"}',
    ]
    image, location, link = (turn.metadata for turn in bot.turns)
    assert image["image"] == "http://img.example/x.jpg" and image["media_id"] == "media-3"
    assert location["label"] == "上海市"
    assert link["url"] == "http://example/report"


def test_subscribe_from_a_qr_scene_welcomes_then_runs_the_scene(server: ChannelServer, bot: ScriptedBot) -> None:
    response = send(server, wx.event_xml(OPENID, "subscribe", "qrscene_survey_satisfaction"))
    assert response.status_code == 200
    assert bot.texts() == ["/subscribed", '/take_survey{"survey_instrument": "satisfaction"}']
    assert bot.turns[0].metadata["scene"] == "survey_satisfaction"


def test_repeated_event_is_dropped_by_sender_and_create_time(server: ChannelServer, bot: ScriptedBot) -> None:
    xml = wx.event_xml(OPENID, "CLICK", "BOOK", create_time=1_700_000_000)
    for _ in range(3):
        send(server, xml)
    assert bot.texts() == ["/book_appointment"]


def test_menu_clicks_map_to_flows(server: ChannelServer, bot: ScriptedBot) -> None:
    for key in ("MY_APPOINTMENTS", "TRIAGE", "SURVEY", "NOT_A_KEY"):
        send(server, wx.event_xml(OPENID, "CLICK", key))
    assert bot.texts() == ["/query_appointment", "/start_triage", '/take_survey{"survey_instrument": "satisfaction"}']


def test_unsubscribe_records_the_opt_out(server: ChannelServer, bot: ScriptedBot) -> None:
    from bot.crm.models import Consent
    from bot.db import session_scope

    response = send(server, wx.event_xml("oLeaving000000000000000001", "unsubscribe"))
    assert response.status_code == 200 and response.text == "success"
    with session_scope() as session:
        consent = session.execute(
            select(Consent).where(Consent.external_id == "oLeaving000000000000000001")
        ).scalar_one()
        assert consent.channel == "wechat" and consent.opted_in is False
    assert bot.turns == []


# slow bot, long answers and the customer-service window ----------------------------------------
def test_a_slow_bot_gets_success_in_time_and_the_answer_by_customer_service_api(
    server: ChannelServer, bot: ScriptedBot, sandbox: Any
) -> None:
    bot.delay = 2.0  # longer than the passive deadline (1 s here, 4 s in production; WeChat waits 5)
    started = time.monotonic()
    response = send(server, text("慢一点的问题", 4001))
    assert time.monotonic() - started < 1.8
    assert response.status_code == 200 and response.text == "success"
    pushed = wait_until(lambda: sandbox.messages(to=OPENID, provider="wechat"))
    assert pushed[0]["kind"] == "custom" and pushed[0]["body"] == "收到：慢一点的问题"


def test_a_long_answer_goes_out_in_parts(server: ChannelServer, sandbox: Any) -> None:
    response = send(server, text("/long", 4002))
    assert response.text == "success"
    parts = wait_until(lambda: len(sandbox.messages(to=OPENID)) >= 2 and sandbox.messages(to=OPENID))
    assert all(len(part["body"]) <= 600 and part["body"].endswith("。") for part in parts)


def test_outside_the_window_the_answer_goes_as_a_template_and_is_recorded(
    server: ChannelServer, bot: ScriptedBot, sandbox: Any
) -> None:
    from bot.crm.models import Delivery
    from bot.db import session_scope

    sandbox.close_window(OPENID)
    bot.delay = 1.5
    send(server, text("还在吗", 4003))
    notices = wait_until(lambda: [m for m in sandbox.messages(to=OPENID) if m["kind"] == "template"])
    assert "收到：还在吗" in notices[0]["body"]
    with session_scope() as session:
        row = session.execute(select(Delivery).where(Delivery.address == OPENID)).scalar_one()
        assert (row.kind, row.status.value) == ("template", "sent")
        assert "45015" in row.error


def test_token_is_fetched_once_and_a_rotated_token_is_retried_once(providers_env: Any, sandbox: Any) -> None:
    from bot.outbound import OutboundMessage, ProviderError
    from bot.outbound.providers import WeChatProvider

    provider = WeChatProvider(get_provider_settings().wechat)
    provider.send(OPENID, OutboundMessage("一"))
    provider.send(OPENID, OutboundMessage("二"))
    sandbox.fail_next("wechat", 40001, 1)  # the token was invalidated elsewhere: refetch once, then succeed
    provider.send(OPENID, OutboundMessage("三"))
    assert [m["body"] for m in sandbox.messages(to=OPENID)] == ["一", "二", "三"]
    sandbox.fail_next("wechat", 40001, 5)  # still refused after one refetch: give up, do not loop
    with pytest.raises(ProviderError) as refused:
        provider.send(OPENID, OutboundMessage("四"))
    assert refused.value.code == "40001"
    assert sandbox.stats()["stable_token_fetches"] <= 3 and sandbox.stats()["token_fetches"] == 0


def test_two_processes_sharing_redis_answer_a_repeated_message_once(providers_env: Any) -> None:
    """WeChat's retry may reach another Rasa process: the seen-message record lives in Redis."""
    from bot.kv import RedisStore
    from channels.common import Deduplicator
    from tests.conftest import REDIS_TEST_URL, require_server

    require_server("Redis", REDIS_TEST_URL, 6379, "redis-server --daemonize yes --port 6379")
    settings = replace(get_provider_settings().wechat, passive_deadline=1.0)
    bots = [ScriptedBot(), ScriptedBot()]
    channels = []
    for _ in bots:
        channel = WeChatInput(settings)
        channel.seen = Deduplicator("wechat", RedisStore(REDIS_TEST_URL, prefix=f"test:{os.getpid()}:"))
        channels.append(channel)
    xml = text("两个进程", int(time.time() * 1000))
    with ChannelServer(channels[0], bots[0]) as first, ChannelServer(channels[1], bots[1]) as second:
        for running in (first, second):
            running.settings = settings  # type: ignore[attr-defined]
        answers = [reply_of(first, send(first, xml)), reply_of(second, send(second, xml))]
    assert bots[0].texts() + bots[1].texts() == ["两个进程"]
    assert answers[0]["Content"] == answers[1]["Content"] == "收到：两个进程"
