"""VLM judge over any OpenAI-compatible chat-completions server (vLLM, SGLang, Ollama, Gemini, GPT).

Uses the official ``openai`` client (``AsyncOpenAI``) with its own retries switched off: one
bounded retry budget here covers 429 (honouring Retry-After), 5xx, timeouts, connection errors
and malformed bodies alike, with exponential backoff and jitter, and every retry is counted in
:attr:`OpenAIJudge.stats`. Requests run on one private event loop in a background thread, so the
concurrency bound (an ``asyncio.Semaphore``) holds across ``compare``, ``compare_batch`` and
``acompare`` from any thread or event loop. A pair always ends judged, abstained (the model
answered without a usable decision) or failed (no answer after the retry budget: status
``"failed"``, never cached, asked again on resume); only misconfiguration (bad key, unknown model,
wrong URL) raises :class:`~compressai_vlic.errors.JudgeError`. Token ``usage`` of every reply is
recorded on its vote and summed in :attr:`OpenAIJudge.stats`.

Bounds (one transport for every OpenAI-compatible caller: this judge, the VLM answerers and the
student's raters): ``timeout_s`` applies to each network read, ``deadline_s`` (default
4 x ``timeout_s``) to each whole HTTP request, upload, queueing on the client's loop and download
included (a server that trickles bytes cannot hold an attempt longer), ``max_response_bytes`` to
each response body (an endless or huge response is cut off while it is read, error bodies
included) and ``max_answer_chars`` to the answer text kept in votes, rationales and datasets.

The API key is read from the environment variable *named* by ``api_key_env`` and lives only inside
the client: it is not an attribute of the judge, not in its cache identity, and it is scrubbed
from every text the judge returns (answers, rationales, error texts; before any text is cut to
length, and fragments of it too), so a server that echoes it cannot get it into a dataset, a cache
or a log. Credentials inside ``base_url`` (userinfo, query values such as ``?key=``) are scrubbed
the same way and never stored: :func:`~compressai_vlic.judges.secrets.public_url` is the form
that reaches reprs, error messages and datasets.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import copy
import json
import logging
import os
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import torch

from compressai_vlic.errors import ConfigError, JudgeError
from compressai_vlic.extras import require
from compressai_vlic.judges.encoding import check_triplet, png_data_url
from compressai_vlic.judges.parsing import (
    ParsedAnswer,
    TokenLogprob,
    abstain,
    parse_answer,
    soft_answer,
)
from compressai_vlic.judges.prompts import PromptTemplate, PromptType, get_template
from compressai_vlic.judges.secrets import cut, public_url, scrub, url_secrets
from compressai_vlic.judges.types import JudgeRequest, Judgment, Vote, add_usage
from compressai_vlic.options import check_option

openai = require("openai", "judges", "The OpenAI-compatible judge")
log = logging.getLogger(__name__)

ResultCallback = Callable[[int, Judgment], None]

LogprobsType = Literal["auto", "on", "off"]
TOKEN_LIMIT_FIELDS = ("max_tokens", "max_completion_tokens")
_RETRY_STATUS = {408, 409, 425, 429}
_FATAL_STATUS = {401, 403, 404}
#: Default cap on one response body (an answer with top-5 log-probabilities of 1024 tokens is
#: about 0.5 MB).
DEFAULT_MAX_RESPONSE_BYTES = 8 << 20
#: Default cap on the answer text kept per vote (a 1024-token answer is about 5,000 characters).
DEFAULT_MAX_ANSWER_CHARS = 20_000
#: Error texts are cut to this length (after scrubbing).
ERROR_CHARS = 200


def transport_bounds(
    deadline_s: float | None = None,
    max_response_bytes: int | None = None,
    max_answer_chars: int | None = None,
) -> dict[str, Any]:
    """The bound keywords of :class:`OpenAIJudge`, defaults filled in (for the other callers)."""
    return {
        "deadline_s": deadline_s,
        "max_response_bytes": max_response_bytes or DEFAULT_MAX_RESPONSE_BYTES,
        "max_answer_chars": max_answer_chars or DEFAULT_MAX_ANSWER_CHARS,
    }


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


def bounded_async_client(
    api_key: str | None, base_url: str | None, timeout_s: float, max_response_bytes: int
) -> Any:
    """The ``openai.AsyncOpenAI`` client every OpenAI-compatible caller uses: its own retries off
    (callers count theirs), ``timeout_s`` per read, and every response body (error bodies too)
    refused past ``max_response_bytes`` while it is read."""

    async def bound(response: Any) -> None:
        response.stream = _bounded_stream(response.stream, max_response_bytes)

    http_client = openai.DefaultAsyncHttpxClient(event_hooks={"response": [bound]})
    return openai.AsyncOpenAI(
        api_key=api_key or "no-key",
        base_url=base_url,
        max_retries=0,
        timeout=timeout_s,
        http_client=http_client,
    )


@dataclass
class JudgeStats:
    """Counters over the judge's lifetime (requests = HTTP attempts, retries = attempts - 1)."""

    requests: int = 0
    retries: int = 0
    judged: int = 0
    abstained: int = 0
    failed: int = 0
    reasons: dict[str, int] = field(default_factory=dict)
    usage: dict[str, int] = field(default_factory=dict)  # summed token counts of every reply


class _LoopThread:
    """One asyncio loop in a daemon thread: every request of a judge runs here."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(
            target=self.loop.run_forever, name="vlic-judge-loop", daemon=True
        )
        self.thread.start()

    def submit(self, coro: Any) -> concurrent.futures.Future:
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def stop(self) -> None:
        if self.loop.is_running():
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(timeout=10)


class _Shared:
    """What replicas of one judge share: loop, client, semaphore, stats, logprobs support."""

    def __init__(self, concurrency: int) -> None:
        self.runner: _LoopThread | None = None
        self.client: Any = None
        self.semaphore: asyncio.Semaphore | None = None
        self.concurrency = concurrency
        self.stats = JudgeStats()
        self.logprobs_supported = True
        self.lock = threading.Lock()
        self.pid = os.getpid()


class OpenAIJudge:
    """2AFC judge that asks a chat-completions VLM (see module docstring).

    ``prompt_type`` is "vlic-score" (describe, then Score in [-5, 5]) or "ab-choice"
    ("Answer: A|B", with P(A) from the answer token's log-probabilities when the server returns
    them). ``api_key_env`` names the environment variable holding the key; ``None`` or "" for
    local servers that need none. Bounds (see the module docstring): ``timeout_s`` per read,
    ``deadline_s`` per whole request (default None: 4 x ``timeout_s``), ``max_response_bytes``
    per response body (default 8 MiB), ``max_answer_chars`` of answer text kept (default 20,000).
    """

    backend = "openai"

    def __init__(
        self,
        model: str,
        base_url: str | None = None,
        api_key_env: str | None = "OPENAI_API_KEY",
        prompt_type: PromptType = "vlic-score",
        attribute: str = "fidelity",
        temperature: float = 0.0,
        seed: int | None = None,
        sample_index: int = 0,
        max_tokens: int | None = None,
        max_tokens_field: str = "max_tokens",
        concurrency: int = 8,
        timeout_s: float = 120.0,
        max_attempts: int = 4,
        backoff_base_s: float = 1.0,
        backoff_max_s: float = 30.0,
        logprobs_type: LogprobsType = "auto",
        top_logprobs: int = 5,
        image_detail: str = "high",
        extra_body: dict[str, Any] | None = None,
        name: str | None = None,
        reference: bool = True,
        deadline_s: float | None = None,
        max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES,
        max_answer_chars: int = DEFAULT_MAX_ANSWER_CHARS,
    ) -> None:
        if not model:
            raise ConfigError("model is required (e.g. --model Qwen/Qwen2.5-VL-7B-Instruct)")
        if concurrency < 1 or max_attempts < 1 or timeout_s <= 0:
            raise ConfigError("concurrency and max_attempts must be >= 1, timeout_s > 0")
        if deadline_s is not None and deadline_s <= 0:
            raise ConfigError(f"deadline_s must be > 0 (or None: 4 x timeout_s), got {deadline_s}")
        if max_response_bytes < 1024 or max_answer_chars < 1:
            raise ConfigError("max_response_bytes must be >= 1024 and max_answer_chars >= 1")
        check_option("logprobs_type", logprobs_type, LogprobsType)
        if max_tokens_field not in TOKEN_LIMIT_FIELDS:
            raise ConfigError(f"max_tokens_field must be one of {TOKEN_LIMIT_FIELDS}")
        self.template: PromptTemplate = get_template(prompt_type, attribute, reference)
        self.model = model
        self.base_url = base_url
        self.api_key_env = api_key_env or None
        self.temperature = float(temperature)
        self.seed = seed
        self.sample_index = int(sample_index)
        default_tokens = 1024 if self.template.reasons else 16
        self.max_tokens = int(max_tokens or default_tokens)
        self.max_tokens_field = max_tokens_field
        self.timeout_s = float(timeout_s)
        self.deadline_s = float(deadline_s if deadline_s is not None else 4 * timeout_s)
        self.max_response_bytes = int(max_response_bytes)
        self.max_answer_chars = int(max_answer_chars)
        self.max_attempts = int(max_attempts)
        self.backoff_base_s = float(backoff_base_s)
        self.backoff_max_s = float(backoff_max_s)
        self.logprobs_type = logprobs_type
        self.top_logprobs = int(top_logprobs)
        self.image_detail = image_detail
        self.extra_body = dict(extra_body or {})
        self.name = name or f"openai:{model}"
        self._secret = self._read_key()  # kept only to scrub error texts
        self._secrets = (self._secret, *url_secrets(base_url))
        self._shared = _Shared(int(concurrency))

    # ------------------------------------------------------------------ configuration

    def _read_key(self) -> str | None:
        if self.api_key_env is None:
            return None
        key = os.environ.get(self.api_key_env)
        if not key:
            raise JudgeError(
                f"environment variable {self.api_key_env} is not set: export it with your API key, "
                "or pass api_key_env='' (--api-key-env '') for a local server that needs no key"
            )
        return key

    def __repr__(self) -> str:
        return (
            f"OpenAIJudge(model={self.model!r}, base_url={public_url(self.base_url)!r}, "
            f"api_key_env={self.api_key_env!r}, prompt={self.template.version!r})"
        )

    @property
    def stats(self) -> JudgeStats:
        return self._shared.stats

    @property
    def concurrency(self) -> int:
        return self._shared.concurrency

    @property
    def wants_logprobs(self) -> bool:
        """Choice prompts ask for them unless "off"; score prompts (expected score over the
        -5..5 tokens) only with ``logprobs_type="on"``."""
        if self.logprobs_type == "off":
            return False
        return self.template.answer_type == "choice" or self.logprobs_type == "on"

    def cache_identity(self) -> dict[str, Any]:
        """Everything that determines an answer (the cache key's judge part); never the key."""
        return {
            "backend": self.backend,
            "model": self.model,
            "prompt_version": self.template.version,
            "sampling": {
                "temperature": self.temperature,
                "seed": self.seed,
                "sample_index": self.sample_index,
                self.max_tokens_field: self.max_tokens,
                "logprobs": self.top_logprobs if self.wants_logprobs else 0,
                "image_detail": self.image_detail,
                "extra_body": self.extra_body,
            },
        }

    def with_sample_index(self, index: int) -> OpenAIJudge:
        """The index-th independent sample (self-ensembling): a different seed and cache entry,
        sharing this judge's connection pool and concurrency bound."""
        twin = copy.copy(self)
        twin.sample_index = int(index)
        if self.seed is not None:
            twin.seed = self.seed + int(index)
        return twin

    # ------------------------------------------------------------------ plumbing

    def _runner(self) -> _LoopThread:
        shared = self._shared
        with shared.lock:
            if shared.pid != os.getpid():  # forked: the parent's loop thread does not exist here
                shared.runner, shared.client, shared.semaphore = None, None, None
                shared.pid = os.getpid()
            if shared.runner is None:
                shared.runner = _LoopThread()
            return shared.runner

    def _client(self) -> Any:
        """Created lazily on the judge's loop; the client's own retries are off (ours count)."""
        shared = self._shared
        if shared.client is None:
            shared.client = bounded_async_client(
                self._secret, self.base_url, self.timeout_s, self.max_response_bytes
            )
            shared.semaphore = asyncio.Semaphore(shared.concurrency)
        return shared.client

    def _scrub(self, text: str) -> str:
        """``text`` without the API key or the URL's credentials (nor fragments of them)."""
        return scrub(text, self._secrets)

    def public_text(self, text: str) -> str:
        """An answer as it may be stored: scrubbed, then cut to ``max_answer_chars``."""
        return cut(self._scrub(text), self.max_answer_chars)

    def close(self) -> None:
        """Close the HTTP client and stop the background loop (replicas share them)."""
        shared = self._shared
        if shared.runner is None:
            return
        if shared.client is not None:
            try:
                shared.runner.submit(shared.client.close()).result(timeout=10)
            except Exception:  # closing is best effort
                pass
        shared.runner.stop()
        shared.runner, shared.client, shared.semaphore = None, None, None

    # ------------------------------------------------------------------ one request

    def _messages(self, urls: list[str]) -> list[dict[str, Any]]:
        content: list[dict[str, Any]] = []
        for part in self.template.parts():
            if part.kind == "text":
                content.append({"type": "text", "text": part.text})
            else:
                image = {"url": urls[part.image_index], "detail": self.image_detail}
                content.append({"type": "image_url", "image_url": image})
        return [
            {"role": "system", "content": self.template.system},
            {"role": "user", "content": content},
        ]

    def _request_kwargs(self, urls: list[str], logprobs: bool) -> dict[str, Any]:
        kwargs: dict[str, Any] = {
            "model": self.model,
            "messages": self._messages(urls),
            "temperature": self.temperature,
            self.max_tokens_field: self.max_tokens,
        }
        if self.seed is not None:
            kwargs["seed"] = self.seed
        elif self.sample_index:
            kwargs["seed"] = self.sample_index
        if logprobs:
            kwargs["logprobs"] = True
            kwargs["top_logprobs"] = self.top_logprobs
        if self.extra_body:
            kwargs["extra_body"] = self.extra_body
        return kwargs

    def _delay(self, attempt: int, retry_after: float | None) -> float:
        """Exponential backoff with jitter, at least the server's Retry-After, capped."""
        base = min(self.backoff_max_s, self.backoff_base_s * 2 ** (attempt - 1))
        delay = base * random.uniform(0.5, 1.0)
        if retry_after is not None:
            delay = max(delay, retry_after)
        return min(delay, self.backoff_max_s)

    @staticmethod
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

    async def _call(
        self,
        urls: list[str],
        build: Callable[[bool], dict[str, Any]] | None = None,
        read: Callable[[Any], tuple[ParsedAnswer, str]] | None = None,
    ) -> tuple[ParsedAnswer, str, int, bool, dict[str, int] | None]:
        """One question with the retry budget: (parsed answer, raw text, attempts used, whether
        the call failed, token usage).

        ``build(use_logprobs)`` (request kwargs) and ``read(response)`` default to this judge's
        2AFC question; other clients of the same plumbing (the VLM answerers) pass their own.
        """
        build = build or (lambda use_logprobs: self._request_kwargs(urls, use_logprobs))
        read = read or self._read
        client = self._client()
        shared = self._shared
        assert shared.semaphore is not None
        reason = ""
        attempt = 0
        while attempt < self.max_attempts:
            attempt += 1
            use_logprobs = self.wants_logprobs and shared.logprobs_supported
            retry_after = None
            async with shared.semaphore:
                shared.stats.requests += 1
                try:
                    response = await asyncio.wait_for(
                        client.chat.completions.create(
                            **build(use_logprobs), timeout=self.timeout_s
                        ),
                        self.deadline_s,
                    )
                    parsed, text = read(response)
                    return parsed, text, attempt, False, _usage(response)
                except ResponseTooLargeError as exc:  # not retried: the server would resend it
                    return abstain(f"response too large: {exc}"), "", attempt, True, None
                except openai.APITimeoutError:
                    reason = f"timeout after {self.timeout_s:g}s"
                except asyncio.TimeoutError:
                    reason = f"no complete answer within the {self.deadline_s:g}s deadline"
                except openai.APIConnectionError as exc:
                    reason = f"connection error: {cut(self._scrub(str(exc)), ERROR_CHARS)}"
                except openai.APIStatusError as exc:
                    status = exc.status_code
                    message = cut(self._scrub(_error_message(exc)), ERROR_CHARS)
                    if status in _FATAL_STATUS:
                        raise JudgeError(
                            f"{public_url(self.base_url) or 'OpenAI'} answered {status} "
                            f"({message}): check "
                            f"--base-url, --model {self.model!r} and ${self.api_key_env}"
                        ) from None
                    if status == 400 and use_logprobs and self.logprobs_type == "auto":
                        shared.logprobs_supported = False
                        log.warning("server rejected logprobs (400); continuing without them")
                        attempt -= 1  # a capability probe, not a failure of this pair
                        continue
                    if status not in _RETRY_STATUS and status < 500:
                        return abstain(f"HTTP {status}: {message}"), "", attempt, True, None
                    reason = f"HTTP {status}: {message}"
                    retry_after = self._retry_after(exc)
                except (openai.APIResponseValidationError, json.JSONDecodeError, ValueError) as exc:
                    reason = f"malformed response: {cut(self._scrub(str(exc)), ERROR_CHARS)}"
                except _MalformedResponse as exc:
                    reason = f"malformed response: {exc}"
            if attempt < self.max_attempts:
                shared.stats.retries += 1
                delay = self._delay(attempt, retry_after)
                log.info(
                    "judge retry %d/%d in %.2fs: %s", attempt, self.max_attempts, delay, reason
                )
                await asyncio.sleep(delay)
        return abstain(f"gave up after {attempt} attempts: {reason}"), "", attempt, True, None

    def _read(self, response: Any) -> tuple[ParsedAnswer, str]:
        choices = getattr(response, "choices", None)
        if not choices:
            raise _MalformedResponse("no choices in the response")
        first = choices[0]
        message = getattr(first, "message", None)
        if message is None:
            raise _MalformedResponse("no message in the response")
        text = None if message.content is None else self._scrub(str(message.content))
        refusal = getattr(message, "refusal", None)
        refusal = None if refusal is None else self._scrub(str(refusal))
        parsed = parse_answer(self.template, text, refusal, first.finish_reason)
        soft_answer(parsed, self.template.answer_type, _token_logprobs(first))
        return parsed, text or ""

    async def _judge(self, request: JudgeRequest) -> Judgment:
        start = time.perf_counter()
        ref, a, b = check_triplet(request.reference, request.a, request.b)
        if ref is None and self.template.reference:
            raise ConfigError(_NO_REFERENCE)
        shown = (ref if self.template.reference else None, a, b)
        urls = await asyncio.to_thread(
            lambda: ["" if x is None else png_data_url(x) for x in shown]
        )
        parsed, text, _attempts, call_failed, usage = await self._call(urls)
        text = self.public_text(text)  # a server may echo the key: it must not reach any output
        error = None if parsed.error is None else self._scrub(parsed.error)
        stats = self._shared.stats
        add_usage(stats.usage, usage)
        if error is None:
            stats.judged += 1
        else:
            if call_failed:
                stats.failed += 1
            else:
                stats.abstained += 1
            kind = error.split(":")[0]
            stats.reasons[kind] = stats.reasons.get(kind, 0) + 1
        status = "failed" if call_failed else None
        vote = Vote(
            score=parsed.score,
            choice=parsed.choice,
            prob_a=parsed.prob_a,
            order="AB",
            raw=text,
            error=error,
            status=status,
            usage=usage,
            expected_score=parsed.expected_score,
        )
        return Judgment(
            score=parsed.score,
            choice=parsed.choice,
            prob_a=parsed.prob_a,
            votes=[vote],
            rationale=text,
            latency_s=time.perf_counter() - start,
            backend=self.backend,
            model=self.model,
            prompt_version=self.template.version,
            error=error,
            status=status,
            usage=usage,
            expected_score=parsed.expected_score,
        )

    # ------------------------------------------------------------------ Judge protocol

    def compare(self, reference: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> Judgment:
        return self._runner().submit(self._judge(JudgeRequest(reference, a, b))).result()

    async def acompare(self, reference: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> Judgment:
        future = self._runner().submit(self._judge(JudgeRequest(reference, a, b)))
        return await asyncio.wrap_future(future)

    def compare_batch(
        self, requests: list[JudgeRequest], on_result: ResultCallback | None = None
    ) -> list[Judgment]:
        """All requests in flight at once, bounded by ``concurrency``; results in input order.

        ``on_result(index, judgment)`` runs as each pair finishes (e.g. to persist it at once, so
        a killed run loses only the pairs still in flight).
        """
        runner = self._runner()
        futures = [
            runner.submit(self._judge_notify(i, r, on_result)) for i, r in enumerate(requests)
        ]
        return [f.result() for f in futures]

    async def _judge_notify(
        self, index: int, request: JudgeRequest, on_result: ResultCallback | None
    ) -> Judgment:
        judgment = await self._judge(request)
        if on_result is not None:
            on_result(index, judgment)
        return judgment


class _MalformedResponse(Exception):
    pass


_NO_REFERENCE = (
    "this judge's prompt shows the Original but the pair has no reference image; build it with "
    "reference=False (--judge-arg reference=false) for reference-free questions"
)


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


def _token_logprobs(choice: Any) -> list[TokenLogprob]:
    logprobs = getattr(choice, "logprobs", None)
    content = getattr(logprobs, "content", None) if logprobs is not None else None
    out: list[TokenLogprob] = []
    for entry in content or []:
        top = {t.token: t.logprob for t in (entry.top_logprobs or [])}
        out.append(TokenLogprob(token=entry.token, logprob=entry.logprob, top=top))
    return out
