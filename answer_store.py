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


def _decode(data: str) -> Answer:
    value = json.loads(data)
    return Answer(str(value["text"]), str(value["reasoning"]), Stats(**value["stats"]), value.get("response_id"))


class AnswerStore:
    """The answers file in `folder`. Every call opens its own connection, so items in worker threads never share one."""

    def __init__(self, folder: str | os.PathLike[str], max_bytes: int = MAX_BYTES) -> None:
        self.path = Path(folder) / FILE_NAME
        self.max_bytes = max_bytes
        self._created = False  # the file's journal mode and table, set up once (again after a reset)
        self._setting_up = threading.Lock()  # items in worker threads meet the first setup at the same moment
        # One thread, first in first out: a list's lookups come back in list order, so its items still take
        # LM Studio's slots in that order (and the event loop never waits for the disk).
        self._worker = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="lmstudio-answers")

    async def lookup(self, request: ChatRequest) -> Answer | None:
        """`get` off the event loop, in the order asked."""
        return await asyncio.get_running_loop().run_in_executor(self._worker, self.get, request)

    async def keep(self, request: ChatRequest, answer: Answer) -> None:
        """`put` off the event loop."""
        await asyncio.get_running_loop().run_in_executor(self._worker, self.put, request, answer)

    def get(self, request: ChatRequest) -> Answer | None:
        """The stored answer to this exact request, or None; a hit counts as a use (it is kept longer)."""
        key = request_key(request)
        try:
            with self._connect() as db:
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

    def put(self, request: ChatRequest, answer: Answer) -> None:
        """Keep a finished answer; the least recently used go once the file holds more than `max_bytes`."""
        data = _encode(answer)
        try:
            with self._connect() as db:
                db.execute("INSERT OR REPLACE INTO answers VALUES (?, ?, ?, ?)",
                           (request_key(request), time.time(), len(data), data))
                self._trim(db)
        except (sqlite3.Error, OSError) as exc:
            self._unusable(exc)

    def clear(self) -> None:
        """Forget every answer (the file goes; the next answer starts a new one)."""
        self._created = False
        for suffix in ("", "-wal", "-shm"):
            Path(f"{self.path}{suffix}").unlink(missing_ok=True)

    def _connect(self) -> contextlib.closing[sqlite3.Connection]:
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
        return contextlib.closing(db)

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
        self._created = False  # the next call sets the file up again (it may have been deleted meanwhile)
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
