"""How long to wait before asking a server that pushed back again. Pure: no clock, no I/O, no ComfyUI imports.

The server's word wins: `retry-after-ms` (OpenAI's and Azure's), else `Retry-After` as seconds or an HTTP date
(RFC 9110 10.2.3). Where it says nothing (SGLang's gateway, LiteLLM's proxy for some refusals), the wait grows
exponentially from BASE_SECONDS with "equal jitter": half of it fixed, half random, so the items refused together
do not all come back in the same instant.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from email.utils import parsedate_to_datetime

from .chat import Failure

BASE_SECONDS = 0.25
MAX_BACKOFF_SECONDS = 8.0
# A Retry-After beyond this is read as this: a misconfigured header must not park a list for an hour, and the
# item's own bound (busy_wait_seconds) decides when to give up.
MAX_RETRY_AFTER_SECONDS = 60.0


def retry_after(headers: Mapping[str, str], now: float) -> float | None:
    """Seconds the server asks us to wait (`now` is the Unix time), or None where it does not say."""
    if (ms := _number(headers.get("retry-after-ms"))) is not None:
        return _bounded(ms / 1000)
    value = (headers.get("retry-after") or "").strip()
    if not value:
        return None
    if (seconds := _number(value)) is not None:
        return _bounded(seconds)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:  # an HTTP date is always GMT
        return None
    return _bounded(when.timestamp() - now)


def backoff_delay(attempt: int, jitter: float) -> float:
    """The wait before try `attempt` + 1 (attempt 0 is the first refusal); `jitter` is a random number in [0, 1)."""
    ceiling = min(MAX_BACKOFF_SECONDS, BASE_SECONDS * 2 ** min(attempt, 16))
    return ceiling / 2 + ceiling / 2 * jitter


def next_wait(server_says: float | None, attempt: int, jitter: float) -> float:
    """The server's Retry-After where it gave one, else the jittered backoff for this attempt."""
    return server_says if server_says is not None else backoff_delay(attempt, jitter)


@dataclass
class Tries:
    """One item's tries: a transient failure gets one more; a busy server is waited out, `budget_seconds` in all."""

    budget_seconds: float
    transient_left: int = 1
    busy_tries: int = 0
    waited: float = 0.0

    def wait_before_next(self, kind: Failure, server_says: float | None, jitter: float, *,
                         server_was_answering: bool) -> float | None:
        """Seconds to wait before trying again after a failure of `kind`, or None: give up now.

        A refused connection counts as busy only while the server was answering this run's other requests (a router
        restarting a backend, a server killed and brought back); before any answer it is a wrong server_url.
        """
        if kind is Failure.BUSY or (kind is Failure.UNREACHABLE and server_was_answering):
            wait = next_wait(server_says, self.busy_tries, jitter)
            if self.waited + wait > self.budget_seconds:
                return None
            self.busy_tries += 1
            self.waited += wait
            return wait
        if kind is Failure.TRANSIENT and self.transient_left > 0:
            self.transient_left -= 1
            return backoff_delay(0, jitter)
        return None


def _number(text: str | None) -> float | None:
    try:
        value = float((text or "").strip())
    except ValueError:
        return None
    return value if value == value and value not in (float("inf"), float("-inf")) else None


def _bounded(seconds: float) -> float:
    return min(max(seconds, 0.0), MAX_RETRY_AFTER_SECONDS)
