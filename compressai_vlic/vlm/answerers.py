"""A VLM answering one question about one image, through the judge layer's two backends.

- :class:`OpenAIAnswerer`: any OpenAI-compatible chat-completions server (vLLM, SGLang, Ollama,
  hosted APIs) through the one chat transport (:mod:`compressai_vlic.judges.chat`: concurrency
  bound, retry budget with Retry-After, bounds, usage, the API key scrubbed from every text and
  never in a cache key); this class is its prompt and reader.
- :class:`HFAnswerer`: a local Hugging Face checkpoint through ``AutoProcessor`` /
  ``AutoModelForImageTextToText`` (the HF judge's loader), greedy generation in batches. With
  ``adaptor`` (the path of an adapter file) the vision tower is conditioned on the codec and
  rate level of the image before each generation.
- :class:`CachedAnswerer`: answers in the package's content-addressed SQLite cache, keyed by the
  image's pixel digest, the prompt, the answerer's identity (backend, model, sampling) and, with
  an adaptor, its id and the codec condition. Failures are never stored.

An answer is either ``ok`` (the model said something: right, wrong or unreadable is for the
scorer to decide) or ``failed`` (no reply after the retry budget, or the model call raised);
only misconfiguration raises :class:`~compressai_vlic.errors.JudgeError`.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

import torch

from compressai_vlic.errors import ConfigError, VLICError
from compressai_vlic.judges.encoding import check_image, image_digest, png_data_url, to_pil
from compressai_vlic.options import check_option
from compressai_vlic.vlm.options import BackendType

AnswerStatus = Literal["ok", "failed"]
ResultCallback = Callable[[int, "Answer"], None]


@dataclass(frozen=True)
class AnswerRequest:
    """One question about one image; ``condition`` = (codec name, rate level) for adaptors."""

    image: torch.Tensor  # (3, H, W) in [0, 1]
    prompt: str
    condition: tuple[str, int] | None = None


@dataclass
class Answer:
    """What the VLM said (``text``), or why it said nothing (``status="failed"``, ``error``)."""

    text: str
    status: AnswerStatus = "ok"
    error: str | None = None
    latency_s: float = 0.0
    usage: dict[str, int] | None = None
    cached: bool = False

    @property
    def failed(self) -> bool:
        return self.status == "failed"


@dataclass
class AnswerStats:
    """Counters over an answerer's lifetime."""

    answered: int = 0
    failed: int = 0
    reasons: dict[str, int] = field(default_factory=dict)

    def count(self, answer: Answer) -> None:
        if answer.failed:
            self.failed += 1
            kind = (answer.error or "failed").split(":")[0]
            self.reasons[kind] = self.reasons.get(kind, 0) + 1
        else:
            self.answered += 1


class Answerer(Protocol):
    """What the benchmark needs from a VLM backend."""

    backend: str
    name: str

    def cache_identity(self) -> dict[str, Any]: ...

    def answer_batch(
        self, requests: list[AnswerRequest], on_result: ResultCallback | None = None
    ) -> list[Answer]: ...

    def close(self) -> None: ...


# ----------------------------------------------------------------------------- OpenAI-compatible
class OpenAIAnswerer:
    """Answers from a chat-completions server (see the module docstring).

    Args:
        model: the served model name (e.g. ``Qwen/Qwen2.5-VL-3B-Instruct``).
        base_url: the server's ``/v1`` URL (default None: OpenAI's).
        api_key_env: name of the environment variable with the key (default
            ``OPENAI_API_KEY``); None or "" for local servers that need none.
        max_tokens: answer token limit (default 64; captions may want more).
        temperature: sampling temperature (default 0.0, greedy).
        seed: request seed (default None).
        concurrency: requests in flight at once (default 8).
        timeout_s: per-request timeout (default 120).
        max_attempts: attempts per question, retries included (default 4).
        backoff_base_s, backoff_max_s: exponential backoff bounds (default 1, 30).
        image_detail: the ``detail`` of each image (default "high": full resolution).
        max_tokens_field: "max_tokens" (default) or "max_completion_tokens".
        extra_body: extra request fields for the server (default None).
        deadline_s: bound on each whole request (default None: 4 x ``timeout_s``).
        max_response_bytes: bound on each response body (default 8 MiB).
        max_answer_chars: answer characters kept (default 20,000).
    """

    backend = "openai"

    def __init__(
        self,
        model: str,
        base_url: str | None = None,
        api_key_env: str | None = "OPENAI_API_KEY",
        max_tokens: int = 64,
        temperature: float = 0.0,
        seed: int | None = None,
        concurrency: int = 8,
        timeout_s: float = 120.0,
        max_attempts: int = 4,
        backoff_base_s: float = 1.0,
        backoff_max_s: float = 30.0,
        image_detail: str = "high",
        max_tokens_field: str = "max_tokens",
        extra_body: dict[str, Any] | None = None,
        deadline_s: float | None = None,
        max_response_bytes: int | None = None,
        max_answer_chars: int | None = None,
    ) -> None:
        from compressai_vlic.judges.chat import ChatClient, ChatEndpoint

        if max_tokens < 1:
            raise ConfigError(f"max_tokens must be >= 1, got {max_tokens}")
        self.endpoint = ChatEndpoint.pick(locals())
        self.client = ChatClient(self.endpoint)
        self.model = model
        self.base_url = base_url
        self.max_tokens = int(max_tokens)
        self.temperature = float(temperature)
        self.seed = seed
        self.name = f"openai:{model}"
        self.stats = AnswerStats()

    def __repr__(self) -> str:
        from compressai_vlic.judges.secrets import public_url

        e = self.endpoint
        return (
            f"OpenAIAnswerer(model={e.model!r}, base_url={public_url(e.base_url)!r}, "
            f"api_key_env={e.api_key_env!r})"
        )

    @property
    def transport_stats(self) -> Any:
        """HTTP attempts, retries and token usage (the chat client's counters)."""
        return self.client.stats

    def cache_identity(self) -> dict[str, Any]:
        """Everything that determines an answer; never the key or the URL."""
        e = self.endpoint
        return {
            "backend": self.backend,
            "model": e.model,
            "sampling": {
                "temperature": self.temperature,
                "seed": self.seed,
                e.max_tokens_field: self.max_tokens,
                "image_detail": e.image_detail,
                "extra_body": e.extra_body,
            },
        }

    async def _answer(self, request: AnswerRequest) -> Answer:
        start = time.perf_counter()
        image = check_image(request.image)
        url = await asyncio.to_thread(png_data_url, image)
        content = [self.endpoint.image(url), {"type": "text", "text": request.prompt}]
        body = self.endpoint.body(
            [{"role": "user", "content": content}], self.temperature, self.max_tokens, self.seed
        )
        reply = await self.client.call(
            lambda _logprobs: body, lambda _choice, text, refusal: text or refusal or ""
        )
        answer = Answer(
            text=self.client.public_text(reply.value or ""),
            status="failed" if reply.failed else "ok",
            error=self.client.scrub(reply.error) if reply.error else None,
            latency_s=time.perf_counter() - start,
            usage=reply.usage,
        )
        self.stats.count(answer)
        return answer

    async def _answer_notify(
        self, index: int, request: AnswerRequest, on_result: ResultCallback | None
    ) -> Answer:
        answer = await self._answer(request)
        if on_result is not None:
            on_result(index, answer)
        return answer

    def answer_batch(
        self, requests: list[AnswerRequest], on_result: ResultCallback | None = None
    ) -> list[Answer]:
        """All requests in flight at once (bounded by ``concurrency``), results in input order;
        ``on_result(index, answer)`` as each one finishes (from the client's thread)."""
        futures = [
            self.client.submit(self._answer_notify(i, r, on_result)) for i, r in enumerate(requests)
        ]
        return [f.result() for f in futures]

    def close(self) -> None:
        self.client.close()


# ----------------------------------------------------------------------------- Hugging Face
def _load_adaptor(model: Any, path: str) -> Any:
    try:
        from compressai_vlic.vlm.adaptor import load_adaptor
    except ImportError as exc:
        raise ConfigError(
            f"an adaptor was given ({path}) but compressai_vlic.vlm.adaptor cannot be imported "
            f"({exc})"
        ) from exc
    return load_adaptor(model, path)


class HFAnswerer:
    """Answers from a local image-text-to-text checkpoint (see the module docstring).

    Args:
        model: a local folder or Hub id (loaded as :class:`~compressai_vlic.judges.HFJudge` loads).
        device: torch device (default "cpu").
        dtype: "auto" (default), "float32", "bfloat16" or "float16".
        batch_size: images per generation call (default 4).
        max_new_tokens: answer token limit (default 32).
        adaptor: path of a codec-conditioned adapter file (default None: the base model); the
            vision tower is set to each request's (codec, rate level) before it is answered.
        local_files_only, trust_remote_code, revision, cache_dir: passed to ``from_pretrained``.
    """

    backend = "hf"

    def __init__(
        self,
        model: str,
        device: str = "cpu",
        dtype: str = "auto",
        batch_size: int = 4,
        max_new_tokens: int = 32,
        adaptor: str | None = None,
        local_files_only: bool = False,
        trust_remote_code: bool = False,
        revision: str | None = None,
        cache_dir: str | None = None,
    ) -> None:
        from compressai_vlic.judges.hf_judge import load_vlm, model_identity

        if batch_size < 1 or max_new_tokens < 1:
            raise ConfigError("batch_size and max_new_tokens must be >= 1")
        self.model_id = str(model)
        self.batch_size = int(batch_size)
        self.max_new_tokens = int(max_new_tokens)
        self.processor, self.model, self.tokenizer = load_vlm(
            self.model_id, device, dtype, local_files_only, trust_remote_code, revision, cache_dir
        )
        self._identity = model_identity(self.model_id, self.model, revision, cache_dir)
        self.adaptor = None if adaptor is None else str(adaptor)
        self.handle = None if adaptor is None else _load_adaptor(self.model, str(adaptor))
        self.name = f"hf:{Path(self.model_id).name}"
        self.stats = AnswerStats()
        self._lock = threading.Lock()

    @property
    def adaptor_id(self) -> str | None:
        return None if self.handle is None else str(self.handle.adaptor_id)

    def cache_identity(self) -> dict[str, Any]:
        return {
            "backend": self.backend,
            "model": self._identity,
            "sampling": {
                "decode": "greedy",
                "dtype": str(self.model.dtype),
                "max_new_tokens": self.max_new_tokens,
            },
            "adaptor": self.adaptor_id,
        }

    def _prompt(self, question: str) -> str:
        messages = [
            {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}
        ]
        return self.processor.apply_chat_template(
            messages, add_generation_prompt=True, tokenize=False
        )

    def _generate(self, chunk: list[AnswerRequest]) -> list[Answer]:
        start = time.perf_counter()
        texts = [self._prompt(r.prompt) for r in chunk]
        images = [[to_pil(check_image(r.image))] for r in chunk]
        inputs = self.processor(text=texts, images=images, padding=True, return_tensors="pt")
        inputs = inputs.to(self.model.device, dtype=self.model.dtype)
        with self._lock, torch.inference_mode():
            if self.handle is not None:
                codec, level = chunk[0].condition or ("uncompressed", 0)
                self.handle.set_condition(codec, level)
            generated = self.model.generate(
                **inputs, max_new_tokens=self.max_new_tokens, do_sample=False
            )
        new = generated[:, inputs["input_ids"].shape[1] :]
        decoded = self.tokenizer.batch_decode(new, skip_special_tokens=True)
        per = (time.perf_counter() - start) / len(chunk)
        pad = self.tokenizer.pad_token_id
        out = []
        for i, text in enumerate(decoded):
            completion = int((new[i] != pad).sum()) if pad is not None else int(new.shape[1])
            out.append(
                Answer(text=text.strip(), latency_s=per, usage={"completion_tokens": completion})
            )
        return out

    def answer_batch(
        self, requests: list[AnswerRequest], on_result: ResultCallback | None = None
    ) -> list[Answer]:
        """Generation in batches of ``batch_size`` requests that share a condition."""
        out: list[Answer | None] = [None] * len(requests)
        groups: dict[tuple[str, int] | None, list[int]] = {}
        for i, r in enumerate(requests):
            key = r.condition if self.handle is not None else None
            groups.setdefault(key, []).append(i)
        for indices in groups.values():
            for k in range(0, len(indices), self.batch_size):
                part = indices[k : k + self.batch_size]
                try:
                    done = self._generate([requests[i] for i in part])
                except VLICError:  # misconfiguration (e.g. a condition the adaptor rejects)
                    raise
                except (RuntimeError, ValueError) as exc:  # e.g. out of memory: these failed
                    reason = f"model call failed: {exc.__class__.__name__}: {str(exc)[:200]}"
                    done = [Answer("", status="failed", error=reason) for _ in part]
                for i, answer in zip(part, done, strict=True):
                    self.stats.count(answer)
                    out[i] = answer
                    if on_result is not None:
                        on_result(i, answer)
        return [a for a in out if a is not None]

    def close(self) -> None:
        return None


# ----------------------------------------------------------------------------- cache
def answer_key(image_digest_: str, prompt: str, identity: dict[str, Any],
               condition: tuple[str, int] | None = None) -> str:  # fmt: skip
    """sha256 over the image's pixel digest, the prompt, the answerer identity and (with an
    adaptor, whose answers depend on it) the codec condition."""
    payload = {"image": image_digest_, "prompt": prompt, "answerer": identity}
    if identity.get("adaptor"):
        payload["condition"] = list(condition) if condition else None
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


class CachedAnswerer:
    """Wraps an answerer with a persistent answer cache (see the module docstring)."""

    def __init__(self, answerer: Answerer, cache: Any) -> None:
        from compressai_vlic.judges.cache import JudgmentCache

        self.answerer = answerer
        self.cache = cache if isinstance(cache, JudgmentCache) else JudgmentCache(cache)
        self.backend = answerer.backend
        self.name = answerer.name
        self.hits = 0
        self.stored = 0
        self._lock = threading.Lock()

    def cache_identity(self) -> dict[str, Any]:
        return dict(self.answerer.cache_identity())

    def key(self, request: AnswerRequest) -> str:
        return answer_key(
            image_digest(request.image), request.prompt, self.cache_identity(), request.condition
        )

    def answer_batch(
        self, requests: list[AnswerRequest], on_result: ResultCallback | None = None
    ) -> list[Answer]:
        """Hits from the cache; misses from the wrapped answerer, each stored as it finishes."""
        keys = [self.key(r) for r in requests]
        out: list[Answer | None] = []
        for i, key in enumerate(keys):
            value = self.cache.get_json(key)
            hit = None
            if isinstance(value, dict) and isinstance(value.get("text"), str):
                hit = Answer(text=value["text"], usage=value.get("usage"), cached=True)
                self.hits += 1
                if on_result is not None:
                    on_result(i, hit)
            out.append(hit)
        todo = [i for i, a in enumerate(out) if a is None]
        if todo:

            def store(k: int, answer: Answer) -> None:
                if not answer.failed:
                    self.cache.put_json(keys[todo[k]], {"text": answer.text, "usage": answer.usage})
                    with self._lock:
                        self.stored += 1
                if on_result is not None:
                    on_result(todo[k], answer)

            fresh = self.answerer.answer_batch([requests[i] for i in todo], on_result=store)
            for i, answer in zip(todo, fresh, strict=True):
                out[i] = answer
        return [a for a in out if a is not None]

    def close(self) -> None:
        self.answerer.close()
        self.cache.close()


def make_answerer(backend: BackendType, **options: Any) -> Answerer:
    """Build an answerer of ``backend`` ("openai" or "hf") from its keyword options."""
    check_option("backend", backend, BackendType)
    cls = OpenAIAnswerer if backend == "openai" else HFAnswerer
    try:
        return cls(**options)
    except TypeError as exc:
        raise ConfigError(f"backend {backend!r}: bad options ({exc})") from exc
