"""The JWT replay cache shared through the configured database (several hosts), on SQLite and a
real PostgreSQL: a token id used on one host is refused on every other."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest
import sqlalchemy as sa

from cds_service.auth.replay import ReplayCache
from cds_service.auth.shared_replay import SharedReplayCache
from cds_service.auth.verifier import replay_cache
from cds_service.ops.config import Settings
from cds_service.store.store import FeedbackStore

EHR = "https://ehr.example.org"


def host(database_url: str, tmp_path, name: str) -> SharedReplayCache:
    """One host's view of the shared database."""
    return SharedReplayCache(FeedbackStore(database_url))


def test_a_token_used_on_one_host_is_refused_on_another(database_url, tmp_path):
    first, second = host(database_url, tmp_path, "a"), host(database_url, tmp_path, "b")
    assert first.first_use(EHR, "jti-1", expires_at=1000.0, now=10.0)
    assert not second.first_use(EHR, "jti-1", expires_at=1000.0, now=11.0)
    assert second.first_use(EHR, "jti-2", expires_at=1000.0, now=11.0)
    assert second.first_use("https://other.example.org", "jti-1", expires_at=1000.0, now=12.0)


def test_an_expired_record_may_be_reused_and_is_pruned(database_url, tmp_path):
    cache = host(database_url, tmp_path, "a")
    assert cache.first_use(EHR, "a", expires_at=100.0, now=50.0)
    assert cache.first_use(EHR, "a", expires_at=300.0, now=200.0)  # the old use has expired
    assert not cache.first_use(EHR, "a", expires_at=300.0, now=250.0)
    cache._prune_every = 0
    cache.first_use(EHR, "b", expires_at=900.0, now=400.0)  # prunes "a"
    assert cache.count() == 1


def test_simultaneous_uses_on_many_hosts_accept_each_token_once(database_url, tmp_path):
    hosts = [host(database_url, tmp_path, str(n)) for n in range(4)]
    for cache in hosts:
        cache.store.migrate()
    jtis = [f"jti-{n}" for n in range(40)]

    def use(cache, jti):
        # SQLite gives up on a lock after 0.25 s (store.SQLITE_BUSY_SECONDS) and raises: nothing
        # was recorded then, so asking again is right (in service the host's own cache answers).
        for _ in range(100):
            try:
                return cache.first_use(EHR, jti, expires_at=1000.0, now=10.0)
            except sa.exc.OperationalError:
                continue
        raise AssertionError("the database stayed locked")

    def race(cache):
        return [j for j in jtis if use(cache, j)]

    with ThreadPoolExecutor(4) as pool:
        accepted = [j for found in pool.map(race, hosts) for j in found]
    assert sorted(accepted) == sorted(jtis)


def test_an_unreachable_database_falls_back_to_this_hosts_cache(tmp_path, caplog):
    cache = replay_cache(Settings(instance_dir=tmp_path,
                                  database_url="postgresql://cds@127.0.0.1:1/none"))
    assert cache.first_use(EHR, "x", expires_at=1000.0, now=10.0)
    assert not cache.first_use(EHR, "x", expires_at=1000.0, now=11.0)
    # Each host's file answered: a replay to another worker of this host is still caught.
    assert ReplayCache(tmp_path / "jwt-replay.sqlite3").count() == 1
    assert "replay-shared" in caplog.text


@pytest.mark.parametrize("configured,kinds", [(False, [ReplayCache]),
                                              (True, [SharedReplayCache, ReplayCache])])
def test_the_shared_cache_is_used_when_a_database_is_configured(tmp_path, configured, kinds):
    url = f"sqlite:///{tmp_path / 'shared.sqlite3'}" if configured else None
    chain = replay_cache(Settings(instance_dir=tmp_path, database_url=url))
    assert [type(store) for store, _guard in chain.stores] == kinds
