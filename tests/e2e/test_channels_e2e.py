"""Whole conversations on WeChat and SMS against the running Rasa server, the action server and the CRM.

The clock is fixed at Monday 2026-11-23 09:00 Asia/Shanghai (tests/conftest.py), so 明天 is Tuesday the 24th.
"""

from __future__ import annotations

import concurrent.futures
import uuid
from typing import Any

import requests
from sqlalchemy import select

from bot.crm.models import Appointment, AppointmentStatus, ChannelIdentity, Consent, Patient
from bot.db import session_scope
from sandbox import patient as build
from tests.e2e.conftest import RasaServer
from tests.e2e.patients import SmsPatient, WeChatPatient, next_msg_id


def _openid() -> str:
    return "o" + uuid.uuid4().hex[:27]


def _booked(db: str, name: str) -> list:
    with session_scope(db) as session:
        return (
            session.execute(
                select(Appointment.status)
                .join(Patient, Appointment.patient_id == Patient.id)
                .where(Patient.name == name)
            )
            .scalars()
            .all()
        )


def test_wechat_patient_books_an_appointment(rasa_server: RasaServer, sandbox: Any, dialogue_db: str) -> None:
    patient = WeChatPatient(rasa_server.url, sandbox, _openid())
    assert "1. 预约挂号" in patient.say("你好")
    assert "姓名" in patient.say("我想挂明天上午心内科的号")
    assert "手机号" in patient.say("赵微信")
    offers = patient.say("13812345601")
    assert "建档" in offers and "11月24日" in offers and "\n1. " in offers
    assert "请确认" in patient.say("1")  # the numbered choice picks the first slot
    assert "预约成功" in patient.say("确认")
    assert _booked(dialogue_db, "赵微信") == [AppointmentStatus.BOOKED]
    with session_scope(dialogue_db) as session:
        channel = session.execute(
            select(ChannelIdentity.channel).where(ChannelIdentity.external_id == patient.openid)
        ).scalar_one()
    assert channel == "wechat"
    # everything the patient wrote is in the conversation, once, in order
    written = rasa_server.user_texts(patient.openid)
    assert len(written) == 6 and written[:4] == ["你好", "我想挂明天上午心内科的号", "赵微信", "13812345601"]


def test_wechat_three_deliveries_of_one_message_give_one_answer(rasa_server: RasaServer, sandbox: Any) -> None:
    patient = WeChatPatient(rasa_server.url, sandbox, _openid())
    xml = build.text_xml(patient.openid, "医院几点开门", next_msg_id())
    with concurrent.futures.ThreadPoolExecutor(3) as pool:
        responses = list(pool.map(lambda _: patient.post(xml), range(3)))
    assert all(response.status_code == 200 for response in responses)
    answers = [patient.read(response).get("Content") for response in responses]
    answers = [answer for answer in answers if answer]
    pushed = sandbox.messages(to=patient.openid)
    assert len(set(answers)) + len(pushed) == 1  # one answer, passive or pushed, never two
    assert rasa_server.user_texts(patient.openid) == ["医院几点开门"]


def test_wechat_menu_click_and_subscribe_events(rasa_server: RasaServer, sandbox: Any, dialogue_db: str) -> None:
    patient = WeChatPatient(rasa_server.url, sandbox, _openid())
    welcome = patient.read(patient.post(build.event_xml(patient.openid, "subscribe")))
    assert "感谢关注" in welcome["Content"] and "1. 预约挂号" in welcome["Content"]
    symptoms = patient.read(patient.post(build.event_xml(patient.openid, "CLICK", "TRIAGE")))
    assert "哪里不舒服" in symptoms["Content"]
    assert patient.post(build.event_xml(patient.openid, "unsubscribe")).text == "success"
    with session_scope(dialogue_db) as session:
        consent = session.execute(select(Consent).where(Consent.external_id == patient.openid)).scalar_one()
    assert consent.opted_in is False


def test_wechat_bad_signature_and_malformed_bodies(rasa_server: RasaServer) -> None:
    openid = _openid()
    request = build.wechat_request(build.text_xml(openid, "你好", next_msg_id()), token="wrong", appid="x")
    url = f"{rasa_server.url}/webhooks/wechat/"
    assert requests.post(url, params=request.query, data=request.body, timeout=10).status_code == 403
    good = build.wechat_request(build.text_xml(openid, "你好", 1), token="sandboxtoken", appid="x")
    for body in (b"", b"<xml", b"\xff\xfe", b"<xml>" + b"x" * 100_000 + b"</xml>"):
        response = requests.post(url, params=good.query, data=body, timeout=10)
        assert 400 <= response.status_code < 500 and response.text
    assert rasa_server.user_texts(openid) == []


def test_sms_patient_books_and_opts_out(rasa_server: RasaServer, sandbox: Any, dialogue_db: str) -> None:
    patient = SmsPatient(rasa_server.url, sandbox, "+85291234567")
    assert "姓名" in patient.say("我想挂明天上午心内科的号")
    assert "手机号" in patient.say("钱短信")
    offers = patient.say("13812345602")
    assert "11月24日" in offers and "\n1. " in offers
    assert "请确认" in patient.say("1")
    assert "预约成功" in patient.say("确认")
    assert _booked(dialogue_db, "钱短信") == [AppointmentStatus.BOOKED]
    assert "退订" in patient.say("退订")
    with session_scope(dialogue_db) as session:
        consent = session.execute(select(Consent).where(Consent.external_id == patient.phone)).scalar_one()
    assert consent.channel == "sms" and consent.opted_in is False
    assert rasa_server.user_texts(patient.phone)[0] == "我想挂明天上午心内科的号"


def test_sms_repeats_and_bad_signatures(rasa_server: RasaServer, sandbox: Any) -> None:
    patient = SmsPatient(rasa_server.url, sandbox, "+85291234568")
    sid = "SM" + uuid.uuid4().hex
    for _ in range(3):
        assert patient.post("你好", message_sid=sid).status_code == 200
    patient.wait()
    assert rasa_server.user_texts(patient.phone) == ["你好"]
    form = build.twilio_sms_form(patient.phone, "+15005550006", "伪造")
    url = f"{rasa_server.url}/webhooks/twilio_sms/webhook"
    forged = requests.post(url, data=form, headers={"X-Twilio-Signature": "bm90LXNpZ25lZA=="}, timeout=10)
    assert forged.status_code == 403
    assert rasa_server.user_texts(patient.phone) == ["你好"]


def test_trigger_intent_pushes_a_survey_on_the_patients_latest_channel(rasa_server: RasaServer, sandbox: Any) -> None:
    """How the scheduler starts a survey: Rasa's trigger_intent with output_channel=latest, on WeChat and SMS."""
    wechat = WeChatPatient(rasa_server.url, sandbox, _openid())
    wechat.say("你好")
    sms = SmsPatient(rasa_server.url, sandbox, "+85291234569")
    sms.say("你好")
    for sender in (wechat.openid, sms.phone):
        response = requests.post(
            f"{rasa_server.url}/conversations/{sender}/trigger_intent",
            params={"output_channel": "latest"},
            json={"name": "EXTERNAL_start_survey", "entities": {"survey_instrument": "satisfaction"}},
            timeout=30,
        )
        assert response.status_code == 200, response.text
    assert "满意" in wechat.wait_for_push()
    assert "满意" in sms.wait()
