"""Twilio's REST API (2010-04-01) under `/twilio`: Messages and Calls, with Twilio's auth, errors and callbacks.

What matters to the bot is simulated as Twilio does it: HTTP Basic auth with the account SID and auth token,
synchronous refusals (21211 bad number, 21610 opted-out recipient) as HTTP 400 with Twilio's JSON error,
then delivery reported later through signed status callbacks (sent, then delivered or undelivered with 3000x).
Calls are answered by `sandbox.voice`.
"""

from __future__ import annotations

import asyncio
import secrets
from typing import Any, Dict, List, Optional, Tuple

from aiohttp import BasicAuth, web
from multidict import MultiDictProxy

from bot.outbound.settings import get_provider_settings
from sandbox import voice
from sandbox.patient import TWILIO_API_VERSION, is_e164, sms_segments
from sandbox.runtime import STATE, post_signed_form, spawn
from sandbox.state import Call, FaultCode, SandboxError, SandboxState, SmsMessage, rfc2822

ACCOUNT_PATH = "/2010-04-01/Accounts/{account}"

ERROR_MESSAGES: Dict[int, str] = {
    20003: "Authenticate",
    20404: "The requested resource was not found",
    20429: "Too Many Requests",
    20500: "An internal server error has occurred",
    20503: "Service unavailable",
    21201: "No 'To' number is specified",
    21205: "Url parameter is required.",
    21211: "Invalid 'To' Phone Number",
    21213: "No 'From' number is specified",
    21220: "Call is not in-progress. Cannot redirect.",
    21408: "Permission to send an SMS has not been enabled for the region indicated by the 'To' number",
    21602: "Message body is required.",
    21603: "The 'From' phone number is required.",
    21604: "A 'To' phone number is required.",
    21610: "Attempt to send to unsubscribed recipient",
    21611: "This 'From' number has exceeded the maximum number of queued messages",
    21614: "'To' number is not a valid mobile number",
}


class TwilioRefusal(Exception):
    """A request Twilio answers with an HTTP error and its JSON error body."""

    def __init__(self, code: int, message: Optional[str] = None, status: int = 400) -> None:
        super().__init__(code, message)
        self.code = code
        self.message = message or ERROR_MESSAGES.get(code, "Sandbox injected error")
        self.status = status

    def response(self) -> web.Response:
        return twilio_error(self.status, self.code, self.message)


def twilio_error(status: int, code: int, message: str) -> web.Response:
    body = {
        "code": code,
        "message": message,
        "more_info": f"https://www.twilio.com/docs/errors/{code}",
        "status": status,
    }
    return web.json_response(body, status=status)


def _authenticate(request: web.Request) -> Tuple[str, str]:
    """The account SID and its auth token, or 401 as Twilio answers a wrong or missing password."""
    account = request.match_info["account"]
    try:
        credentials = BasicAuth.decode(request.headers.get("Authorization", ""))
    except ValueError as error:
        raise TwilioRefusal(20003, status=401) from error
    token = request.app[STATE].twilio_token(credentials.login)
    if token is None or credentials.login != account:
        raise TwilioRefusal(20003, status=401)
    if not secrets.compare_digest(credentials.password.encode(), token.encode()):
        raise TwilioRefusal(20003, status=401)
    return account, token


def _fault(state: SandboxState) -> Optional[Tuple[FaultCode, web.Response]]:
    """An injected fault: "down" is a 503 without a body, an HTTP status its generic error, anything else a 400."""
    code = state.take_fault("twilio")
    if code is None:
        return None
    if code == "down":
        return code, web.Response(status=503, text="Service Unavailable")
    code = int(code)
    if 400 <= code < 600:
        return code, twilio_error(code, 20000 + code, ERROR_MESSAGES.get(20000 + code, f"HTTP {code}"))
    return code, TwilioRefusal(code).response()


# Messages ----------------------------------------------------------------------------------------------------


async def create_message(request: web.Request) -> web.Response:
    """POST .../Messages.json: 201 with the resource, then delivery in the background."""
    state = request.app[STATE]
    try:
        account, token = _authenticate(request)
    except TwilioRefusal as refusal:
        return refusal.response()
    form = await request.post()
    to, body = form.get("To", ""), form.get("Body", "")
    from_ = form.get("From") or form.get("MessagingServiceSid") or ""
    fault = _fault(state)
    if fault is not None:
        code, response = fault
        _refused_sms(state, form, code, "failed" if code == "down" or 500 <= int(code) < 600 else "rejected")
        return response
    try:
        _validate_message(state, form)
    except TwilioRefusal as refusal:
        _refused_sms(state, form, refusal.code, "rejected", refusal.message)
        return refusal.response()
    message = _accept_message(state, account, form, to, from_, body)
    spawn(request.app, deliver_sms(request.app, message.sid, token))
    return web.json_response(message_resource(message), status=201)


def _validate_message(state: SandboxState, form: MultiDictProxy) -> None:
    to = form.get("To", "")
    if not to:
        raise TwilioRefusal(21604)
    if not (form.get("From") or form.get("MessagingServiceSid")):
        raise TwilioRefusal(21603)
    if not (form.get("Body") or form.getall("MediaUrl", []) or form.get("ContentSid")):
        raise TwilioRefusal(21602)
    if not is_e164(to):
        raise TwilioRefusal(21211, f"The 'To' number {to} is not a valid phone number.")
    if state.phone(to).unsubscribed:
        raise TwilioRefusal(21610)


def _accept_message(
    state: SandboxState, account: str, form: MultiDictProxy, to: str, from_: str, body: str
) -> SmsMessage:
    sid = "SM" + secrets.token_hex(16)
    service = form.get("MessagingServiceSid")
    record = state.add_record(
        "sms",
        "sms",
        to=to,
        from_=from_,
        body=body,
        status="queued",
        detail={"sid": sid, "request": _form_dict(form), "callbacks": []},
    )
    now = state.now()
    message = SmsMessage(
        sid=sid,
        account_sid=account,
        to=to,
        from_=form.get("From") or None,
        body=body,
        status="accepted" if service and not form.get("From") else "queued",
        num_segments=sms_segments(body),
        created_at=now,
        updated_at=now,
        record_id=record.id,
        messaging_service_sid=service,
        status_callback=form.get("StatusCallback") or None,
    )
    state.add_sms(message)
    return message


def _refused_sms(
    state: SandboxState, form: MultiDictProxy, code: FaultCode, status: str, message: Optional[str] = None
) -> None:
    detail: Dict[str, Any] = {"request": _form_dict(form)}
    if message:
        detail["message"] = message
    from_ = form.get("From") or form.get("MessagingServiceSid") or ""
    state.add_record(
        "sms",
        "sms",
        to=form.get("To", ""),
        from_=from_,
        body=form.get("Body", ""),
        status=status,
        error_code=code,
        detail=detail,
    )


async def fetch_message(request: web.Request) -> web.Response:
    """GET .../Messages/{sid}.json: the resource with its current status."""
    state = request.app[STATE]
    try:
        account, _token = _authenticate(request)
    except TwilioRefusal as refusal:
        return refusal.response()
    fault = _fault(state)
    if fault is not None:
        return fault[1]
    message = state.sms_message(request.match_info["sid"])
    if message is None or message.account_sid != account:
        return twilio_error(404, 20404, f"The requested resource {request.path} was not found")
    return web.json_response(message_resource(message))


def message_resource(message: SmsMessage) -> Dict[str, Any]:
    uri = f"/2010-04-01/Accounts/{message.account_sid}/Messages/{message.sid}.json"
    return {
        "account_sid": message.account_sid,
        "api_version": TWILIO_API_VERSION,
        "body": message.body,
        "date_created": rfc2822(message.created_at),
        "date_sent": rfc2822(message.sent_at),
        "date_updated": rfc2822(message.updated_at),
        "direction": "outbound-api",
        "error_code": message.error_code,
        "error_message": DELIVERY_ERRORS.get(message.error_code) if message.error_code else None,
        "from": message.from_,
        "messaging_service_sid": message.messaging_service_sid,
        "num_media": "0",
        "num_segments": str(message.num_segments),
        "price": None,
        "price_unit": "USD",
        "sid": message.sid,
        "status": message.status,
        "subresource_uris": {"media": uri.replace(".json", "/Media.json")},
        "to": message.to,
        "uri": uri,
    }


DELIVERY_ERRORS = {
    30003: "Unreachable destination handset",
    30005: "Unknown destination handset",
    30006: "Landline or unreachable carrier",
    30007: "Message filtered",
    30008: "Unknown error",
}


async def deliver_sms(app: web.Application, sid: str, auth_token: str) -> None:
    """queued → sent → delivered, or undelivered with the number's error code, each reported if asked."""
    state = app[STATE]
    await asyncio.sleep(state.callback_delay)
    sent = state.set_sms_status(sid, "sent")
    if sent is None:
        return
    await _notify_sms(app, sent, auth_token)
    await asyncio.sleep(state.callback_delay)
    code = state.phone(sent.to).unreachable_code
    final = state.set_sms_status(sid, "undelivered" if code else "delivered", code)
    if final is not None:
        await _notify_sms(app, final, auth_token)


async def _notify_sms(app: web.Application, message: SmsMessage, auth_token: str) -> None:
    if not message.status_callback:
        return
    form = {
        "AccountSid": message.account_sid,
        "ApiVersion": TWILIO_API_VERSION,
        "From": message.from_ or get_provider_settings().twilio.sms_from,
        "MessageSid": message.sid,
        "MessageStatus": message.status,
        "SmsSid": message.sid,
        "SmsStatus": message.status,
        "To": message.to,
    }
    if message.messaging_service_sid:
        form["MessagingServiceSid"] = message.messaging_service_sid
    if message.error_code:
        form["ErrorCode"] = str(message.error_code)
    result = await post_signed_form(app, message.status_callback, form, auth_token)
    app[STATE].append_detail(message.record_id, "callbacks", {"status": message.status, **result.as_detail()})


# Calls -------------------------------------------------------------------------------------------------------


async def create_call(request: web.Request) -> web.Response:
    """POST .../Calls.json: 201 queued, then the sandbox rings, answers and plays the TwiML in the background."""
    state = request.app[STATE]
    try:
        account, token = _authenticate(request)
    except TwilioRefusal as refusal:
        return refusal.response()
    form = await request.post()
    fault = _fault(state)
    if fault is not None:
        code, response = fault
        state.add_record(
            "voice",
            "call",
            to=form.get("To", ""),
            from_=form.get("From", ""),
            body="outbound call",
            status="failed",
            error_code=code,
            detail={"request": _form_dict(form)},
        )
        return response
    try:
        _validate_call(form)
    except TwilioRefusal as refusal:
        return refusal.response()
    call = _accept_call(state, account, form)
    spawn(request.app, voice.run_call(request.app, call.sid, token))
    return web.json_response(call_resource(call), status=201)


def _validate_call(form: MultiDictProxy) -> None:
    if not form.get("To"):
        raise TwilioRefusal(21201)
    if not form.get("From"):
        raise TwilioRefusal(21213)
    if not (form.get("Url") or form.get("Twiml") or form.get("ApplicationSid")):
        raise TwilioRefusal(21205)
    if not is_e164(form["To"]):
        raise TwilioRefusal(21211, f"The phone number you are attempting to call, {form['To']}, is not valid.")


def _accept_call(state: SandboxState, account: str, form: MultiDictProxy) -> Call:
    sid = "CA" + secrets.token_hex(16)
    events = [event for value in form.getall("StatusCallbackEvent", []) for event in value.split()]
    record = state.add_record(
        "voice",
        "call",
        to=form["To"],
        from_=form["From"],
        body=f"outbound call → {form.get('Url') or 'inline TwiML'}",
        status="queued",
        detail={"sid": sid, "call_sid": sid, "request": _form_dict(form), "twiml": [], "callbacks": [], "inputs": []},
    )
    call = Call(
        sid=sid,
        account_sid=account,
        to=form["To"],
        from_=form["From"],
        url=form.get("Url") or None,
        method=(form.get("Method") or "POST").upper(),
        twiml=form.get("Twiml") or None,
        status_callback=form.get("StatusCallback") or None,
        status_callback_method=(form.get("StatusCallbackMethod") or "POST").upper(),
        events=events or ["completed"],
        machine_detection=form.get("MachineDetection") or None,
        record_id=record.id,
        created_at=state.now(),
    )
    state.add_call(call)
    return call


async def fetch_call(request: web.Request) -> web.Response:
    state = request.app[STATE]
    try:
        account, _token = _authenticate(request)
    except TwilioRefusal as refusal:
        return refusal.response()
    fault = _fault(state)
    if fault is not None:
        return fault[1]
    call = _find_call(state, request.match_info["sid"], account)
    if call is None:
        return twilio_error(404, 20404, f"The requested resource {request.path} was not found")
    return web.json_response(call_resource(call))


async def update_call(request: web.Request) -> web.Response:
    """POST .../Calls/{sid}.json: `Status=completed|canceled` hangs up, `Url`/`Twiml` redirects a live call."""
    state = request.app[STATE]
    try:
        account, token = _authenticate(request)
    except TwilioRefusal as refusal:
        return refusal.response()
    form = await request.post()
    sid = request.match_info["sid"]
    if _find_call(state, sid, account) is None:
        return twilio_error(404, 20404, f"The requested resource {request.path} was not found")
    if form.get("Status") in ("completed", "canceled"):
        await voice.hang_up(request.app, sid, token, "completed" if form["Status"] == "completed" else "canceled")
    elif form.get("Url") or form.get("Twiml"):
        if state.call(sid).status != "in-progress":
            return TwilioRefusal(21220).response()
        spawn(
            request.app, voice.redirect(request.app, sid, token, form.get("Url"), form.get("Method"), form.get("Twiml"))
        )
    return web.json_response(call_resource(state.call(sid)))


def _find_call(state: SandboxState, sid: str, account: str) -> Optional[Call]:
    """The call if this account placed it; Twilio answers 404 for another account's calls too."""
    try:
        call = state.call(sid)
    except SandboxError:
        return None
    return call if call.account_sid == account else None


def call_resource(call: Call) -> Dict[str, Any]:
    uri = f"/2010-04-01/Accounts/{call.account_sid}/Calls/{call.sid}.json"
    duration = None
    if call.answered_at is not None and call.ended_at is not None:
        duration = str(int(call.ended_at - call.answered_at))
    return {
        "account_sid": call.account_sid,
        "annotation": None,
        "answered_by": "human" if call.machine_detection and call.answered_at else None,
        "api_version": TWILIO_API_VERSION,
        "caller_name": None,
        "date_created": rfc2822(call.created_at),
        "date_updated": rfc2822(call.ended_at or call.answered_at or call.created_at),
        "direction": "outbound-api",
        "duration": duration,
        "end_time": rfc2822(call.ended_at),
        "forwarded_from": None,
        "from": call.from_,
        "from_formatted": call.from_,
        "group_sid": None,
        "parent_call_sid": None,
        "phone_number_sid": None,
        "price": None,
        "price_unit": "USD",
        "queue_time": "0",
        "sid": call.sid,
        "start_time": rfc2822(call.answered_at),
        "status": call.status,
        "subresource_uris": {"recordings": uri.replace(".json", "/Recordings.json")},
        "to": call.to,
        "to_formatted": call.to,
        "trunk_sid": None,
        "uri": uri,
    }


def _form_dict(form: MultiDictProxy) -> Dict[str, Any]:
    """The request as recorded: repeated fields (StatusCallbackEvent, MediaUrl) become lists."""
    result: Dict[str, Any] = {}
    for key in form:
        if key in result:
            continue
        values: List[Any] = form.getall(key)
        result[key] = values if len(values) > 1 else values[0]
    return result


def add_routes(app: web.Application, prefix: str = "/twilio") -> None:
    base = prefix + ACCOUNT_PATH
    app.router.add_post(f"{base}/Messages.json", create_message)
    app.router.add_get(base + "/Messages/{sid:[A-Za-z0-9]+}.json", fetch_message)
    app.router.add_post(f"{base}/Calls.json", create_call)
    app.router.add_get(base + "/Calls/{sid:[A-Za-z0-9]+}.json", fetch_call)
    app.router.add_post(base + "/Calls/{sid:[A-Za-z0-9]+}.json", update_call)
