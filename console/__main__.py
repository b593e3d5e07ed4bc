"""`python -m console`: serve the nurse console, or manage its logins.

python -m console serve [--port 5088]
python -m console add-user USERNAME --role nurse|admin [--name 张护士] [--department cardiology]
                           [--phone +8613800000000] [--on-call]      (password from CONSOLE_PASSWORD or a prompt)
python -m console demo-staff    (first run only: a nurse, a second nurse and an admin with printed passwords)
"""

from __future__ import annotations

import argparse
import getpass
import os
import secrets
import sys
from typing import List, Optional

from sqlalchemy import func, select

from bot.crm.models import StaffRole, StaffUser
from bot.db import session_scope
from console import auth

DEFAULT_PORT = 5088


def _password(prompt: str) -> str:
    password = os.environ.get("CONSOLE_PASSWORD")
    if password:
        return password
    first = getpass.getpass(prompt)
    if first != getpass.getpass("again: "):
        raise SystemExit("the passwords differ")
    return first


def demo_staff() -> List[str]:
    """Create demo logins when there are none; returns 'username password role' lines to print once."""
    lines: List[str] = []
    with session_scope() as session:
        if session.execute(select(func.count(StaffUser.id))).scalar_one():
            return lines
        for username, name, role, on_call in (
            ("nurse", "王护士", StaffRole.NURSE, True),
            ("nurse2", "李护士", StaffRole.NURSE, False),
            ("admin", "管理员", StaffRole.ADMIN, False),
        ):
            password = os.environ.get("CONSOLE_DEMO_PASSWORD") or secrets.token_urlsafe(9)
            auth.create_user(session, username, password, role=role, display_name=name, on_call=on_call)
            lines.append(f"{username} {password} {role.value}")
    return lines


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m console", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command")
    serve = commands.add_parser("serve", help="run the console web app")
    serve.add_argument("--host", default=os.environ.get("CONSOLE_HOST", "127.0.0.1"))
    serve.add_argument("--port", type=int, default=int(os.environ.get("CONSOLE_PORT", DEFAULT_PORT)))
    add = commands.add_parser("add-user", help="create a console login")
    add.add_argument("username")
    add.add_argument("--role", choices=[r.value for r in StaffRole], default="nurse")
    add.add_argument("--name")
    add.add_argument("--department")
    add.add_argument("--phone", help="E.164 number for on-call alerts")
    add.add_argument("--on-call", action="store_true")
    commands.add_parser("demo-staff", help="create demo logins on an empty database and print them")
    args = parser.parse_args(argv)
    from bot.observability import configure_logging

    configure_logging("console")
    if args.command == "add-user":
        password = _password(f"password for {args.username}: ")
        try:
            with session_scope() as session:
                auth.create_user(session, args.username, password, role=StaffRole(args.role), display_name=args.name,
                                 department_code=args.department, phone=args.phone, on_call=args.on_call)  # fmt: skip
        except auth.WeakPassword as error:
            print(error, file=sys.stderr)
            return 2
        print(f"created {args.role} {args.username}")
        return 0
    if args.command == "demo-staff":
        for line in demo_staff():
            print(line)
        return 0
    from aiohttp import web

    from bot.db import upgrade
    from console.app import make_app

    upgrade()
    web.run_app(make_app(), host=getattr(args, "host", "127.0.0.1"), port=getattr(args, "port", DEFAULT_PORT),
                access_log=None, print=lambda *_: None)  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
