"""Finished answers kept on disk, so a cancelled, failed or crashed list resumes where it stopped. No ComfyUI imports.

ComfyUI caches a node's output only when every item of its list finished, and only in memory: a Cancel at item
1,500 of 2,000 (or a crash) cost the next run all 1,500 again. Here each finished item is stored under a key
made of its whole request, the rule ComfyUI applies to a cached node: the same inputs give the same output, and
a new seed asks for a new answer.

One SQLite file: atomic commits make an entry that was half written when the process died simply absent, and
its locking makes two prompts (or two ComfyUI processes on one user folder) writing at once safe. A file that is
not a database any more is set aside and started afresh: the store is a convenience and never fails a run.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import hashlib
import json
import logging
import os
import sqlite3
import threading
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from .chat import ChatRequest, Stats
from .utils import normalize_server_url

log = logging.getLogger("lmstudio_stream")

FILE_NAME = "answers.sqlite3"
# About 30,000 captions of 2 KB: the newest few datasets. The least recently used answers go first.
MAX_BYTES = 64 * 1024 * 1024
LOCK_TIMEOUT_SECONDS = 10.0
# How a request travels, not what it asks: a new token or timeout gives the same answer.
_TRANSPORT_FIELDS = frozenset({"api_token", "connect_timeout", "idle_timeout", "ttl_seconds"})
_SCHEMA = """CREATE TABLE IF NOT EXISTS answers (
    key TEXT PRIMARY KEY, used REAL NOT NULL, size INTEGER NOT NULL, answer TEXT NOT NULL)"""


@dataclass(frozen=True)
class Answer:
    """One finished item, exactly as its run returned it."""

    text: str
    reasoning: str
    stats: Stats
    response_id: str | None = None  # LM Studio's stored copy of the turn (native REST with `store`)


def request_key(request: ChatRequest) -> str:
    """A digest of everything that decides the answer: server, model, mode, prompts, image bytes, every setting, seed.

    Every field of `ChatRequest` counts unless it only says how the request travels, so a setting added later is
    part of the key without anyone remembering to add it.
    """
    identity: dict[str, object] = {}
    for item in fields(request):
        if item.name in _TRANSPORT_FIELDS:
            continue
        value = getattr(request, item.name)
        if item.name == "server_url":
            value = normalize_server_url(value)
        elif item.name == "images":
            value = [hashlib.sha256(jpeg).hexdigest() for jpeg in value]
        elif item.name == "history":
            value = [turn.identity() for turn in value]
        identity[item.name] = value
    canonical = json.dumps(identity, sort_keys=True, default=str, ensure_ascii=False)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def _encode(answer: Answer) -> str:
    return json.dumps({"text": answer.text, "reasoning": answer.reasoning, "stats": asdict(answer.stats),
                       "response_id": answer.response_id})


def _identity(path: Path) -> tuple[int, int, int, int] | None:
    """Which file `path` is, and as of when (device, inode, size, mtime); None where there is none. With WAL our own
    writes change the file only at a checkpoint, so a change is someone else's (a copy over it, a truncation) or a
    checkpoint, which costs one new connection."""
    try:
        stat = path.stat()
    except OSError:
        return None
    return stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns


def _decode(data: str) -> Answer:
    value = json.loads(data)
    return Answer(str(value["text"]), str(value["reasoning"]), Stats(**value["stats"]), value.get("response_id"))


class AnswerStore:
    """The answers file in `folder`, with one connection per thread that uses it (kept: closing the last connection
    checkpoints the WAL into the file, which cost more than the lookup itself, at every lookup and every answer)."""

    def __init__(self, folder: str | os.PathLike[str], max_bytes: int = MAX_BYTES) -> None:
        self.path = Path(folder) / FILE_NAME
        self.max_bytes = max_bytes
        self._created = False  # the file's journal mode and table, set up once (again after a reset)
        self._setting_up = threading.Lock()  # items in worker threads meet the first setup at the same moment
        self._local = threading.local()  # this thread's connection, and the reset it was made after
        self._resets = 0  # a file set aside or cleared: every thread's connection is to the old one
        # One thread, first in first out: a list's lookups come back in list order, so its items still take
        # LM Studio's slots in that order (and the event loop never waits for the disk).
        self._worker = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="lmstudio-answers")

    async def lookup(self, request: ChatRequest) -> tuple[str, Answer | None]:
        """The request's key (for `keep`) and `get` of it, off the event loop, in the order asked. (The key is made
        once a request: it hashes the images, a few ms for a large one.)"""
        return await asyncio.get_running_loop().run_in_executor(self._worker, self._lookup, request)

    async def keep(self, key: str, answer: Answer) -> None:
        """`put` off the event loop."""
        await asyncio.get_running_loop().run_in_executor(self._worker, self.put, key, answer)

    def _lookup(self, request: ChatRequest) -> tuple[str, Answer | None]:
        key = request_key(request)
        return key, self.get(key)

    def get(self, key: str) -> Answer | None:
        """The stored answer to the request of this `request_key`, or None; a hit counts as a use (kept longer)."""
        try:
            db = self._connection()
            row = db.execute("SELECT answer FROM answers WHERE key = ?", (key,)).fetchone()
            if row is None:
                return None
            try:
                answer = _decode(row[0])
            except (ValueError, KeyError, TypeError):  # an entry of another version: generated anew
                db.execute("DELETE FROM answers WHERE key = ?", (key,))
                return None
            db.execute("UPDATE answers SET used = ? WHERE key = ?", (time.time(), key))
            return answer
        except (sqlite3.Error, OSError) as exc:
            self._unusable(exc)
            return None

    def put(self, key: str, answer: Answer) -> None:
        """Keep a finished answer; the least recently used go once the file holds more than `max_bytes`."""
        data = _encode(answer)
        try:
            db = self._connection()
            db.execute("INSERT OR REPLACE INTO answers VALUES (?, ?, ?, ?)",
                       (key, time.time(), len(data), data))
            self._trim(db)
        except (sqlite3.Error, OSError) as exc:
            self._unusable(exc)

    def clear(self) -> None:
        """Forget every answer (the file goes; the next answer starts a new one)."""
        self._reset()
        for suffix in ("", "-wal", "-shm"):
            Path(f"{self.path}{suffix}").unlink(missing_ok=True)

    def _reset(self) -> None:
        """The file is not the one the connections know: this thread's closes now, every other thread's at its next
        call, and the next connection sets the file up again."""
        self._created = False
        self._resets += 1
        self._close()

    def _close(self) -> None:
        db = getattr(self._local, "db", None)
        self._local.db = None
        if db is not None:
            with contextlib.suppress(sqlite3.Error):
                db.close()

    def _connection(self) -> sqlite3.Connection:
        """This thread's connection, opened (and the file set up) where it has none or the file was reset."""
        if getattr(self._local, "db", None) is not None and self._local.resets == self._resets:
            if self._local.file == _identity(self.path):
                return self._local.db
            self._created = False  # changed under us (deleted, copied over): set it up again if it must be
        self._close()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # isolation_level=None: each statement commits at once, and nothing is left open when the process dies.
        db = sqlite3.connect(self.path, timeout=LOCK_TIMEOUT_SECONDS, isolation_level=None)
        try:
            # WAL with NORMAL sync survives a killed process (a power cut may cost the newest answers only) and
            # lets one item read while another writes. WAL stays with the file; `synchronous` is per connection.
            db.execute("PRAGMA synchronous=NORMAL")
            if not self._created:
                with self._setting_up:
                    if not self._created:
                        db.execute("PRAGMA journal_mode=WAL")
                        db.execute(_SCHEMA)
                        self._created = True
        except BaseException:
            db.close()
            raise
        self._local.db, self._local.resets, self._local.file = db, self._resets, _identity(self.path)
        return db

    def _trim(self, db: sqlite3.Connection) -> None:
        (total,) = db.execute("SELECT COALESCE(SUM(size), 0) FROM answers").fetchone()
        if total <= self.max_bytes:
            return
        # The least recently used go until a tenth below the bound, so a full file is not trimmed at every answer.
        excess = total - self.max_bytes * 9 // 10
        db.execute(
            "DELETE FROM answers WHERE key IN (SELECT key FROM (SELECT key, size, "
            "SUM(size) OVER (ORDER BY used, key) AS running FROM answers) WHERE running - size < ?)",
            (excess,),
        )

    def _unusable(self, exc: BaseException) -> None:
        """A file that is not a database any more is set aside; a locked or read-only one is left alone."""
        self._reset()  # the next call sets the file up again (it may have been deleted meanwhile)
        if isinstance(exc, sqlite3.DatabaseError) and not isinstance(exc, sqlite3.OperationalError):
            aside = self.path.with_name(f"{FILE_NAME}.broken")
            log.warning("LM Studio Chat: the answers file %s is unreadable (%s); a new one starts (the old one is "
                        "kept as %s)", self.path, exc, aside.name)
            try:
                os.replace(self.path, aside)
                self.clear()
            except OSError as move_error:
                log.warning("LM Studio Chat: could not set %s aside: %s", self.path, move_error)
            return
        log.warning("LM Studio Chat: the answers file %s is not usable now (%s); this run does not resume", self.path,
                    exc)
