"""Who is writing: channel identities, registration (开卡) and validation of names and mobile numbers."""

from __future__ import annotations

import re
import secrets
from typing import Optional, Tuple

import phonenumbers
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from bot.crm import audit
from bot.crm.models import ChannelIdentity, Patient
from bot.errors import InvalidName, InvalidPhone

_NAME_PREFIX = re.compile(r"^(我叫|我是|我的名字是|名字是|名字叫|姓名是?|叫|本人)[:：\s]*")
_NAME_SUFFIX = re.compile(r"[。.!！~，,\s]+$")
# Chinese names (2–5 Han characters, optionally with the middle dot of minority names) or Latin names.
_CHINESE_NAME = re.compile(r"^[\u4e00-\u9fff]{1,4}(?:[·•][\u4e00-\u9fff]{1,8})?[\u4e00-\u9fff]?$")
_LATIN_NAME = re.compile(r"^[A-Za-z][A-Za-z .'-]{1,40}$")
_NOT_NAMES = {"不知道", "不告诉你", "没有", "不想说", "算了", "你好", "挂号", "预约", "取消", "好的", "是的"}


def normalize_name(text: str) -> str:
    """The name in a reply such as '我叫王小明' -> '王小明'; raises InvalidName."""
    name = _NAME_SUFFIX.sub("", _NAME_PREFIX.sub("", (text or "").strip()))
    if name in _NOT_NAMES or len(name) < 2:
        raise InvalidName(f"not a name: {len(name)} characters")
    if _CHINESE_NAME.match(name) or _LATIN_NAME.match(name):
        return name
    raise InvalidName("a name is 2–5 Chinese characters or a Latin-script name")


def normalize_mobile(text: str, default_region: str = "CN") -> str:
    """A mobile number in E.164 ('+8613800138000'); mainland numbers may omit +86. Raises InvalidPhone."""
    digits = re.sub(r"[^\d+]", "", (text or "").translate(str.maketrans("０１２３４５６７８９＋", "0123456789+")))
    if not digits:
        raise InvalidPhone("no digits in the reply")
    try:
        number = phonenumbers.parse(digits, default_region)
    except phonenumbers.NumberParseException as exc:
        raise InvalidPhone(f"cannot parse as a phone number: {exc}") from exc
    if not phonenumbers.is_valid_number(number):
        raise InvalidPhone("not a valid number for its region")
    if phonenumbers.number_type(number) not in (
        phonenumbers.PhoneNumberType.MOBILE,
        phonenumbers.PhoneNumberType.FIXED_LINE_OR_MOBILE,
    ):
        raise InvalidPhone("not a mobile number: we need one that can receive SMS")
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


def mask_phone(e164: str) -> str:
    """'+8613800138000' -> '138****8000', for patient-facing confirmation and logs."""
    national = e164[3:] if e164.startswith("+86") else e164.lstrip("+")
    return national[:3] + "****" + national[-4:] if len(national) >= 8 else "****"


def find_by_identity(session: Session, channel: str, external_id: str) -> Optional[Patient]:
    return session.execute(
        select(Patient)
        .join(ChannelIdentity)
        .where(ChannelIdentity.channel == channel, ChannelIdentity.external_id == external_id)
    ).scalar_one_or_none()


def _new_card_no() -> str:
    return "MZ" + "".join(secrets.choice("0123456789") for _ in range(10))


def match_or_register(session: Session, name: str, phone: str, actor: str = "assistant") -> Tuple[Patient, bool]:
    """The patient with this name and mobile, registering them (开卡) when new. Returns (patient, created)."""
    existing = session.execute(select(Patient).where(Patient.phone == phone, Patient.name == name)).scalar_one_or_none()
    if existing is not None:
        audit.record(session, actor, "match", "patient", existing.id, existing.id)
        return existing, False
    patient = Patient(name=name, phone=phone, card_no=_new_card_no())
    try:
        with session.begin_nested():
            session.add(patient)
            session.flush()
    except IntegrityError:  # registered concurrently by another conversation: use that record
        patient = session.execute(select(Patient).where(Patient.phone == phone, Patient.name == name)).scalar_one()
        return patient, False
    audit.record(session, actor, "create", "patient", patient.id, patient.id)
    return patient, True


def link_identity(session: Session, patient: Patient, channel: str, external_id: str) -> None:
    """Remember that this channel identity is this patient (re-linking moves it)."""
    identity = session.execute(
        select(ChannelIdentity).where(ChannelIdentity.channel == channel, ChannelIdentity.external_id == external_id)
    ).scalar_one_or_none()
    if identity is None:
        session.add(ChannelIdentity(patient_id=patient.id, channel=channel, external_id=external_id))
    elif identity.patient_id != patient.id:
        identity.patient_id = patient.id
    else:
        return
    audit.record(session, "assistant", "link", "channel_identity", f"{channel}", patient.id)
