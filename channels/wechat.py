"""WeChat official account channel: signed (plain or AES safe mode) XML in, an answer within WeChat's limit out.

WeChat waits 5 s for the webhook and tries 3 times. The channel drops repeats (`MsgId`; events by sender,
CreateTime and event) in the shared store, then gives the bot `passive_deadline` seconds (0.8 by default): a
fast answer goes back in the HTTP response (a passive reply, encrypted only when the request was); a slow one
gets `success` at once and the answer follows through the customer-service message API (`bot.outbound`),
which falls back to a template or subscription message outside the 48-hour window.

Enable it in credentials.yml (every key optional; the environment and then the sandbox defaults apply):

    channels.wechat.WeChatInput:
      token: ...            # WECHAT_TOKEN
      appid: ...            # WECHAT_APPID
      aes_key: ...          # WECHAT_AES_KEY (safe mode); WECHAT_AES_KEY_PREVIOUS during a rotation

Routes under /webhooks/wechat/: GET / (URL verification, echostr), POST / (messages and events), GET /health.
`python -m channels.wechat menu` publishes the custom menu of data/channels/wechat.yml.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from dataclasses import dataclass, field, replace
from functools import lru_cache
from typing import Any, Awaitable, Callable, Dict, List, Optional, Set

import yaml
from rasa.core.channels.channel import CollectingOutputChannel, InputChannel, OutputChannel, UserMessage
from sanic import Blueprint, response
from sanic.request import Request
from sanic.response import HTTPResponse

from bot.config import DATA_DIR
from bot.observability import metered
from bot.outbound import OutboundMessage, Undeliverable, send_to_address
from bot.outbound.providers import WECHAT_TEXT_LIMIT, numbered_text
from bot.outbound.settings import WeChatSettings, get_provider_settings
from channels.common import ChoiceMemory, Deduplicator, mask, merge_messages, retrying

logger = logging.getLogger(__name__)

Handler = Callable[[UserMessage], Awaitable[Any]]
MAX_BODY_BYTES = 64 * 1024  # WeChat's messages are a few hundred bytes; anything this big is not WeChat
MAX_CLOCK_SKEW = 600  # seconds; a signed request older than this is a replay
WECHAT_MENU_FILE = DATA_DIR / "channels" / "wechat.yml"
# Turns in flight above which a message is acknowledged at once and answered through the customer-service API.
PASSIVE_MAX_INFLIGHT = int(os.environ.get("WECHAT_PASSIVE_MAX_INFLIGHT", "12"))
MEDIA_TYPES = {"image", "voice", "video", "shortvideo", "location", "link"}


class BadWeChatRequest(ValueError):
    """Malformed or unsigned; `status` is the HTTP answer (400, 403, 413)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass
class Inbound:
    """What one WeChat push means to the assistant."""

    openid: str
    dedupe_key: str
    texts: List[str] = field(default_factory=list)  # one Rasa turn per text, in order (may be empty)
    metadata: Dict[str, Any] = field(default_factory=dict)
    opt_out: bool = False  # unsubscribe: record it, nothing to answer
    to_user: str = ""


@lru_cache(maxsize=1)
def menu_config() -> Dict[str, Any]:
    return yaml.safe_load(WECHAT_MENU_FILE.read_text(encoding="utf-8")) or {}


def menu_payloads() -> Dict[str, str]:
    """CLICK key -> payload, from the menu in data/channels/wechat.yml."""
    payloads: Dict[str, str] = {}
    for button in menu_config().get("menu", []):
        for item in button.get("sub_button", [button]):
            if item.get("key") and item.get("payload"):
                payloads[item["key"]] = item["payload"]
    return payloads


def scene_payload(scene: str) -> Optional[str]:
    return (menu_config().get("scenes") or {}).get(scene)


def _payload(intent: str, **entities: str) -> str:
    return f"/{intent}{json.dumps(entities, ensure_ascii=False)}" if entities else f"/{intent}"


def interpret(message: Any) -> Inbound:
    """Map a parsed wechatpy message or event to the turns the bot should run."""
    kind = message.event if message.type == "event" else message.type  # 'subscribe', 'click', 'text'...
    openid = str(message.source or "")
    created = int(message.time or 0)
    base = {"channel": "wechat", "msg_type": kind}
    if message.id:
        key = f"msg:{message.id}"
    else:  # events carry no MsgId: sender + CreateTime + event (+ key) identify a retry
        key = f"event:{openid}:{created}:{kind}:{getattr(message, 'key', '') or getattr(message, 'scene_id', '') or ''}"
    inbound = Inbound(openid=openid, dedupe_key=key, metadata=base, to_user=str(message.target or ""))

    if kind == "text":
        inbound.texts.append(str(message.content or ""))
    elif kind == "voice":
        recognition = (getattr(message, "recognition", None) or "").strip()
        inbound.metadata["media_id"] = message.media_id
        inbound.texts.append(recognition or _payload("voice_unrecognized"))
    elif kind in MEDIA_TYPES:
        inbound.metadata.update(_media_details(message))
        inbound.texts.append(_payload("share_media", media_type=kind))
    elif kind in ("subscribe", "subscribe_scan", "scan"):
        scene = str(getattr(message, "scene_id", "") or "")
        inbound.metadata["scene"] = scene or None
        inbound.texts.append(_payload("subscribed") if kind != "scan" else _payload("greet"))
        follow_up = scene_payload(scene) if scene else None
        if follow_up:
            inbound.texts.append(follow_up)
    elif kind == "unsubscribe":
        inbound.opt_out = True
    elif kind == "click":
        payload = menu_payloads().get(str(message.key or ""))
        inbound.metadata["menu_key"] = message.key
        if payload:
            inbound.texts.append(payload)
        else:
            logger.warning("wechat: menu key %r is not in %s", message.key, WECHAT_MENU_FILE.name)
    # VIEW (a link in the menu), location reports, template job reports and unknown types: nothing to say
    return inbound


def _media_details(message: Any) -> Dict[str, Any]:
    names = (
        "media_id",
        "image",
        "thumb_media_id",
        "location_x",
        "location_y",
        "scale",
        "label",
        "title",
        "description",
        "url",
    )
    return {name: getattr(message, name) for name in names if getattr(message, name, None) not in (None, "")}


class WeChatOutput(OutputChannel):
    """Pushes (trigger_intent, reminders) through the customer-service API, with the window fallback."""

    @classmethod
    def name(cls) -> str:
        return "wechat"

    def __init__(self, choices: ChoiceMemory) -> None:
        self.choices = choices

    async def send_response(self, recipient_id: str, message: Dict[str, Any]) -> None:
        await deliver(recipient_id, [message], self.choices)

    async def send_text_message(self, recipient_id: str, text: str, **kwargs: Any) -> None:
        await deliver(recipient_id, [{"text": text}], self.choices)


async def deliver(openid: str, messages: List[Dict[str, Any]], choices: ChoiceMemory) -> None:
    """Send the bot's messages as one customer-service message (off the event loop) and remember its choices."""
    outbound = merge_messages(messages)
    if not outbound.text and not outbound.choices:
        return
    loop = asyncio.get_running_loop()
    try:
        await loop.run_in_executor(None, lambda: send_to_address("wechat", openid, outbound))
    except Undeliverable as error:
        logger.warning("wechat: answer to %s not delivered: %s", mask(openid), error.attempts[-1].outcome)
        return
    choices.remember(openid, outbound.choices)


class WeChatInput(InputChannel):
    """The official account's server URL."""

    @classmethod
    def name(cls) -> str:
        return "wechat"

    @classmethod
    def from_credentials(cls, credentials: Optional[Dict[str, Any]]) -> WeChatInput:
        settings = get_provider_settings().wechat
        overrides = {k: str(v) for k, v in (credentials or {}).items() if v is not None and hasattr(settings, k)}
        if "passive_deadline" in overrides:
            overrides["passive_deadline"] = float(overrides["passive_deadline"])  # type: ignore[assignment]
        return cls(replace(settings, **overrides))  # type: ignore[arg-type]

    def __init__(self, settings: Optional[WeChatSettings] = None) -> None:
        self.settings = settings or get_provider_settings().wechat
        self.seen = Deduplicator("wechat")
        self.choices = ChoiceMemory("wechat")
        self._background: Set[asyncio.Task] = set()
        self._inflight = 0  # turns this process is running for WeChat

    def get_output_channel(self) -> OutputChannel:
        return WeChatOutput(self.choices)

    # request checks ---------------------------------------------------------------------------
    def _check_plain_signature(self, args: Dict[str, str]) -> None:
        from wechatpy.exceptions import InvalidSignatureException
        from wechatpy.utils import check_signature

        try:
            check_signature(
                self.settings.token, args.get("signature", ""), args.get("timestamp", ""), args.get("nonce", "")
            )
        except InvalidSignatureException:
            raise BadWeChatRequest(403, "invalid signature") from None

    def _check_fresh(self, args: Dict[str, str]) -> None:
        try:
            stamp = int(args.get("timestamp", ""))
        except ValueError:
            raise BadWeChatRequest(403, "missing or malformed timestamp") from None
        if abs(time.time() - stamp) > MAX_CLOCK_SKEW:
            raise BadWeChatRequest(403, "stale timestamp: request replayed or clock skewed")

    def _decrypt(self, body: bytes, args: Dict[str, str]) -> str:
        from wechatpy.crypto import WeChatCrypto
        from wechatpy.exceptions import InvalidAppIdException, InvalidSignatureException

        keys = [key for key in (self.settings.aes_key, self.settings.previous_aes_key) if key]
        if not keys:
            raise BadWeChatRequest(400, "safe mode request but no EncodingAESKey is configured")
        for key in keys:
            try:
                crypto = WeChatCrypto(self.settings.token, key, self.settings.appid)
                return crypto.decrypt_message(
                    body, args.get("msg_signature", ""), args["timestamp"], args.get("nonce", "")
                )
            except InvalidSignatureException:
                raise BadWeChatRequest(403, "invalid msg_signature") from None
            except (InvalidAppIdException, ValueError, KeyError, TypeError):
                continue  # wrong key (rotation) or garbage: try the previous key, then give up
            except Exception:
                continue
        raise BadWeChatRequest(400, "could not decrypt the message with the configured EncodingAESKey")

    def read_request(self, request: Request) -> tuple:
        """(parsed message, safe mode?) or BadWeChatRequest."""
        from wechatpy import parse_message

        args = {key: request.args.get(key, "") for key in request.args}
        body = request.body or b""
        if len(body) > MAX_BODY_BYTES:
            raise BadWeChatRequest(413, f"body larger than {MAX_BODY_BYTES} bytes")
        safe = args.get("encrypt_type", "raw").lower() == "aes"
        if not safe:
            self._check_plain_signature(args)
        self._check_fresh(args)
        if b"<!DOCTYPE" in body.upper() or b"<!ENTITY" in body.upper():
            raise BadWeChatRequest(400, "XML with a DTD is not accepted")
        if not body.strip():
            raise BadWeChatRequest(400, "empty body: WeChat posts an XML message")
        try:
            xml = self._decrypt(body, args) if safe else body.decode("utf-8", errors="strict")
        except UnicodeDecodeError:
            raise BadWeChatRequest(400, "body is not a WeChat XML message: not UTF-8") from None
        try:
            message = parse_message(xml)
        except Exception:
            raise BadWeChatRequest(400, "body is not a WeChat XML message") from None
        if message is None or not getattr(message, "source", None):
            raise BadWeChatRequest(400, "message has no FromUserName")
        return message, safe

    # replies ----------------------------------------------------------------------------------
    def passive_reply(self, inbound: Inbound, text: str, args: Dict[str, str], safe: bool) -> str:
        from wechatpy.crypto import WeChatCrypto
        from wechatpy.replies import TextReply

        content = text.replace("]]>", "] ]>")  # the reply is CDATA
        xml = TextReply(source=inbound.to_user, target=inbound.openid, content=content).render()
        if not safe:
            return xml
        crypto = WeChatCrypto(self.settings.token, self.settings.aes_key, self.settings.appid)
        return crypto.encrypt_message(xml, args.get("nonce", ""), args.get("timestamp"))

    # the webhook ------------------------------------------------------------------------------
    def blueprint(self, on_new_message: Handler) -> Blueprint:
        # counted and timed; run again while a store restarts (the patient's message is not lost)
        on_new_message = metered(retrying(on_new_message), "wechat")
        wechat = Blueprint(f"custom_webhook_{type(self).__name__}")

        @wechat.route("/health", methods=["GET"])
        async def health(request: Request) -> HTTPResponse:
            return response.json({"status": "ok"})

        @wechat.route("/", methods=["GET"])
        async def verify(request: Request) -> HTTPResponse:
            args = {key: request.args.get(key, "") for key in request.args}
            try:
                self._check_plain_signature(args)
            except BadWeChatRequest as error:
                return response.text(str(error), status=error.status)
            return response.text(args.get("echostr", ""))

        @wechat.route("/", methods=["POST"])
        async def receive(request: Request) -> HTTPResponse:
            args = {key: request.args.get(key, "") for key in request.args}
            try:
                message, safe = self.read_request(request)
            except BadWeChatRequest as error:
                logger.info("wechat: refused a request: %s", error)
                return response.text(str(error), status=error.status)
            inbound = interpret(message)
            return await self.answer(inbound, args, safe, on_new_message)

        return wechat

    async def answer(
        self,
        inbound: Inbound,
        args: Dict[str, str],
        safe: bool,
        on_new_message: Handler,
    ) -> HTTPResponse:
        loop = asyncio.get_running_loop()
        # Called inline, not on a thread: one loopback round trip (Redis) or a dict lookup is cheaper than a
        # thread hop that queues behind the loop's other work while WeChat waits; the store's timeout is short.
        if not self.seen.first_time(inbound.dedupe_key):
            cached = self.seen.reply_for(inbound.dedupe_key)
            logger.info("wechat: dropped a repeat of %s from %s", inbound.dedupe_key, mask(inbound.openid))
            return self._xml_or_success(self.passive_reply(inbound, cached, args, safe) if cached else None)
        if inbound.opt_out:
            await loop.run_in_executor(None, record_unfollow, inbound.openid)
            return self._xml_or_success(None)
        if not inbound.texts:
            return self._xml_or_success(None)

        collector = CollectingOutputChannel()
        turn = asyncio.ensure_future(self._run_turns(inbound, collector, on_new_message))
        self._inflight += 1
        turn.add_done_callback(self._turn_done)
        # Under load, hold no connection: with many turns in flight the answer would miss the deadline anyway.
        deadline = self.settings.passive_deadline if self._inflight <= PASSIVE_MAX_INFLIGHT else 0.0
        done, _ = await asyncio.wait({turn}, timeout=deadline) if deadline else (set(), None)
        if turn in done and not turn.exception():
            outbound = merge_messages(collector.messages)
            text = numbered_text(outbound)
            if text and len(text) <= WECHAT_TEXT_LIMIT:
                self._after_passive(inbound, outbound, text)
                return self._xml_or_success(self.passive_reply(inbound, text, args, safe))
        # Slow, long or failed: acknowledge now; the answer follows through the customer-service API.
        self._keep(asyncio.ensure_future(self._push_when_done(inbound, turn, collector)))
        return self._xml_or_success(None)

    async def _run_turns(
        self,
        inbound: Inbound,
        collector: CollectingOutputChannel,
        on_new_message: Handler,
    ) -> None:
        for text in inbound.texts:
            chosen = self.choices.resolve(inbound.openid, text)  # inline, like the seen-message check
            user_message = UserMessage(
                chosen or text, collector, inbound.openid, input_channel=self.name(), metadata=inbound.metadata
            )
            await on_new_message(user_message)

    def _after_passive(self, inbound: Inbound, outbound: OutboundMessage, text: str) -> None:
        self.seen.remember_reply(inbound.dedupe_key, text)
        self.choices.remember(inbound.openid, outbound.choices)

    async def _push_when_done(self, inbound: Inbound, turn: asyncio.Future, collector: CollectingOutputChannel) -> None:
        try:
            await turn
        except Exception:
            logger.exception("wechat: the bot failed on a message from %s", mask(inbound.openid))
            return
        await deliver(inbound.openid, collector.messages, self.choices)

    def _turn_done(self, _turn: asyncio.Future) -> None:
        self._inflight -= 1

    def _keep(self, task: asyncio.Future) -> None:
        self._background.add(task)  # type: ignore[arg-type]
        task.add_done_callback(self._background.discard)

    @staticmethod
    def _xml_or_success(xml: Optional[str]) -> HTTPResponse:
        if xml:
            return response.text(xml, content_type="application/xml; charset=utf-8")
        return response.text("success")


def record_unfollow(openid: str) -> None:
    """An unfollow is an opt-out of everything the hospital sends on WeChat (audited)."""
    from bot.crm import consent, patients
    from bot.db import session_scope

    with session_scope() as session:
        patient = patients.find_by_identity(session, "wechat", openid)
        consent.set_consent(
            session,
            channel="wechat",
            external_id=openid,
            opted_in=False,
            patient_id=patient.id if patient else None,
            actor="wechat",
        )


def publish_menu() -> Dict[str, Any]:
    """Create the official account's menu from data/channels/wechat.yml (payloads stay here, not at WeChat)."""
    from bot.outbound.providers import make_wechat_client

    def strip(item: Dict[str, Any]) -> Dict[str, Any]:
        keep = {k: v for k, v in item.items() if k in ("type", "name", "key", "url")}
        if item.get("sub_button"):
            keep["sub_button"] = [strip(sub) for sub in item["sub_button"]]
        return keep

    client = make_wechat_client(get_provider_settings().wechat)
    return client.menu.create({"button": [strip(item) for item in menu_config().get("menu", [])]})


if __name__ == "__main__":
    import sys

    if sys.argv[1:] != ["menu"]:
        sys.exit("usage: python -m channels.wechat menu   (publish data/channels/wechat.yml's menu)")
    print(publish_menu())
