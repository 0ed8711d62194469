"""How many requests may be in flight to one server: one small object, two kinds of news, one answer.

Where the server reports its slots (LM Studio's `parallel`, llama.cpp's `total_slots`) or the user set
`max_parallel`, that is the limit and the ceiling: a refusal still lowers it for a while. Where nobody says (a
router such as LiteLLM's proxy, vLLM, SGLang), the limit is found: it starts low and, as long as answers come back
as fast as the fastest seen and nothing is refused, grows by one per answer (doubling each round, like TCP's slow
start); after the first sign of a full server it grows by one per round only. It shrinks fast: a refusal halves it, but
never below the requests the server holds (those out longer than the refusal took to come back); a first token late
enough to show a queue inside the server takes QUEUE_SHRINK off. One shrink per round: the refusals of requests
sent before the last shrink are old news.

The ideas are those of Netflix's concurrency-limits (AIMD and Vegas limits). Pure: callers pass the timings.
"""

from __future__ import annotations

from dataclasses import dataclass

FIND_START = 2  # where nobody says: two overlap one prompt's processing with another's generation
FIND_CEILING = 64  # the most it ever finds (the options node's max_parallel goes no higher either)
SHRINK = 0.5  # on a refusal, unless the server is answering more than that
QUEUE_SHRINK = 0.9  # on a time to first token that shows a queue inside the server
# A first token this much slower than the fastest seen (plus the slack, for jitter on fast answers) waited in a
# queue: a request that queues behind a full slot waits a whole answer, many times an unqueued first token.
QUEUE_FACTOR = 2.0
QUEUE_SLACK_SECONDS = 0.05
FLOOR_DRIFT = 1.02  # the fastest first token seen creeps up 2% an answer, so a server that slows down is relearnt


@dataclass
class ConcurrencyLimit:
    """The limit for one server and model. `round` numbers the limit's changes; a request carries the round it was
    sent in (`sent()`), and only news from the current round moves the limit down."""

    value: float
    ceiling: int
    finding: bool = False  # nobody reported slots: grow until the server says stop
    slow_start: bool = True
    round: int = 0
    _fastest: float | None = None

    @classmethod
    def reported(cls, slots: int) -> ConcurrencyLimit:
        """The server's (or the user's) number: the limit and the ceiling."""
        return cls(value=float(slots), ceiling=slots)

    @classmethod
    def to_find(cls, ceiling: int = FIND_CEILING) -> ConcurrencyLimit:
        return cls(value=float(min(FIND_START, ceiling)), ceiling=ceiling, finding=True)

    @property
    def limit(self) -> int:
        return max(1, int(self.value))

    def sent(self) -> int:
        """A request goes out: the round it belongs to."""
        return self.round

    def answered(self, sent_in: int, first_token_seconds: float | None, in_flight: int) -> None:
        """A request sent in round `sent_in` heard back after so long (its first event), with `in_flight` others out."""
        if first_token_seconds is not None:
            fastest = self._fastest
            self._fastest = first_token_seconds if fastest is None else min(first_token_seconds, fastest * FLOOR_DRIFT)
            if fastest is not None and first_token_seconds > fastest * QUEUE_FACTOR + QUEUE_SLACK_SECONDS:
                self.queued(sent_in)
                return
        if not self.finding and self.value >= self.ceiling:
            return
        if in_flight + 1 >= self.limit:  # only a limit in use has earned a raise
            self.value = min(float(self.ceiling), self.value + (1.0 if self.slow_start else 1.0 / self.value))

    def refused(self, sent_in: int, holding: int) -> None:
        """The server pushed back for a request sent in round `sent_in` while holding `holding` others: the limit
        halves, but never below what the server holds, and drops by one at least."""
        self._shrink(sent_in, min(self.value - 1, max(float(holding), self.value * SHRINK)))

    def queued(self, sent_in: int) -> None:
        """A first token came late enough to show a queue inside the server (only a limit being found heeds it)."""
        if self.finding:
            self._shrink(sent_in, self.value * QUEUE_SHRINK)

    def _shrink(self, sent_in: int, value: float) -> None:
        self.slow_start = False
        if sent_in != self.round:
            return
        self.value = max(1.0, value)
        self.round += 1
