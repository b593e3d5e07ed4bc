"""channels.lock_store.AtomicRedisLockStore against the real Redis (REDIS_TEST_URL).

Every store instance below has its own Redis connection pool, like a separate `rasa run` process; threads make
them race. Rasa's own RedisLockStore is run under the same load to show that the ticket test can fail.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
import uuid
from typing import Callable, Iterator, List

import pytest
import redis
from rasa.core.lock_store import LockError, LockStore, RedisLockStore
from rasa.utils.endpoints import EndpointConfig, read_endpoint_config

from channels.lock_store import AtomicRedisLockStore
from tests.conftest import REDIS_TEST_URL, require_server

STORE_TYPE = "channels.lock_store.AtomicRedisLockStore"
HOW_TO_START = "redis-server --daemonize yes --port 6379"


@pytest.fixture
def red() -> Iterator[redis.Redis]:
    require_server("Redis", REDIS_TEST_URL, 6379, HOW_TO_START)
    client = redis.Redis.from_url(REDIS_TEST_URL, socket_timeout=5)
    yield client
    client.close()


@pytest.fixture
def prefix(red: redis.Redis) -> Iterator[str]:
    """An alphanumeric key prefix of this test; its keys are deleted afterwards."""
    value = f"t{uuid.uuid4().hex[:12]}"
    yield value
    keys = list(red.scan_iter(f"{value}:*"))
    if keys:
        red.delete(*keys)


@pytest.fixture
def make_store(prefix: str) -> Callable[..., AtomicRedisLockStore]:
    def make(**settings) -> AtomicRedisLockStore:
        return AtomicRedisLockStore(url=REDIS_TEST_URL, key_prefix=prefix, **settings)

    return make


def _race(stores: List[LockStore], conversation_id: str, calls: int) -> List[int]:
    """`calls` issue_ticket calls spread over one thread per store, all released at once."""
    barrier = threading.Barrier(len(stores))
    numbers: List[int] = []
    guard = threading.Lock()

    def work(store: LockStore) -> None:
        barrier.wait()
        mine = [store.issue_ticket(conversation_id, 60) for _ in range(calls // len(stores))]
        with guard:
            numbers.extend(mine)

    threads = [threading.Thread(target=work, args=(store,)) for store in stores]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not any(thread.is_alive() for thread in threads)
    return numbers


# ----------------------------------------------------------------------------------------------------------
# (a) tickets
# ----------------------------------------------------------------------------------------------------------
def test_concurrent_tickets_are_distinct_and_consecutive(make_store, red, prefix) -> None:
    stores = [make_store() for _ in range(8)]
    numbers = _race(stores, "patient-a", 200)

    assert sorted(numbers) == list(range(200))
    lock = stores[0].get_lock("patient-a")
    assert [ticket.number for ticket in lock.tickets] == list(range(200))  # none lost, in issue order


def test_rasas_redis_lock_store_hands_out_duplicates_under_the_same_load(red, prefix) -> None:
    """Rasa's GET -> increment -> SET (rasa issue 9213): measured 150 duplicates out of 200 per run here."""
    db = red.connection_pool.connection_kwargs["db"]
    host = red.connection_pool.connection_kwargs["host"]
    port = red.connection_pool.connection_kwargs["port"]
    stores = [RedisLockStore(host=host, port=port, db=db, key_prefix=prefix) for _ in range(8)]
    numbers = _race(stores, "patient-a", 200)

    duplicates = len(numbers) - len(set(numbers))
    assert duplicates > 0, "Rasa's RedisLockStore issued 200 distinct tickets; this load shows no race"


def test_the_stored_lock_is_rasas_ticket_lock_json(make_store, red, prefix) -> None:
    store = make_store()
    store.issue_ticket('患者/1 "x"', 30)
    store.issue_ticket('患者/1 "x"', 30)
    rasa_store = RedisLockStore(host=store.host, port=store.port, db=store.db, key_prefix=prefix)  # the same key layout
    lock = rasa_store.get_lock('患者/1 "x"')
    assert lock.conversation_id == '患者/1 "x"'
    assert [ticket.number for ticket in lock.tickets] == [0, 1]
    assert lock.now_serving == 0 and lock.last_issued == 1
    assert 29_000 < red.pttl(f'{prefix}:lock:患者/1 "x"') <= 31_000


def test_numbers_keep_growing_until_no_issued_ticket_can_be_alive(make_store, red, prefix) -> None:
    store = make_store()
    first = store.issue_ticket("patient-n", 0.2)
    store.finish_serving("patient-n", first)
    assert not store.get_lock("patient-n").tickets
    assert store.issue_ticket("patient-n", 0.2) == first + 1  # not restarted at 0 while ticket 0 could live

    store.cleanup("patient-n", first + 1)
    time.sleep(0.2 + 1.2)  # its lifetime plus the key's margin
    assert red.exists(f"{prefix}:lock:patient-n") == 0
    assert store.issue_ticket("patient-n", 1) == 0


# ----------------------------------------------------------------------------------------------------------
# (b) lock() serialises
# ----------------------------------------------------------------------------------------------------------
def _increment_without_atomicity(red: redis.Redis, key: str) -> None:
    value = int(red.get(key) or 0)
    time.sleep(0.003)
    red.set(key, value + 1)


def _run_workers(stores: List[AtomicRedisLockStore], per_store: int, body: Callable[[AtomicRedisLockStore], None]):
    threads = [threading.Thread(target=body, args=(store,)) for store in stores for _ in range(per_store)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not any(thread.is_alive() for thread in threads)


def test_lock_serialises_increments_of_two_instances(make_store, red, prefix) -> None:
    counter = f"{prefix}:counter"
    stores, rounds, errors = [make_store(), make_store()], 4, []

    async def increments(store: AtomicRedisLockStore) -> None:
        for _ in range(rounds):
            async with store.lock("patient-b", lock_lifetime=30, wait_time_in_seconds=0.01):
                value = int(red.get(counter) or 0)
                await asyncio.sleep(0.003)
                red.set(counter, value + 1)

    def worker(store: AtomicRedisLockStore) -> None:
        try:
            asyncio.run(increments(store))
        except Exception as error:  # pragma: no cover - reported below
            errors.append(error)

    _run_workers(stores, 6, worker)

    assert not errors
    assert int(red.get(counter)) == 2 * 6 * rounds
    assert not stores[0].is_someone_waiting("patient-b")


def test_without_the_lock_the_same_increments_are_lost(red, prefix) -> None:
    """The control: the counter test can fail."""
    counter = f"{prefix}:counter"

    def worker(_store) -> None:
        for _ in range(4):
            _increment_without_atomicity(red, counter)

    _run_workers([None, None], 6, worker)
    assert int(red.get(counter)) < 2 * 6 * 4


class _RecordingStore(AtomicRedisLockStore):
    """Remembers the ticket its thread was issued."""

    local = threading.local()

    def issue_ticket(self, conversation_id: str, lock_lifetime: float = 60) -> int:
        self.local.ticket = super().issue_ticket(conversation_id, lock_lifetime)
        return self.local.ticket


def test_lock_serves_in_ticket_order(red, prefix) -> None:
    counter = f"{prefix}:counter"
    stores = [_RecordingStore(url=REDIS_TEST_URL, key_prefix=prefix) for _ in range(2)]
    gate = stores[0].issue_ticket("patient-o", 30)  # held while every worker takes its ticket
    served: List[tuple] = []

    async def once(store: _RecordingStore) -> None:
        async with store.lock("patient-o", lock_lifetime=30, wait_time_in_seconds=0.01) as lock:
            served.append((store.local.ticket, lock.now_serving))
            value = int(red.get(counter) or 0)
            await asyncio.sleep(0.003)
            red.set(counter, value + 1)

    threads = [threading.Thread(target=asyncio.run, args=(once(store),)) for store in stores for _ in range(6)]
    for thread in threads:
        thread.start()
    deadline = time.time() + 10
    while len(stores[0].get_lock("patient-o").tickets) < 13 and time.time() < deadline:
        time.sleep(0.01)
    assert not served, "a worker ran while the gate ticket was held"
    stores[0].finish_serving("patient-o", gate)
    for thread in threads:
        thread.join(timeout=30)

    assert [own for own, _ in served] == list(range(gate + 1, gate + 13))  # service order == ticket order
    assert all(own == serving for own, serving in served)
    assert int(red.get(counter)) == 12


# ----------------------------------------------------------------------------------------------------------
# (c) expiry
# ----------------------------------------------------------------------------------------------------------
def test_a_dead_holder_blocks_only_until_its_ticket_expires(make_store, red, prefix) -> None:
    dead, alive = make_store(), make_store()
    dead.issue_ticket("patient-c", lock_lifetime=0.5)  # took the lock and never finished

    async def take() -> int:
        async with alive.lock("patient-c", lock_lifetime=10, wait_time_in_seconds=0.01) as lock:
            return lock.now_serving

    started = time.monotonic()
    assert asyncio.run(take()) == 1
    assert 0.4 < time.monotonic() - started < 3


def test_a_died_holders_key_expires(make_store, red, prefix) -> None:
    make_store().issue_ticket("patient-d", lock_lifetime=0.3)
    assert 0 < red.pttl(f"{prefix}:lock:patient-d") <= 1_300


def test_a_waiter_whose_ticket_expired_gets_a_lock_error_not_an_endless_wait(make_store, prefix) -> None:
    holder, waiter = make_store(), make_store()
    holder.issue_ticket("patient-w", lock_lifetime=30)

    async def wait() -> None:
        async with waiter.lock("patient-w", lock_lifetime=0.3, wait_time_in_seconds=0.01):
            pass

    started = time.monotonic()
    with pytest.raises(LockError, match="expired before its turn"):
        asyncio.run(wait())
    assert time.monotonic() - started < 2
    assert [ticket.number for ticket in holder.get_lock("patient-w").tickets] == [0]


# ----------------------------------------------------------------------------------------------------------
# (d) Redis unreachable
# ----------------------------------------------------------------------------------------------------------
def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_refused_connection_is_a_lock_error_at_once() -> None:
    store = AtomicRedisLockStore(url=f"redis://127.0.0.1:{_closed_port()}/0")

    started = time.monotonic()
    with pytest.raises(LockError, match=r"failed to issue a ticket .*ConnectionError") as raised:
        store.issue_ticket("patient-x")
    assert isinstance(raised.value.__cause__, redis.ConnectionError)

    async def handle() -> None:
        async with store.lock("patient-x"):
            pass

    with pytest.raises(LockError):
        asyncio.run(handle())
    store.cleanup("patient-x", 0)  # logged, not raised: the ticket would expire on its own
    assert time.monotonic() - started < 2


def test_a_silent_server_is_a_lock_error_after_the_socket_timeout() -> None:
    with socket.socket() as listener:  # accepts connections (backlog) and never answers
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        port = listener.getsockname()[1]
        store = AtomicRedisLockStore(url=f"redis://127.0.0.1:{port}/15", socket_timeout=0.5)

        started = time.monotonic()
        with pytest.raises(LockError, match="TimeoutError"):
            store.issue_ticket("patient-x")
        assert time.monotonic() - started < 3


# ----------------------------------------------------------------------------------------------------------
# configuration
# ----------------------------------------------------------------------------------------------------------
def test_endpoints_yml_builds_the_store(tmp_path, red) -> None:
    endpoints = tmp_path / "endpoints.yml"
    endpoints.write_text(f"lock_store:\n  type: {STORE_TYPE}\n  url: {REDIS_TEST_URL}\n  key_prefix: hospital\n")

    store = LockStore.create(read_endpoint_config(str(endpoints), "lock_store"))

    assert isinstance(store, AtomicRedisLockStore)
    assert (store.host, store.port, store.db, store.key_prefix) == ("127.0.0.1", 6379, 15, "hospital:lock:")
    assert store.red.ping()


def test_endpoint_host_port_db_like_rasas_redis_store(red) -> None:
    config = EndpointConfig(
        type=STORE_TYPE, host="127.0.0.1", port=6379, db=15, password=None, socket_timeout=3, key_prefix="h1"
    )
    for store in (LockStore.create(config), AtomicRedisLockStore.from_endpoint_config(config)):
        assert (store.host, store.port, store.db, store.key_prefix) == ("127.0.0.1", 6379, 15, "h1:lock:")
        assert store.red.connection_pool.connection_kwargs["socket_timeout"] == 3
        assert store.red.ping()


def test_keyword_arguments_like_rasas_redis_store() -> None:
    store = AtomicRedisLockStore(host="127.0.0.1", port=6380)
    assert (store.host, store.port, store.db, store.key_prefix) == ("127.0.0.1", 6380, 1, "lock:")
    as_rasa_passes_url = AtomicRedisLockStore(host="redis://:secret@redis.internal:6390/3")
    assert (as_rasa_passes_url.host, as_rasa_passes_url.port, as_rasa_passes_url.db) == ("redis.internal", 6390, 3)
    assert as_rasa_passes_url.red.connection_pool.connection_kwargs["password"] == "secret"
    overridden = AtomicRedisLockStore(url="redis://127.0.0.1:6379/2", db=5)
    assert overridden.db == 5


def test_redis_url_from_the_environment(monkeypatch) -> None:
    monkeypatch.setenv("REDIS_URL", "redis://redis.internal:6391/4")
    store = LockStore.create(EndpointConfig(type=STORE_TYPE, key_prefix="hospital"))
    assert (store.host, store.port, store.db) == ("redis.internal", 6391, 4)
    assert store.red.connection_pool.connection_kwargs["socket_connect_timeout"] == 5


def test_unknown_setting_is_refused() -> None:
    with pytest.raises(ValueError, match="passwrod"):
        LockStore.create(EndpointConfig(type=STORE_TYPE, url=REDIS_TEST_URL, passwrod="x"))


def test_several_sanic_workers_are_allowed_with_it(monkeypatch) -> None:
    from rasa.core.utils import number_of_sanic_workers

    monkeypatch.setenv("SANIC_WORKERS", "3")
    assert number_of_sanic_workers(EndpointConfig(type=STORE_TYPE, url=REDIS_TEST_URL)) == 3
