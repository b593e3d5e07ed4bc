"""Provider credentials and addresses, read once from the environment.

Without any configuration every provider points at the local sandbox (`python -m sandbox`, started by
`make run`) with the demo credentials below, so a newcomer's first run sends nothing outside the machine.
A hospital sets the real values (see the README's "Channels" section); the code path is the same.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import lru_cache
from typing import Optional

SANDBOX_URL_DEFAULT = "http://127.0.0.1:5099"

# Demo credentials shared by the bot and the sandbox. Never valid at WeChat or Twilio.
SANDBOX_WECHAT_APPID = "wx0sandbox000000"
SANDBOX_WECHAT_SECRET = "sandbox-wechat-secret"
SANDBOX_WECHAT_TOKEN = "sandboxtoken"
SANDBOX_WECHAT_AES_KEY = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG"  # 43 characters, as WeChat issues them
SANDBOX_TWILIO_ACCOUNT_SID = "AC" + "0" * 32
SANDBOX_TWILIO_AUTH_TOKEN = "sandbox-twilio-auth-token"
SANDBOX_SMS_FROM = "+15005550006"  # Twilio's magic "valid" test number
SANDBOX_VOICE_FROM = "+15005550006"


def _env(name: str, default: str = "") -> str:
    return os.environ.get(name, default).strip()


@dataclass(frozen=True)
class WeChatSettings:
    appid: str
    secret: str
    token: str  # the "Token" configured on the official account's server page, for signatures
    aes_key: str  # EncodingAESKey (safe mode); empty for plain mode only
    previous_aes_key: str  # the key before a rotation, still accepted for inbound messages
    api_base: str  # ".../cgi-bin/": WeChat's API or the sandbox's
    template_id: str  # template message used when the 48 h customer-service window is closed
    subscribe_template_id: str  # long-term subscription message (preferred over templates when set)
    # Seconds to wait for the bot before answering `success` and sending the answer through the
    # customer-service API instead. WeChat waits 5 s, but a webhook that holds requests for seconds under load
    # holds WeChat's connections too: 0.8 s keeps acknowledgements under 1 s at any load, and the answer itself
    # is no later either way (one customer-service message per patient message, well inside the quota of 5).
    passive_deadline: float


@dataclass(frozen=True)
class TwilioSettings:
    account_sid: str
    auth_token: str
    sms_from: str
    voice_from: str
    api_base: str  # "https://api.twilio.com" or the sandbox's ".../twilio"
    public_url: str  # the public base URL Twilio calls (signatures are computed over it)


@dataclass(frozen=True)
class ProviderSettings:
    sandbox_url: Optional[str]  # set when any provider points at the sandbox
    wechat: WeChatSettings
    twilio: TwilioSettings


@lru_cache(maxsize=1)
def get_provider_settings() -> ProviderSettings:
    sandbox = _env("SANDBOX_URL", SANDBOX_URL_DEFAULT).rstrip("/")
    if sandbox.lower() in ("", "off"):  # a real deployment: the providers' own APIs unless overridden
        wechat_base, twilio_base = "https://api.weixin.qq.com/cgi-bin/", "https://api.twilio.com"
    else:
        wechat_base, twilio_base = f"{sandbox}/wechat/cgi-bin/", f"{sandbox}/twilio"
    wechat = WeChatSettings(
        appid=_env("WECHAT_APPID", SANDBOX_WECHAT_APPID),
        secret=_env("WECHAT_SECRET", SANDBOX_WECHAT_SECRET),
        token=_env("WECHAT_TOKEN", SANDBOX_WECHAT_TOKEN),
        aes_key=_env("WECHAT_AES_KEY", SANDBOX_WECHAT_AES_KEY),
        previous_aes_key=_env("WECHAT_AES_KEY_PREVIOUS"),
        api_base=_env("WECHAT_API_BASE", wechat_base).rstrip("/") + "/",
        template_id=_env("WECHAT_TEMPLATE_ID", "sandbox-template-notice"),
        subscribe_template_id=_env("WECHAT_SUBSCRIBE_TEMPLATE_ID"),
        passive_deadline=float(_env("WECHAT_PASSIVE_DEADLINE", "0.8")),
    )
    twilio = TwilioSettings(
        account_sid=_env("TWILIO_ACCOUNT_SID", SANDBOX_TWILIO_ACCOUNT_SID),
        auth_token=_env("TWILIO_AUTH_TOKEN", SANDBOX_TWILIO_AUTH_TOKEN),
        sms_from=_env("TWILIO_SMS_FROM", SANDBOX_SMS_FROM),
        voice_from=_env("TWILIO_VOICE_FROM", SANDBOX_VOICE_FROM),
        api_base=_env("TWILIO_API_BASE", twilio_base).rstrip("/"),
        public_url=_env("PUBLIC_BASE_URL", "http://127.0.0.1:5005").rstrip("/"),
    )
    uses_sandbox = bool(sandbox) and (wechat.api_base.startswith(sandbox) or twilio.api_base.startswith(sandbox))
    return ProviderSettings(sandbox_url=sandbox if uses_sandbox else None, wechat=wechat, twilio=twilio)
