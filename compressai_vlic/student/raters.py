"""Point-wise teachers: rate one image against its original, for the student's regression.

- :class:`OpenAIRater`: any OpenAI-compatible chat-completions VLM with the rating prompt
  (:mod:`.rating`), bounded retries on 429/5xx/timeouts, a clear error on misconfiguration.
- :class:`HFRater`: a local Hugging Face VLM (``AutoModelForImageTextToText``); the rating is
  the expectation of its distribution over the digits 1-9 right after "Rating:", and it abstains
  when those digits get too little probability (the model is not answering).
- :class:`MetricRater`: a full-reference metric's own value.

:func:`rate_pairs` turns any of them into :class:`~.teacher.TeacherPoint` rows;
:func:`~.teacher.write_teacher_points` saves them for ``student train --points``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch

from compressai_vlic.errors import JudgeError
from compressai_vlic.student.rating import (
    RATING_MAX,
    RATING_MIN,
    RATING_PREFIX,
    RatingPromptType,
    parse_rating,
    rating_template,
)
from compressai_vlic.student.teacher import TeacherPoint


@dataclass
class Rating:
    """One point-wise answer: ``value`` (higher = better) or None with ``error``."""

    value: float | None
    raw: str = ""
    error: str | None = None
    status: str = "rated"  # "rated" | "abstained" | "failed" (could not be asked)


class Rater(Protocol):
    name: str
    higher_is_better: bool

    def rate(self, reference: torch.Tensor, image: torch.Tensor) -> Rating: ...


def _check_pair(reference: torch.Tensor, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    from compressai_vlic.judges.encoding import check_image

    ref, img = check_image(reference, "reference"), check_image(image, "image")
    if ref.shape != img.shape:
        raise JudgeError(
            f"reference and image must have the same size, got {tuple(ref.shape)}, {tuple(img.shape)}"
        )
    return ref, img


class OpenAIRater:
    """Point-wise VLM rater over an OpenAI-compatible server.

    A prompt-plus-parser adapter over the one chat transport
    (:mod:`compressai_vlic.judges.chat`: client, retry budget, bounds, key scrubbing).

    Args:
        model: model name at the endpoint (required).
        base_url: server URL (default: the client's, i.e. api.openai.com).
        api_key_env: environment variable holding the key ("" for local servers; default
            OPENAI_API_KEY); the key is never stored on the rater or written anywhere.
        prompt_type: "rating" (describe, then rate; default) or "rating-short".
        temperature: sampling temperature (default 0).
        max_tokens: answer length limit (default 1024 for "rating", 16 for "rating-short").
        timeout_s: per-read timeout (default 120).
        max_attempts: tries per image on 429/5xx/timeouts (default 4).
        deadline_s: bound on each whole request (default None: 4 x ``timeout_s``).
        max_response_bytes: bound on each response body (default 8 MiB).
        max_answer_chars: answer characters kept (default 20,000).
    """

    higher_is_better = True

    def __init__(
        self,
        model: str,
        base_url: str | None = None,
        api_key_env: str | None = "OPENAI_API_KEY",
        prompt_type: RatingPromptType = "rating",
        temperature: float = 0.0,
        max_tokens: int | None = None,
        timeout_s: float = 120.0,
        max_attempts: int = 4,
        deadline_s: float | None = None,
        max_response_bytes: int | None = None,
        max_answer_chars: int | None = None,
    ) -> None:
        from compressai_vlic.judges.chat import ChatClient, ChatEndpoint

        self.template = rating_template(prompt_type)
        self.temperature = float(temperature)
        self.max_tokens = int(max_tokens or (1024 if prompt_type == "rating" else 16))
        endpoint = ChatEndpoint(
            model=model,
            base_url=base_url,
            api_key_env=api_key_env,
            concurrency=1,
            timeout_s=timeout_s,
            deadline_s=deadline_s,
            max_attempts=max_attempts,
            backoff_base_s=0.1,
            backoff_max_s=2.0,
            max_response_bytes=max_response_bytes or 0,
            max_answer_chars=max_answer_chars or 0,
        )
        self.model, self.max_attempts = endpoint.model, endpoint.max_attempts
        self.client = ChatClient(endpoint)
        self.name = f"openai:{model}:{self.template.version}"

    def rate(self, reference: torch.Tensor, image: torch.Tensor) -> Rating:
        from compressai_vlic.judges.encoding import png_data_url

        ref, img = _check_pair(reference, image)
        e = self.client.endpoint
        messages = e.template_messages(self.template, [png_data_url(ref), png_data_url(img)])
        body = e.body(messages, self.temperature, self.max_tokens)
        call = self.client.call(
            lambda _logprobs: body,
            lambda choice, text, refusal: parse_rating(text, refusal, choice.finish_reason),
        )
        reply = self.client.submit(call).result()
        if reply.value is None:
            return Rating(None, "", self.client.scrub(reply.error or "failed"), "failed")
        text = self.client.public_text(reply.text)
        if reply.value.value is None:
            return Rating(None, text, reply.value.error, "abstained")
        return Rating(reply.value.value, text)

    def close(self) -> None:
        """Close the HTTP client and its background loop."""
        self.client.close()


class HFRater:
    """Point-wise rater on a local VLM: expected rating from the digit logits after "Rating:".

    Args:
        model: local folder or hub id of an image-text-to-text checkpoint (required).
        prompt_type: "rating-short" (default) or "rating".
        device: torch device (default "cpu").
        min_answer_mass: abstain when the digits 1-9 get less probability (default 0.1).
        local_files_only: never contact the hub (default True).
    """

    higher_is_better = True

    def __init__(
        self,
        model: str,
        prompt_type: RatingPromptType = "rating-short",
        device: str = "cpu",
        min_answer_mass: float = 0.1,
        local_files_only: bool = True,
    ) -> None:
        from compressai_vlic.errors import CheckpointError
        from compressai_vlic.judges.hf_judge import load_vlm

        self.template = rating_template(prompt_type)
        # the one local VLM loader; float32 as before (a rating reads the digit logits)
        self.processor, self.model, _ = load_vlm(
            model, device, "float32", local_files_only=local_files_only
        )
        tok = self.processor.tokenizer
        self.digit_ids: list[list[int]] = []
        for d in range(RATING_MIN, RATING_MAX + 1):
            ids = {
                tok.encode(s, add_special_tokens=False)[0]
                for s in (str(d), f" {d}")
                if len(tok.encode(s, add_special_tokens=False)) == 1
            }
            if not ids:
                raise CheckpointError(f"{model}: no single token spells the rating {d}")
            self.digit_ids.append(sorted(ids))
        self.min_answer_mass = float(min_answer_mass)
        self.device = device
        self.name = f"hf:{model}:{self.template.version}"

    def _prompt(self) -> str:
        content: list[dict[str, Any]] = []
        for i, part in enumerate(self.template.parts()):
            if part.kind == "image":
                content.append({"type": "image"})
            else:
                text = f"{self.template.system}\n{part.text}" if i == 0 else part.text
                content.append({"type": "text", "text": text})
        text = self.processor.apply_chat_template(
            [{"role": "user", "content": content}], add_generation_prompt=True, tokenize=False
        )
        return f"{text}{RATING_PREFIX}"

    def rate(self, reference: torch.Tensor, image: torch.Tensor) -> Rating:
        from compressai_vlic.judges.hf_judge import to_pil

        ref, img = _check_pair(reference, image)
        inputs = self.processor(
            text=[self._prompt()], images=[[to_pil(ref), to_pil(img)]], return_tensors="pt"
        )
        with torch.inference_mode():
            logits = self.model(**inputs.to(self.device)).logits[0, -1].float()
        p = torch.softmax(logits, dim=-1)
        mass = torch.stack([p[ids].sum() for ids in self.digit_ids])
        total = float(mass.sum())
        raw = "P(rating)=" + ",".join(f"{float(m):.4f}" for m in mass)
        if total < self.min_answer_mass:
            return Rating(
                None,
                raw,
                f"rating mass {total:.4f} < min_answer_mass {self.min_answer_mass}: the model is not rating",
                "abstained",
            )
        scale = torch.arange(RATING_MIN, RATING_MAX + 1, dtype=torch.float32)
        return Rating(float((mass / total * scale).sum()), raw)


class MetricRater:
    """A full-reference metric as a point-wise teacher (its own value and direction)."""

    def __init__(self, metric_type: str = "ssimulacra2", **kwargs: Any) -> None:
        from compressai_vlic.metrics import get_metric

        self.metric = get_metric(metric_type, **kwargs)
        self.higher_is_better = bool(self.metric.higher_is_better)
        self.name = metric_type

    def rate(self, reference: torch.Tensor, image: torch.Tensor) -> Rating:
        ref, img = _check_pair(reference, image)
        with torch.inference_mode():
            value = float(self.metric(ref[None], img[None]).reshape(-1)[0])
        return Rating(value, f"{self.name}={value:.6g}")


def rate_pairs(rater: Rater, items: Sequence[tuple[str, str]]) -> list[TeacherPoint]:
    """Rate (reference path, image path) items; failures are left out (rate them again later),
    abstentions kept with ``value=None`` (no label)."""
    from compressai_vlic.image_io import load_image

    out = []
    for ref_path, img_path in items:
        rating = rater.rate(load_image(ref_path).tensor, load_image(img_path).tensor)
        if rating.status == "failed":
            continue
        out.append(
            TeacherPoint(
                ref_path,
                img_path,
                rating.value,
                rater.higher_is_better,
                rater.name,
                ref_path,
                rating.raw[:2000],
                rating.error,
            )
        )
    return out
