"""Prometheus metrics of the Rasa server process (bot/observability.py), at ``GET /webhooks/metrics/``.

Enable it in ``credentials.yml`` with an empty entry (``channels.metrics.MetricsInput:``). Counts only: no
patient data. Set METRICS_TOKEN to require ``Authorization: Bearer <token>``.
"""

from __future__ import annotations

import os
from typing import Any, Awaitable, Callable

from rasa.core.channels.channel import InputChannel, UserMessage
from sanic import Blueprint, response
from sanic.request import Request
from sanic.response import HTTPResponse

from bot.observability import authorized, exposition


class MetricsInput(InputChannel):
    @classmethod
    def name(cls) -> str:
        return "metrics"

    def blueprint(self, on_new_message: Callable[[UserMessage], Awaitable[Any]]) -> Blueprint:
        metrics = Blueprint(f"custom_webhook_{type(self).__name__}")

        @metrics.route("/", methods=["GET"])
        async def scrape(request: Request) -> HTTPResponse:
            if not authorized(request.headers.get("Authorization", ""), os.environ.get("METRICS_TOKEN", "")):
                return response.text("metrics token required", status=401)
            body, content_type = exposition()
            return response.raw(body, content_type=content_type)

        return metrics
