"""The concurrency limit and the backoff on their own: invented timings, no server, no clock."""

from __future__ import annotations

import pytest

from lmstudio_pack.backoff import (
    BASE_SECONDS,
    MAX_BACKOFF_SECONDS,
    MAX_RETRY_AFTER_SECONDS,
    Tries,
    backoff_delay,
    retry_after,
)
from lmstudio_pack.chat import Failure, http_error, is_busy, stream_error
from lmstudio_pack.limiter import FIND_CEILING, FIND_START, ConcurrencyLimit

NOW = 1_800_000_000.0  # a Unix time


def answer(limit: ConcurrencyLimit, seconds: float | None = 0.1, *, in_flight: int | None = None) -> None:
    """One answer whose first token took `seconds`, sent in the current round, with the limit in use."""
    limit.answered(limit.sent(), seconds, limit.limit - 1 if in_flight is None else in_flight)


def test_a_found_limit_starts_low_and_doubles_each_round_while_answers_come_back_as_fast():
    limit = ConcurrencyLimit.to_find()
    assert limit.limit == FIND_START
    for _ in range(2):
        answer(limit)
    assert limit.limit == 4
    for _ in range(4):
        answer(limit)
    assert limit.limit == 8


def test_a_refusal_drops_the_limit_to_what_the_server_holds_once_per_round_and_growth_turns_cautious():
    limit = ConcurrencyLimit.to_find()
    for _ in range(14):
        answer(limit)
    assert limit.limit == 16  # slow start overshot: the server holds 8
    sent_before = limit.sent()
    for _ in range(8):  # eight requests of the same round refused while it answers 8: one piece of news
        limit.refused(sent_before, 8)
    assert limit.limit == 8  # halved, and it holds the 8 it answers
    limit.refused(limit.sent(), 8)  # a request sent after the shrink, refused too: news, and by one at least
    assert limit.limit == 7
    limit.refused(limit.sent(), 6)
    assert limit.limit == 6  # halving would be 3.5: it holds the 6 it answers
    before = limit.value
    answer(limit)
    assert limit.value == pytest.approx(before + 1 / before)  # one per round, not one per answer
    limit.refused(limit.sent(), 0)  # refused before any answer began: it holds fewer, how many it does not say
    assert limit.value == pytest.approx((before + 1 / before) / 2)


def test_a_limit_not_in_use_earns_no_raise():
    limit = ConcurrencyLimit.to_find()
    for _ in range(10):
        answer(limit, in_flight=0)  # a list of single items, one at a time
    assert limit.limit == FIND_START


def test_a_first_token_that_waited_in_a_queue_backs_the_limit_off():
    limit = ConcurrencyLimit.to_find()
    for _ in range(6):
        answer(limit, 0.2)
    assert limit.limit == 8
    answer(limit, 1.0)  # five times the fastest: it queued behind a full slot inside the server
    assert limit.limit == 7 and not limit.slow_start
    answer(limit, 0.2)
    assert limit.value == pytest.approx(8 * 0.9 + 1 / (8 * 0.9))  # and grows one per round from there


def test_the_fastest_first_token_is_relearnt_when_the_server_slows_down_for_good():
    limit = ConcurrencyLimit.to_find()
    answer(limit, 0.1)
    answers_until_calm = 0
    while True:  # every answer now takes 0.5 s to its first token (a bigger prompt, a slower model)
        before = limit.value
        answer(limit, 0.5)
        answers_until_calm += 1
        if limit.value > before:
            break
    assert answers_until_calm < 120 and limit.limit >= 1


def test_the_ceiling_holds_and_reported_slots_are_the_limit_and_the_ceiling():
    found = ConcurrencyLimit.to_find(ceiling=5)
    for _ in range(50):
        answer(found)
    assert found.limit == 5
    assert ConcurrencyLimit.to_find().ceiling == FIND_CEILING
    reported = ConcurrencyLimit.reported(4)
    for _ in range(20):
        answer(reported)
    assert reported.limit == 4
    answer(reported, 10.0)  # the server said how many it runs: a slow first token is not news of a queue
    assert reported.limit == 4
    reported.refused(reported.sent(), 3)
    assert reported.limit == 3  # a refusal is, even so
    for _ in range(12):
        answer(reported)
    assert reported.limit == 4  # and it grows back to the server's number, never past it


def test_it_never_goes_below_one():
    limit = ConcurrencyLimit.reported(2)
    for _ in range(10):
        limit.refused(limit.sent(), 0)
    assert limit.limit == 1


@pytest.mark.parametrize(
    ("headers", "seconds"),
    [
        ({"retry-after": "0.5"}, 0.5),
        ({"retry-after": "3"}, 3.0),
        ({"retry-after-ms": "250", "retry-after": "9"}, 0.25),  # the precise one wins
        ({"retry-after": "Fri, 15 Jan 2027 08:00:05 GMT"}, 5.0),  # an HTTP date: NOW is 08:00:00 that day
        ({"retry-after": "-4"}, 0.0),
        ({"retry-after": "86400"}, MAX_RETRY_AFTER_SECONDS),
        ({"retry-after": "soon"}, None),
        ({"retry-after": "nan"}, None),
        ({}, None),
    ],
)
def test_retry_after_reads_seconds_milliseconds_and_dates(headers, seconds):
    assert retry_after(headers, NOW) == seconds


def test_retry_after_as_an_http_date_is_seconds_from_now():
    from email.utils import formatdate

    assert retry_after({"retry-after": formatdate(NOW + 7, usegmt=True)}, NOW) == pytest.approx(7.0)


def test_the_backoff_grows_with_jitter_and_has_a_ceiling():
    assert backoff_delay(0, 0.0) == BASE_SECONDS / 2 and backoff_delay(0, 0.999) < BASE_SECONDS
    assert backoff_delay(3, 0.0) == BASE_SECONDS * 8 / 2
    assert backoff_delay(50, 0.999) <= MAX_BACKOFF_SECONDS


def test_tries_wait_out_a_busy_server_within_the_budget_and_a_transient_failure_once():
    tries = Tries(budget_seconds=2.0)
    assert tries.wait_before_next(Failure.BUSY, 0.5, 0.0, server_was_answering=False) == 0.5
    assert tries.wait_before_next(Failure.BUSY, 1.0, 0.0, server_was_answering=False) == 1.0
    assert tries.wait_before_next(Failure.BUSY, 1.0, 0.0, server_was_answering=False) is None  # 2.5 s > 2 s
    assert tries.waited == 1.5 and tries.busy_tries == 2
    assert tries.wait_before_next(Failure.TRANSIENT, None, 0.0, server_was_answering=True) == BASE_SECONDS / 2
    assert tries.wait_before_next(Failure.TRANSIENT, None, 0.0, server_was_answering=True) is None
    assert tries.wait_before_next(Failure.FINAL, None, 0.0, server_was_answering=True) is None


def test_a_refused_connection_is_waited_out_only_while_the_server_was_answering():
    assert Tries(60).wait_before_next(Failure.UNREACHABLE, None, 0.0, server_was_answering=False) is None
    assert Tries(60).wait_before_next(Failure.UNREACHABLE, None, 0.0, server_was_answering=True) == BASE_SECONDS / 2
    assert Tries(0).wait_before_next(Failure.BUSY, None, 0.0, server_was_answering=True) is None  # busy_wait 0


@pytest.mark.parametrize(
    ("status", "body", "busy"),
    [
        (429, {"error": {"message": "No deployments available for selected model, Try again in 5 seconds. Passed "
                                    "model=lmstudio. pre-call-checks=False, cooldown_list=[]", "type": "None",
                         "param": "None", "code": "429"}}, True),  # LiteLLM's proxy
        (429, {"error": {"message": "Deployment has all max_parallel_requests slots in use", "code": "429"}}, True),
        (429, "Too Many Requests", True),  # SGLang's gateway, no Retry-After
        (503, {"error": {"message": "Loading model", "type": "unavailable_error", "code": 503}}, True),  # llama.cpp
        (500, {"error": {"message": "server is busy, please try again later"}}, True),
        (429, {"error": {"message": "You exceeded your current quota", "code": "insufficient_quota"}}, False),
        (400, {"error": {"message": "Budget has been exceeded! Current cost: 2.0, Max budget: 1.0"}}, False),
        (500, {"error": {"message": "Engine protocol predict request returned 500: crash"}}, False),
        (400, {"error": {"message": "Invalid model identifier"}}, False),
    ],
)
def test_which_refusals_mean_full(status, body, busy):
    error = http_error(status, body, "http://router:4000/v1/chat/completions", "m", "The server at http://router:4000",
                       retry_after=1.5)
    assert (error.kind is Failure.BUSY) is busy, error
    if busy:
        assert error.retry_after == 1.5 and f"HTTP {status} from http://router:4000" in str(error)
    assert is_busy(status, str(body)) is busy


def test_a_busy_word_inside_a_stream_is_busy_too():
    error = stream_error({"message": "No deployments available for selected model"}, "m")
    assert error.kind is Failure.BUSY and error.retry_after is None
    assert stream_error({"message": "boom"}, "m").kind is Failure.TRANSIENT
