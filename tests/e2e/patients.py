"""Simulated patients writing to the running assistant, with traffic built exactly as WeChat and Twilio send it.

A WeChat patient reads the passive reply when the bot answered in time, otherwise waits for what reached their
WeChat through the sandbox (the customer-service API). An SMS patient reads what reached their phone.
"""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

import requests

from bot.outbound.settings import (
    SANDBOX_SMS_FROM,
    SANDBOX_TWILIO_AUTH_TOKEN,
    SANDBOX_WECHAT_AES_KEY,
    SANDBOX_WECHAT_APPID,
    SANDBOX_WECHAT_TOKEN,
)
from sandbox import patient as build

_msg_ids = itertools.count(int(time.time() * 1000) % 10**12 * 100)


def next_msg_id() -> int:
    return next(_msg_ids)


@dataclass
class WeChatPatient:
    rasa_url: str
    sandbox: Any
    openid: str
    safe: bool = True
    seen_pushes: int = 0
    transcript: List[str] = field(default_factory=list)

    def post(self, xml: str) -> requests.Response:
        request = build.wechat_request(
            xml,
            token=SANDBOX_WECHAT_TOKEN,
            appid=SANDBOX_WECHAT_APPID,
            aes_key=SANDBOX_WECHAT_AES_KEY if self.safe else None,
        )
        return requests.post(f"{self.rasa_url}/webhooks/wechat/", params=request.query, data=request.body, timeout=10)

    def read(self, response: requests.Response) -> Dict[str, Any]:
        return build.read_reply(
            response.content, token=SANDBOX_WECHAT_TOKEN, appid=SANDBOX_WECHAT_APPID, aes_key=SANDBOX_WECHAT_AES_KEY
        )

    def say(self, text: str, msg_id: Optional[int] = None, timeout: float = 30) -> str:
        """What the patient sees in answer to `text`: the passive reply, or the pushed messages."""
        response = self.post(build.text_xml(self.openid, text, msg_id or next_msg_id()))
        assert response.status_code == 200, response.text
        answer = self.read(response).get("Content") or self.wait_for_push(timeout)
        self.transcript += [f"patient: {text}", f"bot: {answer}"]
        return answer

    def pushes(self) -> List[Dict[str, Any]]:
        return self.sandbox.messages(to=self.openid, provider="wechat")

    def wait_for_push(self, timeout: float = 30) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            pushed = self.pushes()
            if len(pushed) > self.seen_pushes:
                time.sleep(0.3)  # a long answer arrives in parts
                pushed = self.pushes()
                new, self.seen_pushes = pushed[self.seen_pushes :], len(pushed)
                return "\n".join(message["body"] for message in new)
            time.sleep(0.1)
        raise AssertionError(f"nothing reached {self.openid}'s WeChat within {timeout} s")


@dataclass
class SmsPatient:
    rasa_url: str
    sandbox: Any
    phone: str
    seen: int = 0
    transcript: List[str] = field(default_factory=list)

    def post(self, text: str, message_sid: Optional[str] = None, **extra: str) -> requests.Response:
        form = build.twilio_sms_form(self.phone, SANDBOX_SMS_FROM, text, message_sid=message_sid, **extra)
        url = f"{self.rasa_url}/webhooks/twilio_sms/webhook"
        signature = build.twilio_signature(url, form, SANDBOX_TWILIO_AUTH_TOKEN)
        return requests.post(url, data=form, headers={"X-Twilio-Signature": signature}, timeout=10)

    def texts(self) -> List[Dict[str, Any]]:
        return self.sandbox.messages(to=self.phone, provider="sms")

    def say(self, text: str, timeout: float = 30) -> str:
        response = self.post(text)
        assert response.status_code == 200, response.text
        answer = self.wait(timeout)
        self.transcript += [f"patient: {text}", f"bot: {answer}"]
        return answer

    def wait(self, timeout: float = 30) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            received = self.texts()
            if len(received) > self.seen:
                time.sleep(0.3)
                received = self.texts()
                new, self.seen = received[self.seen :], len(received)
                return "\n".join(message["body"] for message in new)
            time.sleep(0.1)
        raise AssertionError(f"no SMS reached {self.phone} within {timeout} s")
