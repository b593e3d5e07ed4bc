"""A Redis lock store whose tickets are issued atomically, for several `rasa run` processes on one Redis.

Rasa's `RedisLockStore` issues a ticket as GET -> increment in Python -> SET (rasa issue 9213): two processes
that receive messages of one conversation at the same moment both read "last ticket 4", both take ticket 5 and
both think they are served, so one turn overwrites the other's events. Its `update_lock` (called while waiting)
and `finish_serving` are the same read-modify-write and can drop a ticket issued in between, and `cleanup`
deletes the whole lock after checking "nobody waits", so a ticket issued in that gap vanishes (LockError).

Here every change to a lock is one Lua script, run by Redis as a single step: issue a ticket, remove a ticket,
drop expired tickets. The stored value stays Rasa's TicketLock JSON (`{"conversation_id", "tickets": [<ticket
JSON string>, ...]}`) under `<key_prefix>:lock:<conversation id>`, so `get_lock` returns a plain `TicketLock`,
plus two fields Rasa ignores:

- `last_issued`: the ticket counter. Numbers only grow while the key exists, also when every ticket is gone, so
  a waiter whose ticket expired can never find "its" number handed to somebody else.
- `horizon`: the latest expiry of any ticket issued on the key. The key's TTL runs until then (plus a second):
  a holder that died leaves nothing behind, and the counter restarts only once no ticket of it can be alive.

Ticket expiry uses the clock of the calling process (as `rasa.core.lock.Ticket.has_expired` does), passed to
the script; processes sharing a lock store need synchronised clocks, as with Rasa's own store.

endpoints.yml:

    lock_store:
      type: channels.lock_store.AtomicRedisLockStore
      url: redis://127.0.0.1:6379/0      # or host/port/db/password/use_ssl like `type: redis`; REDIS_URL if neither
      key_prefix: hospital
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import os
import time
from typing import Any, Callable, Dict, Optional, TypeVar

import redis
from rasa.core.lock import TicketLock
from rasa.core.lock_store import (
    DEFAULT_REDIS_LOCK_STORE_KEY_PREFIX,
    DEFAULT_SOCKET_TIMEOUT_IN_SECONDS,
    LOCK_LIFETIME,
    LockError,
    LockStore,
)
from rasa.utils.endpoints import EndpointConfig

logger = logging.getLogger(__name__)

DEFAULT_SOCKET_CONNECT_TIMEOUT_IN_SECONDS = 5.0
# the key outlives the latest ticket expiry by this much (milliseconds)
KEY_TTL_MARGIN_MS = 1000

T = TypeVar("T")

# KEYS[1] lock key. ARGV: op ("issue" | "remove" | "prune"), conversation id, now (client clock, seconds),
# lifetime in seconds (issue) or ticket number (remove).
# Returns: issue -> the new ticket number; remove -> 1 if the ticket was there, else 0; prune -> tickets left.
_LOCK_SCRIPT = """
local key = KEYS[1]
local op = ARGV[1]
local conversation_id = ARGV[2]
local now = tonumber(ARGV[3])

local tickets = {}
local last_issued = -1
local horizon = now

local raw = redis.call('GET', key)
if raw then
    local data = cjson.decode(raw)
    if type(data['last_issued']) == 'number' then last_issued = data['last_issued'] end
    if type(data['horizon']) == 'number' and data['horizon'] > horizon then horizon = data['horizon'] end
    if type(data['tickets']) == 'table' then
        for _, item in ipairs(data['tickets']) do
            local ticket = item
            if type(item) == 'string' then ticket = cjson.decode(item) end
            local number = tonumber(ticket['number'])
            local expires = tonumber(ticket['expires'])
            if number > last_issued then last_issued = number end
            if expires > horizon then horizon = expires end
            -- rasa.core.lock.Ticket.has_expired: time.time() > expires
            if expires >= now then table.insert(tickets, {number = number, expires = expires}) end
        end
    end
end

local result
if op == 'issue' then
    local expires = now + tonumber(ARGV[4])
    result = last_issued + 1
    last_issued = result
    table.insert(tickets, {number = result, expires = expires})
    if expires > horizon then horizon = expires end
elseif op == 'remove' then
    local number = tonumber(ARGV[4])
    result = 0
    for i = #tickets, 1, -1 do
        if tickets[i].number == number then
            table.remove(tickets, i)
            result = 1
        end
    end
elseif op == 'prune' then
    result = #tickets
else
    return redis.error_reply('unknown lock operation ' .. tostring(op))
end

local ttl_ms = math.ceil((horizon - now) * 1000) + tonumber(ARGV[5])
if #tickets == 0 and horizon < now then
    redis.call('DEL', key)
    return result
end

local encoded = {}
for i, ticket in ipairs(tickets) do
    encoded[i] = cjson.encode(string.format('{"number": %d, "expires": %.6f}', ticket.number, ticket.expires))
end
local value = string.format(
    '{"conversation_id": %s, "tickets": [%s], "last_issued": %d, "horizon": %.6f}',
    cjson.encode(conversation_id), table.concat(encoded, ', '), last_issued, horizon
)
redis.call('SET', key, value, 'PX', ttl_ms)
return result
"""

_REDIS_ARGUMENTS = (
    "host",
    "port",
    "db",
    "username",
    "password",
    "use_ssl",
    "ssl_certfile",
    "ssl_keyfile",
    "ssl_ca_certs",
    "key_prefix",
    "socket_timeout",
    "socket_connect_timeout",
    "url",
)


class AtomicRedisLockStore(LockStore):
    """Redis ticket lock store whose read-modify-writes are single Lua scripts (see the module docstring).

    Built by Rasa from endpoints.yml as `AtomicRedisLockStore(endpoint_config=...)`; also accepts the keyword
    arguments of `rasa.core.lock_store.RedisLockStore` (`host`, `port`, `db`, `username`, `password`, `use_ssl`,
    `ssl_*`, `key_prefix`, `socket_timeout`) plus `url` (redis:// or rediss://) and `socket_connect_timeout`.

    Where Redis is: `url`, else `host` (a redis:// URL there also works, as Rasa passes endpoints' `url` as
    `host` for `type: redis`), else the REDIS_URL environment variable, else localhost:6379. Separate
    host/port/db/username/password arguments override the URL's parts. Without a URL the database is 1, like
    RedisLockStore; with one, the URL's (0 when it names none).

    Every Redis failure surfaces as `rasa.core.lock_store.LockError` (the redis error as its cause), after at
    most `socket_connect_timeout` (connecting) or `socket_timeout` (waiting for a reply), except in `cleanup`,
    which logs it: the ticket then simply expires after its lifetime.
    """

    def __init__(
        self,
        host: Optional[str] = None,
        port: Optional[int] = None,
        db: Optional[int] = None,
        username: Optional[str] = None,
        password: Optional[str] = None,
        use_ssl: Optional[bool] = None,
        ssl_certfile: Optional[str] = None,
        ssl_keyfile: Optional[str] = None,
        ssl_ca_certs: Optional[str] = None,
        key_prefix: Optional[str] = None,
        socket_timeout: float = DEFAULT_SOCKET_TIMEOUT_IN_SECONDS,
        socket_connect_timeout: float = DEFAULT_SOCKET_CONNECT_TIMEOUT_IN_SECONDS,
        url: Optional[str] = None,
        endpoint_config: Optional[EndpointConfig] = None,
    ) -> None:
        if endpoint_config is not None:
            settings = _settings_from_endpoint(endpoint_config)
            explicit = dict(
                host=host,
                port=port,
                db=db,
                username=username,
                password=password,
                use_ssl=use_ssl,
                ssl_certfile=ssl_certfile,
                ssl_keyfile=ssl_keyfile,
                ssl_ca_certs=ssl_ca_certs,
                key_prefix=key_prefix,
                url=url,
            )
            settings.update({name: value for name, value in explicit.items() if value is not None})
            settings.setdefault("socket_timeout", socket_timeout)
            settings.setdefault("socket_connect_timeout", socket_connect_timeout)
            host, port, db, username, password = (
                settings.get(name) for name in ("host", "port", "db", "username", "password")
            )
            use_ssl, ssl_certfile, ssl_keyfile, ssl_ca_certs = (
                settings.get(name) for name in ("use_ssl", "ssl_certfile", "ssl_keyfile", "ssl_ca_certs")
            )
            key_prefix, url = settings.get("key_prefix"), settings.get("url")
            socket_timeout, socket_connect_timeout = settings["socket_timeout"], settings["socket_connect_timeout"]

        if url is None and host and "://" in str(host):
            url, host = host, None
        if url is None and not host:
            url = os.environ.get("REDIS_URL") or None

        connection: Dict[str, Any] = {"host": "localhost", "port": 6379, "db": 1, "ssl": False}
        if url:
            parsed = redis.connection.parse_url(url)
            connection["db"] = 0
            connection["ssl"] = parsed.pop("connection_class", None) is redis.connection.SSLConnection
            connection.update({name: parsed[name] for name in ("host", "port", "db", "username", "password")
                               if parsed.get(name) is not None})  # fmt: skip
        overrides = dict(host=host, port=port, db=db, username=username, password=password, ssl=use_ssl)
        connection.update({name: value for name, value in overrides.items() if value is not None})

        self.host = str(connection["host"])
        self.port = int(connection["port"])
        self.db = int(connection["db"])
        self.red = redis.StrictRedis(
            host=self.host,
            port=self.port,
            db=self.db,
            username=connection.get("username"),
            password=connection.get("password"),
            ssl=_as_bool(connection["ssl"]),
            ssl_certfile=ssl_certfile,
            ssl_keyfile=ssl_keyfile,
            ssl_ca_certs=ssl_ca_certs,
            socket_timeout=float(socket_timeout),
            socket_connect_timeout=float(socket_connect_timeout),
        )
        self._script = self.red.register_script(_LOCK_SCRIPT)

        self.key_prefix = DEFAULT_REDIS_LOCK_STORE_KEY_PREFIX
        if key_prefix is not None and str(key_prefix):
            key_prefix = str(key_prefix)  # YAML may read a number
            if key_prefix.isalnum():
                self.key_prefix = key_prefix + ":" + DEFAULT_REDIS_LOCK_STORE_KEY_PREFIX
            else:
                logger.warning(
                    f"Omitting non-alphanumeric lock store key prefix '{key_prefix}'; using '{self.key_prefix}'."
                )
        super().__init__()

    @classmethod
    def from_endpoint_config(cls, endpoint_config: EndpointConfig) -> AtomicRedisLockStore:
        return cls(endpoint_config=endpoint_config)

    def __repr__(self) -> str:
        return f"{self.__class__.__name__}(redis://{self.host}:{self.port}/{self.db}, key_prefix={self.key_prefix!r})"

    # ------------------------------------------------------------------------------------------------------
    # Redis access
    # ------------------------------------------------------------------------------------------------------
    def _key(self, conversation_id: str) -> str:
        return self.key_prefix + conversation_id

    def _redis(self, what: str, conversation_id: str, call: Callable[[], T]) -> T:
        try:
            return call()
        except redis.RedisError as error:
            raise LockError(
                f"Lock store Redis at {self.host}:{self.port}/{self.db} failed to {what} for conversation "
                f"'{conversation_id}': {error.__class__.__name__}: {error}"
            ) from error

    def _run(self, op: str, conversation_id: str, argument: float = 0) -> int:
        args = [op, conversation_id, repr(time.time()), repr(argument), KEY_TTL_MARGIN_MS]
        return int(self._redis(f"{op} a ticket", conversation_id,
                               lambda: self._script(keys=[self._key(conversation_id)], args=args)))  # fmt: skip

    # ------------------------------------------------------------------------------------------------------
    # LockStore
    # ------------------------------------------------------------------------------------------------------
    def issue_ticket(self, conversation_id: str, lock_lifetime: float = LOCK_LIFETIME) -> int:
        """Atomically drop expired tickets, append ticket `last_issued + 1` expiring in `lock_lifetime` seconds
        and return its number."""
        logger.debug(f"Issuing ticket for conversation '{conversation_id}'.")
        return self._run("issue", conversation_id, float(lock_lifetime))

    def finish_serving(self, conversation_id: str, ticket_number: int) -> None:
        """Atomically remove the ticket `ticket_number` (and expired tickets)."""
        self._run("remove", conversation_id, int(ticket_number))

    def update_lock(self, conversation_id: str) -> None:
        """Atomically remove expired tickets."""
        self._run("prune", conversation_id)

    def cleanup(self, conversation_id: str, ticket_number: int) -> None:
        """Remove our ticket. The key itself expires once no ticket issued on it can be alive (see `horizon`):
        deleting it when "nobody waits", as Rasa does, could delete a ticket issued in between."""
        try:
            self.finish_serving(conversation_id, ticket_number)
        except LockError as error:
            logger.error(f"{error}. Ticket {ticket_number} stays until it expires.")

    def get_lock(self, conversation_id: str) -> Optional[TicketLock]:
        serialised = self._redis("read the lock", conversation_id, lambda: self.red.get(self._key(conversation_id)))
        if not serialised:
            return None
        return TicketLock.from_dict(json.loads(serialised))

    def delete_lock(self, conversation_id: str) -> None:
        deleted = self._redis("delete the lock", conversation_id, lambda: self.red.delete(self._key(conversation_id)))
        self._log_deletion(conversation_id, bool(deleted))

    def save_lock(self, lock: TicketLock) -> None:
        """Overwrite the lock (not used by this store's own operations; `last_issued` restarts from the tickets)."""
        tickets = [ticket.expires for ticket in lock.tickets]
        key = self._key(lock.conversation_id)
        if not tickets:
            self._redis("delete the lock", lock.conversation_id, lambda: self.red.delete(key))
            return
        ttl_ms = max(1, math.ceil((max(tickets) - time.time()) * 1000)) + KEY_TTL_MARGIN_MS
        self._redis("save the lock", lock.conversation_id, lambda: self.red.set(key, lock.dumps(), px=ttl_ms))

    async def _acquire_lock(self, conversation_id: str, ticket: int, wait_time_in_seconds: float) -> TicketLock:
        """Wait until `ticket` is the first live ticket. Raise LockError when the ticket expired before its turn
        (Rasa's loop would keep polling as long as others keep the lock busy).

        Rasa's processor asks for a 1 s poll: a message queued behind a 300 ms turn would wait the full second.
        The poll is capped at LOCK_POLL_SECONDS (default 0.05 s): one small GET per waiter per poll."""
        wait_time_in_seconds = min(wait_time_in_seconds, float(os.environ.get("LOCK_POLL_SECONDS", "0.05")))
        logger.debug(f"Acquiring lock for conversation '{conversation_id}'.")
        while True:
            lock = self.get_lock(conversation_id)
            if lock is not None:
                lock.remove_expired_tickets()  # by this process's clock, like the script
            if lock is None or all(held.number != ticket for held in lock.tickets):
                raise LockError(
                    f"Could not acquire lock for conversation_id '{conversation_id}': ticket {ticket} expired "
                    f"before its turn came."
                )
            if not lock.is_locked(ticket):
                logger.debug(f"Acquired lock for conversation '{conversation_id}' with ticket {ticket}.")
                return lock
            logger.debug(
                f"Ticket {ticket} for conversation '{conversation_id}' waits for ticket {lock.now_serving}; "
                f"retrying in {wait_time_in_seconds} s."
            )
            await asyncio.sleep(wait_time_in_seconds)


def _settings_from_endpoint(endpoint_config: EndpointConfig) -> Dict[str, Any]:
    settings: Dict[str, Any] = dict(endpoint_config.kwargs)
    unknown = sorted(set(settings) - set(_REDIS_ARGUMENTS))
    if unknown:
        raise ValueError(
            f"lock_store {endpoint_config.type}: unknown setting(s) {', '.join(unknown)}; "
            f"known: {', '.join(_REDIS_ARGUMENTS)}"
        )
    if endpoint_config.url:
        settings["url"] = endpoint_config.url
    return settings


def _as_bool(value: Any) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in ("1", "true", "yes", "on")
    return bool(value)
