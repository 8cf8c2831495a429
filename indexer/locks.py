"""One index job (or rollback) per alias at a time.

- local-mode Qdrant: a file lock (flock) in the Qdrant folder, `.dqe-cir-locks/<alias>.lock`; the kernel
  releases it when its process dies, so it needs no expiry;
- a Qdrant server, or the Celery path: a lock in Redis, `dqe-cir:lock:<qdrant>:<alias>`, whose value
  names its owner (job, host, pid, start time) and which expires LOCK_TTL seconds after its last
  renewal, so a coordinator that died frees the alias by itself. A job renews it while it runs and
  stops, without switching the alias, if it ever finds the lock gone.
A second job on a locked alias fails at once with the owner's name.
"""

from __future__ import annotations

import logging
import os
import re
import socket
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

from indexer.errors import IndexerError
from indexer.settings import Settings

log = logging.getLogger(__name__)
LOCK_TTL = 300.0  # a coordinator that died frees its alias within this; renewed every RENEW_EVERY
RENEW_EVERY = 20.0


def owner_token(job_id: str) -> str:
    return (f"job {job_id} on {socket.gethostname()} pid {os.getpid()} "
            f"since {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())}")


def _busy(alias: str, owner: str, extra: str = "") -> IndexerError:
    return IndexerError(f"another index job is running on alias {alias!r} ({owner or 'owner unknown'}){extra}; "
                        "wait for it to finish, then run this one again")


class FileAliasLock:
    def __init__(self, qdrant_path: str, alias: str, owner: str):
        safe = re.sub(r"[^A-Za-z0-9_.-]", "_", alias)
        self.path = Path(qdrant_path) / ".dqe-cir-locks" / f"{safe}.lock"
        self.alias, self.owner, self._file = alias, owner, None

    def acquire(self) -> None:
        import fcntl

        self.path.parent.mkdir(parents=True, exist_ok=True)
        f = self.path.open("a+")
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip()
            f.close()
            raise _busy(self.alias, holder, f"; lock file {self.path}") from None
        f.seek(0)
        f.truncate()
        f.write(self.owner)
        f.flush()
        self._file = f

    def renew(self) -> None:
        """Nothing to do: the lock lasts as long as the process."""

    def release(self) -> None:
        import fcntl

        if self._file is not None:
            self._file.truncate(0)
            fcntl.flock(self._file, fcntl.LOCK_UN)
            self._file.close()
            self._file = None


class RedisAliasLock:
    def __init__(self, redis_url: str, qdrant: str, alias: str, owner: str, ttl: float = LOCK_TTL):
        import redis

        self.url, self.alias, self.owner, self.ttl = redis_url, alias, owner, ttl
        self.name = f"dqe-cir:lock:{qdrant}:{alias}"
        self.redis = redis.Redis.from_url(redis_url, decode_responses=True)
        self.lock = self.redis.lock(self.name, timeout=ttl, thread_local=False)

    def acquire(self) -> None:
        import redis

        try:
            if self.lock.acquire(blocking=False, token=self.owner):
                return
            holder, ttl_ms = self.redis.get(self.name), self.redis.pttl(self.name)
        except redis.RedisError as e:
            raise IndexerError(f"cannot take the job lock for alias {self.alias!r} in Redis at {self.url}: {e}; "
                               "start Redis or set DQE_CIR_REDIS_URL") from e
        raise _busy(self.alias, holder or "", f"; its lock {self.name} expires in {max(0, ttl_ms) / 1000:.0f}s "
                                              "unless that job renews it")

    def renew(self) -> None:
        from redis.exceptions import LockError

        try:
            self.lock.reacquire()
        except LockError as e:
            raise IndexerError(f"lost the job lock {self.name} on alias {self.alias!r} (it expired {self.ttl:.0f}s "
                               "after the last renewal, or someone deleted it); stopping without switching the "
                               "alias") from e

    def release(self) -> None:
        from redis.exceptions import LockError

        try:
            self.lock.release()
        except LockError as e:  # expired since the last renewal: nothing left to release
            log.warning("the job lock %s was no longer ours when the job ended: %s", self.name, e)


class AliasLocks:
    """The locks a job holds; `renew()` is cheap to call often (it renews every RENEW_EVERY seconds)."""

    def __init__(self, locks: list):
        self.locks, self._renewed = locks, time.monotonic()

    def renew(self) -> None:
        if time.monotonic() - self._renewed >= RENEW_EVERY:
            for lock in self.locks:
                lock.renew()
            self._renewed = time.monotonic()


@contextmanager
def alias_lock(settings: Settings, alias: str, job_id: str, distributed: bool = False) -> Iterator[AliasLocks]:
    """Hold the alias for one job: a file lock in local mode, a Redis lock for a server or the Celery path
    (both for Celery with local mode). IndexerError at once when another job holds it."""
    owner = owner_token(job_id)
    locks: list = []
    if not settings.qdrant_url:
        locks.append(FileAliasLock(settings.qdrant_path, alias, owner))
    if distributed or settings.qdrant_url:
        qdrant = settings.qdrant_url or str(Path(settings.qdrant_path).resolve())
        locks.append(RedisAliasLock(settings.redis_url, qdrant, alias, owner))
    with ExitStack() as stack:
        for lock in locks:
            lock.acquire()
            stack.callback(lock.release)
        yield AliasLocks(locks)
