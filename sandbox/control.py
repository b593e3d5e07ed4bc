"""The sandbox's own JSON API and page: read what patients received, steer the simulated platforms, and write
to the bot as a patient.

Tests in the same process use `sandbox.testing.RunningSandbox`, which calls the state directly; this HTTP
surface serves the page, a demo in another process and tests that start `python -m sandbox` themselves.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any, Awaitable, Callable, Dict, List, Optional, Tuple

import aiohttp
from aiohttp import web

from bot.outbound.settings import get_provider_settings
from sandbox import voice
from sandbox.patient import ReplyError, read_reply, text_xml, twilio_signature, twilio_sms_form, wechat_request
from sandbox.runtime import BOT_URL, HTTP, STATE
from sandbox.state import SandboxError
from sandbox.voice import TwimlError, parse_twiml
from sandbox.wechat_api import OFFICIAL_ACCOUNT

PAGE = Path(__file__).resolve().parent / "static" / "index.html"
WECHAT_WEBHOOK_PATH = "/webhooks/wechat/"
TWILIO_SMS_WEBHOOK_PATH = "/webhooks/twilio_sms/webhook"
BOT_TIMEOUT = aiohttp.ClientTimeout(total=15)
# Twilio itself handles these single words: it opts the number out (or back in) and still forwards them.
OPT_OUT_WORDS = frozenset({"STOP", "STOPALL", "UNSUBSCRIBE", "CANCEL", "END", "QUIT"})
OPT_IN_WORDS = frozenset({"START", "YES", "UNSTOP"})

PAGE_HEADERS = {
    "Cache-Control": "no-cache",
    "X-Content-Type-Options": "nosniff",
    "Content-Security-Policy": (
        "default-src 'none'; style-src 'unsafe-inline'; script-src 'unsafe-inline'; connect-src 'self'; "
        "base-uri 'none'; form-action 'none'"
    ),
}


def _bad_request(message: str, status: int = 400) -> web.Response:
    return web.json_response({"error": message}, status=status)


async def _json(request: web.Request) -> Dict[str, Any]:
    try:
        payload = await request.json()
    except (ValueError, UnicodeDecodeError) as error:
        raise SandboxError(f"Expected a JSON object: {error}") from error
    if not isinstance(payload, dict):
        raise SandboxError("Expected a JSON object")
    return payload


Handler = Callable[[web.Request], Awaitable[web.Response]]


def _handles_errors(handler: Handler) -> Handler:
    """Turn a SandboxError (unknown call, bad argument) into a 4xx the caller can read."""

    async def wrapped(request: web.Request) -> web.Response:
        try:
            return await handler(request)
        except voice.NotWaitingError as error:
            return _bad_request(str(error), status=409)
        except SandboxError as error:
            return _bad_request(str(error))

    wrapped.__doc__ = handler.__doc__
    return wrapped


# Reading -------------------------------------------------------------------------------------------------------


async def page(request: web.Request) -> web.Response:
    return web.Response(text=PAGE.read_text(encoding="utf-8"), content_type="text/html", headers=PAGE_HEADERS)


async def messages(request: web.Request) -> web.Response:
    """GET /sandbox/api/messages?to=&provider=&kind=&status=: records oldest first."""
    query = request.query
    records = request.app[STATE].messages(
        to=query.get("to") or None,
        provider=query.get("provider") or None,
        kind=query.get("kind") or None,
        status=query.get("status") or None,
    )
    return web.json_response(records)


async def inbound(request: web.Request) -> web.Response:
    return web.json_response(request.app[STATE].inbound_messages())


async def calls(request: web.Request) -> web.Response:
    return web.json_response(request.app[STATE].list_calls())


async def stats(request: web.Request) -> web.Response:
    return web.json_response(request.app[STATE].stats())


# Steering ------------------------------------------------------------------------------------------------------


async def reset(request: web.Request) -> web.Response:
    request.app[STATE].reset()
    return web.json_response({"ok": True})


@_handles_errors
async def faults(request: web.Request) -> web.Response:
    """POST {"provider": "wechat"|"twilio", "code": 45009|"down"|500|21610, "count": 1}."""
    payload = await _json(request)
    code = payload.get("code")
    if isinstance(code, str) and code.lstrip("-").isdigit():
        code = int(code)
    request.app[STATE].fail_next(str(payload.get("provider")), code, int(payload.get("count", 1)))
    return web.json_response({"ok": True})


@_handles_errors
async def wechat_window(request: web.Request) -> web.Response:
    """POST {"openid", "open": bool}: as if the patient wrote (open) or 48 h passed (closed)."""
    payload = await _json(request)
    openid = str(payload.get("openid") or "")
    if not openid:
        raise SandboxError("openid is required")
    if payload.get("open", True):
        request.app[STATE].open_window(openid)
    else:
        request.app[STATE].close_window(openid)
    return web.json_response({"ok": True})


@_handles_errors
async def wechat_follow(request: web.Request) -> web.Response:
    """POST {"openid", "followed": bool}: follow or unfollow the official account."""
    payload = await _json(request)
    openid = str(payload.get("openid") or "")
    if not openid:
        raise SandboxError("openid is required")
    if payload.get("followed", True):
        request.app[STATE].follow(openid)
    else:
        request.app[STATE].unfollow(openid)
    return web.json_response({"ok": True})


@_handles_errors
async def twilio_numbers(request: web.Request) -> web.Response:
    """POST {"phone", "unreachable": 30003|null, "unsubscribed": bool}; absent keys leave that side unchanged."""
    payload = await _json(request)
    phone = str(payload.get("phone") or "")
    if not phone:
        raise SandboxError("phone is required")
    state = request.app[STATE]
    if "unreachable" in payload:
        code = payload["unreachable"]
        state.set_unreachable(phone, None if code in (None, False) else 30003 if code is True else int(code))
    if "unsubscribed" in payload:
        state.set_unsubscribed(phone, bool(payload["unsubscribed"]))
    return web.json_response({"ok": True})


@_handles_errors
async def call_press(request: web.Request) -> web.Response:
    payload = await _json(request)
    digits = str(payload.get("digits") or "")
    if not digits:
        raise SandboxError("digits is required")
    heard = await voice.press(request.app, request.match_info["sid"], digits, timeout=float(payload.get("timeout", 10)))
    return web.json_response(heard)


@_handles_errors
async def call_say(request: web.Request) -> web.Response:
    payload = await _json(request)
    speech = str(payload.get("speech") or "")
    if not speech:
        raise SandboxError("speech is required")
    heard = await voice.say(request.app, request.match_info["sid"], speech, timeout=float(payload.get("timeout", 10)))
    return web.json_response(heard)


@_handles_errors
async def call_silence(request: web.Request) -> web.Response:
    return web.json_response(await voice.stay_silent(request.app, request.match_info["sid"]))


# Writing to the bot as a patient ---------------------------------------------------------------------------------


@_handles_errors
async def patient_send(request: web.Request) -> web.Response:
    """POST {"channel": "wechat"|"sms", "patient": openid or phone, "text"}: deliver it to the bot's webhook as
    the platform would and report the bot's passive reply. A bot that is down is reported, not raised."""
    payload = await _json(request)
    channel, patient, text = (str(payload.get(key) or "").strip() for key in ("channel", "patient", "text"))
    return web.json_response(await write_as_patient(request.app, channel, patient, text))


async def write_as_patient(app: web.Application, channel: str, patient: str, text: str) -> Dict[str, Any]:
    """Send `text` from the patient to the bot over `channel`; {"ok", "http_status", "replies", "error"}."""
    if channel not in ("wechat", "sms") or not patient or not text:
        raise SandboxError('Need {"channel": "wechat"|"sms", "patient": openid or phone, "text": ...}')
    state = app[STATE]
    entry = state.add_inbound(channel, patient, text)
    if channel == "wechat":
        state.open_window(patient)  # WeChat opens the customer-service window when a patient writes
        status, replies, error = await _send_wechat(app, patient, text)
    else:
        _apply_opt_words(app, patient, text)
        status, replies, error = await _send_sms(app, patient, text)
    state.finish_inbound(entry.id, http_status=status, replies=replies, error=error)
    return {"ok": error is None, "http_status": status, "replies": replies, "error": error}


async def _send_wechat(app: web.Application, openid: str, text: str) -> Tuple[Optional[int], List[str], Optional[str]]:
    settings = get_provider_settings().wechat
    message = text_xml(openid, text, to_user=OFFICIAL_ACCOUNT)
    signed = wechat_request(message, token=settings.token, appid=settings.appid, aes_key=settings.aes_key or None)
    url = app[BOT_URL] + WECHAT_WEBHOOK_PATH
    status, body, error = await _post(app, url, signed.body, params=signed.query, headers={"Content-Type": "text/xml"})
    if error:
        return status, [], error
    try:
        reply = read_reply(
            body,
            token=settings.token,
            appid=settings.appid,
            aes_key=settings.aes_key or None,
            require_encrypted=signed.encrypted,
        )
    except ReplyError as failure:
        return status, [], f"The bot's reply is not valid for WeChat (patient sees 该公众号暂时无法提供服务): {failure}"
    if not reply:
        return status, [], None
    content = _reply_text(reply)
    app[STATE].add_record(
        "wechat",
        "passive",
        to=openid,
        from_=OFFICIAL_ACCOUNT,
        body=content,
        status="delivered",
        detail={"reply": reply},
    )
    return status, [content], None


def _reply_text(reply: Dict[str, Any]) -> str:
    if reply.get("MsgType") == "text":
        return str(reply.get("Content") or "")
    articles = (reply.get("Articles") or {}).get("item") if isinstance(reply.get("Articles"), dict) else None
    if articles:
        items = articles if isinstance(articles, list) else [articles]
        return "\n".join(str(item.get("Title") or "") for item in items)
    return f"[{reply.get('MsgType')}]"


async def _send_sms(app: web.Application, phone: str, text: str) -> Tuple[Optional[int], List[str], Optional[str]]:
    settings = get_provider_settings().twilio
    form = twilio_sms_form(phone, settings.sms_from, text, AccountSid=settings.account_sid)
    url = app[BOT_URL] + TWILIO_SMS_WEBHOOK_PATH
    headers = {"X-Twilio-Signature": twilio_signature(url, form, settings.auth_token)}
    status, body, error = await _post(app, url, form, headers=headers)
    if error:
        return status, [], error
    replies = _twiml_messages(body.decode("utf-8", "replace"))
    for reply in replies:
        app[STATE].add_record("sms", "passive", to=phone, from_=settings.sms_from, body=reply, status="delivered")
    return status, replies, None


def _twiml_messages(text: str) -> List[str]:
    """Twilio sends each `<Message>` of the webhook's TwiML answer as an SMS; an empty body sends nothing."""
    if not text.strip():
        return []
    try:
        verbs = parse_twiml(text)
    except TwimlError:
        return []
    return [_message_text(verb) for verb in verbs if verb.tag == "Message"]


def _message_text(verb: Any) -> str:
    body = verb.find("Body")  # <Message><Body>…</Body><Media>…</Media></Message> or plain text
    return "".join((body if body is not None else verb).itertext()).strip()


def _apply_opt_words(app: web.Application, phone: str, text: str) -> None:
    word = text.strip().upper()
    if word in OPT_OUT_WORDS:
        app[STATE].set_unsubscribed(phone, True)
    elif word in OPT_IN_WORDS:
        app[STATE].set_unsubscribed(phone, False)


async def _post(
    app: web.Application, url: str, data: Any, *, params: Optional[Dict[str, str]] = None, headers: Dict[str, str]
) -> Tuple[Optional[int], bytes, Optional[str]]:
    """POST to the bot; (status, body, error) where error says in plain words why the patient got nothing."""
    try:
        async with app[HTTP].post(url, data=data, params=params, headers=headers, timeout=BOT_TIMEOUT) as response:
            body = await response.read()
            if response.status >= 400:
                return response.status, body, f"The bot answered HTTP {response.status}: {body[:300]!r}"
            return response.status, body, None
    except asyncio.TimeoutError:
        return None, b"", f"The bot did not answer {url} within {BOT_TIMEOUT.total:.0f} s"
    except (aiohttp.ClientError, OSError) as error:
        return None, b"", f"The bot is not reachable at {url} ({type(error).__name__}: {error}). Is `rasa run` up?"


def add_routes(app: web.Application) -> None:
    app.router.add_get("/", page)
    api = "/sandbox/api"
    app.router.add_get(f"{api}/messages", messages)
    app.router.add_get(f"{api}/inbound", inbound)
    app.router.add_get(f"{api}/calls", calls)
    app.router.add_get(f"{api}/stats", stats)
    app.router.add_post(f"{api}/reset", reset)
    app.router.add_post(f"{api}/faults", faults)
    app.router.add_post(f"{api}/wechat/window", wechat_window)
    app.router.add_post(f"{api}/wechat/follow", wechat_follow)
    app.router.add_post(f"{api}/twilio/numbers", twilio_numbers)
    app.router.add_post(api + "/calls/{sid}/press", call_press)
    app.router.add_post(api + "/calls/{sid}/say", call_say)
    app.router.add_post(api + "/calls/{sid}/silence", call_silence)
    app.router.add_post(f"{api}/patient/send", patient_send)
