"""The one outbound API (bot.outbound): the best channel the patient consented to, fallback, every attempt
recorded, clear errors. The real wechatpy and twilio clients talk to the sandbox."""

from __future__ import annotations

from typing import Any, List

import pytest
from sqlalchemy import select

from bot.crm import consent, patients
from bot.crm.models import Delivery, DeliveryStatus, Patient
from bot.db import session_scope
from bot.errors import UnknownPatient
from bot.outbound import Choice, OutboundMessage, Undeliverable, record_status, send_to_address, send_to_patient

OPENID = "oOutbound00000000000000001"
PHONE = "+8613800138123"


@pytest.fixture
def patient_id(providers_env: Any) -> int:
    with session_scope() as session:
        patient, _ = patients.match_or_register(session, "孙外呼", PHONE)
        patients.link_identity(session, patient, "wechat", OPENID)
        return patient.id


def rows(patient_id: int) -> List[Delivery]:
    with session_scope() as session:
        return list(
            session.execute(select(Delivery).where(Delivery.patient_id == patient_id).order_by(Delivery.id)).scalars()
        )


def test_wechat_first_with_numbered_choices(patient_id: int, sandbox: Any) -> None:
    choices = (Choice("确认", "/affirm"), Choice("改约", "/x"))
    message = OutboundMessage("明天上午9点复诊，请按时就诊。", choices=choices)
    report = send_to_patient(patient_id, message)
    assert (report.channel, report.kind, report.fell_back) == ("wechat", "custom", False)
    received = sandbox.messages(to=OPENID, provider="wechat")
    assert [m["body"] for m in received] == ["明天上午9点复诊，请按时就诊。\n1. 确认\n2. 改约"]
    [row] = rows(patient_id)
    assert (row.channel, row.status, row.kind) == ("wechat", DeliveryStatus.SENT, "custom")
    assert row.choices == [{"title": "确认", "payload": "/affirm"}, {"title": "改约", "payload": "/x"}]


def test_unfollowed_wechat_falls_back_to_sms_and_both_attempts_are_recorded(patient_id: int, sandbox: Any) -> None:
    sandbox.unfollow(OPENID)
    report = send_to_patient(patient_id, OutboundMessage("您的化验结果已出，请到门诊查看。", purpose="reminder"))
    assert (report.channel, report.fell_back) == ("sms", True)
    assert [m["body"] for m in sandbox.messages(to=PHONE, provider="sms")] == ["您的化验结果已出，请到门诊查看。"]
    wechat, sms = rows(patient_id)
    assert (wechat.status, wechat.error_code) == (DeliveryStatus.FAILED, "43004")
    assert sms.status == DeliveryStatus.SENT and sms.fallback_of_id == wechat.id and sms.provider_message_id


def test_opted_out_channel_is_skipped_for_reminders_but_not_for_replies(patient_id: int, sandbox: Any) -> None:
    with session_scope() as session:
        consent.set_consent(session, channel="wechat", external_id=OPENID, opted_in=False, patient_id=patient_id)
    report = send_to_patient(patient_id, OutboundMessage("请记得今晚服药。", purpose="reminder"))
    assert report.channel == "sms"
    assert rows(patient_id)[0].status == DeliveryStatus.SKIPPED
    assert sandbox.messages(to=OPENID) == []
    # an answer to something the patient wrote still goes out on their channel
    reply = send_to_address("wechat", OPENID, OutboundMessage("您好，请问有什么可以帮您？"))
    assert reply.channel == "wechat" and reply.patient_id == patient_id
    assert [m["body"] for m in sandbox.messages(to=OPENID)] == ["您好，请问有什么可以帮您？"]


def test_nothing_reachable_raises_with_every_attempt(patient_id: int, sandbox: Any) -> None:
    sandbox.unfollow(OPENID)
    sandbox.set_unsubscribed(PHONE)
    sandbox.fail_next("twilio", "down", 5)
    with pytest.raises(Undeliverable) as error:
        send_to_patient(patient_id, OutboundMessage("提醒", purpose="reminder"))
    outcomes = [(a.channel, a.status) for a in error.value.attempts]
    assert outcomes == [("wechat", DeliveryStatus.FAILED), ("sms", DeliveryStatus.FAILED),
                        ("voice", DeliveryStatus.FAILED)]  # fmt: skip
    assert "43004" in str(error.value) and "sms" in str(error.value)
    assert [row.status for row in rows(patient_id)] == [DeliveryStatus.FAILED] * 3


def test_a_policy_limits_the_channels(patient_id: int, sandbox: Any) -> None:
    report = send_to_patient(patient_id, OutboundMessage("语音提醒", purpose="reminder"), policy=("voice",))
    assert (report.channel, report.kind) == ("voice", "call")
    assert sandbox.messages(to=PHONE, provider="voice")[0]["kind"] == "call"


def test_status_callbacks_never_move_a_delivery_backwards(patient_id: int, sandbox: Any) -> None:
    report = send_to_patient(patient_id, OutboundMessage("短信"), policy=("sms",))
    sid = rows(patient_id)[0].provider_message_id
    assert report.channel == "sms" and sid.startswith("SM")
    assert record_status(sid, "delivered") is True
    assert record_status(sid, "sent") is True  # late and out of order
    assert rows(patient_id)[0].status == DeliveryStatus.DELIVERED
    assert record_status("SM-not-ours", "delivered") is False


def test_unknown_patient_is_a_clear_error(providers_env: Any) -> None:
    with pytest.raises(UnknownPatient, match="no patient with id 999999"):
        send_to_patient(999999, OutboundMessage("x"))
    with session_scope() as session:
        assert session.get(Patient, 999999) is None
