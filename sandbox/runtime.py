"""What the sandbox's handlers share at run time: the state, one HTTP client, and its background tasks.

Twilio answers a send at once and calls back later (status callbacks, the call's TwiML); the sandbox does the
same with tasks on its own loop. They are kept here so shutdown can cancel them and so a failing callback
target is logged instead of vanishing with the task.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any, Coroutine, Dict, Optional, Set

import aiohttp
from aiohttp import web
from yarl import URL

from sandbox.patient import twilio_signature
from sandbox.state import SandboxError, SandboxState

logger = logging.getLogger(__name__)

STATE = web.AppKey("sandbox_state", SandboxState)
BOT_URL = web.AppKey("sandbox_bot_url", str)
HTTP = web.AppKey("sandbox_http", aiohttp.ClientSession)
TASKS = web.AppKey("sandbox_tasks", set)

OUTBOUND_TIMEOUT = aiohttp.ClientTimeout(total=15)  # Twilio waits 15 s for a webhook before error 11200


@dataclass(frozen=True)
class WebhookResult:
    """What a webhook target answered, or why it could not be reached."""

    url: str
    http_status: Optional[int]
    text: str
    error: Optional[str] = None

    def as_detail(self) -> Dict[str, Any]:
        return {"url": self.url, "http_status": self.http_status, "error": self.error}


async def start_http(app: web.Application) -> None:
    """One client session per app, created inside the running loop as aiohttp requires."""
    app[HTTP] = aiohttp.ClientSession(timeout=OUTBOUND_TIMEOUT)
    app[TASKS] = set()


async def stop_http(app: web.Application) -> None:
    tasks: Set[asyncio.Task] = app[TASKS]
    for task in list(tasks):
        task.cancel()
    if tasks:
        await asyncio.gather(*tasks, return_exceptions=True)
    await app[HTTP].close()


def spawn(app: web.Application, coroutine: Coroutine[Any, Any, Any]) -> asyncio.Task:
    """Run platform-side work after the response, as Twilio does, keeping a reference until it ends."""
    task = asyncio.get_running_loop().create_task(_logged(coroutine))
    app[TASKS].add(task)
    task.add_done_callback(app[TASKS].discard)
    return task


async def _logged(coroutine: Coroutine[Any, Any, Any]) -> Any:
    try:
        return await coroutine
    except SandboxError as error:
        # The usual cause is a reset while a callback was pending: the record it would update is gone.
        logger.info("Sandbox background work abandoned: %s", error)
    except asyncio.CancelledError:
        raise
    except Exception:
        logger.exception("Sandbox background work failed")
    return None


async def post_signed_form(
    app: web.Application,
    url: str,
    form: Dict[str, str],
    auth_token: str,
    *,
    method: str = "POST",
) -> WebhookResult:
    """Call a webhook as Twilio does: form-encoded and signed over the exact URL; GET puts the form in the query.

    A target that is down or answers garbage is reported in the result, never raised: the platform carries on.
    """
    session: aiohttp.ClientSession = app[HTTP]
    try:
        if method.upper() == "GET":
            target = _with_query(url, form)
            headers = {"X-Twilio-Signature": twilio_signature(target, {}, auth_token)}
            async with session.get(target, headers=headers) as response:
                return WebhookResult(url, response.status, await response.text())
        headers = {"X-Twilio-Signature": twilio_signature(url, form, auth_token)}
        async with session.post(url, data=form, headers=headers) as response:
            return WebhookResult(url, response.status, await response.text())
    except (aiohttp.ClientError, asyncio.TimeoutError, OSError, ValueError) as error:
        logger.warning("Webhook %s failed: %r", url, error)
        return WebhookResult(url, None, "", error=f"{type(error).__name__}: {error}")


def _with_query(url: str, form: Dict[str, str]) -> str:
    return str(URL(url).update_query(form))
