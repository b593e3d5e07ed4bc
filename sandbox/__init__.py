"""A local stand-in for the WeChat official-account API and Twilio's REST API.

WeChat and Twilio cannot be reached from a developer's machine or CI, and a demo must never message a real
patient. The sandbox answers the real `wechatpy` and `twilio` clients (pointed at it by base URL) the way the
platforms do, including their rules and error codes, and records what each simulated patient received so tests
and a person at the page (`python -m sandbox`) can see it.

- `sandbox.app.create_app` builds the aiohttp application,
- `sandbox.testing.run_sandbox` runs it in a background thread for tests,
- `sandbox.patient` builds inbound webhooks exactly as the platforms send them to the bot.
"""

from __future__ import annotations

from sandbox.state import SandboxError, SandboxState

__all__ = ["SandboxError", "SandboxState"]
