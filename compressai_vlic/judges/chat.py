"""The one chat transport under every OpenAI-compatible caller (judge, VLM answerer, rater).

:class:`ChatEndpoint` is the endpoint config (server, model, key variable, bounds, retry budget);
:class:`ChatClient` sends requests to it. Callers are prompt-plus-parser adapters: they build the
messages and read the reply, the client does the rest.

The client is the official ``openai.AsyncOpenAI`` with its own retries switched off, because one
budget here covers what they do not: 429 (honouring Retry-After), 5xx, timeouts and connection
errors, and also malformed bodies, with exponential backoff and jitter, every HTTP attempt
counted in :attr:`ChatClient.stats`. Requests run on one private event loop in a background
thread, so the concurrency bound holds across threads and event loops. A request ends answered or
failed (no answer after the budget); only misconfiguration (bad key, unknown model, wrong URL)
raises :class:`~compressai_vlic.errors.JudgeError`. Token ``usage`` of every reply is summed.

Bounds: ``timeout_s`` applies to each network read, ``deadline_s`` (default 4 x ``timeout_s``) to
each whole HTTP request, queueing on the loop included, ``max_response_bytes`` to each response
body (cut off while it is read, error bodies included) and ``max_answer_chars`` to the answer
text kept.

The API key is read from the environment variable *named* by ``api_key_env`` and lives only inside
the client: it is in no config and no cache identity, and it is scrubbed from every text the
client returns (answers, error texts; before any text is cut to length, and fragments of it
too). Credentials inside ``base_url`` are scrubbed the same way;
:func:`~compressai_vlic.judges.secrets.public_url` is the form that reaches reprs and datasets.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import logging
import os
import random
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields
from typing import Any, Generic, TypeVar

from compressai_vlic.errors import ConfigError, JudgeError
from compressai_vlic.extras import require
from compressai_vlic.judges.secrets import cut, public_url, scrub, url_secrets

openai = require("openai", "judges", "The OpenAI-compatible transport")
log = logging.getLogger(__name__)

T = TypeVar("T")

TOKEN_LIMIT_FIELDS = ("max_tokens", "max_completion_tokens")
_RETRY_STATUS = {408, 409, 425, 429}
_FATAL_STATUS = {401, 403, 404}
#: Default cap on one response body (an answer with top-5 log-probabilities of 1024 tokens is
#: about 0.5 MB).
DEFAULT_MAX_RESPONSE_BYTES = 8 << 20
#: Default cap on the answer text kept (a 1024-token answer is about 5,000 characters).
DEFAULT_MAX_ANSWER_CHARS = 20_000
#: Error texts are cut to this length (after scrubbing).
ERROR_CHARS = 200


@dataclass
class ChatEndpoint:
    """Where and how to ask: one OpenAI-compatible chat-completions endpoint.

    Args:
        model: the served model name (required).
        base_url: the server's ``/v1`` URL (default None: OpenAI's).
        api_key_env: environment variable holding the key; None or "" for local servers.
        concurrency: requests in flight at once.
        timeout_s: bound on each network read.
        deadline_s: bound on each whole request (default None: 4 x ``timeout_s``).
        max_attempts: attempts per request, retries included.
        backoff_base_s: first retry delay (doubled each attempt, with jitter).
        backoff_max_s: longest retry delay (a longer Retry-After is cut to it).
        max_response_bytes: bound on each response body.
        max_answer_chars: answer characters kept.
        image_detail: the ``detail`` of each image ("high": full resolution).
        max_tokens_field: "max_tokens" or "max_completion_tokens" (newer hosted models).
        extra_body: extra request fields for the server.
    """

    model: str
    base_url: str | None = None
    api_key_env: str | None = "OPENAI_API_KEY"
    concurrency: int = 8
    timeout_s: float = 120.0
    deadline_s: float | None = None
    max_attempts: int = 4
    backoff_base_s: float = 1.0
    backoff_max_s: float = 30.0
    max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES
    max_answer_chars: int = DEFAULT_MAX_ANSWER_CHARS
    image_detail: str = "high"
    max_tokens_field: str = "max_tokens"
    extra_body: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.model:
            raise ConfigError("model is required (e.g. --model Qwen/Qwen2.5-VL-7B-Instruct)")
        if self.concurrency < 1 or self.max_attempts < 1 or self.timeout_s <= 0:
            raise ConfigError("concurrency and max_attempts must be >= 1, timeout_s > 0")
        if self.deadline_s is not None and self.deadline_s <= 0:
            raise ConfigError(
                f"deadline_s must be > 0 (or None: 4 x timeout_s), got {self.deadline_s}"
            )
        self.max_response_bytes = int(self.max_response_bytes or DEFAULT_MAX_RESPONSE_BYTES)
        self.max_answer_chars = int(self.max_answer_chars or DEFAULT_MAX_ANSWER_CHARS)
        if self.max_response_bytes < 1024 or self.max_answer_chars < 1:
            raise ConfigError("max_response_bytes must be >= 1024 and max_answer_chars >= 1")
        if self.max_tokens_field not in TOKEN_LIMIT_FIELDS:
            raise ConfigError(f"max_tokens_field must be one of {TOKEN_LIMIT_FIELDS}")
        self.api_key_env = self.api_key_env or None
        self.timeout_s = float(self.timeout_s)
        self.deadline_s = float(self.deadline_s or 4 * self.timeout_s)
        self.extra_body = dict(self.extra_body or {})

    @classmethod
    def pick(cls, values: dict[str, Any]) -> ChatEndpoint:
        """The endpoint from a caller's keywords (its ``locals()``): the fields it names.

        Args:
            values: keyword values; those that are no field of the endpoint are ignored.
        """
        return cls(**{f.name: values[f.name] for f in fields(cls) if f.name in values})

    def body(
        self,
        messages: list[dict[str, Any]],
        temperature: float,
        max_tokens: int,
        seed: int | None = None,
        top_logprobs: int = 0,
    ) -> dict[str, Any]:
        """The keywords of one ``chat.completions.create`` request.

        Args:
            messages: the chat messages.
            temperature: sampling temperature.
            max_tokens: answer length limit (sent as ``max_tokens_field``).
            seed: request seed (None: not sent).
            top_logprobs: ask for this many alternatives per answer token (0: none).
        """
        kwargs: dict[str, Any] = {
            "model": self.model,
            "messages": messages,
            "temperature": temperature,
            self.max_tokens_field: max_tokens,
        }
        if seed is not None:
            kwargs["seed"] = seed
        if top_logprobs:
            kwargs["logprobs"] = True
            kwargs["top_logprobs"] = top_logprobs
        if self.extra_body:
            kwargs["extra_body"] = self.extra_body
        return kwargs

    def image(self, url: str) -> dict[str, Any]:
        """One image part of a message."""
        return {"type": "image_url", "image_url": {"url": url, "detail": self.image_detail}}

    def template_messages(self, template: Any, urls: Sequence[str]) -> list[dict[str, Any]]:
        """System and user messages of a prompt template (its text and image parts in order).

        Args:
            template: a prompt template with ``system`` and ``parts()``.
            urls: the data URL of each image the template shows, by ``image_index``.
        """
        content: list[dict[str, Any]] = []
        for part in template.parts():
            if part.kind == "text":
                content.append({"type": "text", "text": part.text})
            else:
                content.append(self.image(urls[part.image_index]))
        return [
            {"role": "system", "content": template.system},
            {"role": "user", "content": content},
        ]


@dataclass
class ChatStats:
    """Counters over a client's lifetime (requests = HTTP attempts, retries = attempts - 1);
    ``judged`` / ``abstained`` / ``failed`` and ``reasons`` are kept by the judge adapter."""

    requests: int = 0
    retries: int = 0
    judged: int = 0
    abstained: int = 0
    failed: int = 0
    reasons: dict[str, int] = field(default_factory=dict)
    usage: dict[str, int] = field(default_factory=dict)  # summed token counts of every reply


@dataclass
class ChatReply(Generic[T]):
    """One request's outcome: the adapter's reading of the reply, or why there is none.

    ``text`` is the scrubbed answer text (not yet cut); ``failed`` means no usable reply after
    the retry budget (or one that must not be retried), with ``error`` saying why.
    """

    value: T | None
    text: str = ""
    error: str | None = None
    attempts: int = 0
    usage: dict[str, int] | None = None

    @property
    def failed(self) -> bool:
        return self.error is not None


class MalformedResponse(Exception):
    """A reply without the fields every chat completion has (retried like a transport error)."""


class ResponseTooLargeError(Exception):
    """A response body grew past ``max_response_bytes`` while it was read (then dropped)."""


_STREAM_CLASSES: dict[type, type] = {}


def _bounded_stream(stream: Any, limit: int) -> Any:
    """Wrap an HTTP client's async response stream so that reading past ``limit`` bytes raises.

    Subclasses the stream's own base (httpx's or a fork's ``AsyncByteStream``), which the client
    checks before it reads.
    """
    base = next((c for c in type(stream).__mro__ if c.__name__ == "AsyncByteStream"), type(stream))
    cls = _STREAM_CLASSES.get(base)
    if cls is None:

        class _Bounded(base):  # type: ignore[valid-type, misc]
            def __init__(self, inner: Any, limit: int) -> None:
                self.inner, self.limit = inner, limit

            async def __aiter__(self) -> Any:
                total = 0
                async for chunk in self.inner:
                    total += len(chunk)
                    if total > self.limit:
                        raise ResponseTooLargeError(
                            f"response body over {self.limit} bytes (max_response_bytes)"
                        )
                    yield chunk

            async def aclose(self) -> None:
                await self.inner.aclose()

        cls = _STREAM_CLASSES[base] = _Bounded
    return cls(stream, limit)


class _LoopThread:
    """One asyncio loop in a daemon thread: every request of a client runs here."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(
            target=self.loop.run_forever, name="vlic-chat-loop", daemon=True
        )
        self.thread.start()

    def submit(self, coro: Any) -> concurrent.futures.Future:
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def stop(self) -> None:
        if self.loop.is_running():
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(timeout=10)


class ChatClient:
    """Sends requests to one :class:`ChatEndpoint` (see the module docstring).

    Args:
        endpoint: the endpoint config.
    """

    def __init__(self, endpoint: ChatEndpoint) -> None:
        self.endpoint = endpoint
        self._secret = self._read_key()
        self._secrets = (self._secret, *url_secrets(endpoint.base_url))
        self.stats = ChatStats()
        self.logprobs_supported = True
        self._runner: _LoopThread | None = None
        self._client: Any = None
        self._semaphore: asyncio.Semaphore | None = None
        self._lock = threading.Lock()
        self._pid = os.getpid()

    def _read_key(self) -> str | None:
        name = self.endpoint.api_key_env
        if name is None:
            return None
        key = os.environ.get(name)
        if not key:
            raise JudgeError(
                f"environment variable {name} is not set: export it with your API key, "
                "or pass api_key_env='' (--api-key-env '') for a local server that needs no key"
            )
        return key

    def scrub(self, text: str) -> str:
        """``text`` without the API key or the URL's credentials (nor fragments of them)."""
        return scrub(text, self._secrets)

    def public_text(self, text: str) -> str:
        """An answer as it may be stored: scrubbed, then cut to ``max_answer_chars``."""
        return cut(self.scrub(text), self.endpoint.max_answer_chars)

    def submit(self, coro: Any) -> concurrent.futures.Future:
        """Run ``coro`` on the client's loop (started on first use, again after a fork)."""
        with self._lock:
            if self._pid != os.getpid():  # forked: the parent's loop thread does not exist here
                self._runner, self._client, self._semaphore = None, None, None
                self._pid = os.getpid()
            if self._runner is None:
                self._runner = _LoopThread()
            runner = self._runner
        return runner.submit(coro)

    def _openai(self) -> Any:
        """Created lazily on the client's loop: ``timeout_s`` per read, every response body
        refused past ``max_response_bytes`` while it is read, the client's own retries off."""
        if self._client is None:
            limit = self.endpoint.max_response_bytes

            async def bound(response: Any) -> None:
                response.stream = _bounded_stream(response.stream, limit)

            self._client = openai.AsyncOpenAI(
                api_key=self._secret or "no-key",
                base_url=self.endpoint.base_url,
                max_retries=0,
                timeout=self.endpoint.timeout_s,
                http_client=openai.DefaultAsyncHttpxClient(event_hooks={"response": [bound]}),
            )
            self._semaphore = asyncio.Semaphore(self.endpoint.concurrency)
        return self._client

    def close(self) -> None:
        """Close the HTTP client and stop the background loop."""
        if self._runner is None:
            return
        if self._client is not None:
            try:
                self._runner.submit(self._client.close()).result(timeout=10)
            except Exception:  # closing is best effort
                pass
        self._runner.stop()
        self._runner, self._client, self._semaphore = None, None, None

    def _delay(self, attempt: int, retry_after: float | None) -> float:
        """Exponential backoff with jitter, at least the server's Retry-After, capped."""
        e = self.endpoint
        delay = min(e.backoff_max_s, e.backoff_base_s * 2 ** (attempt - 1))
        delay *= random.uniform(0.5, 1.0)
        if retry_after is not None:
            delay = max(delay, retry_after)
        return min(delay, e.backoff_max_s)

    async def call(
        self,
        build: Callable[[bool], dict[str, Any]],
        read: Callable[[Any, str | None, str | None], T],
        logprobs: str = "off",
    ) -> ChatReply[T]:
        """One request with the retry budget.

        Args:
            build: ``build(use_logprobs)`` -> the request keywords (see :meth:`ChatEndpoint.body`).
            read: ``read(choice, text, refusal)`` -> the adapter's value, from the first choice
                and its scrubbed answer text and refusal.
            logprobs: "off"; "on" (ask for them); "auto" (ask, and stop asking for good when
                the server rejects them with a 400).
        """
        client = self._openai()
        assert self._semaphore is not None
        e, stats = self.endpoint, self.stats
        reason, attempt = "", 0
        while attempt < e.max_attempts:
            attempt += 1
            use_logprobs = logprobs != "off" and self.logprobs_supported
            retry_after = None
            async with self._semaphore:
                stats.requests += 1
                try:
                    response = await asyncio.wait_for(
                        self._post(client, build(use_logprobs)), e.deadline_s
                    )
                    choice, text, refusal = self._message(response)
                    usage = _usage(response)
                    _add_usage(stats.usage, usage)
                    return ChatReply(read(choice, text, refusal), text or "", None, attempt, usage)
                except ResponseTooLargeError as exc:  # not retried: the server would resend it
                    return ChatReply(None, error=f"response too large: {exc}", attempts=attempt)
                except openai.APITimeoutError:
                    reason = f"timeout after {e.timeout_s:g}s"
                except asyncio.TimeoutError:
                    reason = f"no complete answer within the {e.deadline_s:g}s deadline"
                except openai.APIConnectionError as exc:
                    reason = f"connection error: {cut(self.scrub(str(exc)), ERROR_CHARS)}"
                except openai.APIStatusError as exc:
                    status = exc.status_code
                    message = cut(self.scrub(_error_message(exc)), ERROR_CHARS)
                    if status in _FATAL_STATUS:
                        raise JudgeError(
                            f"{public_url(e.base_url) or 'OpenAI'} answered {status} "
                            f"({message}): check --base-url, --model {e.model!r} and "
                            f"${e.api_key_env}"
                        ) from None
                    if status == 400 and use_logprobs and logprobs == "auto":
                        self.logprobs_supported = False
                        log.warning("server rejected logprobs (400); continuing without them")
                        attempt -= 1  # a capability probe, not a failure of this request
                        continue
                    if status not in _RETRY_STATUS and status < 500:
                        return ChatReply(None, error=f"HTTP {status}: {message}", attempts=attempt)
                    reason = f"HTTP {status}: {message}"
                    retry_after = _retry_after(exc)
                except (openai.APIResponseValidationError, json.JSONDecodeError, ValueError) as exc:
                    reason = f"malformed response: {cut(self.scrub(str(exc)), ERROR_CHARS)}"
                except MalformedResponse as exc:
                    reason = f"malformed response: {exc}"
            if attempt < e.max_attempts:
                stats.retries += 1
                delay = self._delay(attempt, retry_after)
                log.info("judge retry %d/%d in %.2fs: %s", attempt, e.max_attempts, delay, reason)
                await asyncio.sleep(delay)
        return ChatReply(
            None, error=f"gave up after {attempt} attempts: {reason}", attempts=attempt
        )

    async def _post(self, client: Any, kwargs: dict[str, Any]) -> Any:
        """POST ``/chat/completions`` with the body as built: the same request and the same
        typed reply as ``chat.completions.create``, without its walk of the body against the
        request's TypedDicts (most of the client's CPU per request, and the body is plain JSON)."""
        from openai.types.chat import ChatCompletion

        body = dict(kwargs)
        body.update(body.pop("extra_body", None) or {})
        return await client.post(
            "/chat/completions",
            body=body,
            cast_to=ChatCompletion,
            options={"timeout": self.endpoint.timeout_s},
        )

    def _message(self, response: Any) -> tuple[Any, str | None, str | None]:
        """(first choice, scrubbed answer text, scrubbed refusal) of a reply."""
        choices = getattr(response, "choices", None)
        if not choices:
            raise MalformedResponse("no choices in the response")
        message = getattr(choices[0], "message", None)
        if message is None:
            raise MalformedResponse("no message in the response")
        text = None if message.content is None else self.scrub(str(message.content))
        refusal = getattr(message, "refusal", None)
        return choices[0], text, None if refusal is None else self.scrub(str(refusal))


def _retry_after(exc: Exception) -> float | None:
    response = getattr(exc, "response", None)
    headers = getattr(response, "headers", None) or {}
    for name, scale in (("retry-after-ms", 1e-3), ("retry-after", 1.0)):
        value = headers.get(name)
        if value is not None:
            try:
                return max(0.0, float(value) * scale)
            except ValueError:
                return None
    return None


def _error_message(exc: Any) -> str:
    """The server's error text, whole: callers scrub it before cutting it to length."""
    body = getattr(exc, "body", None)
    if isinstance(body, dict):
        inner = body.get("error", body)
        if isinstance(inner, dict) and "message" in inner:
            return str(inner["message"])
    return str(getattr(exc, "message", exc))


def _usage(response: Any) -> dict[str, int] | None:
    """Token counts of one reply (``usage`` of the OpenAI schema), when the server sent them."""
    usage = getattr(response, "usage", None)
    if usage is None:
        return None
    out: dict[str, int] = {}
    for key in ("prompt_tokens", "completion_tokens", "total_tokens"):
        value = getattr(usage, key, None)
        if isinstance(value, int) and not isinstance(value, bool):
            out[key] = value
    return out or None


def _add_usage(total: dict[str, int], usage: dict[str, int] | None) -> None:
    from compressai_vlic.judges.types import add_usage

    add_usage(total, usage)
