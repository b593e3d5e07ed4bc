"""The nurse console: an aiohttp app over the escalation queue, the conversations and the patient records.

Every route but /login, /health, /ready and /static needs a logged-in session; /admin needs the admin role.
Every state-changing request carries the session's CSRF token. Every view of patient data and every reply is
written to the audit log with who and when.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import secrets
import time
from datetime import datetime, timedelta, timezone
from functools import lru_cache
from pathlib import Path
from typing import Any, Awaitable, Callable, Dict, List, Optional, TypeVar

import jinja2
import yaml
from aiohttp import WSMsgType, web
from sqlalchemy import select
from sqlalchemy.orm import Session
from zoneinfo import ZoneInfo

from bot.catalog import departments
from bot.config import DATA_DIR, VAR_DIR, get_settings
from bot.crm import audit, care, escalations
from bot.crm.models import AuditEntry, Escalation, EscalationStatus, Patient, StaffUser, utcnow
from bot.db import session_scope
from bot.observability import mask_text
from bot.outbound.providers import OutboundMessage
from console import auth, panel
from console.conversations import History, Rasa, RasaUnavailable
from console.live import Hub, Watcher

logger = logging.getLogger(__name__)

HERE = Path(__file__).resolve().parent
COOKIE = "console_session"
LOGIN_CSRF_COOKIE = "console_login_csrf"
PUBLIC_PATHS = ("/login", "/health", "/ready", "/static/", "/favicon.ico", "/metrics")
MAX_REPLY_CHARS = 1000
DASHBOARD_TTL = 60.0  # seconds a dashboard computation is reused
T = TypeVar("T")


def console_secret() -> str:
    """CONSOLE_SECRET, or a random one kept in var/ so a newcomer's sessions survive a restart."""
    secret = os.environ.get("CONSOLE_SECRET")
    if secret:
        return secret
    path = VAR_DIR / "console_secret"
    VAR_DIR.mkdir(exist_ok=True)
    if not path.exists():
        path.write_text(secrets.token_urlsafe(48))
        path.chmod(0o600)
    return path.read_text().strip()


async def in_db(work: Callable[[Session], T]) -> T:
    """Run `work` in one transaction on a worker thread (the CRM uses blocking SQLAlchemy)."""

    def run() -> T:
        with session_scope() as session:
            return work(session)

    return await asyncio.to_thread(run)


def _local(moment: Optional[datetime], fmt: str = "%m-%d %H:%M") -> str:
    if moment is None:
        return ""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return moment.astimezone(ZoneInfo(get_settings().timezone)).strftime(fmt)


@lru_cache(maxsize=None)
def _care_plan_titles() -> Dict[str, str]:
    titles = {}
    for path in sorted((DATA_DIR / "care_plans").glob("*.yml")):
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        if isinstance(raw, dict) and raw.get("name"):
            titles[str(raw["name"])] = str(raw.get("title") or raw["name"])
    return titles


def label(kind: str, code: Optional[str]) -> str:
    """A code as staff read it: 心血管内科 for cardiology, 微信 for wechat; the code itself when unknown."""
    if not code:
        return ""
    if kind == "department":
        info = departments().get(code)
        return info.name if info else code
    if kind == "care_plan":
        return _care_plan_titles().get(code, code)
    return escalations.rules().labels.get(kind, {}).get(code, code)


def _templates() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(HERE / "templates")),
        autoescape=jinja2.select_autoescape(["html"]),
        undefined=jinja2.StrictUndefined,
    )
    env.filters["local"] = _local
    env.globals["tz"] = get_settings().timezone
    env.globals["reason_name"] = lambda reason: escalations.rules().reason_names.get(reason, reason)
    env.globals["label"] = label
    return env


def describe_escalation(escalation: Escalation, now: datetime) -> Dict[str, Any]:
    """An escalation as the queue shows it: no phone number, the patient's name only once opened."""
    patient = escalation.patient_id
    waited = (now - escalation.created_at).total_seconds()
    deadline = escalations.rules().deadline(escalation.priority).total_seconds()
    return {
        "id": escalation.id,
        "priority": escalation.priority,
        "reason": escalation.reason,
        "reason_name": escalations.rules().reason_names.get(escalation.reason, escalation.reason),
        "status": escalation.status.value,
        "channel": escalation.channel or "",
        "department": escalation.department_code or "",
        "department_name": label("department", escalation.department_code),
        "channel_name": label("channels", escalation.channel),
        "summary": escalation.summary[-300:],
        "waiting_minutes": int(waited // 60),
        "overdue": escalation.status == EscalationStatus.OPEN and waited > deadline,
        "claimed_by": escalation.claimed_by.display_name if escalation.claimed_by else None,
        "claimed_by_id": escalation.claimed_by_id,
        "patient_id": patient,
        "created_at": _local(escalation.created_at),
    }


def describe_queue(session: Session, department: Optional[str] = None) -> List[Dict[str, Any]]:
    now = utcnow()
    return [describe_escalation(e, now) for e in escalations.queue(session, department or None)]


class Console:
    """Routes and their shared state (history reader, Rasa client, live hub, templates)."""

    def __init__(self, history: History, rasa: Rasa, secret: str, secure_cookies: bool, poll_interval: float) -> None:
        self.history = history
        self.rasa = rasa
        self.cookies = auth.Cookies(secret)
        self.secure_cookies = secure_cookies
        self.templates = _templates()
        self.hub = Hub(history, describe_queue, interval=poll_interval)
        self._dashboard_cache: Dict[int, Any] = {}
        self._dashboard_lock = asyncio.Lock()

    # --- rendering and request helpers ---------------------------------------------------------------

    def render(self, request: web.Request, name: str, status: int = 200, **context: Any) -> web.Response:
        user = request.get("user")
        html = self.templates.get_template(name).render(user=user, csrf=user.csrf_token if user else "", **context)
        return web.Response(text=html, content_type="text/html", status=status)

    @staticmethod
    def user(request: web.Request) -> auth.LoggedIn:
        return request["user"]

    async def staff(self, request: web.Request) -> StaffUser:
        user_id = self.user(request).user_id
        return await in_db(lambda session: session.get(StaffUser, user_id))

    @staticmethod
    def escalation_id(request: web.Request) -> int:
        try:
            return int(request.match_info["escalation_id"])
        except ValueError as error:
            raise web.HTTPNotFound(text="no such escalation") from error

    @staticmethod
    async def form(request: web.Request) -> Dict[str, str]:
        if request.content_type == "application/json":
            try:
                body = await request.json()
            except ValueError as error:
                raise web.HTTPBadRequest(text="body is not JSON") from error
            if not isinstance(body, dict):
                raise web.HTTPBadRequest(text="body must be a JSON object")
            return {k: str(v) for k, v in body.items() if v is not None}
        return {k: str(v) for k, v in (await request.post()).items()}

    # --- middlewares ---------------------------------------------------------------------------------

    @web.middleware
    async def security_headers(self, request: web.Request, handler: Callable[[web.Request], Awaitable[Any]]) -> Any:
        response = await handler(request)
        if isinstance(response, web.StreamResponse) and not response.prepared:
            response.headers.setdefault(
                "Content-Security-Policy",
                "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
                "connect-src 'self'; frame-ancestors 'none'; form-action 'self'; base-uri 'none'",
            )
            response.headers.setdefault("X-Content-Type-Options", "nosniff")
            response.headers.setdefault("Referrer-Policy", "no-referrer")
            response.headers.setdefault("X-Frame-Options", "DENY")
            if not request.path.startswith("/static/"):
                response.headers.setdefault("Cache-Control", "no-store")
        return response

    @web.middleware
    async def authenticate(self, request: web.Request, handler: Callable[[web.Request], Awaitable[Any]]) -> Any:
        if request.path.startswith(PUBLIC_PATHS):
            return await handler(request)
        token = self.cookies.unsign(request.cookies.get(COOKIE, ""))
        user = await in_db(lambda session: auth.load_session(session, token)) if token else None
        if user is None:
            if request.path.startswith(("/api/", "/ws")) or request.method != "GET":
                raise web.HTTPUnauthorized(text="login required")
            raise web.HTTPFound(f"/login?next={request.path}")
        request["user"] = user
        if request.method not in ("GET", "HEAD", "OPTIONS"):
            given = request.headers.get("X-CSRF-Token")
            if given is None and request.content_type in ("application/x-www-form-urlencoded", "multipart/form-data"):
                given = (await request.post()).get("csrf_token")
            if not auth.csrf_ok(user.csrf_token, given):
                raise web.HTTPForbidden(text="CSRF token missing or wrong")
        if request.path.startswith("/admin") and not user.is_admin:
            raise web.HTTPForbidden(text="admins only")
        return await handler(request)

    # --- public ----------------------------------------------------------------------------------------

    async def metrics(self, request: web.Request) -> web.Response:
        """Counts for Prometheus (escalations waiting, outbox depth): no patient data; METRICS_TOKEN guards it."""
        from bot import observability

        if not observability.authorized(request.headers.get("Authorization", ""), os.environ.get("METRICS_TOKEN", "")):
            raise web.HTTPUnauthorized(text="metrics token required")
        body, content_type = await asyncio.to_thread(observability.exposition)
        return web.Response(body=body, headers={"Content-Type": content_type})

    async def favicon(self, request: web.Request) -> web.Response:
        return web.Response(status=204)

    async def health(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def ready(self, request: web.Request) -> web.Response:
        try:
            await in_db(lambda session: session.execute(select(1)).scalar())
            await asyncio.to_thread(self.history.last_id)
        except Exception as error:
            return web.json_response({"status": "unavailable", "error": type(error).__name__}, status=503)
        return web.json_response({"status": "ready"})

    async def login_page(self, request: web.Request, error: str = "", status: int = 200) -> web.Response:
        # one token per browser until it logs in: a second page load (another tab, a favicon redirect) must not
        # invalidate the form already shown
        token = request.cookies.get(LOGIN_CSRF_COOKIE) or secrets.token_urlsafe(24)
        response = self.render(request, "login.html", status=status, login_csrf=token, error=error,
                               next=request.query.get("next", "/"))  # fmt: skip
        response.set_cookie(LOGIN_CSRF_COOKIE, token, httponly=True, samesite="Strict", secure=self.secure_cookies,
                            path="/login")  # fmt: skip
        return response

    async def login(self, request: web.Request) -> web.Response:
        form = await request.post()
        expected = request.cookies.get(LOGIN_CSRF_COOKIE, "")
        if not expected or not auth.csrf_ok(expected, form.get("csrf_token")):
            raise web.HTTPForbidden(text="CSRF token missing or wrong")
        username, password = str(form.get("username", ""))[:64], str(form.get("password", ""))[:256]

        def check(session: Session) -> Optional[str]:
            user = auth.authenticate(session, username, password)
            if user is None:
                audit.record(session, username or "-", "login_failed", "staff", "-")
                return None
            audit.record(session, user.username, "login", "staff", user.id)
            return auth.start_session(session, user)

        token = await in_db(check)
        if token is None:
            return await self.login_page(request, error="用户名或密码错误", status=401)
        target = str(form.get("next", "/"))
        if not target.startswith("/") or target.startswith("//"):
            target = "/"
        response = web.HTTPFound(target)
        response.set_cookie(COOKIE, self.cookies.sign(token), httponly=True, samesite="Strict",
                            secure=self.secure_cookies, max_age=int(auth.SESSION_LIFETIME.total_seconds()))  # fmt: skip
        response.del_cookie(LOGIN_CSRF_COOKIE, path="/login")
        raise response

    async def logout(self, request: web.Request) -> web.Response:
        user = self.user(request)
        await in_db(lambda session: auth.end_session(session, user.session_key))
        response = web.HTTPFound("/login")
        response.del_cookie(COOKIE)
        raise response

    # --- queue -----------------------------------------------------------------------------------------

    async def queue_page(self, request: web.Request) -> web.Response:
        department = request.query.get("department", "")
        items = await self._queue(request, department)
        return self.render(request, "queue.html", items=items, department=department,
                           departments=sorted(departments().items()))  # fmt: skip

    async def queue_api(self, request: web.Request) -> web.Response:
        return web.json_response({"items": await self._queue(request, request.query.get("department", ""))})

    async def _queue(self, request: web.Request, department: str) -> List[Dict[str, Any]]:
        actor = self.user(request).username

        def read(session: Session) -> List[Dict[str, Any]]:
            items = describe_queue(session, department)
            audit.record(session, actor, "view", "queue", department or "all",
                         detail={"escalations": [item["id"] for item in items][:200]})  # fmt: skip
            return items

        return await in_db(read)

    async def claim(self, request: web.Request) -> web.Response:
        escalation_id = self.escalation_id(request)
        staff = await self.staff(request)
        result = await in_db(lambda session: _claimed(escalations.claim(session, escalation_id, staff)))
        if result is None:
            raise web.HTTPNotFound(text="no such escalation")
        won, holder, sender_id, paused = result
        warning = None
        if won and not paused:
            try:
                await self.rasa.pause(sender_id)  # an alert the bot was still answering: quiet while the nurse is in
            except RasaUnavailable as error:
                warning = f"机器人未能暂停：{error}"
        return web.json_response({"won": won, "holder": holder, "warning": warning}, status=200 if won else 409)

    async def release(self, request: web.Request) -> web.Response:
        escalation_id = self.escalation_id(request)
        staff = await self.staff(request)
        try:
            await in_db(lambda session: escalations.release(session, escalation_id, staff))
        except escalations.NotYours as error:
            raise web.HTTPConflict(text="you do not hold this escalation") from error
        return web.json_response({"released": True})

    # --- conversation ----------------------------------------------------------------------------------

    async def _open(self, request: web.Request, escalation_id: int, action: str) -> Dict[str, Any]:
        """The escalation (audited as a view of its patient's data), 404 when unknown."""
        actor = self.user(request).username

        def read(session: Session) -> Optional[Dict[str, Any]]:
            escalation = session.get(Escalation, escalation_id)
            if escalation is None:
                return None
            audit.record(session, actor, action, "conversation", escalation.id, escalation.patient_id)
            item = describe_escalation(escalation, utcnow())
            item["sender_id"] = escalation.sender_id
            item["full_summary"] = escalation.summary
            item["resolution"] = escalation.resolution
            item["panel"] = panel.panel(session, escalation.patient_id) if escalation.patient_id else None
            return item

        item = await in_db(read)
        if item is None:
            raise web.HTTPNotFound(text="no such escalation")
        return item

    async def conversation_page(self, request: web.Request) -> web.Response:
        item = await self._open(request, self.escalation_id(request), "view")
        turns = await asyncio.to_thread(self.history.turns, item["sender_id"])
        paused = await asyncio.to_thread(self.history.is_paused, item["sender_id"])
        mine = item["claimed_by_id"] == self.user(request).user_id or (
            self.user(request).is_admin and item["status"] == "claimed"
        )
        return self.render(request, "conversation.html", item=item, turns=turns, paused=paused, mine=mine,
                           canned=escalations.rules().canned_replies, address=mask_text(item["sender_id"]))  # fmt: skip

    async def turns_api(self, request: web.Request) -> web.Response:
        item = await self._open(request, self.escalation_id(request), "view")
        try:
            after = int(request.query.get("after", "0"))
        except ValueError as error:
            raise web.HTTPBadRequest(text="after must be an event id") from error
        turns = await asyncio.to_thread(self.history.turns, item["sender_id"], after)
        return web.json_response({"turns": [turn.as_json() for turn in turns]})

    async def _held(self, request: web.Request) -> tuple[Escalation, StaffUser]:
        escalation_id = self.escalation_id(request)
        staff = await self.staff(request)

        def read(session: Session) -> Optional[Escalation]:
            escalation = session.get(Escalation, escalation_id)
            if escalation is not None:
                session.expunge(escalation)
            return escalation

        escalation = await in_db(read)
        if escalation is None:
            raise web.HTTPNotFound(text="no such escalation")
        if not escalations.may_act(escalation, staff):
            raise web.HTTPConflict(text="claim this conversation before acting on it")
        return escalation, staff

    async def reply(self, request: web.Request) -> web.Response:
        escalation, staff = await self._held(request)
        text = (await self.form(request)).get("text", "").strip()
        if not text:
            raise web.HTTPBadRequest(text="the reply is empty")
        if len(text) > MAX_REPLY_CHARS:
            raise web.HTTPBadRequest(text=f"a reply has at most {MAX_REPLY_CHARS} characters")
        channel, sender_id = escalation.channel or "", escalation.sender_id
        delivered: Dict[str, Any] = {}
        if channel in ("wechat", "sms", "voice"):
            from bot.addresses import address_of
            from bot.outbound.service import Undeliverable, send_to_address

            try:
                report = await asyncio.to_thread(
                    send_to_address, channel, address_of(channel, sender_id),
                    OutboundMessage(text, purpose="nurse"), patient_id=escalation.patient_id,
                )  # fmt: skip
            except Undeliverable as error:
                logger.warning("nurse reply on escalation %s undeliverable", escalation.id)
                return web.json_response({"sent": False, "error": f"未能送达患者：{error}"}, status=502)
            delivered = {"channel": report.channel, "kind": report.kind}
        else:
            delivered = {"channel": channel or "unknown", "kind": "tracker_only"}
        warning = None
        try:
            await self.rasa.record_nurse_turn(sender_id, text, staff.display_name, staff.id)
        except RasaUnavailable as error:
            warning = f"已发送，但未写入对话记录：{error}"
            logger.error("nurse reply on escalation %s sent but not recorded in the tracker", escalation.id)
        await in_db(
            lambda session: audit.record(
                session,
                staff.username,
                "reply",
                "conversation",
                escalation.id,
                escalation.patient_id,
                {"channel": delivered.get("channel"), "chars": len(text)},
            )
        )
        return web.json_response({"sent": True, "delivery": delivered, "warning": warning})

    async def resolve(self, request: web.Request) -> web.Response:
        escalation, staff = await self._held(request)
        form = await self.form(request)
        offer_survey = form.get("offer_survey", "").lower() in ("1", "true", "on", "yes")
        await in_db(lambda session: escalations.resolve(session, escalation.id, staff, form.get("resolution", "")))
        warnings: List[str] = []
        try:
            await self.rasa.resume(escalation.sender_id)
            if escalation.channel:
                await self.rasa.trigger(escalation.sender_id, "EXTERNAL_handback", escalation.channel)
                if offer_survey:
                    await self.rasa.trigger(escalation.sender_id, "EXTERNAL_start_survey", escalation.channel,
                                            {"survey_instrument": "satisfaction"})  # fmt: skip
        except RasaUnavailable as error:
            warnings.append(f"机器人未能恢复：{error}")
            logger.error("escalation %s resolved but the bot did not resume", escalation.id)
        return web.json_response({"resolved": True, "warnings": warnings})

    # --- patients --------------------------------------------------------------------------------------

    async def add_tag(self, request: web.Request) -> web.Response:
        patient_id = int(request.match_info["patient_id"])
        tag = (await self.form(request)).get("tag", "")
        actor = self.user(request).username

        def store(session: Session) -> bool:
            if session.get(Patient, patient_id) is None:
                raise web.HTTPNotFound(text="no such patient")
            added = panel.add_tag(session, patient_id, tag, actor)
            audit.record(session, actor, "tag", "patient", patient_id, patient_id, {"tag": tag[:32]})
            return added

        return web.json_response({"added": await in_db(store)})

    async def readings_chart(self, request: web.Request) -> web.Response:
        from bot import charts

        patient_id, kind = int(request.match_info["patient_id"]), request.match_info["kind"]
        actor = self.user(request).username

        def read(session: Session) -> tuple[Optional[Patient], list]:
            patient = session.get(Patient, patient_id)
            if patient is None:
                return None, []
            audit.record(session, actor, "view", "readings", kind, patient_id)
            since = utcnow() - timedelta(days=90)
            return patient, care.readings_of(session, patient_id, kind, since)

        patient, readings = await in_db(read)
        if patient is None or not readings:
            raise web.HTTPNotFound(text="no readings")
        png = await asyncio.to_thread(charts.trend_png, readings, kind, tz=patient.timezone, locale=patient.locale)
        return web.Response(body=png, content_type="image/png")

    # --- dashboard and admin ---------------------------------------------------------------------------

    async def _dashboard(self, days: int) -> tuple[Any, Dict[str, bytes]]:
        """The figures and charts for `days`, computed at most once a minute per window: six chart requests per
        page view share one computation."""
        from console import dashboard

        async with self._dashboard_lock:
            cached = self._dashboard_cache.get(days)
            if cached is None or time.monotonic() - cached[0] > DASHBOARD_TTL:
                # the console and escalation rows run on the wall clock (models.utcnow), not a demo clock
                data = await in_db(lambda session: dashboard.metrics(session, days=days, now=utcnow()))
                pngs = await asyncio.to_thread(dashboard.chart_pngs, data, get_settings().locale)
                cached = self._dashboard_cache[days] = (time.monotonic(), data, pngs)
        return cached[1], cached[2]

    async def dashboard_page(self, request: web.Request) -> web.Response:
        days = _int_query(request, "days", 30, 1, 365)
        data, _ = await self._dashboard(days)
        await in_db(lambda session: audit.record(session, self.user(request).username, "view", "dashboard", days))
        return self.render(request, "dashboard.html", summary=data.as_json()["summary"], days=days)

    async def dashboard_chart(self, request: web.Request) -> web.Response:
        _, pngs = await self._dashboard(_int_query(request, "days", 30, 1, 365))
        name = request.match_info["name"]
        if name not in pngs:
            raise web.HTTPNotFound(text="no such chart")
        return web.Response(body=pngs[name], content_type="image/png")

    async def audit_page(self, request: web.Request) -> web.Response:
        actor = request.query.get("actor", "").strip()
        patient = request.query.get("patient_id", "").strip()
        page = _int_query(request, "page", 1, 1, 100000)
        admin = self.user(request).username

        def read(session: Session) -> List[AuditEntry]:
            query = select(AuditEntry).order_by(AuditEntry.id.desc())
            if actor:
                query = query.where(AuditEntry.actor == actor)
            if patient.isdigit():
                query = query.where(AuditEntry.patient_id == int(patient))
            rows = list(session.execute(query.offset((page - 1) * 100).limit(100)).scalars())
            audit.record(session, admin, "view", "audit_log", page)
            for row in rows:
                session.expunge(row)
            return rows

        rows = await in_db(read)
        return self.render(request, "audit.html", rows=rows, actor=actor, patient_id=patient, page=page)

    # --- websocket -------------------------------------------------------------------------------------

    async def websocket(self, request: web.Request) -> web.WebSocketResponse:
        origin = request.headers.get("Origin")
        if origin and origin.rstrip("/") != f"{request.scheme}://{request.host}":
            raise web.HTTPForbidden(text="cross-origin websocket refused")
        user = self.user(request)
        socket = web.WebSocketResponse(heartbeat=30)
        await socket.prepare(request)
        watcher = Watcher(socket, user.user_id)
        self.hub.watchers.add(watcher)
        try:
            await socket.send_json({"type": "queue", "items": self.hub.queue_items})
            async for message in socket:
                if message.type != WSMsgType.TEXT:
                    continue
                try:
                    body = json.loads(message.data)
                    escalation_id = int(body["watch"])
                    after = int(body.get("after", 0))
                except (ValueError, KeyError, TypeError):
                    await socket.send_json({"type": "error", "error": 'expected {"watch": id, "after": id}'})
                    continue
                try:
                    item = await self._open(request, escalation_id, "watch")
                except web.HTTPNotFound:
                    await socket.send_json({"type": "error", "error": "no such escalation"})
                    continue
                watcher.watching = item["sender_id"]
                for turn in await asyncio.to_thread(self.history.turns, item["sender_id"], after):
                    await socket.send_json({"type": "turn", "turn": turn.as_json()})
        finally:
            self.hub.watchers.discard(watcher)
        return socket


def _int_query(request: web.Request, name: str, default: int, low: int, high: int) -> int:
    try:
        value = int(request.query.get(name) or default)
    except ValueError as error:
        raise web.HTTPBadRequest(text=f"{name} must be a whole number") from error
    return min(max(value, low), high)


def _claimed(result: escalations.ClaimResult) -> Optional[tuple[bool, Optional[str], str, bool]]:
    if result.escalation is None:
        return None
    return result.won, result.holder, result.escalation.sender_id, result.escalation.pauses_bot


def make_app(
    *,
    history: Optional[History] = None,
    rasa: Optional[Rasa] = None,
    secret: Optional[str] = None,
    secure_cookies: Optional[bool] = None,
    poll_interval: float = 1.0,
) -> web.Application:
    if secure_cookies is None:
        secure_cookies = os.environ.get("CONSOLE_SECURE_COOKIES", "").lower() in ("1", "true", "yes")
    console = Console(history or History(), rasa or Rasa(), secret or console_secret(), secure_cookies, poll_interval)
    app = web.Application(middlewares=[console.security_headers, console.authenticate], client_max_size=64 * 1024)
    app["console"] = console
    routes = [
        web.get("/health", console.health),
        web.get("/favicon.ico", console.favicon),
        web.get("/metrics", console.metrics),
        web.get("/ready", console.ready),
        web.get("/login", console.login_page),
        web.post("/login", console.login),
        web.post("/logout", console.logout),
        web.get("/", console.queue_page),
        web.get("/api/queue", console.queue_api),
        web.get("/escalations/{escalation_id}", console.conversation_page),
        web.get("/api/escalations/{escalation_id}/turns", console.turns_api),
        web.post("/escalations/{escalation_id}/claim", console.claim),
        web.post("/escalations/{escalation_id}/release", console.release),
        web.post("/escalations/{escalation_id}/reply", console.reply),
        web.post("/escalations/{escalation_id}/resolve", console.resolve),
        web.post("/patients/{patient_id:\\d+}/tags", console.add_tag),
        web.get("/patients/{patient_id:\\d+}/readings/{kind:[a-z_]+}.png", console.readings_chart),
        web.get("/dashboard", console.dashboard_page),
        web.get("/dashboard/{name:[a-z_]+}.png", console.dashboard_chart),
        web.get("/admin/audit", console.audit_page),
        web.get("/ws", console.websocket),
        web.static("/static", str(HERE / "static")),
    ]
    app.add_routes(routes)
    from bot import observability

    observability.register_store_metrics()
    app.on_startup.append(console.hub.start)
    app.on_shutdown.append(console.hub.stop)
    return app
