"""The WeChat official-account API under `/wechat/cgi-bin/`, with WeChat's rules and error codes.

Only what the bot uses is simulated (tokens, customer-service, template and subscription messages, user info),
but those behave like WeChat: errors are HTTP 200 with an `errcode`, a new `/token` fetch retires the previous
token after a grace period, and the customer-service window limits what the bot may push. Every send attempt,
refused ones included, is recorded so the page shows why a patient did not get a message.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Tuple

from aiohttp import web

from sandbox.runtime import STATE
from sandbox.state import FaultCode, SandboxState

OFFICIAL_ACCOUNT = "gh_sandbox"
TEMPLATE_VALUE_LIMIT = 20  # characters per template/subscription value since WeChat's May 2023 rules

ERRMSG: Dict[int, str] = {
    -1: "system error",
    40001: "invalid credential, access_token is invalid or not latest",
    40002: "invalid grant_type",
    40003: "invalid openid",
    40008: "invalid message type",
    40013: "invalid appid",
    40014: "invalid access_token",
    40037: "invalid template_id",
    41002: "appid missing",
    41004: "appsecret missing",
    42001: "access_token expired",
    43004: "require subscribe hint",
    43019: "require remove blacklist",
    43101: "user refuse to accept the msg",
    44004: "empty content",
    45009: "reach max api daily quota limit",
    45011: "api minute-quota reach limit",
    45015: "response out of time limit or subscription is canceled",
    45047: "out of response count limit",
    47001: "data format error",
    47003: "argument invalid!",
    48001: "api unauthorized",
}


class WeChatRefusal(Exception):
    """A request WeChat answers with a non-zero errcode."""

    def __init__(self, errcode: int, errmsg: Optional[str] = None) -> None:
        super().__init__(errcode, errmsg)
        self.errcode = errcode
        self.errmsg = errmsg or ERRMSG.get(errcode, "sandbox injected error")


@dataclass(frozen=True)
class Gate:
    """Why an API call is refused before its own rules apply: an injected fault or a bad access_token."""

    code: FaultCode
    response: web.Response


def errcode_response(errcode: int, errmsg: Optional[str] = None) -> web.Response:
    return web.json_response({"errcode": errcode, "errmsg": errmsg or ERRMSG.get(errcode, "sandbox injected error")})


def _ok(**extra: Any) -> web.Response:
    return web.json_response({"errcode": 0, "errmsg": "ok", **extra})


def _gate(request: web.Request) -> Optional[Gate]:
    """Injected faults come first (they stand for WeChat itself failing), then the access_token check."""
    state = request.app[STATE]
    fault = state.take_fault("wechat")
    if fault == "down":
        return Gate("down", web.Response(status=503, text="503 Service Unavailable"))
    if fault is not None:
        return Gate(fault, errcode_response(int(fault)))
    if not state.token_valid(request.query.get("access_token")):
        return Gate(40001, errcode_response(40001))
    return None


async def _json_body(request: web.Request) -> Dict[str, Any]:
    try:
        payload = json.loads((await request.read()).decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as error:
        raise WeChatRefusal(47001, f"data format error: {error}") from error
    if not isinstance(payload, dict):
        raise WeChatRefusal(47001, "data format error: expected a JSON object")
    return payload


async def _read_payload(request: web.Request) -> Tuple[Dict[str, Any], Optional[WeChatRefusal]]:
    """The JSON body, or an empty one and the refusal to give once faults and token have been checked."""
    try:
        return await _json_body(request), None
    except WeChatRefusal as refusal:
        return {}, refusal


# access_token ------------------------------------------------------------------------------------------------


async def token(request: web.Request) -> web.Response:
    """GET /cgi-bin/token: a new token on every call, counted, as WeChat's 2000-a-day budget counts them."""
    query = request.query
    refusal = _check_credentials(request.app[STATE], query.get("grant_type"), query.get("appid"), query.get("secret"))
    if refusal:
        return errcode_response(*refusal)
    issued = request.app[STATE].issue_token()
    return web.json_response({"access_token": issued.value, "expires_in": 7200})


async def stable_token(request: web.Request) -> web.Response:
    """POST /cgi-bin/stable_token: the current token while valid, a new one only when expired or forced."""
    try:
        payload = await _json_body(request)
    except WeChatRefusal as refusal:
        return errcode_response(refusal.errcode, refusal.errmsg)
    state = request.app[STATE]
    refusal = _check_credentials(state, payload.get("grant_type"), payload.get("appid"), payload.get("secret"))
    if refusal:
        return errcode_response(*refusal)
    issued = state.issue_stable_token(bool(payload.get("force_refresh")))
    return web.json_response({"access_token": issued.value, "expires_in": max(0, int(issued.expires_at - state.now()))})


def _check_credentials(state: SandboxState, grant_type: Any, appid: Any, secret: Any) -> Optional[Tuple[int, str]]:
    if grant_type != "client_credential":
        return 40002, ERRMSG[40002]
    if not appid:
        return 41002, ERRMSG[41002]
    if not secret:
        return 41004, ERRMSG[41004]
    return state.check_wechat_app(str(appid), str(secret))


# Messages ------------------------------------------------------------------------------------------------------


async def custom_send(request: web.Request) -> web.Response:
    """POST /cgi-bin/message/custom/send: allowed only inside the customer-service window."""
    return await _send(request, "custom", _check_custom)


async def template_send(request: web.Request) -> web.Response:
    """POST /cgi-bin/message/template/send: any follower, values of at most 20 characters."""
    return await _send(request, "template", _check_template)


async def subscribe_send(request: web.Request) -> web.Response:
    """POST /cgi-bin/message/subscribe/bizsend: only to patients who accepted the subscription message."""
    return await _send(request, "subscribe", _check_subscribe)


SendCheck = Callable[[SandboxState, str, Dict[str, Any]], Dict[str, Any]]


async def _send(request: web.Request, kind: str, check: SendCheck) -> web.Response:
    """The order WeChat applies: platform faults and token first, then the request, then the send rules."""
    state = request.app[STATE]
    payload, malformed = await _read_payload(request)
    openid = str(payload.get("touser") or "")
    body = _summary(kind, payload)
    gate = _gate(request)
    if gate is not None:
        status = "failed" if gate.code == "down" else "rejected"
        if gate.code != 40001:  # a stale token is the client's business, not something a patient could see
            _record(state, kind, openid, body, status, gate.code, payload, injected=True)
        return gate.response
    try:
        if malformed:
            raise malformed
        extra = check(state, openid, payload)
    except WeChatRefusal as refusal:
        _record(state, kind, openid, body, "rejected", refusal.errcode, payload, errmsg=refusal.errmsg)
        return errcode_response(refusal.errcode, refusal.errmsg)
    _record(state, kind, openid, body, "delivered", None, payload, **extra)
    return _ok(**extra)


def _check_custom(state: SandboxState, openid: str, payload: Dict[str, Any]) -> Dict[str, Any]:
    if not openid:
        raise WeChatRefusal(40003)
    msgtype = payload.get("msgtype")
    if msgtype not in CUSTOM_BODIES:
        raise WeChatRefusal(40008, f"invalid message type {msgtype!r}")
    if msgtype == "text" and not str((payload.get("text") or {}).get("content") or "").strip():
        raise WeChatRefusal(44004)
    refusal = state.consume_custom_quota(openid)
    if refusal:
        raise WeChatRefusal(*refusal)
    return {}


def _check_template(state: SandboxState, openid: str, payload: Dict[str, Any]) -> Dict[str, Any]:
    if not openid:
        raise WeChatRefusal(40003)
    if not payload.get("template_id"):
        raise WeChatRefusal(40037)
    _check_values(payload.get("data"))
    if not state.is_following(openid):
        raise WeChatRefusal(43004)
    return {"msgid": state.next_msgid()}


def _check_subscribe(state: SandboxState, openid: str, payload: Dict[str, Any]) -> Dict[str, Any]:
    if not openid:
        raise WeChatRefusal(40003)
    if not payload.get("template_id"):
        raise WeChatRefusal(40037)
    _check_values(payload.get("data"))
    if not state.accepts_subscription_messages(openid):
        raise WeChatRefusal(43101)
    return {"msgid": state.next_msgid()}


def _check_values(data: Any) -> None:
    if not isinstance(data, dict) or not data:
        raise WeChatRefusal(47003, "argument invalid! data is empty")
    for key, item in data.items():
        value = item.get("value") if isinstance(item, dict) else None
        if not isinstance(value, str):
            raise WeChatRefusal(47003, f"argument invalid! data.{key}.value is missing")
        if len(value) > TEMPLATE_VALUE_LIMIT:
            raise WeChatRefusal(47003, f"argument invalid! data.{key}.value exceeds limit")


def _record(
    state: SandboxState,
    kind: str,
    openid: str,
    body: str,
    status: str,
    error_code: Optional[FaultCode],
    payload: Dict[str, Any],
    *,
    injected: bool = False,
    errmsg: Optional[str] = None,
    msgid: Optional[int] = None,
) -> None:
    detail: Dict[str, Any] = {"request": payload}
    if injected:
        detail["injected_fault"] = True
    if errmsg:
        detail["errmsg"] = errmsg
    if msgid is not None:
        detail["msgid"] = msgid
    state.add_record(
        "wechat",
        kind,
        to=openid,
        from_=OFFICIAL_ACCOUNT,
        body=body,
        status=status,
        error_code=error_code,
        detail=detail,
    )


# What the patient reads ------------------------------------------------------------------------------------


def _summary(kind: str, payload: Dict[str, Any]) -> str:
    if kind == "custom":
        render = CUSTOM_BODIES.get(str(payload.get("msgtype")))
        return render(payload) if render else f"[{payload.get('msgtype')}]"
    data = payload.get("data") if isinstance(payload.get("data"), dict) else {}
    lines = [f"{key}: {item.get('value', '') if isinstance(item, dict) else item}" for key, item in data.items()]
    return "\n".join(lines)


def _text(payload: Dict[str, Any]) -> str:
    return str((payload.get("text") or {}).get("content") or "")


def _news(payload: Dict[str, Any]) -> str:
    articles: List[Dict[str, Any]] = (payload.get("news") or {}).get("articles") or []
    return "\n".join(f"{a.get('title', '')} — {a.get('description', '')} {a.get('url', '')}".strip() for a in articles)


def _menu(payload: Dict[str, Any]) -> str:
    menu = payload.get("msgmenu") or {}
    options = [f"[{item.get('content', '')}]" for item in menu.get("list") or []]
    return "\n".join(part for part in (menu.get("head_content"), *options, menu.get("tail_content")) if part)


def _media(msgtype: str) -> Callable[[Dict[str, Any]], str]:
    def render(payload: Dict[str, Any]) -> str:
        item = payload.get(msgtype) or {}
        return f"[{msgtype}] {item.get('title') or item.get('media_id') or item.get('card_id') or ''}".strip()

    return render


CUSTOM_BODIES = {
    "text": _text,
    "news": _news,
    "msgmenu": _menu,
    **{name: _media(name) for name in ("image", "voice", "video", "music", "mpnews", "mpnewsarticle", "wxcard")},
    "miniprogrampage": _media("miniprogrampage"),
}


# Users and everything else ---------------------------------------------------------------------------------


MEDIA_LIMITS = {"image": 10 * 1024 * 1024, "voice": 2 * 1024 * 1024, "thumb": 64 * 1024}


async def media_upload(request: web.Request) -> web.Response:
    """POST /cgi-bin/media/upload?type=image (multipart field `media`): a temporary media id, as WeChat gives.
    The size limits are WeChat's; a PNG/JPEG check stands in for its format check."""
    gate = _gate(request)
    if gate is not None:
        return gate.response
    media_type = request.query.get("type", "")
    if media_type not in MEDIA_LIMITS:
        return errcode_response(40004, f"invalid media type {media_type!r}")
    try:
        form = await request.post()
    except ValueError:
        return errcode_response(41005, "media data missing")
    field = form.get("media")
    content = field.file.read() if hasattr(field, "file") else b""
    if not content:
        return errcode_response(41005, "media data missing")
    if len(content) > MEDIA_LIMITS[media_type]:
        return errcode_response(40006, "invalid meida size")
    if media_type == "image" and not content.startswith((b"\x89PNG", b"\xff\xd8")):
        return errcode_response(40005, "invalid file type")
    media_id = request.app[STATE].add_media(media_type, content)
    return web.json_response({"type": media_type, "media_id": media_id, "created_at": int(request.app[STATE].now())})


async def user_info(request: web.Request) -> web.Response:
    """GET /cgi-bin/user/info: a plausible profile; `{"subscribe": 0}` only once the patient unfollowed."""
    gate = _gate(request)
    if gate is not None:
        return gate.response
    openid = request.query.get("openid", "")
    if not openid:
        return errcode_response(40003)
    state = request.app[STATE]
    if not state.is_following(openid):
        return web.json_response({"subscribe": 0, "openid": openid})
    return web.json_response(
        {
            "subscribe": 1,
            "openid": openid,
            "nickname": "沙盒患者",
            "sex": 0,
            "language": request.query.get("lang", "zh_CN"),
            "city": "",
            "province": "",
            "country": "",
            "headimgurl": "",
            "subscribe_time": int(state.now()) - 86400,
            "remark": "",
            "groupid": 0,
            "tagid_list": [],
            "subscribe_scene": "ADD_SCENE_QR_CODE",
            "qr_scene": 0,
            "qr_scene_str": "",
        }
    )


async def unsupported(request: web.Request) -> web.Response:
    """Any other API: refused plainly, so a developer sees the sandbox lacks it instead of a fake success."""
    gate = _gate(request)
    if gate is not None:
        return gate.response
    path = request.match_info.get("tail", "")
    return errcode_response(48001, f"api unauthorized: the sandbox does not simulate /cgi-bin/{path}")


def add_routes(app: web.Application, prefix: str = "/wechat/cgi-bin") -> None:
    app.router.add_get(f"{prefix}/token", token)
    app.router.add_post(f"{prefix}/stable_token", stable_token)
    app.router.add_post(f"{prefix}/message/custom/send", custom_send)
    app.router.add_post(f"{prefix}/message/template/send", template_send)
    app.router.add_post(f"{prefix}/message/subscribe/bizsend", subscribe_send)
    app.router.add_get(f"{prefix}/user/info", user_info)
    app.router.add_post(f"{prefix}/media/upload", media_upload)
    app.router.add_route("*", prefix + "/{tail:.*}", unsupported)
