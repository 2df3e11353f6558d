"""VLM judge over any OpenAI-compatible chat-completions server (vLLM, SGLang, Ollama, Gemini, GPT).

A prompt-plus-parser adapter over the one chat transport (:mod:`compressai_vlic.judges.chat`: one
private event loop, a concurrency bound, one retry budget with Retry-After, bounds, token usage,
key scrubbing). This module adds the 2AFC prompt, the answer parser (score or A/B choice, with
P(A) from the answer token's log-probabilities where the server returns them) and the judge's
counters. A pair always ends judged, abstained (the model answered without a usable decision) or
failed (no answer after the retry budget: status ``"failed"``, never cached, asked again on
resume).
"""

from __future__ import annotations

import asyncio
import copy
import logging
import time
from collections.abc import Callable
from typing import Any, Literal

import torch

from compressai_vlic.errors import ConfigError
from compressai_vlic.judges.chat import (
    DEFAULT_MAX_ANSWER_CHARS,
    DEFAULT_MAX_RESPONSE_BYTES,
    ChatClient,
    ChatEndpoint,
    ChatStats,
)
from compressai_vlic.judges.encoding import check_triplet, png_data_url
from compressai_vlic.judges.parsing import (
    ParsedAnswer,
    TokenLogprob,
    abstain,
    parse_answer,
    soft_answer,
)
from compressai_vlic.judges.prompts import PromptTemplate, PromptType, get_template
from compressai_vlic.judges.secrets import public_url
from compressai_vlic.judges.types import JudgeRequest, Judgment, Vote
from compressai_vlic.options import check_option

log = logging.getLogger(__name__)

ResultCallback = Callable[[int, Judgment], None]

LogprobsType = Literal["auto", "on", "off"]


class OpenAIJudge:
    """2AFC judge that asks a chat-completions VLM (see module docstring).

    ``prompt_type`` is "vlic-score" (describe, then Score in [-5, 5]) or "ab-choice"
    ("Answer: A|B", with P(A) from the answer token's log-probabilities when the server returns
    them). ``api_key_env`` names the environment variable holding the key; ``None`` or "" for
    local servers that need none. Bounds (see :mod:`compressai_vlic.judges.chat`): ``timeout_s`` per read,
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
        check_option("logprobs_type", logprobs_type, LogprobsType)
        self.endpoint = ChatEndpoint.pick(locals())
        self.template: PromptTemplate = get_template(prompt_type, attribute, reference)
        self.temperature = float(temperature)
        self.seed = seed
        self.sample_index = int(sample_index)
        self.max_tokens = int(max_tokens or (1024 if self.template.reasons else 16))
        self.logprobs_type = logprobs_type
        self.top_logprobs = int(top_logprobs)
        self.name = name or f"openai:{model}"
        self.client = ChatClient(self.endpoint)  # replicas (with_sample_index) share it

    # ------------------------------------------------------------------ configuration

    @property
    def model(self) -> str:
        return self.endpoint.model

    @property
    def max_attempts(self) -> int:
        return self.endpoint.max_attempts

    @property
    def concurrency(self) -> int:
        return self.endpoint.concurrency

    @property
    def stats(self) -> ChatStats:
        return self.client.stats

    def __repr__(self) -> str:
        e = self.endpoint
        return (
            f"OpenAIJudge(model={e.model!r}, base_url={public_url(e.base_url)!r}, "
            f"api_key_env={e.api_key_env!r}, prompt={self.template.version!r})"
        )

    @property
    def wants_logprobs(self) -> bool:
        """Choice prompts ask for them unless "off"; score prompts (expected score over the
        -5..5 tokens) only with ``logprobs_type="on"``."""
        if self.logprobs_type == "off":
            return False
        return self.template.answer_type == "choice" or self.logprobs_type == "on"

    def cache_identity(self) -> dict[str, Any]:
        """Everything that determines an answer (the cache key's judge part); never the key."""
        e = self.endpoint
        return {
            "backend": self.backend,
            "model": e.model,
            "prompt_version": self.template.version,
            "sampling": {
                "temperature": self.temperature,
                "seed": self.seed,
                "sample_index": self.sample_index,
                e.max_tokens_field: self.max_tokens,
                "logprobs": self.top_logprobs if self.wants_logprobs else 0,
                "image_detail": e.image_detail,
                "extra_body": e.extra_body,
            },
        }

    def with_sample_index(self, index: int) -> OpenAIJudge:
        """The index-th independent sample (self-ensembling): a different seed and cache entry,
        sharing this judge's client and concurrency bound.

        Args:
            index: the sample's index.
        """
        twin = copy.copy(self)
        twin.sample_index = int(index)
        if self.seed is not None:
            twin.seed = self.seed + int(index)
        return twin

    def close(self) -> None:
        """Close the HTTP client and stop its loop (replicas share them)."""
        self.client.close()

    # ------------------------------------------------------------------ one request

    def _body(self, urls: list[str], logprobs: bool) -> dict[str, Any]:
        seed = self.seed if self.seed is not None else (self.sample_index or None)
        return self.endpoint.body(
            self.endpoint.template_messages(self.template, urls),
            self.temperature,
            self.max_tokens,
            seed,
            self.top_logprobs if logprobs else 0,
        )

    def _read(self, choice: Any, text: str | None, refusal: str | None) -> ParsedAnswer:
        parsed = parse_answer(self.template, text, refusal, choice.finish_reason)
        soft_answer(parsed, self.template.answer_type, _token_logprobs(choice))
        return parsed

    async def _judge(self, request: JudgeRequest) -> Judgment:
        start = time.perf_counter()
        ref, a, b = check_triplet(request.reference, request.a, request.b)
        if ref is None and self.template.reference:
            raise ConfigError(_NO_REFERENCE)
        shown = (ref if self.template.reference else None, a, b)
        urls = await asyncio.to_thread(
            lambda: ["" if x is None else png_data_url(x) for x in shown]
        )
        logprobs = self.logprobs_type if self.wants_logprobs else "off"
        reply = await self.client.call(lambda lp: self._body(urls, lp), self._read, logprobs)
        call_failed, usage = reply.failed, reply.usage
        parsed = abstain(reply.error) if reply.value is None else reply.value
        text = self.client.public_text(reply.text)  # a server may echo the key
        error = None if parsed.error is None else self.client.scrub(parsed.error)
        stats = self.client.stats
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
        return self.client.submit(self._judge(JudgeRequest(reference, a, b))).result()

    async def acompare(self, reference: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> Judgment:
        future = self.client.submit(self._judge(JudgeRequest(reference, a, b)))
        return await asyncio.wrap_future(future)

    def compare_batch(
        self, requests: list[JudgeRequest], on_result: ResultCallback | None = None
    ) -> list[Judgment]:
        """All requests in flight at once, bounded by ``concurrency``; results in input order.

        ``on_result(index, judgment)`` runs as each pair finishes (e.g. to persist it at once, so
        a killed run loses only the pairs still in flight).
        """
        futures = [
            self.client.submit(self._judge_notify(i, r, on_result)) for i, r in enumerate(requests)
        ]
        return [f.result() for f in futures]

    async def _judge_notify(
        self, index: int, request: JudgeRequest, on_result: ResultCallback | None
    ) -> Judgment:
        judgment = await self._judge(request)
        if on_result is not None:
            on_result(index, judgment)
        return judgment


_NO_REFERENCE = (
    "this judge's prompt shows the Original but the pair has no reference image; build it with "
    "reference=False (--judge-arg reference=false) for reference-free questions"
)


def _token_logprobs(choice: Any) -> list[TokenLogprob]:
    logprobs = getattr(choice, "logprobs", None)
    content = getattr(logprobs, "content", None) if logprobs is not None else None
    out: list[TokenLogprob] = []
    for entry in content or []:
        top = {t.token: t.logprob for t in (entry.top_logprobs or [])}
        out.append(TokenLogprob(token=entry.token, logprob=entry.logprob, top=top))
    return out
