"""Console logins: scrypt password hashes, server-side sessions behind a signed cookie, CSRF tokens.

- Passwords: scrypt (RFC 7914, Python's hashlib), N=2**14, r=8, p=1, a 16-byte salt per password, stored as
  ``scrypt$N$r$p$salt$hash``; compared in constant time.
- Sessions: the cookie holds a random token and its HMAC-SHA256 under CONSOLE_SECRET; the database holds only
  the token's SHA-256 (console_sessions), so logout and expiry take effect at once and a copied database gives
  no working cookie. The cookie is HttpOnly, SameSite=Strict, and Secure when the console is served over HTTPS.
- CSRF: a per-session token, sent back by forms (``csrf_token`` field) and scripts (``X-CSRF-Token`` header) on
  every state-changing request; websockets must come from the console's own origin.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Optional

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from bot.crm.models import ConsoleSession, StaffRole, StaffUser, utcnow

SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**14, 8, 1
SESSION_LIFETIME = timedelta(hours=12)  # one shift
IDLE_TIMEOUT = timedelta(minutes=60)
MIN_PASSWORD_LENGTH = 10


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def hash_password(password: str) -> str:
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, n=SCRYPT_N, r=SCRYPT_R, p=SCRYPT_P, dklen=32)
    return f"scrypt${SCRYPT_N}${SCRYPT_R}${SCRYPT_P}${_b64(salt)}${_b64(digest)}"


def verify_password(password: str, stored: str) -> bool:
    try:
        scheme, n, r, p, salt, digest = stored.split("$")
        if scheme != "scrypt":
            return False
        expected = _unb64(digest)
        actual = hashlib.scrypt(password.encode(), salt=_unb64(salt), n=int(n), r=int(r), p=int(p), dklen=len(expected))
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(actual, expected)


# Checked when nobody matches the username, so a wrong username takes as long as a wrong password.
_DUMMY_HASH = hash_password(secrets.token_urlsafe(16))


class WeakPassword(ValueError):
    pass


def create_user(
    session: Session,
    username: str,
    password: str,
    *,
    role: StaffRole = StaffRole.NURSE,
    display_name: Optional[str] = None,
    department_code: Optional[str] = None,
    phone: Optional[str] = None,
    on_call: bool = False,
) -> StaffUser:
    if len(password) < MIN_PASSWORD_LENGTH:
        raise WeakPassword(f"a password needs at least {MIN_PASSWORD_LENGTH} characters")
    user = StaffUser(
        username=username,
        display_name=display_name or username,
        password_hash=hash_password(password),
        role=role,
        department_code=department_code,
        phone=phone,
        on_call=on_call,
    )
    session.add(user)
    session.flush()
    return user


def authenticate(session: Session, username: str, password: str) -> Optional[StaffUser]:
    user = session.execute(
        select(StaffUser).where(StaffUser.username == username, StaffUser.active.is_(True))
    ).scalar_one_or_none()
    if user is None:
        verify_password(password, _DUMMY_HASH)
        return None
    return user if verify_password(password, user.password_hash) else None


@dataclass(frozen=True)
class LoggedIn:
    """The current request's staff member and session."""

    user_id: int
    username: str
    display_name: str
    role: StaffRole
    department_code: Optional[str]
    csrf_token: str
    session_key: str

    @property
    def is_admin(self) -> bool:
        return self.role == StaffRole.ADMIN


class Cookies:
    """Signs and checks the session cookie's token with CONSOLE_SECRET."""

    def __init__(self, secret: str) -> None:
        self._key = hashlib.sha256(("console-session:" + secret).encode()).digest()

    def sign(self, token: str) -> str:
        mac = hmac.new(self._key, token.encode(), hashlib.sha256).digest()
        return f"{token}.{_b64(mac)}"

    def unsign(self, value: str) -> Optional[str]:
        token, _, mac = value.rpartition(".")
        if not token or not mac:
            return None
        expected = _b64(hmac.new(self._key, token.encode(), hashlib.sha256).digest())
        return token if hmac.compare_digest(mac, expected) else None


def _key_of(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def start_session(session: Session, user: StaffUser, now: Optional[datetime] = None) -> str:
    """A new session for `user`; returns the cookie token (unsigned)."""
    now = now or utcnow()
    token = secrets.token_urlsafe(32)
    session.add(
        ConsoleSession(
            id=_key_of(token),
            user_id=user.id,
            csrf_token=secrets.token_urlsafe(32),
            created_at=now,
            expires_at=now + SESSION_LIFETIME,
            last_seen_at=now,
        )
    )
    user.last_login_at = now
    session.execute(delete(ConsoleSession).where(ConsoleSession.expires_at <= now))
    return token


def load_session(session: Session, token: str, now: Optional[datetime] = None) -> Optional[LoggedIn]:
    """The staff member behind a cookie token, or None when unknown, expired, idle too long or deactivated."""
    now = now or utcnow()
    row = session.get(ConsoleSession, _key_of(token))
    if row is None:
        return None
    user = row.user
    if row.expires_at <= now or row.last_seen_at + IDLE_TIMEOUT <= now or not user.active:
        session.delete(row)
        return None
    if now - row.last_seen_at > timedelta(seconds=30):
        row.last_seen_at = now
    return LoggedIn(
        user_id=user.id,
        username=user.username,
        display_name=user.display_name,
        role=user.role,
        department_code=user.department_code,
        csrf_token=row.csrf_token,
        session_key=row.id,
    )


def end_session(session: Session, session_key: str) -> None:
    session.execute(delete(ConsoleSession).where(ConsoleSession.id == session_key))


def csrf_ok(expected: str, given: Optional[str]) -> bool:
    return bool(given) and hmac.compare_digest(expected.encode(), str(given).encode())
