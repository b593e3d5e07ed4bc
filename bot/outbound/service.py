"""Choosing a channel, honouring consent, falling back, and recording every attempt.

`send_to_patient` walks the channel policy (WeChat → SMS → voice by default), skips channels the patient has
no address on or opted out of, and stops at the first provider that accepts the message. The provider calls
need no database (`attempt_sends`); the attempts are then recorded in one transaction (`record_outcomes`), one
`Delivery` row each. A crash between the two loses the record of those attempts, not the intent: scheduled sends
are outbox rows, taken again when their claim expires (so they may go out twice). A voice call's row is written
before the call, because Twilio fetches the call's words by its id. Blocking: run it in a worker thread.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Iterable, List, Optional, Sequence, Set, Tuple

from sqlalchemy import select
from sqlalchemy.orm import Session

from bot.crm import consent
from bot.crm.models import ChannelIdentity, Delivery, DeliveryStatus, Patient
from bot.db import session_scope
from bot.errors import DomainError, UnknownPatient
from bot.observability import MESSAGES_OUT
from bot.outbound.providers import OutboundMessage, ProviderError, Providers, get_providers

logger = logging.getLogger(__name__)

DEFAULT_POLICY: Tuple[str, ...] = ("wechat", "sms", "voice")
# Twilio's statuses in order; a late "sent" callback never overwrites "delivered".
_STATUS_RANK = {"sending": 0, "sent": 1, "delivered": 2, "undelivered": 2, "failed": 2}


class Undeliverable(DomainError):
    """No channel in the policy took the message; `attempts` says what each one answered."""

    def __init__(self, patient_id: Optional[int], attempts: Sequence[Attempt]) -> None:
        tried = "; ".join(f"{a.channel}: {a.outcome}" for a in attempts) or "no channel address or consent"
        super().__init__(f"could not reach patient {patient_id}: {tried}")
        self.patient_id = patient_id
        self.attempts = list(attempts)


@dataclass
class Attempt:
    channel: str
    delivery_id: Optional[int]
    status: DeliveryStatus
    outcome: str  # "sent as custom", "43004 ...", "opted out"


@dataclass
class DeliveryReport:
    patient_id: Optional[int]
    channel: str  # the channel that took the message
    kind: str
    delivery_id: int
    attempts: List[Attempt] = field(default_factory=list)

    @property
    def fell_back(self) -> bool:
        return len(self.attempts) > 1


def addresses_of(
    patient: Patient, identities: Iterable[ChannelIdentity], policy: Sequence[str]
) -> List[Tuple[str, str]]:
    """(channel, address) pairs in policy order: the linked identities, and the registered mobile for SMS and
    voice when no other number is linked."""
    linked = {}
    for identity in identities:
        linked.setdefault(identity.channel, identity.external_id)
    pairs = []
    for channel in policy:
        address = linked.get(channel) or (patient.phone if channel in ("sms", "voice") else None)
        if address:
            pairs.append((channel, address))
    return pairs


def _new_row(
    channel: str,
    address: str,
    message: OutboundMessage,
    patient_id: Optional[int],
    *,
    status: DeliveryStatus = DeliveryStatus.SENDING,
    previous: Optional[int] = None,
    error: Optional[str] = None,
) -> int:
    """Commit the attempt's row before the provider is called: a crash leaves `sending`, never nothing."""
    with session_scope() as session:
        row = Delivery(
            patient_id=patient_id,
            channel=channel,
            address=address,
            kind="pending" if status == DeliveryStatus.SENDING else "none",
            purpose=message.purpose,
            body=message.text,
            choices=[{"title": c.title, "payload": c.payload} for c in message.choices] or None,
            status=status,
            fallback_of_id=previous,
            error=error,
        )
        session.add(row)
        session.flush()
        return row.id


def _close_attempt(
    delivery_id: int,
    status: DeliveryStatus,
    *,
    kind: Optional[str] = None,
    provider_message_id: Optional[str] = None,
    error_code: Optional[str] = None,
    error: Optional[str] = None,
) -> None:
    with session_scope() as session:
        row = session.get(Delivery, delivery_id)
        row.status = status
        row.kind = kind or row.kind
        row.provider_message_id = provider_message_id
        row.error_code = error_code
        row.error = (error or "")[:255] or None


@dataclass
class Outcome:
    """What one provider said about one attempt, before anything is written (see record_outcomes)."""

    channel: str
    address: str
    status: DeliveryStatus
    kind: str = "none"
    provider_message_id: Optional[str] = None
    error_code: Optional[str] = None
    error: Optional[str] = None
    delivery_id: Optional[int] = None  # a voice call's row, written before the call (Twilio fetches its words)


def attempt_sends(
    pairs: Sequence[Tuple[str, str]],
    message: OutboundMessage,
    patient_id: Optional[int],
    providers: Providers,
    opted_out: Set[Tuple[str, str]] = frozenset(),  # type: ignore[assignment]
) -> List[Outcome]:
    """Try each (channel, address) in order until one provider takes the message. Writes nothing except a
    voice call's row; the caller records the outcomes in one transaction (`record_outcomes`)."""
    outcomes: List[Outcome] = []
    for channel, address in pairs:
        if (channel, address) in opted_out:
            outcomes.append(Outcome(channel, address, DeliveryStatus.SKIPPED, error="opted out"))
            continue
        delivery_id = _new_row(channel, address, message, patient_id) if channel == "voice" else None
        try:
            result = providers.get(channel).send(address, message, delivery_id=delivery_id)
        except ProviderError as error:
            # the code only: providers' messages can quote the phone number (Twilio 21211)
            logger.warning("send on %s failed: %s", channel, error.code)
            outcomes.append(Outcome(channel, address, DeliveryStatus.FAILED, error_code=error.code,
                                    error=error.message, delivery_id=delivery_id))  # fmt: skip
            continue
        except Exception as error:  # an SDK bug must not lose the record of the attempt
            logger.exception("send on %s raised", channel)
            outcomes.append(Outcome(channel, address, DeliveryStatus.FAILED, error_code="internal",
                                    error=type(error).__name__, delivery_id=delivery_id))  # fmt: skip
            continue
        MESSAGES_OUT.labels(channel, "push").inc()
        outcomes.append(Outcome(channel, address, DeliveryStatus.SENT, kind=result.kind,
                                provider_message_id=result.provider_message_id,
                                error="; ".join(result.notes) or None, delivery_id=delivery_id))  # fmt: skip
        break
    return outcomes


def record_outcomes(
    session: Session, outcomes: Sequence[Outcome], message: OutboundMessage, patient_id: Optional[int]
) -> Tuple[Optional[DeliveryReport], List[Attempt]]:
    """One Delivery row per outcome, each failed or skipped attempt linked to the one after it; the report of
    the attempt that succeeded, or None."""
    attempts: List[Attempt] = []
    previous: Optional[int] = None
    report: Optional[DeliveryReport] = None
    for outcome in outcomes:
        row = session.get(Delivery, outcome.delivery_id) if outcome.delivery_id else None
        if row is None:
            row = Delivery(
                channel=outcome.channel,
                address=outcome.address,
                purpose=message.purpose,
                body=message.text,
                patient_id=patient_id,
                choices=[{"title": c.title, "payload": c.payload} for c in message.choices] or None,
            )
            session.add(row)  # fmt: skip
        row.status, row.kind = outcome.status, outcome.kind
        row.provider_message_id, row.error_code = outcome.provider_message_id, outcome.error_code
        row.error = (outcome.error or "")[:255] or None
        row.fallback_of_id = previous
        session.flush()
        if outcome.status != DeliveryStatus.SKIPPED:
            previous = row.id
        summary = (
            f"sent as {outcome.kind}"
            if outcome.status == DeliveryStatus.SENT
            else (
                outcome.error
                if outcome.status == DeliveryStatus.SKIPPED
                else f"{outcome.error_code} {outcome.error or ''}"
            )
        )
        attempts.append(Attempt(outcome.channel, row.id, outcome.status, summary.strip()))
        if outcome.status == DeliveryStatus.SENT:
            report = DeliveryReport(patient_id, outcome.channel, outcome.kind, row.id, attempts)
    return report, attempts


def opted_out_pairs(session: Session, pairs: Sequence[Tuple[str, str]]) -> Set[Tuple[str, str]]:
    return {(c, a) for c, a in pairs if not consent.accepts_messages(session, channel=c, external_id=a)}


def _deliver(
    pairs: Sequence[Tuple[str, str]], message: OutboundMessage, patient_id: Optional[int], providers: Providers
) -> DeliveryReport:
    # An opt-out stops what the hospital starts (reminders, notices), not the answers to what the patient
    # writes: a conversation reply always goes out.
    opted_out: Set[Tuple[str, str]] = set()
    if message.purpose != "conversation":
        with session_scope() as session:
            opted_out = opted_out_pairs(session, pairs)
    outcomes = attempt_sends(pairs, message, patient_id, providers, opted_out)
    with session_scope() as session:
        report, attempts = record_outcomes(session, outcomes, message, patient_id)
    if report is None:
        raise Undeliverable(patient_id, attempts)
    return report


def send_to_patient(
    patient_id: int,
    message: OutboundMessage,
    *,
    policy: Sequence[str] = DEFAULT_POLICY,
    providers: Optional[Providers] = None,
) -> DeliveryReport:
    """Deliver over the first channel in `policy` that the patient can be reached on and consented to.

    Raises UnknownPatient, or Undeliverable (with every attempt) when no channel took the message.
    """
    with session_scope() as session:
        patient = session.get(Patient, patient_id)
        if patient is None:
            raise UnknownPatient(f"no patient with id {patient_id}")
        identities = session.execute(select(ChannelIdentity).where(ChannelIdentity.patient_id == patient_id)).scalars()
        pairs = addresses_of(patient, identities, policy)
    return _deliver(pairs, message, patient_id, providers or get_providers())


def send_to_address(
    channel: str,
    address: str,
    message: OutboundMessage,
    *,
    patient_id: Optional[int] = None,
    providers: Optional[Providers] = None,
) -> DeliveryReport:
    """Deliver on one known channel and address (a reply in the patient's own conversation), recorded the
    same way; the patient is looked up from the channel identity when not given."""
    if patient_id is None:
        with session_scope() as session:
            patient_id = session.execute(
                select(ChannelIdentity.patient_id).where(
                    ChannelIdentity.channel == channel, ChannelIdentity.external_id == address
                )
            ).scalar_one_or_none()
    return _deliver([(channel, address)], message, patient_id, providers or get_providers())


def record_status(provider_message_id: str, status: str, error_code: Optional[str] = None) -> bool:
    """Apply a provider's delivery report (Twilio status callback). False when no delivery has that id.

    Callbacks may arrive out of order or twice: a status never moves back (delivered stays delivered)."""
    mapped = {
        "queued": "sent",
        "accepted": "sent",
        "sending": "sent",
        "sent": "sent",
        "delivered": "delivered",
        "read": "delivered",
        "undelivered": "undelivered",
        "failed": "failed",
        "completed": "delivered",  # a call that was answered and finished
        "busy": "undelivered",
        "no-answer": "undelivered",
        "canceled": "failed",
    }.get(status)
    if mapped is None:
        return True  # an intermediate state we do not track (ringing, in-progress)
    with session_scope() as session:
        row = session.execute(
            select(Delivery).where(Delivery.provider_message_id == provider_message_id).with_for_update()
        ).scalar_one_or_none()
        if row is None:
            return False
        if _STATUS_RANK[mapped] < _STATUS_RANK.get(row.status.value, 0):
            return True
        row.status = DeliveryStatus(mapped)
        if error_code:
            row.error_code = error_code
        return True


def send_image_to_patient(
    patient_id: int, png: bytes, caption: str, *, providers: Optional[Providers] = None
) -> DeliveryReport:
    """A picture (a readings chart) on WeChat, the only channel here that carries one; recorded like any send.
    Raises Undeliverable when the patient has no WeChat identity or WeChat refused (e.g. the window is closed)."""
    with session_scope() as session:
        openid = session.execute(
            select(ChannelIdentity.external_id).where(
                ChannelIdentity.patient_id == patient_id, ChannelIdentity.channel == "wechat"
            )
        ).scalar_one_or_none()
    if openid is None:
        raise Undeliverable(patient_id, [])
    message = OutboundMessage(caption, purpose="nurse")
    delivery_id = _new_row("wechat", openid, message, patient_id)
    provider = (providers or get_providers()).get("wechat")
    provider = getattr(provider, "inner", provider)  # a rate-limited wrapper: the WeChat provider inside
    try:
        result = provider.send_image(openid, png, caption)  # type: ignore[attr-defined]
    except ProviderError as error:
        _close_attempt(delivery_id, DeliveryStatus.FAILED, error_code=error.code, error=error.message)
        raise Undeliverable(patient_id, [Attempt("wechat", delivery_id, DeliveryStatus.FAILED, error.code)]) from error
    _close_attempt(delivery_id, DeliveryStatus.SENT, kind=result.kind, provider_message_id=result.provider_message_id)
    return DeliveryReport(patient_id, "wechat", result.kind, delivery_id, [])
