"""What a chat is, for every side: the request, the stream events, the statistics, model info and the errors.

Imports no backend: the node, the router and every backend depend on this module, never the other way round.
Every message a person reads is built here, in one place.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Literal

from .conversation import Turn

DEFAULT_SERVER_URL = "http://127.0.0.1:1234"
DEFAULT_CONNECT_TIMEOUT = 10.0
# Idle, not total: a big model loading from disk can keep the first byte waiting for minutes, and the native
# REST stream only reports load progress when the request itself triggers the load.
DEFAULT_IDLE_TIMEOUT = 300.0
API_TOKEN_ENV_VARS = ("LMSTUDIO_API_TOKEN", "LM_API_TOKEN")
LMSTUDIO = "LM Studio"


class ConnectionMode(str, Enum):
    SDK = "SDK"
    REST = "REST API"
    OPENAI = "OpenAI-compatible"


@dataclass(frozen=True)
class ChatRequest:
    """What to ask, of which server and model. `images` are JPEG bytes (see `utils.encode_images`), or a folder's
    JPEG or PNG file as it is on disk (`folder_images.read_image`)."""

    prompt: str
    server_url: str = DEFAULT_SERVER_URL
    mode: ConnectionMode = ConnectionMode.REST
    model: str = ""
    system_prompt: str = ""
    images: tuple[bytes, ...] = ()
    temperature: float = 0.7
    max_tokens: int = -1
    reasoning: str = "auto"  # native REST `reasoning`: off | low | medium | high | on; auto sends nothing
    seed: int | None = None  # OpenAI-compatible `seed`; the other APIs have no per-request seed
    ttl_seconds: int | None = None  # idle TTL for a model this request makes LM Studio load (SDK, OpenAI)
    # Sampling: None sends nothing, so LM Studio's per-model settings apply.
    top_p: float | None = None
    top_k: int | None = None
    min_p: float | None = None
    repeat_penalty: float | None = None
    stop: tuple[str, ...] = ()  # stop strings (SDK, OpenAI-compatible)
    draft_model: str = ""  # speculative decoding's draft model key (SDK, OpenAI-compatible)
    context_length: int | None = None  # for a model this request makes LM Studio load (SDK, REST)
    json_schema: dict[str, Any] | None = None  # structured output: the answer must be JSON matching it (SDK, OpenAI)
    history: tuple[Turn, ...] = ()  # the chat's earlier turns, oldest first; `prompt` is the next one
    store: bool = False  # native REST: keep this turn in LM Studio, for a later turn to continue from
    api_token: str | None = field(default=None, repr=False)
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT
    idle_timeout: float = DEFAULT_IDLE_TIMEOUT

    def describe(self) -> dict[str, Any]:
        """A loggable summary: sizes instead of image data, never the token."""
        return {
            "mode": self.mode.value,
            "server_url": self.server_url,
            "model": self.model or "(loaded model)",
            "prompt_chars": len(self.prompt),
            "system_prompt_chars": len(self.system_prompt),
            "images": [f"{len(data)} bytes of image" for data in self.images],
            "temperature": self.temperature,
            "max_tokens": self.max_tokens,
            "reasoning": self.reasoning,
            "seed": self.seed,
            "ttl_seconds": self.ttl_seconds,
            **self.settings(),
            "json_schema": "set" if self.json_schema is not None else "none",
            "earlier_turns": len(self.history),
            "api_token": "set" if self.api_token else "none",
        }

    def settings(self) -> dict[str, Any]:
        """The optional settings this request sets (sampling, stop strings, draft model, context), by name."""
        values = {"top_p": self.top_p, "top_k": self.top_k, "min_p": self.min_p,
                  "repeat_penalty": self.repeat_penalty, "stop": list(self.stop) or None,
                  "draft_model": self.draft_model or None, "context_length": self.context_length}
        return {name: value for name, value in values.items() if value is not None}


# What each mode can carry besides the basics (LM Studio's docs and the SDK's `_kv_config.py`). A setting outside its
# mode's set is never dropped silently: `unsent_settings` names it for the node's notice and the log.
_CARRIED_BY: dict[str, tuple[str, set[ConnectionMode]]] = {
    "stop": ("stop strings are", {ConnectionMode.SDK, ConnectionMode.OPENAI}),
    "draft_model": ("draft_model (speculative decoding) is", {ConnectionMode.SDK, ConnectionMode.OPENAI}),
    "context_length": ("context_length is", {ConnectionMode.SDK, ConnectionMode.REST}),
    # The SDK (lmstudio 1.5) has no prediction-config key for it: LM Studio's own `llm.prediction.reasoning.*` keys
    # are not in the SDK's config, which refuses or drops what it does not know.
    "reasoning": ("reasoning is", {ConnectionMode.REST, ConnectionMode.OPENAI}),
}


def sendable_settings(request: ChatRequest) -> dict[str, Any]:
    """The settings the request sets that its mode carries, by their REST and OpenAI-compatible names."""
    return {name: value for name, value in request.settings().items()
            if name not in _CARRIED_BY or request.mode in _CARRIED_BY[name][1]}


def unsent_settings(request: ChatRequest) -> list[str]:
    """One sentence per setting the request's mode cannot send, saying which modes can."""
    set_here = set(request.settings()) | ({"reasoning"} if request.reasoning != "auto" else set())
    sentences = []
    for name, (label, modes) in _CARRIED_BY.items():
        if name in set_here and request.mode not in modes:
            others = " or ".join(mode.value for mode in ConnectionMode if mode in modes)
            sentences.append(f"{label} not supported by the {request.mode.value} mode, so not sent; use {others}.")
    return sentences


def api_token_from_env() -> str | None:
    """The LM Studio API token from the environment: never from a widget, workflows are shared as PNGs."""
    for name in API_TOKEN_ENV_VARS:
        if token := os.environ.get(name, "").strip():
            return token
    return None


@dataclass(frozen=True)
class ModelInfo:
    """A model the server offers. `vision` is None where the server does not say."""

    key: str
    display_name: str = ""
    loaded_ids: tuple[str, ...] = ()
    loaded_contexts: tuple[int | None, ...] = ()  # each loaded instance's context length, where the server says
    vision: bool | None = None
    parallel: int | None = None  # the loaded instance's concurrent prediction slots, where the server says

    def matches(self, model_id: str) -> bool:
        return model_id == self.key or model_id in self.loaded_ids


# --------------------------------------------------------------------------------------------------- events


@dataclass(frozen=True)
class TextDelta:
    text: str


@dataclass(frozen=True)
class ReasoningDelta:
    text: str


@dataclass(frozen=True)
class Progress:
    stage: Literal["model_load", "prompt_processing"]
    fraction: float


@dataclass(frozen=True)
class Stats:
    """Final statistics. A field a mode cannot know stays None and is left out of `summary()`."""

    mode: str
    model: str | None = None
    tokens_per_second: float | None = None
    time_to_first_token: float | None = None
    input_tokens: int | None = None
    output_tokens: int | None = None
    reasoning_tokens: int | None = None
    stop_reason: str | None = None
    draft_tokens: int | None = None  # speculative decoding: tokens the draft model proposed...
    accepted_draft_tokens: int | None = None  # ...and those the main model kept, where the server reports them

    def summary(self) -> str:
        """One line; a figure the mode could not know reads `n/a`, never an invented number."""
        reasoning = f" (reasoning {self.reasoning_tokens})" if self.reasoning_tokens is not None else ""
        parts = [
            f"tokens/s: {_figure(self.tokens_per_second, '.1f')}",
            f"TTFT: {_figure(self.time_to_first_token, '.2f', ' s')}",
            f"input tokens: {_figure(self.input_tokens)}",
            f"output tokens: {_figure(self.output_tokens)}{reasoning}",
        ]
        if self.accepted_draft_tokens is not None:
            total = f" of {self.draft_tokens}" if self.draft_tokens is not None else ""
            parts.append(f"draft accepted: {self.accepted_draft_tokens}{total}")
        if self.stop_reason:
            parts.append(f"stop: {self.stop_reason}")
        parts.append(f"mode: {self.mode}")
        if self.model:
            parts.append(f"model: {self.model}")
        return " | ".join(parts)


def _figure(value: float | None, spec: str = "", unit: str = "") -> str:
    return "n/a" if value is None else f"{value:{spec}}{unit}"


@dataclass(frozen=True)
class Finished:
    stats: Stats
    response_id: str | None = None  # native REST with `store`: LM Studio's id of this turn, for the next one


@dataclass(frozen=True)
class Notice:
    """Something the person should know about this answer that is not an error (a setting that did not apply)."""

    kind: str  # one notice per kind: a later one replaces it
    text: str


StreamEvent = TextDelta | ReasoningDelta | Progress | Finished | Notice


# --------------------------------------------------------------------------------------------------- errors


class Failure(str, Enum):
    """What a failure says about asking again."""

    FINAL = "final"  # a wrong setting, a missing model, a bad token: the same request fails the same way
    TRANSIENT = "transient"  # a dropped stream, a server error: worth one more try
    BUSY = "busy"  # the server (or a router in front of it) pushed back: wait, then ask again
    UNREACHABLE = "unreachable"  # nothing answered: worth waiting for only while the server was answering others
    TOO_LARGE = "too_large"  # the request was refused for its size (HTTP 413): the same fails again, a smaller may not


class LMStudioError(Exception):
    """A failure explained for a person: what went wrong, where, and what to try.

    `kind` says whether asking again can help; `retry_after` is a busy server's own word on when (seconds).
    """

    def __init__(self, message: str, *, kind: Failure = Failure.FINAL, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.kind = kind
        self.retry_after = retry_after

    @property
    def transient(self) -> bool:
        return self.kind is Failure.TRANSIENT


def server_name(base: str, is_lmstudio: bool) -> str:
    """How a message names what answered: LM Studio only when it is known to be LM Studio."""
    return LMSTUDIO if is_lmstudio else f"The server at {base}"


def connection_failed(url: str, detail: str = "") -> LMStudioError:
    why = f" ({detail})" if detail else ""
    return LMStudioError(
        f"LM Studio connection failed. Tried {url}{why}. Is LM Studio running with its local server started "
        "(Developer tab > Start Server, or `lms server start`)? For LM Studio on another machine, enable "
        "'Serve on Local Network' there and use that machine's address in server_url.",
        kind=Failure.UNREACHABLE,
    )


def not_lmstudio(url: str, what: str) -> LMStudioError:
    """Something answered at `url`, but not an LLM server (a web page, ComfyUI itself, a wrong port)."""
    return LMStudioError(
        f"The server at {url} is not an LLM server: {what}. Check server_url: LM Studio shows its address and port "
        "in the Developer tab (default http://127.0.0.1:1234)."
    )


def auth_required(detail: str, who: str = LMSTUDIO) -> LMStudioError:
    return LMStudioError(
        f"{who} requires an API token: {detail} Set LMSTUDIO_API_TOKEN in the environment ComfyUI is started "
        "from (tokens are never read from the workflow, which is shared inside every saved PNG)."
    )


def no_token_hint(who: str, token_sent: bool) -> str:
    """For a server that is not LM Studio and failed without saying why: a router may just want its key."""
    if token_sent or who == LMSTUDIO:
        return ""
    return (" No API token was sent: if this server needs one (LiteLLM's proxy wants its master key), set "
            "LMSTUDIO_API_TOKEN in the environment ComfyUI is started from.")


def model_not_found(model: str, detail: str, who: str = LMSTUDIO) -> LMStudioError:
    return LMStudioError(
        f"Model '{model}' not found in {who_object(who)}: {detail} Check model_id against LM Studio's model list "
        "(`lms ls`), or leave it empty to use the loaded model."
    )


def who_object(who: str) -> str:
    """`server_name` inside a sentence ("in LM Studio", "in the server at ...")."""
    return who if who == LMSTUDIO else who[0].lower() + who[1:]


def not_vision_capable(model: str, who: str = LMSTUDIO) -> LMStudioError:
    return LMStudioError(
        f"Model '{model}' cannot see images: {who} reports it has no vision capability, so it would answer "
        "without looking. Pick a vision model (for example qwen/qwen3-vl-4b or google/gemma-3-4b) or unlink the image."
    )


def no_model_loaded() -> LMStudioError:
    return LMStudioError(
        "No model is loaded in LM Studio and model_id is empty. Load a model in LM Studio (or `lms load <model>`), "
        "or enter a model key in model_id and LM Studio will load it."
    )


def idle_timeout(url: str, received_chars: int, who: str = LMSTUDIO) -> LMStudioError:
    return LMStudioError(
        f"{who} sent nothing for too long while answering {url} ({received_chars} characters received). "
        "A very large model may still be loading: load it in LM Studio first, then run again."
    )


def stream_dropped(received_chars: int, who: str = LMSTUDIO) -> LMStudioError:
    return LMStudioError(
        f"{who} closed the connection before the answer was complete ({received_chars} characters received). "
        "The model may have crashed, run out of memory or been unloaded: see the server's log.",
        kind=Failure.TRANSIENT,
    )


_CONTEXT_OVERFLOW = ("context length", "context size", "context window", "exceed_context_size",
                     "contextlengthreached", "greater than the context", "maximum context")


def is_context_overflow(message: str) -> bool:
    """A server's words for "the prompt does not fit the model's context" (LM Studio, llama.cpp, OpenAI)."""
    lowered = message.lower()
    return any(phrase in lowered for phrase in _CONTEXT_OVERFLOW)


def context_overflow(detail: str, who: str = LMSTUDIO) -> LMStudioError:
    return LMStudioError(
        f"The prompt is too long for the model's context: {who} said \"{detail[:300]}\". Raise context_length in LM "
        "Studio Chat Options (it applies when the node loads the model; unload the model first if it is loaded), or "
        "load the model in LM Studio with a longer context; images count too: lower max_image_side or send fewer."
    )


def context_kept(model: str, length: int | None, wanted: int) -> str:
    """The notice for a context_length that did not apply: the model runs with another length."""
    runs = f"a context of {length} tokens" if length else "a context of its own"
    return (f"{model} runs with {runs}, not context_length {wanted}: LM Studio applies context_length only when it "
            "loads the model (a model loaded before keeps its own) and may shorten it to fit memory. Unload the model "
            "in LM Studio, or set after_run = unload, and the next run loads it with yours.")


def no_structured_output() -> LMStudioError:
    return LMStudioError(
        "json_schema needs the SDK or OpenAI-compatible mode: LM Studio's native REST API (/api/v1/chat) has no "
        "structured output. Change connection_mode, or clear json_schema in LM Studio Chat Options."
    )


# How each mode's server says the answer stopped at max_tokens (OpenAI-compatible, SDK); the REST API says nothing,
# so there its output tokens are compared with max_tokens.
_AT_TOKEN_LIMIT = ("length", "maxPredictedTokensReached")


def no_answer(answer: str, reasoned: bool, stats: Stats, max_tokens: int) -> LMStudioError | None:
    """The error for a stream that reasoned and ended without an answer, which must never pass as an empty one (a
    list would save an empty caption); None when there is an answer, or no reasoning either."""
    if answer.strip() or not reasoned:
        return None
    limit = stats.stop_reason in _AT_TOKEN_LIMIT or (
        max_tokens > 0 and stats.output_tokens is not None and stats.output_tokens >= max_tokens)
    if limit:
        return LMStudioError(
            f"The model spent all of max_tokens ({max_tokens}) on reasoning and wrote no answer. Raise max_tokens "
            "(-1 for no limit), or turn reasoning off or down in LM Studio Chat Options (REST API or "
            "OpenAI-compatible mode); its reasoning is in reasoning_text."
        )
    return LMStudioError(
        "The model reasoned but wrote no answer (its reasoning is in reasoning_text). Ask again, turn reasoning off "
        "in LM Studio Chat Options, or, in OpenAI-compatible mode, check LM Studio's Developer setting 'separate "
        "reasoning_content and content' (some LM Studio releases put the whole answer into the reasoning)."
    )


def chain_missing(turn: int) -> LMStudioError:
    """A REST turn that continues a chat whose last turn LM Studio did not store."""
    return LMStudioError(
        f"The REST API mode continues a chat from LM Studio's stored copy of its last turn, and turn {turn} has none "
        "(it ran in another mode, or failed). Set this node to SDK or OpenAI-compatible, which send the whole chat, "
        "or run every turn of the chat in REST API mode."
    )


_CHAIN_GONE = ("previous_response_not_found", "history node", "previous response")


def is_chain_gone(message: str) -> bool:
    """LM Studio's words for "the stored turn `previous_response_id` names is gone"."""
    lowered = message.lower()
    return any(phrase in lowered for phrase in _CHAIN_GONE) or ("resp_" in lowered and "not found" in lowered)


def chain_gone(detail: str) -> LMStudioError:
    return LMStudioError(
        f"LM Studio no longer has the earlier turn this chat continues from (\"{detail[:200]}\"): LM Studio restarted, "
        "or forgot it. Queue the chat again from its first node (a new seed there), or set this node to SDK or "
        "OpenAI-compatible, which send the whole chat and need nothing stored."
    )


def server_message(body: Any) -> tuple[str, str]:
    """(message, code) from error bodies: `{"error": {...}}`, `{"error": "..."}` or plain text."""
    error = body.get("error", body) if isinstance(body, dict) else body
    if isinstance(error, dict):
        return str(error.get("message") or json.dumps(error)), str(error.get("code") or error.get("type") or "")
    return str(error).strip(), ""


def is_web_page(body: Any) -> bool:
    """An HTML page where an API answer was expected: server_url points at a website (or ComfyUI itself)."""
    return isinstance(body, str) and body.lstrip()[:15].lower().startswith(("<!doctype", "<html"))


def is_lmstudio_greeting(body: Any) -> bool:
    """LM Studio's answer to `GET /lmstudio-greeting`, the probe its SDK uses to recognise it."""
    return isinstance(body, dict) and body.get("lmstudio") is True


_IMAGE_REFUSALS = ("image input is not supported", "does not support image", "vision is not supported", "mmproj")


def refuses_images(message: str) -> bool:
    """A server's words for "this model cannot take images" (llama.cpp without an mmproj, say)."""
    lowered = message.lower()
    return any(phrase in lowered for phrase in _IMAGE_REFUSALS)


# A server or router that is full: LiteLLM's proxy ("No deployments available", "... all max_parallel_requests slots in
# use"), SGLang's gateway, Ollama, vLLM's and llama.cpp's "busy"/"overloaded" words. Matched in any status or stream.
_BUSY = ("no deployments available", "max_parallel_requests", "too many requests", "server is busy",
         "server busy", "overloaded", "rate limit", "ratelimit", "rate_limit", "try again later")
_BUSY_STATUSES = (429, 503, 529)
# A 429 that no wait cures: an exhausted quota or budget (OpenAI's `insufficient_quota`, LiteLLM's budgets).
_NOT_BUSY = ("quota", "budget", "billing")


def is_busy(status: int, message: str) -> bool:
    """Whether a refusal means "full, ask again later" rather than "this request is wrong"."""
    lowered = message.lower()
    if any(phrase in lowered for phrase in _NOT_BUSY):
        return False
    return status in _BUSY_STATUSES or any(phrase in lowered for phrase in _BUSY)


def server_busy(who: str, detail: str, retry_after: float | None, answer: str = "") -> LMStudioError:
    """A full server (or router): `answer` names the HTTP answer where there was one ("HTTP 429 from <url>")."""
    said = f"{answer}: " if answer else ""
    return LMStudioError(f"{who} is busy ({said}{detail[:200]})", kind=Failure.BUSY, retry_after=retry_after)


def too_large(who: str, url: str, detail: str) -> LMStudioError:
    said = f": {detail[:200]}" if detail else ""
    return LMStudioError(
        f"{who} refused the request as too large (HTTP 413 from {url}{said}). A proxy in front of the server may cap "
        "request bodies (nginx's client_max_body_size is 1 MB unless set): raise its limit, or lower max_image_side "
        "in LM Studio Chat Options so that images go as smaller JPEGs.", kind=Failure.TOO_LARGE)


def http_error(
    status: int, body: Any, url: str, model: str, who: str = LMSTUDIO, *, images: bool = False,
    retry_after: float | None = None, token_sent: bool = True,
) -> LMStudioError:
    """Map an HTTP error (status, the server's body, its Retry-After) to one human message."""
    message, code = server_message(body)
    if status in (401, 403) or code == "invalid_api_key":
        return auth_required(message, who)
    if "no connected db" in message.lower():  # LiteLLM's proxy without a database: any key but its master key
        return auth_required(f"it refused the key sent (\"{message}\": a LiteLLM proxy without a database takes only "
                             "its master key).", who)
    if status == 413:  # before the web page check: nginx answers it with one
        return too_large(who, url, "" if is_web_page(body) else message)
    if is_busy(status, f"{message} {code}"):
        return server_busy(who, message or code, retry_after, f"HTTP {status} from {url}")
    if code == "model_not_found" or (status == 404 and "model" in message.lower()):
        return model_not_found(model, message, who)
    if images and refuses_images(message):
        return not_vision_capable(model, who)
    if status < 500 and is_context_overflow(f"{message} {code}"):
        return context_overflow(message, who)
    if is_chain_gone(f"{message} {code}"):
        return chain_gone(message)
    if status == 404 and "/api/v1/" in url:
        return LMStudioError(
            f"{who} has no endpoint {url} (HTTP 404: {message[:200]}). The native REST API needs LM Studio 0.4.0 or "
            "later; update LM Studio or choose the OpenAI-compatible mode (which other servers, such as llama.cpp's, "
            "speak too)."
        )
    if is_web_page(body):
        return not_lmstudio(url, f"it answered HTTP {status} with a web page")
    if status in (404, 405) and who != LMSTUDIO:
        return not_lmstudio(url, f"it has no chat endpoint there (HTTP {status})")
    if status == 404:
        return LMStudioError(f"LM Studio has no endpoint {url} (HTTP 404: {message}).")
    return LMStudioError(f"{who} answered HTTP {status} to {url}: {message}{no_token_hint(who, token_sent)}",
                         kind=Failure.TRANSIENT if status >= 500 else Failure.FINAL)


def stream_error(error: Any, model: str, who: str = LMSTUDIO) -> LMStudioError:
    """Map an error reported inside a stream (native `error` event, OpenAI `{"error": ...}` chunk)."""
    message, code = server_message({"error": error})
    if code == "model_not_found":
        return model_not_found(model, message, who)
    if code == "invalid_api_key":
        return auth_required(message)
    if is_context_overflow(f"{message} {code}"):
        return context_overflow(message, who)
    if is_chain_gone(f"{message} {code}"):
        return chain_gone(message)
    if is_busy(0, message):
        return server_busy(who, message, None)
    return LMStudioError(f"{who} reported an error: {message}", kind=Failure.TRANSIENT)
