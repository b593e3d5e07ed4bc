"""A simulated callee for Twilio outbound calls: rings, answers, fetches TwiML and "hears" it.

Twilio calls the bot's voice URL with a signed form, plays the `<Say>`s, waits at a `<Gather>` and posts the
patient's key presses or speech to the Gather's action. The sandbox does the same, recording each `<Say>` as
what the patient heard; `press` and `say` stand in for the patient. TwiML the bot gets wrong ends the call with
an application error (11200 fetch failed, 12100 not parseable), as Twilio does.
"""

from __future__ import annotations

import asyncio
import logging
import xml.etree.ElementTree as ElementTree
from typing import Any, Dict, List, Optional, Tuple
from urllib.parse import urljoin

from aiohttp import web

from sandbox.patient import twilio_voice_form
from sandbox.runtime import STATE, post_signed_form
from sandbox.state import Call, Gather, SandboxError, SandboxState, rfc2822

logger = logging.getLogger(__name__)

MAX_REDIRECTS = 10  # Twilio gives up on redirect loops too
EVENT_STATUS = {"initiated": "initiated", "ringing": "ringing", "answered": "in-progress"}

Redirect = Tuple[str, str]  # url, method


class NotWaitingError(SandboxError):
    """`press`/`say` on a call that is not (or no longer) at a `<Gather>`."""


class TwimlError(ValueError):
    """TwiML Twilio would refuse to execute (error 12100)."""


def parse_twiml(text: str) -> List[ElementTree.Element]:
    """The verbs of a `<Response>` document, in order."""
    try:
        root = ElementTree.fromstring(text)
    except ElementTree.ParseError as error:
        raise TwimlError(f"Document parse failure: {error}") from error
    if root.tag != "Response":
        raise TwimlError(f"TwiML root must be <Response>, not <{root.tag}>")
    return list(root)


def _token(state: SandboxState, call: Call) -> str:
    token = state.twilio_token(call.account_sid)
    if token is None:
        raise SandboxError(f"Account {call.account_sid} of call {call.sid} has no auth token configured")
    return token


def call_form(call: Call, status: str, **extra: str) -> Dict[str, str]:
    """The parameters Twilio sends with every request about an outbound call."""
    fields = {"AccountSid": call.account_sid, "CallStatus": status, "Direction": "outbound-api", **extra}
    if call.machine_detection:
        fields.setdefault("AnsweredBy", "human")
    return twilio_voice_form(call.from_, call.to, call.sid, **fields)


# Call lifecycle ------------------------------------------------------------------------------------------------


async def run_call(app: web.Application, sid: str, auth_token: str) -> None:
    """queued → initiated → ringing → in-progress (TwiML) or no-answer for an unreachable number."""
    state = app[STATE]
    for status in ("initiated", "ringing"):
        await asyncio.sleep(state.callback_delay / 2)
        if state.call(sid).ended:  # canceled through the REST API meanwhile
            return
        call = state.update_call(sid, status=status)
        await _notify(app, call, auth_token, status)
    await asyncio.sleep(state.callback_delay)
    if state.call(sid).ended:
        return
    if state.phone(call.to).unreachable_code:
        await hang_up(app, sid, auth_token, "no-answer")
        return
    call = state.update_call(sid, status="in-progress", answered_at=state.now())
    await _notify(app, call, auth_token, "answered")
    if call.twiml:
        await _execute(app, sid, auth_token, _parse_inline(app, call), document_url=call.url or "")
    elif call.url:
        await _play(app, sid, auth_token, call.url, call.method, call_form(call, "in-progress"))
    else:
        _application_error(state, call, 21205, "The call has neither Url nor Twiml the sandbox can run")
        await hang_up(app, sid, auth_token, "failed")


def _parse_inline(app: web.Application, call: Call) -> List[ElementTree.Element]:
    try:
        return parse_twiml(call.twiml or "")
    except TwimlError as error:
        _application_error(app[STATE], call, 12100, str(error))
        return [ElementTree.Element("Hangup")]


async def hang_up(app: web.Application, sid: str, auth_token: str, status: str = "completed") -> None:
    """End the call once, and tell the status callback if it asked for `completed`."""
    state = app[STATE]
    if state.call(sid).ended:
        return
    call = state.update_call(sid, status=status, ended_at=state.now(), gather=None)
    await _notify(app, call, auth_token, "completed")


async def redirect(
    app: web.Application, sid: str, auth_token: str, url: Optional[str], method: Optional[str], twiml: Optional[str]
) -> None:
    """A live call update from the REST API: drop any pending Gather and run the new instructions."""
    state = app[STATE]
    call = state.update_call(sid, gather=None)
    if twiml:
        await _execute(app, sid, auth_token, _parse_inline(app, state.update_call(sid, twiml=twiml)), call.url or "")
    elif url:
        await _play(app, sid, auth_token, url, (method or "POST").upper(), call_form(call, "in-progress"))


async def _notify(app: web.Application, call: Call, auth_token: str, event: str) -> None:
    if not call.status_callback or event not in call.events:
        return
    status = EVENT_STATUS.get(event, call.status)
    extra = {
        "CallbackSource": "call-progress-events",
        "SequenceNumber": str(app[STATE].next_call_sequence(call.sid)),
        "Timestamp": rfc2822(app[STATE].now()) or "",
    }
    if event == "completed":
        duration = int((call.ended_at or 0) - call.answered_at) if call.answered_at else 0
        extra.update({"CallDuration": str(duration), "Duration": str(-(-duration // 60))})
    form = call_form(call, status, **extra)
    result = await post_signed_form(app, call.status_callback, form, auth_token, method=call.status_callback_method)
    app[STATE].append_detail(call.record_id, "callbacks", {"event": event, "status": status, **result.as_detail()})


# TwiML ---------------------------------------------------------------------------------------------------------


async def _play(app: web.Application, sid: str, auth_token: str, url: str, method: str, form: Dict[str, str]) -> None:
    """Fetch TwiML and run it, following `<Redirect>` as Twilio does."""
    state = app[STATE]
    for _ in range(MAX_REDIRECTS):
        call = state.call(sid)
        if call.ended:
            return
        result = await post_signed_form(app, url, form, auth_token, method=method)
        state.append_detail(
            call.record_id, "twiml", {**result.as_detail(), "method": method, "body": result.text[:4000]}
        )
        if result.http_status is None or not 200 <= result.http_status < 300:
            reason = result.error or f"HTTP {result.http_status} from {url}"
            _application_error(state, call, 11200, f"HTTP retrieval failure: {reason}")
            await hang_up(app, sid, auth_token)
            return
        try:
            verbs = parse_twiml(result.text)
        except TwimlError as error:
            _application_error(state, call, 12100, str(error))
            await hang_up(app, sid, auth_token)
            return
        next_document = await _execute(app, sid, auth_token, verbs, url)
        if next_document is None:
            return
        url, method = next_document
        form = call_form(state.call(sid), "in-progress")
    _application_error(state, state.call(sid), 11200, f"More than {MAX_REDIRECTS} redirects")
    await hang_up(app, sid, auth_token)


async def _execute(
    app: web.Application, sid: str, auth_token: str, verbs: List[ElementTree.Element], document_url: str
) -> Optional[Redirect]:
    """Run verbs in order; returns where a `<Redirect>` leads, or None when the call waits or ended."""
    state = app[STATE]
    for index, verb in enumerate(verbs):
        call = state.call(sid)
        if call.ended:
            return None
        if verb.tag in ("Say", "Play"):
            _heard(state, call, verb)
        elif verb.tag == "Gather":
            _listen(state, call, verb, verbs[index + 1 :], document_url)
            return None
        elif verb.tag == "Redirect":
            return urljoin(document_url, (verb.text or "").strip()), (verb.get("method") or "POST").upper()
        elif verb.tag in ("Hangup", "Reject"):
            await hang_up(app, sid, auth_token, "completed" if verb.tag == "Hangup" else "busy")
            return None
        elif verb.tag == "Dial":
            _record_step(state, call, "call_dial", "".join(verb.itertext()).strip(), dict(verb.attrib))
        elif verb.tag != "Pause":
            state.append_detail(call.record_id, "ignored_verbs", verb.tag)
    await hang_up(app, sid, auth_token)  # Twilio hangs up when the document runs out
    return None


def _heard(state: SandboxState, call: Call, verb: ElementTree.Element) -> None:
    kind = "call_say" if verb.tag == "Say" else "call_play"
    _record_step(state, call, kind, "".join(verb.itertext()).strip(), dict(verb.attrib))


def _listen(
    state: SandboxState,
    call: Call,
    verb: ElementTree.Element,
    remaining: List[ElementTree.Element],
    document_url: str,
) -> None:
    """Play the Gather's prompts, then wait; without `action` Twilio posts back to the current document."""
    for child in verb:
        if child.tag in ("Say", "Play"):
            _heard(state, call, child)
    action = verb.get("action")
    gather = Gather(
        action=urljoin(document_url, action) if action else document_url,
        method=(verb.get("method") or "POST").upper(),
        input=verb.get("input") or "dtmf",
        language=verb.get("language"),
        remaining=list(remaining),
        document_url=document_url,
    )
    state.update_call(call.sid, gather=gather)


def _record_step(state: SandboxState, call: Call, kind: str, body: str, attributes: Dict[str, Any]) -> None:
    state.add_record(
        "voice",
        kind,
        to=call.to,
        from_=call.from_,
        body=body,
        status="played",
        detail={"call_sid": call.sid, **attributes},
    )


def _application_error(state: SandboxState, call: Call, code: int, message: str) -> None:
    """What the patient hears when the bot's TwiML fails: Twilio's "an application error has occurred"."""
    state.add_record(
        "voice",
        "call_error",
        to=call.to,
        from_=call.from_,
        body=message,
        status="failed",
        error_code=code,
        detail={"call_sid": call.sid},
    )


# The patient's side ----------------------------------------------------------------------------------------


async def press(app: web.Application, sid: str, digits: str, *, timeout: float = 10.0) -> List[Dict[str, Any]]:
    """The patient presses keys at the current Gather; returns what the call recorded in response."""
    return await _answer(app, sid, "dtmf", {"Digits": digits}, timeout)


async def say(
    app: web.Application, sid: str, speech: str, *, confidence: float = 0.9, timeout: float = 10.0
) -> List[Dict[str, Any]]:
    """The patient speaks at the current Gather (Twilio's recognizer result and confidence)."""
    return await _answer(app, sid, "speech", {"SpeechResult": speech, "Confidence": str(confidence)}, timeout)


async def stay_silent(app: web.Application, sid: str, *, timeout: float = 10.0) -> List[Dict[str, Any]]:
    """The Gather times out: Twilio carries on with the verbs after it (or hangs up when there are none)."""
    state = app[STATE]
    call, gather = await _wait_for_gather(state, sid, timeout)
    marker = state.last_record_id()
    state.update_call(sid, gather=None)
    next_document = await _execute(app, sid, _token(state, call), gather.remaining, gather.document_url)
    if next_document is not None:
        url, method = next_document
        await _play(app, sid, _token(state, call), url, method, call_form(call, "in-progress"))
    return _records_since(state, sid, marker)


async def _answer(
    app: web.Application, sid: str, input_kind: str, fields: Dict[str, str], timeout: float
) -> List[Dict[str, Any]]:
    state = app[STATE]
    call, gather = await _wait_for_gather(state, sid, timeout)
    if input_kind not in gather.input.split():
        wanted = "digits" if input_kind == "dtmf" else "speech"
        raise SandboxError(f'Call {sid} is at <Gather input="{gather.input}">, which does not listen for {wanted}')
    if not gather.action:
        raise SandboxError(f"Call {sid}'s <Gather> has no action and its TwiML had no URL to post back to")
    marker = state.last_record_id()
    state.update_call(sid, gather=None)
    state.append_detail(call.record_id, "inputs", dict(fields))
    form = call_form(call, "in-progress", **fields)
    await _play(app, sid, _token(state, call), gather.action, gather.method, form)
    return _records_since(state, sid, marker)


async def _wait_for_gather(state: SandboxState, sid: str, timeout: float) -> Tuple[Call, Gather]:
    """Tests press right after creating a call; wait for the callee to reach the Gather rather than fail."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        call = state.call(sid)
        if call.gather is not None:
            return call, call.gather
        if call.ended or asyncio.get_running_loop().time() >= deadline:
            raise NotWaitingError(f"Call {sid} is not waiting at a <Gather> (status {call.status})")
        await asyncio.sleep(0.02)


def _records_since(state: SandboxState, sid: str, marker: int) -> List[Dict[str, Any]]:
    return [r for r in state.messages(provider="voice") if r["id"] > marker and r["detail"].get("call_sid") == sid]
