"""A local Hugging Face VLM as a judge: soft reward from the answer-token probabilities.

Loads any image-text-to-text checkpoint (Qwen2.5-VL, SmolVLM/Idefics3, LLaVA, PaliGemma, ...)
through ``AutoProcessor`` and ``AutoModelForImageTextToText``, renders the prompt with the
checkpoint's own chat template, and in ``decode_type="logits"`` mode reads the next-token
distribution after the assistant prefix "Answer:": P(A) = P(A-tokens) / (P(A-tokens) +
P(B-tokens)), summed over every single-token spelling of each letter. Soft probabilities are a
better reward than a hard choice (VLM preference-reasoning results), and one forward pass per
batch is much cheaper than generation. ``decode_type="generate"`` runs greedy generation instead
and parses the answer strictly (needed for the VLIC score protocol).

Images are handed to the processor as full-resolution 8-bit RGB PIL images; any resizing is the
checkpoint's own preprocessing (e.g. LLaVA's 336 px crop, Qwen2-VL's dynamic resolution).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import torch

from compressai_vlic.errors import CheckpointError, ConfigError, JudgeError
from compressai_vlic.judges.encoding import check_triplet, to_pil
from compressai_vlic.judges.parsing import abstain, parse_answer
from compressai_vlic.judges.prompts import ANSWER_PREFIX, PromptTemplate, PromptType, get_template
from compressai_vlic.judges.types import JudgeRequest, Judgment, Vote, choice_from_score
from compressai_vlic.options import check_option

DecodeType = Literal["logits", "generate"]
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
    ) -> None:
        check_option("decode_type", decode_type, DecodeType)
        if dtype not in DTYPES:
            raise ConfigError(f"dtype must be one of {tuple(DTYPES)}")
        if batch_size < 1:
            raise ConfigError("batch_size must be >= 1")
        self.template: PromptTemplate = get_template(prompt_type, attribute)
        if decode_type == "logits" and self.template.answer_type != "choice":
            raise ConfigError(
                "decode_type='logits' reads P(A) vs P(B) and needs prompt_type='ab-choice'; "
                "use decode_type='generate' for the vlic-score protocol"
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
                "max_new_tokens": self.max_new_tokens if self.decode_type == "generate" else 0,
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

    def _run_batch(self, requests: list[JudgeRequest]) -> list[Judgment]:
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
            rationale=raw if self.decode_type == "generate" else "",
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
            except JudgeError:
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

    def compare(self, reference: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> Judgment:
        return self.compare_batch([JudgeRequest(reference, a, b)])[0]

    async def acompare(self, reference: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> Judgment:
        return await asyncio.to_thread(self.compare, reference, a, b)

    def describe(self) -> str:
        return json.dumps(self.cache_identity(), sort_keys=True)
