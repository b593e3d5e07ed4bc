"""Inbound requests exactly as WeChat and Twilio send them to the bot's webhooks.

The bot's channels must accept what the platforms really send, not what is convenient to write in a test:
WeChat's CDATA XML with its signature query (and, in safe mode, an encrypted envelope signed differently),
Twilio's form with every field it adds, blank ones included, signed over the exact URL. Tests, benchmarks and
the sandbox page all build their requests here, so there is one copy of these details.

Formats follow WeChat's "接收普通消息" / "接收事件推送" / "消息加解密" pages and Twilio's webhook request docs.
"""

from __future__ import annotations

import hashlib
import itertools
import re
import secrets
import time
import xml.etree.ElementTree as ElementTree
from dataclasses import dataclass
from typing import Any, Dict, List, Optional
from urllib.parse import urlencode
from xml.parsers.expat import ExpatError

import phonenumbers
import xmltodict
from twilio.request_validator import RequestValidator
from wechatpy.crypto import WeChatCrypto
from wechatpy.exceptions import WeChatException

from bot.outbound.settings import get_provider_settings

DEFAULT_OFFICIAL_ACCOUNT = "gh_sandbox"  # the official account's original id, WeChat's ToUserName
TWILIO_API_VERSION = "2010-04-01"
GSM7_CHARACTERS = set(
    "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿"
    "abcdefghijklmnopqrstuvwxyzäöñüà^{}\\[~]|€"
)
GSM7_EXTENDED = set("^{}\\[~]|€")
_msg_ids = itertools.count(int(time.time()) * 1000)


class ReplyError(ValueError):
    """A passive reply WeChat cannot use; the patient sees "该公众号暂时无法提供服务"."""


@dataclass(frozen=True)
class WeChatRequest:
    """What WeChat POSTs to the server URL: a signed query string and an XML body."""

    query: Dict[str, str]
    body: bytes

    def url(self, base: str) -> str:
        """The full URL WeChat would call, e.g. `request.url("http://127.0.0.1:5005/webhooks/wechat/")`."""
        separator = "&" if "?" in base else "?"
        return f"{base}{separator}{urlencode(self.query)}"

    @property
    def encrypted(self) -> bool:
        return self.query.get("encrypt_type") == "aes"


# Signatures ------------------------------------------------------------------------------------------------


def wechat_signature(*parts: str) -> str:
    """WeChat's signature: sha1 over the sorted, concatenated parts (token, timestamp, nonce[, encrypt])."""
    return hashlib.sha1("".join(sorted(parts)).encode("utf-8")).hexdigest()


def wechat_verify_query(
    token: str, echostr: str, *, timestamp: Optional[str] = None, nonce: Optional[str] = None
) -> Dict[str, str]:
    """The query of WeChat's `GET` server-URL check; the server must answer with `echostr`."""
    timestamp = timestamp or str(int(time.time()))
    nonce = nonce or _nonce()
    return {
        "signature": wechat_signature(token, timestamp, nonce),
        "echostr": echostr,
        "timestamp": timestamp,
        "nonce": nonce,
    }


def wechat_request(
    xml_message: str,
    *,
    token: str,
    appid: str,
    aes_key: Optional[str] = None,
    timestamp: Optional[str] = None,
    nonce: Optional[str] = None,
) -> WeChatRequest:
    """Sign (and in safe mode encrypt) a message XML the way WeChat delivers it.

    Safe mode (an `aes_key` given) sends only `ToUserName` and `Encrypt` in the body and signs the ciphertext
    in `msg_signature`; WeChat still adds the plain `signature` to the query, which servers must not use to
    check the body.
    """
    timestamp = str(timestamp or int(time.time()))
    nonce = nonce or _nonce()
    fields = _xml_fields(xml_message)
    query = {
        "signature": wechat_signature(token, timestamp, nonce),
        "timestamp": timestamp,
        "nonce": nonce,
        "openid": fields.get("FromUserName", ""),
    }
    if not aes_key:
        return WeChatRequest(query=query, body=xml_message.encode("utf-8"))
    encrypt = _encrypt(xml_message, token=token, appid=appid, aes_key=aes_key, timestamp=timestamp, nonce=nonce)
    body = (
        "<xml>\n"
        f"<ToUserName>{_cdata(fields.get('ToUserName', DEFAULT_OFFICIAL_ACCOUNT))}</ToUserName>\n"
        f"<Encrypt>{_cdata(encrypt)}</Encrypt>\n"
        "</xml>"
    )
    query.update({"encrypt_type": "aes", "msg_signature": wechat_signature(token, timestamp, nonce, encrypt)})
    return WeChatRequest(query=query, body=body.encode("utf-8"))


def _encrypt(xml_message: str, *, token: str, appid: str, aes_key: str, timestamp: str, nonce: str) -> str:
    """The ciphertext only: wechatpy's `encrypt_message` wraps it in a *reply* envelope, not WeChat's inbound one."""
    envelope = WeChatCrypto(token, aes_key, appid).encrypt_message(xml_message, nonce, timestamp)
    return _xml_fields(envelope)["Encrypt"]


def decrypt_reply(body: bytes, *, token: str, appid: str, aes_key: str) -> str:
    """The plain XML of a safe-mode passive reply, after checking its `MsgSignature` as WeChat does.

    Raises `wechatpy.exceptions.InvalidSignatureException` or `InvalidAppIdException` when the bot signed or
    encrypted with the wrong token, key or appid.
    """
    fields = _xml_fields(body.decode("utf-8"))
    crypto = WeChatCrypto(token, aes_key, appid)
    return crypto.decrypt_message(body, fields["MsgSignature"], fields["TimeStamp"], fields["Nonce"])


def parse_reply(xml: Any) -> Dict[str, Any]:
    """A passive reply as a dict (`MsgType`, `Content`, `Articles`...); `{}` for `success` or an empty body,
    which mean "no reply" to WeChat. Raises ValueError for anything else that is not XML, which WeChat would
    show the patient as "该公众号暂时无法提供服务"."""
    text = xml.decode("utf-8") if isinstance(xml, bytes) else str(xml)
    if text.strip() in ("", "success"):
        return {}
    try:
        parsed = xmltodict.parse(text)
    except ExpatError as error:
        raise ReplyError(f"Passive reply is neither XML nor 'success': {text[:200]!r}") from error
    if not isinstance(parsed, dict) or "xml" not in parsed:
        raise ReplyError(f"Passive reply has no <xml> root: {text[:200]!r}")
    return dict(parsed["xml"] or {})


def read_reply(
    body: bytes, *, token: str, appid: str, aes_key: Optional[str] = None, require_encrypted: bool = False
) -> Dict[str, Any]:
    """Decrypt when the reply is a safe-mode envelope, then `parse_reply`. `require_encrypted` (the request was
    encrypted) refuses a plain XML reply, which WeChat in safe mode cannot read. Every way the reply can be
    wrong raises `ReplyError`, a ValueError saying what the patient would see."""
    text = body.decode("utf-8", "replace")
    if text.strip() in ("", "success"):
        return {}
    if "<Encrypt>" not in text:
        if require_encrypted:
            raise ReplyError(f"Safe-mode request answered with a plain reply: {text[:200]!r}")
        return parse_reply(text)
    if not aes_key:
        raise ReplyError("The reply is encrypted but no EncodingAESKey is configured to read it")
    try:
        return parse_reply(decrypt_reply(body, token=token, appid=appid, aes_key=aes_key))
    except (ElementTree.ParseError, KeyError, WeChatException) as error:
        raise ReplyError(f"Encrypted reply cannot be read ({type(error).__name__}: {error})") from error


# Message XML -----------------------------------------------------------------------------------------------


def text_xml(
    openid: str,
    content: str,
    msg_id: Optional[int] = None,
    *,
    to_user: str = DEFAULT_OFFICIAL_ACCOUNT,
    create_time: Optional[int] = None,
) -> str:
    return _message_xml(openid, "text", [("Content", _cdata(content))], msg_id, to_user, create_time)


def voice_xml(
    openid: str,
    media_id: str,
    recognition: Optional[str] = None,
    msg_id: Optional[int] = None,
    *,
    audio_format: str = "amr",
    to_user: str = DEFAULT_OFFICIAL_ACCOUNT,
    create_time: Optional[int] = None,
) -> str:
    """A voice message; `recognition` None leaves the field out (WeChat is retiring it), "" sends it empty."""
    fields = [("MediaId", _cdata(media_id)), ("Format", _cdata(audio_format))]
    if recognition is not None:
        fields.append(("Recognition", _cdata(recognition)))
    return _message_xml(openid, "voice", fields, msg_id, to_user, create_time)


def image_xml(
    openid: str,
    media_id: str,
    msg_id: Optional[int] = None,
    *,
    pic_url: str = "http://mmbiz.qpic.cn/sandbox/0",
    to_user: str = DEFAULT_OFFICIAL_ACCOUNT,
    create_time: Optional[int] = None,
) -> str:
    fields = [("PicUrl", _cdata(pic_url)), ("MediaId", _cdata(media_id))]
    return _message_xml(openid, "image", fields, msg_id, to_user, create_time)


def location_xml(
    openid: str,
    latitude: float,
    longitude: float,
    label: str = "",
    msg_id: Optional[int] = None,
    *,
    scale: int = 15,
    to_user: str = DEFAULT_OFFICIAL_ACCOUNT,
    create_time: Optional[int] = None,
) -> str:
    """A shared location: WeChat calls latitude `Location_X` and longitude `Location_Y`."""
    fields = [
        ("Location_X", str(latitude)),
        ("Location_Y", str(longitude)),
        ("Scale", str(scale)),
        ("Label", _cdata(label)),
    ]
    return _message_xml(openid, "location", fields, msg_id, to_user, create_time)


def link_xml(
    openid: str,
    title: str,
    description: str,
    url: str,
    msg_id: Optional[int] = None,
    *,
    to_user: str = DEFAULT_OFFICIAL_ACCOUNT,
    create_time: Optional[int] = None,
) -> str:
    fields = [("Title", _cdata(title)), ("Description", _cdata(description)), ("Url", _cdata(url))]
    return _message_xml(openid, "link", fields, msg_id, to_user, create_time)


def event_xml(
    openid: str,
    event: str,
    event_key: Optional[str] = None,
    create_time: Optional[int] = None,
    *,
    ticket: Optional[str] = None,
    to_user: str = DEFAULT_OFFICIAL_ACCOUNT,
) -> str:
    """An event push: `subscribe`, `unsubscribe`, `CLICK`, `VIEW`, `SCAN`, or `subscribe` with a `qrscene_` key.

    Events carry no MsgId (the bot deduplicates them by sender + CreateTime). QR-code events carry a Ticket;
    one is made up when not given.
    """
    fields = [("Event", _cdata(event))]
    if event_key is not None:
        fields.append(("EventKey", _cdata(event_key)))
    qr_event = event == "SCAN" or (event == "subscribe" and (event_key or "").startswith("qrscene_"))
    if qr_event or ticket:
        fields.append(("Ticket", _cdata(ticket or f"gQ_sandbox_{secrets.token_hex(8)}")))
    return _xml_document(openid, "event", fields, to_user, create_time)


def _message_xml(
    openid: str,
    msg_type: str,
    fields: List[Any],
    msg_id: Optional[int],
    to_user: str,
    create_time: Optional[int],
) -> str:
    msg_id = next(_msg_ids) if msg_id is None else msg_id
    return _xml_document(openid, msg_type, [*fields, ("MsgId", str(int(msg_id)))], to_user, create_time)


def _xml_document(openid: str, msg_type: str, fields: List[Any], to_user: str, create_time: Optional[int]) -> str:
    created = int(time.time()) if create_time is None else int(create_time)
    lines = [
        "<xml>",
        f"<ToUserName>{_cdata(to_user)}</ToUserName>",
        f"<FromUserName>{_cdata(openid)}</FromUserName>",
        f"<CreateTime>{created}</CreateTime>",
        f"<MsgType>{_cdata(msg_type)}</MsgType>",
        *(f"<{name}>{value}</{name}>" for name, value in fields),
        "</xml>",
    ]
    return "\n".join(lines)


def _cdata(text: str) -> str:
    """CDATA cannot contain `]]>`: split it across two sections, as any XML writer must."""
    return "<![CDATA[" + str(text).replace("]]>", "]]]]><![CDATA[>") + "]]>"


def _xml_fields(xml: str) -> Dict[str, str]:
    root = ElementTree.fromstring(xml)
    return {child.tag: (child.text or "") for child in root}


def _nonce() -> str:
    return str(secrets.randbelow(10**10))


# Twilio ----------------------------------------------------------------------------------------------------


def twilio_signature(url: str, form: Dict[str, str], auth_token: str) -> str:
    """`X-Twilio-Signature` for a POST of `form` to exactly `url` (query string included)."""
    return RequestValidator(auth_token).compute_signature(url, form)


def twilio_sms_form(
    from_: str,
    to: str,
    body: str,
    message_sid: Optional[str] = None,
    **extra: str,
) -> Dict[str, str]:
    """The form of Twilio's incoming-SMS webhook. City, state and zip are blank outside North America and
    Twilio signs them anyway, which is what trips servers that drop blank form values. `extra` adds or
    overrides fields (`NumMedia="1", MediaUrl0=...`, `AccountSid=...`)."""
    sid = message_sid or "SM" + secrets.token_hex(16)
    form = {
        "ToCountry": _country(to),
        "ToState": "",
        "SmsMessageSid": sid,
        "NumMedia": "0",
        "ToCity": "",
        "FromZip": "",
        "SmsSid": sid,
        "FromState": "",
        "SmsStatus": "received",
        "FromCity": "",
        "Body": body,
        "FromCountry": _country(from_),
        "To": to,
        "ToZip": "",
        "NumSegments": str(sms_segments(body)),
        "MessageSid": sid,
        "AccountSid": get_provider_settings().twilio.account_sid,
        "From": from_,
        "ApiVersion": TWILIO_API_VERSION,
    }
    form.update({name: str(value) for name, value in extra.items()})
    return form


def twilio_voice_form(from_: str, to: str, call_sid: Optional[str] = None, **extra: str) -> Dict[str, str]:
    """The form of Twilio's voice webhook for an incoming call (`CallStatus` ringing, `Direction` inbound).
    For the sandbox's outbound calls pass `CallStatus="in-progress", Direction="outbound-api"`; a Gather's
    action adds `Digits` or `SpeechResult` and `Confidence`."""
    form = {
        "AccountSid": get_provider_settings().twilio.account_sid,
        "ApiVersion": TWILIO_API_VERSION,
        "CallSid": call_sid or "CA" + secrets.token_hex(16),
        "CallStatus": "ringing",
        "Called": to,
        "CalledCity": "",
        "CalledCountry": _country(to),
        "CalledState": "",
        "CalledZip": "",
        "Caller": from_,
        "CallerCity": "",
        "CallerCountry": _country(from_),
        "CallerState": "",
        "CallerZip": "",
        "Direction": "inbound",
        "From": from_,
        "FromCity": "",
        "FromCountry": _country(from_),
        "FromState": "",
        "FromZip": "",
        "To": to,
        "ToCity": "",
        "ToCountry": _country(to),
        "ToState": "",
        "ToZip": "",
    }
    form.update({name: str(value) for name, value in extra.items()})
    return form


def sms_segments(body: str) -> int:
    """How many segments Twilio bills: GSM-7 fits 160 characters (153 per part), anything else UCS-2 fits 70
    (67 per part). One Chinese character makes the whole message UCS-2."""
    if all(char in GSM7_CHARACTERS for char in body):
        length = sum(2 if char in GSM7_EXTENDED else 1 for char in body)
        single, part = 160, 153
    else:
        length = len(body.encode("utf-16-le")) // 2
        single, part = 70, 67
    if length <= single:
        return 1
    return -(-length // part)


def is_e164(phone: str) -> bool:
    return re.fullmatch(r"\+[1-9]\d{6,14}", phone) is not None


def _country(phone: str) -> str:
    if not is_e164(phone):
        return ""
    try:
        return phonenumbers.region_code_for_number(phonenumbers.parse(phone)) or ""
    except phonenumbers.NumberParseException:
        return ""
