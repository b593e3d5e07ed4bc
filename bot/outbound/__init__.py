"""The one outbound API: tell a patient something over the best channel they consented to.

    from bot import outbound
    report = outbound.send_to_patient(patient_id, OutboundMessage("明天上午9点复诊，请按时就诊。"))

Actions, the scheduler and the nurse console all call this; every attempt is a `Delivery` row.
"""

from bot.outbound.providers import Choice, OutboundMessage, ProviderError, Providers, get_providers
from bot.outbound.service import (
    DEFAULT_POLICY,
    DeliveryReport,
    Undeliverable,
    record_status,
    send_image_to_patient,
    send_to_address,
    send_to_patient,
)

__all__ = [
    "DEFAULT_POLICY",
    "Choice",
    "DeliveryReport",
    "OutboundMessage",
    "ProviderError",
    "Providers",
    "Undeliverable",
    "get_providers",
    "record_status",
    "send_image_to_patient",
    "send_to_address",
    "send_to_patient",
]
