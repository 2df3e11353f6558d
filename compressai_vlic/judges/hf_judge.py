"""A local Hugging Face VLM as a judge: soft reward from the answer-token probabilities.

Loads any image-text-to-text checkpoint (Qwen2.5-VL, SmolVLM/Idefics3, LLaVA, PaliGemma, ...)
through ``AutoProcessor`` and ``AutoModelForImageTextToText``, renders the prompt with the
checkpoint's own chat template, and in ``decode_type="logits"`` mode reads the next-token
distribution after the assistant prefix "Answer:": P(A) = P(A-tokens) / (P(A-tokens) +
P(B-tokens)), summed over every single-token spelling of each letter. Soft probabilities are a
better reward than a hard choice (VLM preference-reasoning results), and one forward pass per
batch is much cheaper than generation. ``decode_type="generate"`` runs greedy generation instead
and parses the answer strictly (needed for the VLIC score protocol). ``decode_type="reason"``
generates the reasoning reply, finds its final answer line, and scores the answer position after
the reasoning with one more forward pass over prompt + reply: P(A) over the answer letters
(``reason-choice``), or the distribution and expected value over the -5..5 score tokens
(``vlic-score``) -- soft rewards after reasoning.

Images are handed to the processor as full-resolution 8-bit RGB PIL images; any resizing is the
checkpoint's own preprocessing (e.g. LLaVA's 336 px crop, Qwen2-VL's dynamic resolution).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import torch

from compressai_vlic.errors import CheckpointError, ConfigError, JudgeError
from compressai_vlic.judges.encoding import check_triplet, to_pil
from compressai_vlic.judges.parsing import (
    SCORE_MAX,
    SCORE_MIN,
    ScoreDistribution,
    TokenLogprob,
    abstain,
    answer_token_index,
    parse_answer,
)
from compressai_vlic.judges.prompts import ANSWER_PREFIX, PromptTemplate, PromptType, get_template
from compressai_vlic.judges.types import JudgeRequest, Judgment, Vote, choice_from_score
from compressai_vlic.options import check_option

DecodeType = Literal["logits", "generate", "reason"]
DTYPES = {
    "auto": "auto",
    "float32": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
}


def _fingerprint(model: str) -> str:
    """Identity of a local checkpoint folder (config + weight files), so that two different
    checkpoints saved under the same path never share cache entries."""
    path = Path(model)
    if not path.is_dir():
        return model
    h = hashlib.sha256()
    for file in sorted(path.iterdir()):
        if file.suffix not in (".json", ".safetensors", ".bin", ".jinja", ".model"):
            continue
        h.update(file.name.encode())
        size = file.stat().st_size
        h.update(str(size).encode())
        with file.open("rb") as f:
            if size <= 64 << 20:
                for chunk in iter(lambda f=f: f.read(1 << 20), b""):
                    h.update(chunk)
            else:  # big shards: head and tail are enough to tell checkpoints apart
                h.update(f.read(1 << 20))
                f.seek(-(1 << 20), 2)
                h.update(f.read(1 << 20))
    return f"{path.name}@{h.hexdigest()[:16]}"


def _hub_commit(model_id: str, revision: str | None, cache_dir: str | None) -> str | None:
    """The commit a Hub id resolved to: the snapshot folder its config.json was loaded from."""
    try:
        from huggingface_hub import try_to_load_from_cache

        found = try_to_load_from_cache(
            model_id, "config.json", cache_dir=cache_dir, revision=revision
        )
    except Exception:  # not a Hub id (e.g. a missing local path): no commit to record
        return None
    if isinstance(found, str):
        path = Path(found)
        if path.parent.parent.name == "snapshots":
            return path.parent.name
    return None


def model_identity(model_id: str, model: Any, revision: str | None, cache_dir: str | None) -> str:
    """What answered: a local folder's content fingerprint, or a Hub id at its resolved commit
    (a Hub id names a moving branch)."""
    commit = getattr(model.config, "_commit_hash", None) or _hub_commit(
        model_id, revision, cache_dir
    )
    if commit and not Path(model_id).is_dir():
        return f"{model_id}@{commit}"
    return _fingerprint(model_id)


def load_vlm(
    model_id: str,
    device: str = "cpu",
    dtype: str = "auto",
    local_files_only: bool = False,
    trust_remote_code: bool = False,
    revision: str | None = None,
    cache_dir: str | None = None,
) -> tuple[Any, Any, Any]:
    """(processor, model in eval mode on ``device``, left-padding tokenizer) of an
    image-text-to-text checkpoint, through ``AutoProcessor`` / ``AutoModelForImageTextToText``."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    if dtype not in DTYPES:
        raise ConfigError(f"dtype must be one of {tuple(DTYPES)}")
    kwargs: dict[str, Any] = {
        "local_files_only": local_files_only,
        "trust_remote_code": trust_remote_code,
    }
    if revision is not None:
        kwargs["revision"] = revision
    if cache_dir is not None:
        kwargs["cache_dir"] = cache_dir
    try:
        processor = AutoProcessor.from_pretrained(model_id, **kwargs)
        model = AutoModelForImageTextToText.from_pretrained(model_id, dtype=DTYPES[dtype], **kwargs)
    except (OSError, ValueError) as exc:
        raise CheckpointError(
            f"cannot load a VLM from {model_id!r}: {exc}. Give a local folder or hub id "
            "of an image-text-to-text checkpoint (AutoModelForImageTextToText)"
        ) from exc
    model.to(device).eval()
    tokenizer = getattr(processor, "tokenizer", None)
    if tokenizer is None:
        raise CheckpointError(f"{model_id}: the processor has no tokenizer")
    tokenizer.padding_side = "left"  # the answer position is the last one in every row
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return processor, model, tokenizer


def _usage_counts(prompt: int, completion: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }


class HFJudge:
    """2AFC judge running a local VLM (see module docstring)."""

    backend = "hf"

    def __init__(
        self,
        model: str,
        prompt_type: PromptType = "ab-choice",
        attribute: str = "fidelity",
        decode_type: DecodeType = "logits",
        device: str = "cpu",
        dtype: str = "auto",
        batch_size: int = 4,
        min_answer_mass: float = 0.1,
        max_new_tokens: int = 512,
        local_files_only: bool = False,
        trust_remote_code: bool = False,
        revision: str | None = None,
        cache_dir: str | None = None,
        name: str | None = None,
        reference: bool = True,
    ) -> None:
        check_option("decode_type", decode_type, DecodeType)
        if dtype not in DTYPES:
            raise ConfigError(f"dtype must be one of {tuple(DTYPES)}")
        if batch_size < 1:
            raise ConfigError("batch_size must be >= 1")
        self.template: PromptTemplate = get_template(prompt_type, attribute, reference)
        if decode_type == "logits" and self.template.answer_type != "choice":
            raise ConfigError(
                "decode_type='logits' reads P(A) vs P(B) and needs prompt_type='ab-choice'; "
                "use decode_type='generate' for the vlic-score protocol"
            )
        if decode_type == "logits" and self.template.reasons:
            raise ConfigError(
                f"prompt_type={prompt_type!r} reasons before answering; decode_type='logits' would "
                "read the answer before any reasoning: use decode_type='reason'"
            )
        self.model_id = str(model)
        self.decode_type = decode_type
        self.batch_size = int(batch_size)
        self.min_answer_mass = float(min_answer_mass)
        self.max_new_tokens = int(max_new_tokens)
        self.name = name or f"hf:{Path(self.model_id).name}"
        self._lock = threading.Lock()
        self.revision = revision
        self.cache_dir = cache_dir
        self._load(device, dtype, local_files_only, trust_remote_code)
        self._identity = model_identity(self.model_id, self.model, revision, cache_dir)

    def _load(self, device: str, dtype: str, local_files_only: bool, trust: bool) -> None:
        self.processor, self.model, self.tokenizer = load_vlm(
            self.model_id, device, dtype, local_files_only, trust, self.revision, self.cache_dir
        )
        self.answer_ids = {letter: self._letter_ids(letter) for letter in ("A", "B")}

    def _letter_ids(self, letter: str) -> list[int]:
        ids: set[int] = set()
        for spelling in (letter, f" {letter}"):
            encoded = self.tokenizer.encode(spelling, add_special_tokens=False)
            if len(encoded) == 1:
                ids.add(int(encoded[0]))
        if not ids:
            raise CheckpointError(f"{self.model_id}: no single token spells {letter!r}")
        return sorted(ids)

    def cache_identity(self) -> dict[str, Any]:
        return {
            "backend": self.backend,
            "model": self._identity,
            "prompt_version": self.template.version,
            "sampling": {
                "decode_type": self.decode_type,
                "dtype": str(self.model.dtype),
                "max_new_tokens": self.max_new_tokens if self.decode_type != "logits" else 0,
                "min_answer_mass": self.min_answer_mass,
            },
        }

    # ------------------------------------------------------------------ prompt

    def _prompt(self) -> str:
        content: list[dict[str, Any]] = []
        for i, part in enumerate(self.template.parts()):
            if part.kind == "image":
                content.append({"type": "image"})
            else:  # the system text goes first in the user turn: not every template has a system role
                text = f"{self.template.system}\n{part.text}" if i == 0 else part.text
                content.append({"type": "text", "text": text})
        messages = [{"role": "user", "content": content}]
        text = self.processor.apply_chat_template(
            messages, add_generation_prompt=True, tokenize=False
        )
        if self.decode_type == "logits":
            text = f"{text}{ANSWER_PREFIX}"
        return text

    def _inputs(self, requests: list[JudgeRequest]) -> Any:
        images = []
        for r in requests:
            ref, a, b = check_triplet(r.reference, r.a, r.b)
            if not self.template.reference:
                images.append([to_pil(a), to_pil(b)])
                continue
            if ref is None:
                raise ConfigError(
                    "this judge's prompt shows the Original but the pair has no reference image; "
                    "build it with reference=False for reference-free questions"
                )
            images.append([to_pil(ref), to_pil(a), to_pil(b)])
        prompt = self._prompt()
        inputs = self.processor(
            text=[prompt] * len(requests), images=images, padding=True, return_tensors="pt"
        )
        return inputs.to(self.model.device, dtype=self.model.dtype)

    # ------------------------------------------------------------------ decoding

    def _from_logits(self, logits: torch.Tensor) -> list[tuple[float, float, str | None, str]]:
        """(P(A), score, error, raw) per row from the last position's logits."""
        logp = torch.log_softmax(logits.float(), dim=-1)
        la = torch.logsumexp(logp[:, self.answer_ids["A"]], dim=-1)
        lb = torch.logsumexp(logp[:, self.answer_ids["B"]], dim=-1)
        prob_a = torch.sigmoid(la - lb)
        mass = la.exp() + lb.exp()
        out = []
        for p, m in zip(prob_a.tolist(), mass.tolist()):
            raw = f"P(A)={p:.6f} answer_mass={m:.6f}"
            error = None
            if m < self.min_answer_mass:
                error = (
                    f"answer mass {m:.4f} < min_answer_mass {self.min_answer_mass}: "
                    "the model is not answering A or B"
                )
            out.append((p, 2.0 * p - 1.0, error, raw))
        return out

    # ------------------------------------------------------------------ soft reward after reasoning

    def _answer_index(self, new_ids: list[int]) -> int | None:
        """Index (in the generated ids) of the token where the final answer's value starts."""
        pieces, previous = [], ""
        for k in range(1, len(new_ids) + 1):  # decode prefixes: robust to multi-byte pieces
            text = self.tokenizer.decode(new_ids[:k], skip_special_tokens=True)
            pieces.append(TokenLogprob(text[len(previous) :], 0.0))
            previous = text
        return answer_token_index(pieces, self.template.answer_type)

    def _score_distribution(
        self, inputs: Any, prefix: torch.Tensor, logp: torch.Tensor, lead: str
    ) -> ScoreDistribution:
        """P(score) over SCORE_MIN..SCORE_MAX after ``prefix``: each score's spelling (with the
        generated token's leading whitespace) is scored token by token; spellings that share a
        first token (e.g. "-" of "-3") cost one more forward pass per shared prefix."""
        logps: dict[int, float] = {}
        memo: dict[tuple[int, ...], torch.Tensor] = {(): logp}
        for value in range(SCORE_MIN, SCORE_MAX + 1):
            ids = self.tokenizer.encode(f"{lead}{value}", add_special_tokens=False)
            total = 0.0
            for j, token in enumerate(ids):
                path = tuple(ids[:j])
                if path not in memo:
                    memo[path] = self._next_logp(
                        inputs, torch.cat([prefix, prefix.new_tensor(path)])
                    )
                total += float(memo[path][token])
            logps[value] = total
        mass = sum(math.exp(v) for v in logps.values())
        probs = {v: math.exp(lp) / mass for v, lp in logps.items()} if mass > 0 else {}
        return ScoreDistribution(probs, mass)

    def _next_logp(self, inputs: Any, ids: torch.Tensor) -> torch.Tensor:
        """log P(next token) after ``ids`` (prompt + reply so far), with the prompt's images."""
        extra = {k: v for k, v in inputs.items() if k not in ("input_ids", "attention_mask")}
        logits = self.model(
            input_ids=ids[None], attention_mask=torch.ones_like(ids)[None], **extra
        ).logits[0, -1]
        return torch.log_softmax(logits.float(), dim=-1)

    def _reason_one(self, request: JudgeRequest) -> Judgment:
        """Generate the reasoning reply, then score its final answer position (see module doc)."""
        start = time.perf_counter()
        inputs = self._inputs([request])
        with self._lock, torch.inference_mode():
            generated = self.model.generate(
                **inputs, max_new_tokens=self.max_new_tokens, do_sample=False
            )
            n_prompt = inputs["input_ids"].shape[1]
            new_ids = generated[0, n_prompt:].tolist()
            pad = self.tokenizer.pad_token_id
            while new_ids and pad is not None and new_ids[-1] == pad:
                new_ids.pop()
            text = self.tokenizer.decode(new_ids, skip_special_tokens=True)
            parsed = parse_answer(self.template, text)
            usage = _usage_counts(int(n_prompt), len(new_ids))
            index = None if parsed.error is not None else self._answer_index(new_ids)
            prob_a = expected = None
            if index is not None:
                prefix = generated[0, : n_prompt + index]
                logp = self._next_logp(inputs, prefix)
                if self.template.answer_type == "choice":
                    p, _score, error, _raw = self._from_logits(logp[None])[0]
                    prob_a = None if error else p
                else:
                    token = self.tokenizer.decode([new_ids[index]])
                    lead = token[: len(token) - len(token.lstrip())]
                    dist = self._score_distribution(inputs, prefix, logp, lead)
                    prob_a, expected = dist.prob_a, dist.expected
        latency = time.perf_counter() - start
        judgment = self._judgment(
            parsed.score, parsed.choice, prob_a, text, parsed.error, latency, usage
        )
        judgment.expected_score = judgment.votes[0].expected_score = expected
        return judgment

    def _run_batch(self, requests: list[JudgeRequest]) -> list[Judgment]:
        if self.decode_type == "reason":
            return [self._reason_one(r) for r in requests]
        start = time.perf_counter()
        inputs = self._inputs(requests)
        with self._lock, torch.inference_mode():
            if self.decode_type == "logits":
                logits = self.model(**inputs).logits[:, -1, :]
                rows = self._from_logits(logits)
            else:
                generated = self.model.generate(
                    **inputs, max_new_tokens=self.max_new_tokens, do_sample=False
                )
        per = (time.perf_counter() - start) / len(requests)
        mask = inputs.get("attention_mask")
        prompt_tokens = (
            [int(n) for n in mask.sum(dim=1).tolist()]
            if mask is not None
            else [int(inputs["input_ids"].shape[1])] * len(requests)
        )
        judgments = []
        if self.decode_type == "logits":
            for i, (p, score, error, raw) in enumerate(rows):
                choice = choice_from_score(score)
                usage = _usage_counts(prompt_tokens[i], 0)  # one forward pass generates nothing
                judgments.append(
                    self._judgment(score, choice, None if error else p, raw, error, per, usage)
                )
        else:
            new = generated[:, inputs["input_ids"].shape[1] :]
            pad = self.tokenizer.pad_token_id
            texts = self.tokenizer.batch_decode(new, skip_special_tokens=True)
            for i, text in enumerate(texts):
                parsed = parse_answer(self.template, text)
                completion = int((new[i] != pad).sum()) if pad is not None else int(new.shape[1])
                usage = _usage_counts(prompt_tokens[i], completion)
                judgments.append(
                    self._judgment(
                        parsed.score, parsed.choice, None, text, parsed.error, per, usage
                    )
                )
        return judgments

    def _judgment(
        self,
        score: float,
        choice: Any,
        prob_a: float | None,
        raw: str,
        error: str | None,
        latency: float,
        usage: dict[str, int] | None = None,
        status: str | None = None,
    ) -> Judgment:
        if error is not None:
            bad = abstain(error)
            score, choice = bad.score, bad.choice
        vote = Vote(
            score=score,
            choice=choice,
            prob_a=prob_a,
            order="AB",
            raw=raw,
            error=error,
            status=status,  # type: ignore[arg-type]
            usage=usage,
        )
        return Judgment(
            score=score,
            choice=choice,
            prob_a=prob_a,
            votes=[vote],
            rationale=raw if self.decode_type != "logits" else "",
            latency_s=latency,
            backend=self.backend,
            model=self.model_id,
            prompt_version=self.template.version,
            error=error,
            status=status,  # type: ignore[arg-type]
            usage=usage,
        )

    # ------------------------------------------------------------------ Judge protocol

    def compare_batch(
        self,
        requests: list[JudgeRequest],
        on_result: Callable[[int, Judgment], None] | None = None,
    ) -> list[Judgment]:
        """Forward passes of ``batch_size`` pairs; ``on_result(index, judgment)`` after each."""
        out: list[Judgment] = []
        for i in range(0, len(requests), self.batch_size):
            chunk = requests[i : i + self.batch_size]
            try:
                done = self._run_batch(chunk)
            except (JudgeError, ConfigError):
                raise
            except (RuntimeError, ValueError) as exc:  # e.g. out of memory: the pairs failed
                reason = f"model call failed: {exc.__class__.__name__}: {str(exc)[:200]}"
                done = [
                    self._judgment(0.0, None, None, "", reason, 0.0, status="failed") for _ in chunk
                ]
            for k, judgment in enumerate(done):
                if on_result is not None:
                    on_result(i + k, judgment)
            out.extend(done)
        return out

    def compare(self, reference: torch.Tensor | None, a: torch.Tensor, b: torch.Tensor) -> Judgment:
        return self.compare_batch([JudgeRequest(reference, a, b)])[0]

    async def acompare(
        self, reference: torch.Tensor | None, a: torch.Tensor, b: torch.Tensor
    ) -> Judgment:
        return await asyncio.to_thread(self.compare, reference, a, b)

    def describe(self) -> str:
        return json.dumps(self.cache_identity(), sort_keys=True)
