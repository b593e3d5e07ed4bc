"""1,000+ malformed requests at the channels' webhooks (hypothesis): no 5xx, and the conversations of patients
writing at the same time lose no turn and gain no duplicate.

The requests mix pure garbage with near misses, which are the dangerous ones: a valid signature over a form with
missing or absurd fields, a signed WeChat query over a broken or hostile XML body, invalid UTF-8, huge bodies.
"""

from __future__ import annotations

import threading
import uuid
from typing import Any, Dict, List, Tuple

import requests
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bot.outbound.settings import SANDBOX_TWILIO_AUTH_TOKEN, SANDBOX_WECHAT_TOKEN
from sandbox import patient as build
from tests.e2e.conftest import RasaServer
from tests.e2e.patients import SmsPatient, WeChatPatient

EXAMPLES = 1000
WECHAT_KEYS = ["signature", "timestamp", "nonce", "encrypt_type", "msg_signature", "openid", "echostr"]
TWILIO_FIELDS = [
    "MessageSid",
    "From",
    "To",
    "Body",
    "NumMedia",
    "MediaUrl0",
    "CallSid",
    "Digits",
    "SpeechResult",
    "MessageStatus",
    "CallStatus",
    "ErrorCode",
    "FromCity",
    "AccountSid",
]
ENDPOINTS = [
    ("POST", "/webhooks/wechat/"),
    ("GET", "/webhooks/wechat/"),
    ("POST", "/webhooks/twilio_sms/webhook"),
    ("POST", "/webhooks/twilio_sms/status"),
    ("POST", "/webhooks/twilio_voice/webhook"),
    ("POST", "/webhooks/twilio_voice/gather"),
    ("POST", "/webhooks/twilio_voice/outbound"),
    ("POST", "/webhooks/twilio_voice/status"),
]

texts = st.text(max_size=40)
hostile_text = st.one_of(
    texts,
    st.sampled_from(["]]>", "<![CDATA[", "&amp;", "\x00", "😀" * 50, "'; DROP TABLE patients;--", "%s%n", "\u202e"]),
)
xml_bodies = st.builds(
    lambda msg_type, sender, content, msg_id, cut: (
        f"<xml><ToUserName><![CDATA[gh_x]]></ToUserName><FromUserName><![CDATA[{sender}]]></FromUserName>"
        f"<CreateTime>{msg_id}</CreateTime><MsgType><![CDATA[{msg_type}]]></MsgType>"
        f"<Content><![CDATA[{content}]]></Content><MsgId>{msg_id}</MsgId></xml>"
    )[: cut or None].encode("utf-8", "surrogatepass"),
    st.sampled_from(["text", "event", "voice", "image", "unknown", "", "TEXT"]),
    st.sampled_from(["", "ofuzz", "o" + "x" * 300]),
    hostile_text,
    st.one_of(st.integers(-5, 10**20), st.just(0)),
    st.one_of(st.just(0), st.integers(1, 200)),
)
raw_bodies = st.one_of(
    st.binary(max_size=300),
    xml_bodies,
    st.just(b"<xml>" + b"A" * 70_000 + b"</xml>"),
    st.just(b'<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol">]><xml>&lol;</xml>'),
)


@st.composite
def requests_to_send(draw: Any) -> Tuple[str, str, Dict[str, str], bytes, Dict[str, str]]:
    method, path = draw(st.sampled_from(ENDPOINTS))
    headers: Dict[str, str] = {}
    if "wechat" in path:
        signed = build.wechat_verify_query(SANDBOX_WECHAT_TOKEN, "e")
        query = draw(
            st.one_of(
                st.dictionaries(st.sampled_from(WECHAT_KEYS), hostile_text, max_size=5),
                st.just({k: v for k, v in signed.items() if k != "echostr"}),
                st.just({**signed, "encrypt_type": "aes", "msg_signature": "0" * 40}),
            )
        )
        body = draw(raw_bodies) if method == "POST" else b""
    else:
        query = draw(st.dictionaries(st.sampled_from(["delivery", "silence", "x"]), hostile_text, max_size=2))
        form = draw(st.dictionaries(st.sampled_from(TWILIO_FIELDS), hostile_text, max_size=8))
        body = "&".join(f"{k}={v}" for k, v in form.items()).encode("utf-8", "surrogatepass")
        if draw(st.booleans()):  # a valid Twilio signature over absurd fields: must still be a 4xx or a 200
            url = "http://127.0.0.1"  # replaced with the server's URL when sent
            headers["X-Twilio-Sign-Over"] = url
        else:
            headers["X-Twilio-Signature"] = draw(st.sampled_from(["", "bm9wZQ==", "x" * 100]))
        body = draw(st.one_of(st.just(body), raw_bodies))
        headers["Content-Type"] = draw(
            st.sampled_from(
                ["application/x-www-form-urlencoded", "text/plain", "multipart/form-data", "application/json"]
            )
        )
    return method, path, query, body, headers


def _send(rasa: RasaServer, method: str, path: str, query: Dict[str, str], body: bytes, headers: Dict[str, str]) -> int:
    url = rasa.url + path
    if headers.pop("X-Twilio-Sign-Over", None) is not None:
        try:
            from channels.common import parse_form

            form = parse_form(body)
        except ValueError:
            form = {}
        full = requests.Request("POST", url, params=query).prepare().url
        headers["X-Twilio-Signature"] = build.twilio_signature(full, form, SANDBOX_TWILIO_AUTH_TOKEN)
    response = requests.request(method, url, params=query, data=body, headers=headers, timeout=30)
    return response.status_code


def test_a_thousand_malformed_requests_give_no_5xx_and_lose_no_turn(rasa_server: RasaServer, sandbox: Any) -> None:
    wechat = WeChatPatient(rasa_server.url, sandbox, "o" + uuid.uuid4().hex[:27])
    sms = SmsPatient(rasa_server.url, sandbox, "+85290000" + str(uuid.uuid4().int % 1000).zfill(3))
    sent: Dict[str, List[str]] = {"wechat": [], "sms": []}
    errors: List[BaseException] = []
    stop = threading.Event()

    def patients_keep_writing() -> None:
        try:
            for index in range(200):
                if stop.is_set() and index >= 10:
                    return
                text = f"第{index}条：医院几点开门"
                wechat.say(text)
                sent["wechat"].append(text)
                if index % 3 == 0:
                    sms.say(f"第{index}条：你好")
                    sent["sms"].append(f"第{index}条：你好")
        except BaseException as error:  # reported by the main thread
            errors.append(error)

    writer = threading.Thread(target=patients_keep_writing)
    writer.start()
    statuses: List[Tuple[int, str]] = []

    @settings(
        max_examples=EXAMPLES, deadline=None, derandomize=True, database=None, suppress_health_check=list(HealthCheck)
    )
    @given(requests_to_send())
    def fuzz(request: Tuple[str, str, Dict[str, str], bytes, Dict[str, str]]) -> None:
        method, path, query, body, headers = request
        status = _send(rasa_server, method, path, dict(query), body, dict(headers))
        statuses.append((status, path))
        assert status < 500, f"{method} {path} {query} {body[:200]!r} -> {status}"

    try:
        fuzz()
    finally:
        stop.set()
        writer.join(300)
    assert not errors, errors
    assert len(statuses) >= EXAMPLES
    assert any(400 <= status < 500 for status, _ in statuses)
    assert rasa_server.user_texts(wechat.openid) == sent["wechat"]
    assert rasa_server.user_texts(sms.phone) == sent["sms"]
