"""The sandbox answers the real wechatpy and twilio clients as WeChat and Twilio do, and shows what patients got.

Each test drives the real SDK against the sandbox (the session's one from tests/conftest.py, reset per test, or
a private one when a test needs other settings) and checks what the simulated patient received.
"""

from __future__ import annotations

import threading
from typing import Any, Dict, Iterator, List

import pytest
import requests
from aiohttp import web
from twilio.base.exceptions import TwilioRestException
from twilio.request_validator import RequestValidator
from wechatpy import parse_message
from wechatpy.crypto import WeChatCrypto
from wechatpy.exceptions import WeChatClientException
from wechatpy.replies import TextReply
from wechatpy.utils import check_signature

from bot.outbound.settings import (
    SANDBOX_TWILIO_ACCOUNT_SID,
    SANDBOX_WECHAT_AES_KEY,
    SANDBOX_WECHAT_APPID,
    SANDBOX_WECHAT_TOKEN,
    get_provider_settings,
)
from sandbox import patient
from sandbox.state import SandboxState
from sandbox.testing import RunningSandbox, run_sandbox, serve_app, wechat_client

PATIENT_OPENID = "o_patient_zhang"
PATIENT_PHONE = "+85291234567"
HOSPITAL_NUMBER = "+15005550006"
AUTH_TOKEN = get_provider_settings().twilio.auth_token


class FakeBot:
    """The bot's webhooks as far as the platforms see them: it checks every Twilio signature over the exact URL
    it was called at, answers calls with TwiML, and answers WeChat and SMS messages the way a channel would."""

    def __init__(self) -> None:
        self.requests: List[Dict[str, Any]] = []
        self.lock = threading.Lock()
        self.url = ""
        self.wechat_reply = "encrypted"  # or "plain", "garbage": replies a broken channel might give

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/status", self.status)
        app.router.add_post("/voice", self.voice)
        app.router.add_post("/voice/menu", self.menu)
        app.router.add_post("/voice/bye", self.bye)
        app.router.add_post("/webhooks/wechat/", self.wechat)
        app.router.add_post("/webhooks/twilio_sms/webhook", self.sms)
        return app

    async def _record(self, request: web.Request) -> Dict[str, str]:
        form = {key: value for key, value in (await request.post()).items() if isinstance(value, str)}
        signature = request.headers.get("X-Twilio-Signature", "")
        # request.url is broken for host:port with this aiohttp/yarl pair; the Host header is what Twilio signed.
        url = f"{request.scheme}://{request.host}{request.path_qs}"
        valid = RequestValidator(AUTH_TOKEN).validate(url, form, signature)
        with self.lock:
            self.requests.append({"path": request.path, "form": form, "valid": valid})
        return form

    def received(self, path: str) -> List[Dict[str, Any]]:
        with self.lock:
            return [entry for entry in self.requests if entry["path"] == path]

    async def status(self, request: web.Request) -> web.Response:
        await self._record(request)
        return web.Response(status=204)

    async def voice(self, request: web.Request) -> web.Response:
        await self._record(request)
        return _twiml(
            '<Gather input="dtmf speech" action="/voice/menu" language="zh-CN" numDigits="1">'
            '<Say voice="Polly.Zhiyu" language="cmn-CN">复诊提醒：确认请按1。</Say>'
            "</Gather>"
            "<Say>没有收到您的选择，再见。</Say><Hangup/>"
        )

    async def menu(self, request: web.Request) -> web.Response:
        form = await self._record(request)
        if form.get("Digits") == "1":
            return _twiml('<Say>已为您确认。</Say><Redirect method="POST">/voice/bye</Redirect>')
        return _twiml(f"<Say>您说的是：{form.get('SpeechResult', '')}</Say><Hangup/>")

    async def bye(self, request: web.Request) -> web.Response:
        await self._record(request)
        return _twiml("<Say>再见。</Say><Hangup/>")

    async def wechat(self, request: web.Request) -> web.Response:
        """Safe mode, as the sandbox's page sends it: decrypt, answer with an encrypted passive reply."""
        query = request.query
        crypto = WeChatCrypto(SANDBOX_WECHAT_TOKEN, SANDBOX_WECHAT_AES_KEY, SANDBOX_WECHAT_APPID)
        body = await request.read()
        message = parse_message(
            crypto.decrypt_message(body, query["msg_signature"], query["timestamp"], query["nonce"])
        )
        reply = TextReply(message=message, content=f"收到：{message.content}").render()
        if self.wechat_reply == "plain":
            return web.Response(text=reply)
        if self.wechat_reply == "garbage":
            return web.Response(text="ok")
        return web.Response(text=crypto.encrypt_message(reply, query["nonce"], query["timestamp"]))

    async def sms(self, request: web.Request) -> web.Response:
        form = await self._record(request)
        return _twiml(f"<Message>收到：{form['Body']}</Message>")


def _twiml(verbs: str) -> web.Response:
    return web.Response(
        text=f'<?xml version="1.0" encoding="UTF-8"?><Response>{verbs}</Response>', content_type="text/xml"
    )


@pytest.fixture(scope="module")
def fake_bot() -> Iterator[FakeBot]:
    bot = FakeBot()
    with serve_app(bot.app()) as (url, _loop):
        bot.url = url
        yield bot


@pytest.fixture
def strict_sandbox() -> Iterator[RunningSandbox]:
    """A private sandbox with WeChat's real rules for strangers and subscription messages."""
    with run_sandbox(SandboxState(strict_window=True, strict_subscriptions=True)) as running:
        yield running


# WeChat ------------------------------------------------------------------------------------------------------


def test_a_customer_service_message_reaches_the_patient_with_one_token_fetch(sandbox: RunningSandbox) -> None:
    client = sandbox.wechat_client()

    client.message.send_text(PATIENT_OPENID, "您明天上午9点的复诊已预约。")
    client.message.send_text(PATIENT_OPENID, "请带上医保卡。")

    received = sandbox.messages(to=PATIENT_OPENID, provider="wechat")
    assert [m["body"] for m in received] == ["您明天上午9点的复诊已预约。", "请带上医保卡。"]
    assert {(m["kind"], m["status"]) for m in received} == {("custom", "delivered")}
    assert sandbox.stats()["token_fetches"] == 1


def test_a_replaced_token_works_for_the_grace_period_only_and_stable_token_is_shared(sandbox: RunningSandbox) -> None:
    first, second = sandbox.wechat_client(auto_retry=False), sandbox.wechat_client(auto_retry=False)
    first.fetch_access_token()
    second.fetch_access_token()  # another process refreshing: the first token is now on borrowed time

    first.message.send_text(PATIENT_OPENID, "宽限期内")
    sandbox.advance_clock(301)
    with pytest.raises(WeChatClientException) as refused:
        first.message.send_text(PATIENT_OPENID, "宽限期后")
    assert refused.value.errcode == 40001
    second.message.send_text(PATIENT_OPENID, "新令牌")

    credentials = {"grant_type": "client_credential", "appid": first.appid, "secret": first.secret}
    stable = [requests.post(f"{sandbox.url}/wechat/cgi-bin/stable_token", json=credentials, timeout=5).json()]
    stable.append(requests.post(f"{sandbox.url}/wechat/cgi-bin/stable_token", json=credentials, timeout=5).json())
    forced = {**credentials, "force_refresh": True}
    stable.append(requests.post(f"{sandbox.url}/wechat/cgi-bin/stable_token", json=forced, timeout=5).json())
    assert stable[0]["access_token"] == stable[1]["access_token"] != stable[2]["access_token"]
    assert sandbox.stats()["stable_token_fetches"] == 3


def test_wrong_wechat_credentials_are_refused_like_wechat(sandbox: RunningSandbox) -> None:
    with pytest.raises(WeChatClientException) as wrong_secret:
        sandbox.wechat_client(secret="not-the-secret").fetch_access_token()
    with pytest.raises(WeChatClientException) as wrong_appid:
        sandbox.wechat_client(appid="wx_unknown").fetch_access_token()

    assert (wrong_secret.value.errcode, wrong_appid.value.errcode) == (40001, 40013)


def test_the_window_allows_five_messages_per_patient_message(sandbox: RunningSandbox) -> None:
    client = sandbox.wechat_client()
    sandbox.open_window(PATIENT_OPENID)
    for number in range(5):
        client.message.send_text(PATIENT_OPENID, f"第{number + 1}条")

    with pytest.raises(WeChatClientException) as refused:
        client.message.send_text(PATIENT_OPENID, "第6条")
    assert (refused.value.errcode, refused.value.errmsg) == (45047, "out of response count limit")

    sandbox.open_window(PATIENT_OPENID)  # the patient writes again
    client.message.send_text(PATIENT_OPENID, "新窗口")
    statuses = [(m["body"], m["status"], m["error_code"]) for m in sandbox.messages(to=PATIENT_OPENID)]
    assert statuses[5] == ("第6条", "rejected", 45047)
    assert statuses[6] == ("新窗口", "delivered", None)


def test_a_closed_or_expired_window_refuses_with_45015(sandbox: RunningSandbox) -> None:
    client = sandbox.wechat_client()
    sandbox.close_window(PATIENT_OPENID)
    with pytest.raises(WeChatClientException) as closed:
        client.message.send_text(PATIENT_OPENID, "窗口已关闭")

    sandbox.open_window("o_patient_li")
    sandbox.advance_clock(48 * 3600 + 1)
    with pytest.raises(WeChatClientException) as expired:
        client.message.send_text("o_patient_li", "48小时后")

    assert closed.value.errcode == expired.value.errcode == 45015
    assert [m["status"] for m in sandbox.messages(provider="wechat")] == ["rejected", "rejected"]


def test_strict_rules_refuse_strangers_unfollowers_and_unsubscribed_patients(strict_sandbox: RunningSandbox) -> None:
    client = strict_sandbox.wechat_client()
    errors = {}
    for name, send in {
        "stranger": lambda: client.message.send_text("o_never_wrote", "您好"),
        "subscription": lambda: client.message.send_subscribe_message(
            PATIENT_OPENID, "tpl-visit", {"thing1": {"value": "复诊提醒"}}
        ),
    }.items():
        with pytest.raises(WeChatClientException) as refused:
            send()
        errors[name] = refused.value.errcode
    strict_sandbox.subscribe(PATIENT_OPENID)
    client.message.send_subscribe_message(PATIENT_OPENID, "tpl-visit", {"thing1": {"value": "复诊提醒"}})
    strict_sandbox.state.unfollow(PATIENT_OPENID)
    with pytest.raises(WeChatClientException) as unfollowed:
        client.message.send_text(PATIENT_OPENID, "您好")

    assert errors == {"stranger": 45015, "subscription": 43101}
    assert unfollowed.value.errcode == 43004
    assert client.user.get(PATIENT_OPENID) == {"subscribe": 0, "openid": PATIENT_OPENID}


def test_template_values_longer_than_20_characters_are_refused(sandbox: RunningSandbox) -> None:
    client = sandbox.wechat_client()
    data = {"thing1": {"value": "消化内科 王医生"}, "time2": {"value": "2026年11月24日 09:00"}}

    result = client.message.send_template(PATIENT_OPENID, "tpl-appointment", data)
    with pytest.raises(WeChatClientException) as refused:
        client.message.send_template(PATIENT_OPENID, "tpl-appointment", {"thing1": {"value": "很" * 21}})

    assert isinstance(result["msgid"], int)
    assert refused.value.errcode == 47003
    assert "data.thing1.value exceeds limit" in refused.value.errmsg
    delivered, rejected = sandbox.messages(to=PATIENT_OPENID, kind="template")
    assert delivered["body"] == "thing1: 消化内科 王医生\ntime2: 2026年11月24日 09:00"
    assert (rejected["status"], rejected["error_code"]) == ("rejected", 47003)


def test_injected_wechat_faults_fail_the_next_calls_only(sandbox: RunningSandbox) -> None:
    client = sandbox.wechat_client()
    client.fetch_access_token()  # token calls are never failed by injection
    sandbox.fail_next("wechat", 45009)
    sandbox.fail_next("wechat", "down")

    with pytest.raises(WeChatClientException) as quota:
        client.message.send_text(PATIENT_OPENID, "一")
    with pytest.raises(WeChatClientException) as down:
        client.message.send_text(PATIENT_OPENID, "二")
    client.message.send_text(PATIENT_OPENID, "三")

    assert quota.value.errcode == 45009
    assert down.value.errcode is None and down.value.response.status_code == 503
    assert [(m["status"], m["error_code"]) for m in sandbox.messages(to=PATIENT_OPENID)] == [
        ("rejected", 45009),
        ("failed", "down"),
        ("delivered", None),
    ]


def test_wechat_client_helper_works_without_a_fixture() -> None:
    with run_sandbox() as running:
        wechat_client(running.url).message.send_text(PATIENT_OPENID, "你好")
        assert running.wait_for(1, to=PATIENT_OPENID)[0]["body"] == "你好"


# Twilio SMS --------------------------------------------------------------------------------------------------


def test_twilio_refuses_a_wrong_auth_token_with_401(sandbox: RunningSandbox) -> None:
    client = sandbox.twilio_client(auth_token="wrong-token")

    with pytest.raises(TwilioRestException) as refused:
        client.messages.create(to=PATIENT_PHONE, from_=HOSPITAL_NUMBER, body="复诊提醒")

    assert (refused.value.status, refused.value.code) == (401, 20003)
    assert sandbox.messages() == []


def test_an_opted_out_or_invalid_number_is_refused_synchronously(sandbox: RunningSandbox) -> None:
    client = sandbox.twilio_client()
    sandbox.set_unsubscribed(PATIENT_PHONE)

    with pytest.raises(TwilioRestException) as unsubscribed:
        client.messages.create(to=PATIENT_PHONE, from_=HOSPITAL_NUMBER, body="复诊提醒")
    with pytest.raises(TwilioRestException) as invalid:
        client.messages.create(to="13800138000", from_=HOSPITAL_NUMBER, body="复诊提醒")

    assert (unsubscribed.value.status, unsubscribed.value.code) == (400, 21610)
    assert invalid.value.code == 21211
    assert [m["error_code"] for m in sandbox.messages(provider="sms", status="rejected")] == [21610, 21211]


def test_status_callbacks_arrive_signed_sent_then_delivered_or_undelivered(
    sandbox: RunningSandbox, fake_bot: FakeBot
) -> None:
    client = sandbox.twilio_client()
    sandbox.set_unreachable("+85298765432", error_code=30003)
    callback = f"{fake_bot.url}/status?outbox=42"  # the query string is part of what Twilio signs

    delivered = client.messages.create(to=PATIENT_PHONE, from_=HOSPITAL_NUMBER, body="您好", status_callback=callback)
    lost = client.messages.create(to="+85298765432", from_=HOSPITAL_NUMBER, body="您好", status_callback=callback)
    assert (delivered.status, delivered.sid[:2], len(delivered.sid)) == ("queued", "SM", 34)

    sandbox.wait_until(lambda: len(fake_bot.received("/status")) >= 4, what="four status callbacks")
    by_sid: Dict[str, List[Dict[str, str]]] = {}
    for entry in fake_bot.received("/status"):
        assert entry["valid"], entry
        by_sid.setdefault(entry["form"]["MessageSid"], []).append(entry["form"])
    assert [form["MessageStatus"] for form in by_sid[delivered.sid]] == ["sent", "delivered"]
    assert [form["MessageStatus"] for form in by_sid[lost.sid]] == ["sent", "undelivered"]
    assert "ErrorCode" not in by_sid[delivered.sid][-1]
    assert by_sid[lost.sid][-1]["ErrorCode"] == "30003"
    assert by_sid[lost.sid][-1]["AccountSid"] == SANDBOX_TWILIO_ACCOUNT_SID
    assert client.messages(lost.sid).fetch().status == "undelivered"
    record = sandbox.wait_for(lambda m: len(m["detail"].get("callbacks", [])) == 2, to=PATIENT_PHONE)[0]
    assert [c["http_status"] for c in record["detail"]["callbacks"]] == [204, 204]


def test_a_callback_target_that_is_down_does_not_stop_delivery(sandbox: RunningSandbox) -> None:
    client = sandbox.twilio_client()

    message = client.messages.create(
        to=PATIENT_PHONE, from_=HOSPITAL_NUMBER, body="您好", status_callback="http://127.0.0.1:9/unreachable"
    )

    record = sandbox.wait_for(1, to=PATIENT_PHONE, status="delivered")[0]
    assert record["detail"]["callbacks"][0]["error"]
    assert client.messages(message.sid).fetch().status == "delivered"


def test_injected_twilio_faults(sandbox: RunningSandbox) -> None:
    client = sandbox.twilio_client()
    sandbox.fail_next("twilio", 500)
    sandbox.fail_next("twilio", "down")
    sandbox.fail_next("twilio", 21610)

    failures = []
    for _ in range(3):
        with pytest.raises(TwilioRestException) as failed:
            client.messages.create(to=PATIENT_PHONE, from_=HOSPITAL_NUMBER, body="复诊提醒")
        failures.append((failed.value.status, failed.value.code))
    client.messages.create(to=PATIENT_PHONE, from_=HOSPITAL_NUMBER, body="复诊提醒")

    assert failures == [(500, 20500), (503, 503), (400, 21610)]
    assert [m["status"] for m in sandbox.messages(to=PATIENT_PHONE)] == ["failed", "failed", "rejected", "queued"]


# Twilio Voice ------------------------------------------------------------------------------------------------


def test_an_outbound_call_plays_the_prompt_and_follows_the_key_press(
    sandbox: RunningSandbox, fake_bot: FakeBot
) -> None:
    client = sandbox.twilio_client()

    call = client.calls.create(
        to=PATIENT_PHONE,
        from_=HOSPITAL_NUMBER,
        url=f"{fake_bot.url}/voice",
        status_callback=f"{fake_bot.url}/status",
        status_callback_event=["answered", "completed"],
    )
    heard_after_press = sandbox.press(call.sid, "1")

    assert (call.status, call.sid[:2]) == ("queued", "CA")
    prompt = sandbox.messages(to=PATIENT_PHONE, kind="call_say")[0]
    assert prompt["body"] == "复诊提醒：确认请按1。"
    assert prompt["detail"]["language"] == "cmn-CN"
    assert [m["body"] for m in heard_after_press] == ["已为您确认。", "再见。"]
    assert sandbox.call_status(call.sid) == "completed"
    answered = fake_bot.received("/voice")[-1]
    assert answered["valid"] and answered["form"]["CallStatus"] == "in-progress"
    assert answered["form"]["Direction"] == "outbound-api"
    pressed = fake_bot.received("/voice/menu")[-1]
    assert pressed["valid"] and pressed["form"]["Digits"] == "1"
    call_events = sandbox.wait_until(
        lambda: (
            [e["form"]["CallStatus"] for e in fake_bot.received("/status") if e["form"].get("CallSid") == call.sid]
            if len([e for e in fake_bot.received("/status") if e["form"].get("CallSid") == call.sid]) >= 2
            else None
        ),
        what="answered and completed callbacks",
    )
    assert call_events == ["in-progress", "completed"]
    assert client.calls(call.sid).fetch().status == "completed"


def test_speech_at_a_gather_is_posted_as_speech_result(sandbox: RunningSandbox, fake_bot: FakeBot) -> None:
    call = sandbox.twilio_client().calls.create(to=PATIENT_PHONE, from_=HOSPITAL_NUMBER, url=f"{fake_bot.url}/voice")

    heard = sandbox.say(call.sid, "我要改期")

    assert [m["body"] for m in heard] == ["您说的是：我要改期"]
    form = fake_bot.received("/voice/menu")[-1]["form"]
    assert (form["SpeechResult"], form["Confidence"]) == ("我要改期", "0.9")


def test_silence_plays_what_follows_the_gather_and_the_api_can_hang_up(
    sandbox: RunningSandbox, fake_bot: FakeBot
) -> None:
    client = sandbox.twilio_client()
    silent = client.calls.create(to=PATIENT_PHONE, from_=HOSPITAL_NUMBER, url=f"{fake_bot.url}/voice")
    hung_up = client.calls.create(to="+85261234567", from_=HOSPITAL_NUMBER, url=f"{fake_bot.url}/voice")

    heard = sandbox.stay_silent(silent.sid)
    sandbox.wait_for(1, to="+85261234567", kind="call_say")  # the callee is listening at the Gather
    client.calls(hung_up.sid).update(status="completed")

    assert [m["body"] for m in heard] == ["没有收到您的选择，再见。"]
    assert sandbox.call_status(silent.sid) == sandbox.call_status(hung_up.sid) == "completed"


def test_an_unreachable_phone_does_not_answer(sandbox: RunningSandbox, fake_bot: FakeBot) -> None:
    sandbox.set_unreachable(PATIENT_PHONE)
    call = sandbox.twilio_client().calls.create(to=PATIENT_PHONE, from_=HOSPITAL_NUMBER, url=f"{fake_bot.url}/voice")

    sandbox.wait_until(lambda: sandbox.call_status(call.sid) == "no-answer", what="no-answer")
    assert sandbox.messages(to=PATIENT_PHONE, kind="call_say") == []


# Inbound builders and the page ---------------------------------------------------------------------------------


def test_inbound_wechat_requests_verify_like_wechats_own() -> None:
    xml = patient.text_xml(PATIENT_OPENID, "我想挂号", 1234567890123456)
    plain = patient.wechat_request(xml, token=SANDBOX_WECHAT_TOKEN, appid=SANDBOX_WECHAT_APPID)
    safe = patient.wechat_request(
        xml, token=SANDBOX_WECHAT_TOKEN, appid=SANDBOX_WECHAT_APPID, aes_key=SANDBOX_WECHAT_AES_KEY
    )
    crypto = WeChatCrypto(SANDBOX_WECHAT_TOKEN, SANDBOX_WECHAT_AES_KEY, SANDBOX_WECHAT_APPID)

    check_signature(SANDBOX_WECHAT_TOKEN, plain.query["signature"], plain.query["timestamp"], plain.query["nonce"])
    decrypted = crypto.decrypt_message(
        safe.body, safe.query["msg_signature"], safe.query["timestamp"], safe.query["nonce"]
    )
    message = parse_message(decrypted)
    assert (message.source, message.content, message.id) == (PATIENT_OPENID, "我想挂号", 1234567890123456)
    assert safe.query["encrypt_type"] == "aes" and safe.query["openid"] == PATIENT_OPENID
    assert b"<Encrypt>" in safe.body and "我想挂号".encode() not in safe.body
    assert parse_message(plain.body).content == "我想挂号"

    reply = crypto.encrypt_message(TextReply(message=message, content="好的").render(), "77", "1700000000")
    assert (
        patient.decrypt_reply(
            reply.encode(), token=SANDBOX_WECHAT_TOKEN, appid=SANDBOX_WECHAT_APPID, aes_key=SANDBOX_WECHAT_AES_KEY
        ).count("好的")
        == 1
    )
    assert patient.parse_reply("success") == {}


def test_event_and_media_xml_parse_as_wechatpy_types() -> None:
    built = {
        "subscribe_scan": patient.event_xml(PATIENT_OPENID, "subscribe", "qrscene_clinic_7"),
        "scan": patient.event_xml(PATIENT_OPENID, "SCAN", "clinic_7"),
        "click": patient.event_xml(PATIENT_OPENID, "CLICK", "MENU_BOOK"),
        "unsubscribe": patient.event_xml(PATIENT_OPENID, "unsubscribe"),
        "voice": patient.voice_xml(PATIENT_OPENID, "media-1", "我头疼", 1),
        "image": patient.image_xml(PATIENT_OPENID, "media-2", msg_id=2),
        "location": patient.location_xml(PATIENT_OPENID, 31.2, 121.4, "上海", 3),
        "link": patient.link_xml(PATIENT_OPENID, "题目", "描述", "https://example.org", 4),
    }
    parsed = {name: parse_message(xml) for name, xml in built.items()}

    assert {name: getattr(m, "event", m.type) for name, m in parsed.items()} == {
        "subscribe_scan": "subscribe_scan",
        "scan": "scan",
        "click": "click",
        "unsubscribe": "unsubscribe",
        "voice": "voice",
        "image": "image",
        "location": "location",
        "link": "link",
    }
    assert parsed["subscribe_scan"].scene_id == "clinic_7" and parsed["subscribe_scan"].ticket
    assert parsed["voice"].recognition == "我头疼"
    assert parsed["location"].label == "上海"


def test_twilio_sms_form_is_signed_with_its_blank_fields() -> None:
    form = patient.twilio_sms_form(PATIENT_PHONE, HOSPITAL_NUMBER, "你好")
    url = "https://bot.example.org/webhooks/twilio_sms/webhook"
    signature = patient.twilio_signature(url, form, AUTH_TOKEN)

    assert form["FromCity"] == "" and form["FromCountry"] == "HK" and form["NumSegments"] == "1"
    assert RequestValidator(AUTH_TOKEN).validate(url, form, signature)
    without_blanks = {key: value for key, value in form.items() if value}
    assert not RequestValidator(AUTH_TOKEN).validate(url, without_blanks, signature)
    assert patient.twilio_voice_form(PATIENT_PHONE, HOSPITAL_NUMBER)["Direction"] == "inbound"


def test_writing_as_a_patient_reaches_the_bot_and_shows_its_reply(fake_bot: FakeBot) -> None:
    with run_sandbox(bot_url=fake_bot.url) as running:
        wechat = running.write_as_patient("wechat", PATIENT_OPENID, "我想挂号")
        sms = running.write_as_patient("sms", PATIENT_PHONE, "STOP")

        assert wechat == {"ok": True, "http_status": 200, "replies": ["收到：我想挂号"], "error": None}
        assert sms["replies"] == ["收到：STOP"]
        assert fake_bot.received("/webhooks/twilio_sms/webhook")[-1]["valid"]
        assert [(m["provider"], m["kind"], m["body"]) for m in running.messages()] == [
            ("wechat", "passive", "收到：我想挂号"),
            ("sms", "passive", "收到：STOP"),
        ]
        assert running.state.phone(PATIENT_PHONE).unsubscribed  # Twilio itself handles STOP
        running.wechat_client().message.send_text(PATIENT_OPENID, "窗口已打开")


@pytest.mark.parametrize("reply", ["plain", "garbage"])
def test_a_reply_wechat_cannot_read_is_reported(fake_bot: FakeBot, reply: str) -> None:
    fake_bot.wechat_reply = reply
    try:
        with run_sandbox(bot_url=fake_bot.url) as running:
            answer = running.write_as_patient("wechat", PATIENT_OPENID, "我想挂号")
            assert running.messages() == []
    finally:
        fake_bot.wechat_reply = "encrypted"

    assert answer["ok"] is False and "该公众号暂时无法提供服务" in answer["error"]


def test_a_bot_that_is_down_is_reported_not_raised() -> None:
    with run_sandbox(bot_url="http://127.0.0.1:9") as running:
        answer = requests.post(
            f"{running.url}/sandbox/api/patient/send",
            json={"channel": "wechat", "patient": PATIENT_OPENID, "text": "在吗"},
            timeout=20,
        ).json()

    assert answer["ok"] is False and "not reachable" in answer["error"]


def test_the_page_and_control_api(sandbox: RunningSandbox) -> None:
    page = requests.get(sandbox.url + "/", timeout=5)
    api = sandbox.url + "/sandbox/api"
    requests.post(f"{api}/wechat/window", json={"openid": PATIENT_OPENID, "open": False}, timeout=5)
    requests.post(f"{api}/twilio/numbers", json={"phone": PATIENT_PHONE, "unsubscribed": True}, timeout=5)
    requests.post(f"{api}/faults", json={"provider": "wechat", "code": 45009, "count": 1}, timeout=5)
    with pytest.raises(WeChatClientException) as faulted:
        sandbox.wechat_client().message.send_text("o_other", "一")
    with pytest.raises(WeChatClientException) as closed:
        sandbox.wechat_client().message.send_text(PATIENT_OPENID, "二")
    listed = requests.get(f"{api}/messages", params={"provider": "wechat"}, timeout=5).json()
    stats = requests.get(f"{api}/stats", timeout=5).json()
    bad_press = requests.post(f"{api}/calls/CAnope/press", json={"digits": "1"}, timeout=5)

    assert page.status_code == 200 and page.headers["Content-Type"].startswith("text/html")
    assert "患者消息沙盒" in page.text and "://" not in page.text  # self-contained: no external resources
    assert (faulted.value.errcode, closed.value.errcode) == (45009, 45015)
    assert [m["to"] for m in listed] == ["o_other", PATIENT_OPENID]
    assert stats["messages"]["wechat"] == 2
    assert sandbox.state.phone(PATIENT_PHONE).unsubscribed
    assert bad_press.status_code == 400 and "CAnope" in bad_press.json()["error"]
    assert requests.post(f"{api}/reset", timeout=5).json() == {"ok": True}
    assert sandbox.messages() == []
