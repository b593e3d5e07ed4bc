"""Logs and metrics for every process.

Logs: `install_masking()` masks phone numbers and WeChat openids in every log record of the process, whichever
library logged it and whichever handler writes it (a log-record factory, so handlers Rasa or Sanic add later are
covered too). `configure_logging(service)` adds one handler, JSON lines when LOG_FORMAT=json.

Metrics (Prometheus text format at `/metrics` of the scheduler and the console, and at
`/webhooks/metrics/` of the Rasa server, channels.metrics):

- `hospital_messages_in_total{channel}` patient messages received, `hospital_messages_out_total{channel,kind}`
  messages sent (kind: reply in a turn, push through the outbound API), `hospital_turn_seconds{channel}` time from
  a message's arrival to the end of the bot's turn;
- read from the stores at scrape time (scheduler and console): `hospital_outbox_rows{status}`,
  `hospital_outbox_oldest_due_seconds` (how late the oldest pending push is), `hospital_escalations_waiting
  {priority}` and `hospital_escalation_oldest_wait_seconds`.
"""

from __future__ import annotations

import functools
import hmac
import json
import logging
import os
import re
import threading
import time
from datetime import datetime
from typing import Any, Awaitable, Callable, Iterator, Optional, Tuple

from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily

MESSAGES_IN = Counter("hospital_messages_in", "Patient messages received", ["channel"])
MESSAGES_OUT = Counter("hospital_messages_out", "Messages sent to patients", ["channel", "kind"])
TURN_SECONDS = Histogram(
    "hospital_turn_seconds",
    "Seconds from a patient message's arrival to the end of the bot's turn",
    ["channel"],
    buckets=(0.05, 0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0, 30.0),
)

# ---------------------------------------------------------------------------------------------------------
# logs
# ---------------------------------------------------------------------------------------------------------
_PHONE = re.compile(
    r"(?<![\d*])(\+?86[- ]?)?(1[3-9]\d)[- ]?(\d{4})[- ]?(\d{4})(?!\d)|(\+\d{1,3}?)(\d{4,11})(\d{4})(?!\d)"
)
_OPENID = re.compile(r"\bo[A-Za-z0-9_-]{5}([A-Za-z0-9_-]{18,30})\b")


def mask_text(text: str) -> str:
    """'+8613812345678' -> '+86138****5678', '13812345678' -> '138****5678', an openid -> 'oAbCdE…'."""

    def phone(match: re.Match[str]) -> str:
        if match.group(2):
            return f"{match.group(1) or ''}{match.group(2)}****{match.group(4)}"
        return f"{match.group(5)}{'*' * len(match.group(6))}{match.group(7)}"

    text = _PHONE.sub(phone, text)
    return _OPENID.sub(lambda m: m.group(0)[:6] + "…", text)


_installed = False
_lock = threading.Lock()


def install_masking() -> None:
    """Mask every log record this process creates from now on (idempotent)."""
    global _installed
    with _lock:
        if _installed:
            return
        previous = logging.getLogRecordFactory()

        def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
            record = previous(*args, **kwargs)
            try:
                message = record.getMessage()
            except Exception:  # a malformed call: leave it to logging's own error report
                return record
            masked = mask_text(message)
            if masked != message or record.args:
                record.msg, record.args = masked, ()
            return record

        logging.setLogRecordFactory(factory)
        _installed = True


class JsonFormatter(logging.Formatter):
    def __init__(self, service: str) -> None:
        super().__init__()
        self.service = service

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": datetime.utcfromtimestamp(record.created).isoformat(timespec="milliseconds") + "Z",
            "level": record.levelname.lower(),
            "service": self.service,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exception"] = mask_text(self.formatException(record.exc_info))
        return json.dumps(entry, ensure_ascii=False)


def configure_logging(service: str, level: int = logging.INFO) -> None:
    """One stderr handler for the process: JSON lines with LOG_FORMAT=json, else plain text; masking on."""
    install_masking()
    handler = logging.StreamHandler()
    if os.environ.get("LOG_FORMAT", "").lower() == "json":
        handler.setFormatter(JsonFormatter(service))
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)


# ---------------------------------------------------------------------------------------------------------
# metrics
# ---------------------------------------------------------------------------------------------------------
Handler = Callable[[Any], Awaitable[Any]]


def metered(on_new_message: Handler, channel: str) -> Handler:
    """Wrap a channel's `on_new_message`: count the message, time the turn, count the bot's messages."""

    @functools.wraps(on_new_message)
    async def handle(message: Any) -> Any:
        MESSAGES_IN.labels(channel).inc()
        output = getattr(message, "output_channel", None)
        if output is not None and not getattr(output, "_hospital_counted", False):
            send = output.send_response

            async def counted(recipient_id: str, response: Any) -> Any:
                MESSAGES_OUT.labels(channel, "reply").inc()
                return await send(recipient_id, response)

            output.send_response = counted
            output._hospital_counted = True
        started = time.perf_counter()
        try:
            return await on_new_message(message)
        finally:
            TURN_SECONDS.labels(channel).observe(time.perf_counter() - started)

    return handle


class StoreMetrics:
    """Outbox and escalation gauges, read from the CRM when Prometheus scrapes (cached a few seconds)."""

    def __init__(self, ttl: float = 5.0) -> None:
        self.ttl = ttl
        self._cached: Tuple[float, list] = (0.0, [])

    def describe(self) -> list:
        """Nothing to declare up front (so registering does not query the database)."""
        return []

    def collect(self) -> Iterator[GaugeMetricFamily]:
        if time.monotonic() - self._cached[0] > self.ttl:
            try:
                self._cached = (time.monotonic(), self._read())
            except Exception:  # the database is down: say so rather than fail the scrape
                logging.getLogger(__name__).warning("store metrics unavailable", exc_info=True)
                up = GaugeMetricFamily("hospital_store_up", "Whether the CRM answered the metrics query")
                up.add_metric([], 0)
                self._cached = (time.monotonic(), [up])
        yield from self._cached[1]

    def _read(self) -> list:
        from sqlalchemy import func, select

        from bot.crm.models import Escalation, EscalationStatus, OutboxMessage, OutboxStatus, utcnow
        from bot.db import session_scope

        now = utcnow()
        rows = GaugeMetricFamily("hospital_outbox_rows", "Outbox rows by status", labels=["status"])
        late = GaugeMetricFamily("hospital_outbox_oldest_due_seconds", "How late the oldest pending push is")
        waiting = GaugeMetricFamily("hospital_escalations_waiting", "Unclaimed escalations", labels=["priority"])
        oldest = GaugeMetricFamily("hospital_escalation_oldest_wait_seconds", "Longest wait of an unclaimed one")
        up = GaugeMetricFamily("hospital_store_up", "Whether the CRM answered the metrics query")
        with session_scope() as session:
            active = (OutboxStatus.PENDING, OutboxStatus.SENDING)
            counts = dict(
                session.execute(
                    select(OutboxMessage.status, func.count(OutboxMessage.id))
                    .where(OutboxMessage.status.in_(active))
                    .group_by(OutboxMessage.status)
                ).all()
            )
            for status in active:
                rows.add_metric([status.value], counts.get(status, 0))
            first_due = session.execute(  # rows deferred on purpose (quiet hours, backoff) are not late
                select(func.min(OutboxMessage.next_attempt_at)).where(
                    OutboxMessage.status == OutboxStatus.PENDING, OutboxMessage.next_attempt_at <= now
                )
            ).scalar()
            late.add_metric([], (now - first_due).total_seconds() if first_due else 0.0)
            by_priority = dict(
                session.execute(
                    select(Escalation.priority, func.count(Escalation.id))
                    .where(Escalation.status == EscalationStatus.OPEN)
                    .group_by(Escalation.priority)
                ).all()
            )
            for priority in (1, 2, 3, 4):
                waiting.add_metric([str(priority)], by_priority.get(priority, 0))
            first_open = session.execute(
                select(func.min(Escalation.created_at)).where(Escalation.status == EscalationStatus.OPEN)
            ).scalar()
            oldest.add_metric([], (now - first_open).total_seconds() if first_open else 0.0)
        up.add_metric([], 1)
        return [rows, late, waiting, oldest, up]


_store_metrics: Optional[StoreMetrics] = None


def register_store_metrics() -> None:
    """Add the outbox and escalation gauges to this process's /metrics (scheduler, console)."""
    global _store_metrics
    with _lock:
        if _store_metrics is None:
            _store_metrics = StoreMetrics()
            REGISTRY.register(_store_metrics)  # type: ignore[arg-type]


def authorized(header: str, token: str) -> bool:
    """Whether a scrape may read /metrics: no METRICS_TOKEN configured (a private network), or its bearer."""
    return not token or hmac.compare_digest(header.encode(), f"Bearer {token}".encode())


def exposition() -> Tuple[bytes, str]:
    """The current metrics in Prometheus text format, and their content type."""
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST
