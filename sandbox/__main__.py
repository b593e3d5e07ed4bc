"""`python -m sandbox --host 127.0.0.1 --port 5099`: the sandbox for a demo or a local bot (`make run`)."""

from __future__ import annotations

import argparse
import logging
from typing import List, Optional

from aiohttp import web

from bot.outbound.settings import SANDBOX_URL_DEFAULT
from sandbox.app import DEFAULT_BOT_URL, create_app
from sandbox.state import SandboxState


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    default_port = int(SANDBOX_URL_DEFAULT.rsplit(":", 1)[1])
    parser = argparse.ArgumentParser(prog="python -m sandbox", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1", help="interface to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=default_port, help=f"port (default {default_port})")
    parser.add_argument("--bot-url", default=DEFAULT_BOT_URL, help="the Rasa server patients write to from the page")
    parser.add_argument(
        "--strict-window",
        action="store_true",
        help="refuse customer-service messages to patients who never wrote (WeChat's real rule)",
    )
    return parser.parse_args(argv)


def main(argv: Optional[List[str]] = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    app = create_app(SandboxState(strict_window=args.strict_window), bot_url=args.bot_url)
    url = f"http://{args.host}:{args.port}/"

    def announce(_default_message: str) -> None:
        print(f"Sandbox (fake WeChat + Twilio) running at {url}  — patients write to the bot at {args.bot_url}")
        print(f"  wechatpy API_BASE_URL: {url}wechat/cgi-bin/   twilio api.base_url: {url}twilio", flush=True)

    web.run_app(app, host=args.host, port=args.port, print=announce)


if __name__ == "__main__":
    main()
