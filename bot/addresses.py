"""Conversation ids (Rasa's sender_id) and provider addresses of each channel, named once.

- WeChat: the sender id is the openid, the address WeChat knows the patient by.
- SMS: the sender id is the E.164 phone number, as Twilio reports it in `From`.
- Voice: `voice:` + the E.164 number of the patient (never the hospital's number: outbound calls report the
  hospital in `From`), so a call does not run inside the patient's SMS conversation.
- Web chat and REST: the sender id is all there is.
"""

from __future__ import annotations

VOICE_PREFIX = "voice:"


def sender_id_for(channel: str, address: str) -> str:
    """The Rasa conversation id for a patient address on a channel."""
    return VOICE_PREFIX + address if channel == "voice" else address


def address_of(channel: str, sender_id: str) -> str:
    """The provider address (openid, phone) behind a conversation id; the id itself for other channels."""
    if channel == "voice" and sender_id.startswith(VOICE_PREFIX):
        return sender_id[len(VOICE_PREFIX) :]
    return sender_id
