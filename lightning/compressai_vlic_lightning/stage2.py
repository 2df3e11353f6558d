"""Stage 2: preference post-training of the codec with Diffusion-DPO (VLIC section "post-training").

Each step:
1. a few originals of the batch are encoded and their code decoded twice with different noise;
   the pair goes to the judge in the background (online mode) and is persisted first;
2. every ``refresh_every`` steps the newest judged pairs become the training buffer;
3. a DPO batch is drawn from the buffer: winner and loser are noised with the same eps and t,
   conditioned on the stored code they were decoded from (the encoder stays trainable through a
   straight-through path), and compared by the trained model and the frozen stage-1 reference
   (:class:`compressai_vlic.losses.VLMRewardLoss`);
4. the flow-matching loss on the originals keeps long post-training from diverging, and the
   prior keeps following the (slowly changing) tokens.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import hashlib
import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor

from compressai_vlic.errors import CheckpointError, ConfigError
from compressai_vlic.evaluation.codec_pairs import PairCodes
from compressai_vlic.judges.spec import JudgeSpec
from compressai_vlic.losses import (
    DEFAULT_BETA,
    DEFAULT_LAMBDA_FLOW,
    DEFAULT_WEIGHTING,
    VLMRewardLoss,
    WeightingType,
)
from compressai_vlic.options import check_option
from compressai_vlic_lightning.checkpointing import ResumableModule
from compressai_vlic_lightning.common import (
    NOT_GIVEN,
    CompileMode,
    WeightsType,
    adamw,
    apply_speed_options,
    build_model,
    fixed_flow_matching,
    load_codec,
    psnr,
    weights_spec,
)
from compressai_vlic_lightning.perceptual import (
    PerceptualFallbackType,
    PerceptualType,
    make_perceptual_loss,
    perceptual_distance,
)
from compressai_vlic_lightning.preferences import (
    BufferJudgeStats,
    CallType,
    CandidateType,
    OfflinePreferences,
    PreferenceBatch,
    PreferenceBuffer,
    WorkerType,
)

log = logging.getLogger(__name__)

PreferenceType = Literal["online", "offline"]
FreezeType = Literal["none", "encoder"]
TSamplingType = Literal["uniform", "logit_normal"]


@dataclass
class _Half:
    """One half of a joint winner/loser flow-matching pass, in the criterion's field names."""

    v_target: Tensor
    v_pred: Tensor
    t: Tensor
    noise: Tensor


def _split(fm: Any, n: int) -> tuple[_Half, _Half]:
    return (
        _Half(fm.v_target[:n], fm.v_pred[:n], fm.t[:n], fm.noise[:n]),
        _Half(fm.v_target[n:], fm.v_pred[n:], fm.t[n:], fm.noise[n:]),
    )


def _slice_pairs(pairs: PreferenceBatch, start: int, stop: int) -> PreferenceBatch:
    """Rows [start, stop) of every per-pair tensor of a preference batch."""
    values = {}
    for f in dataclasses.fields(pairs):
        value = getattr(pairs, f.name)
        values[f.name] = value[start:stop] if isinstance(value, Tensor) else value
    return type(pairs)(**values)


_INT_VIEWS = {8: torch.int64, 4: torch.int32, 2: torch.int16, 1: torch.uint8}


def weights_fingerprint(module: torch.nn.Module) -> str:
    """A cheap, exact identity of a module's weights.

    Integer sums of the raw bits (plain and position-weighted, per tensor) do not depend on the
    summation order, so the fingerprint is the same on any machine and thread count.
    """
    parts = []
    with torch.no_grad():
        for key, value in module.state_dict().items():
            bits = value.detach().cpu().contiguous().reshape(-1)
            bits = bits.view(_INT_VIEWS[bits.element_size()]).long()
            weighted = (bits * torch.arange(1, bits.numel() + 1)).sum()
            parts.append(f"{key}:{int(bits.sum())}:{int(weighted)}")
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]


REFERENCE_KEY = "dpo_reference"


def _seed(*parts: Any) -> int:
    """A stable uint32 seed from labels (same inputs -> same decode noise after a resume)."""
    digest = hashlib.sha256(":".join(str(p) for p in parts).encode()).digest()
    return int.from_bytes(digest[:4], "little")


class Stage2Module(ResumableModule):
    """Diffusion-DPO post-training with an online (background-judged) or offline preference set.

    Args:
        weights: the stage-1 weights, any spec of :func:`compressai_vlic.pretrained.load_weights`
            (a Lightning checkpoint's EMA weights; ``last.ckpt#raw`` for the raw ones); the model
            is built from the config stored in them. They also become the frozen reference.
        init_from: the older name of ``weights``; when given (even as None) it wins.
        init_weights_type: the older way to pick "ema" or "raw" weights (``#raw`` now).
        quality: zoo quality used only without ``weights``.
        model_overrides: VLIC config overrides used only without ``weights``.
        lr: learning rate (VLIC: 5e-7 at batch 256).
        beta: DPO temperature (VLIC's value is unpublished; 2500 = the public eps-prediction
            Diffusion-DPO's 0.5 * 5000, a starting point to tune: see compressai_vlic.losses.dpo).
        weighting_type: w(t) of the velocity errors: "eps" (1-t)^2, "uniform", "x0" t^2.
        lambda_flow: weight of the flow-matching regulariser on the originals.
        dpo_weight: weight of the DPO term (default 1). 0 is the ablation's control arm: the
            pairs are still drawn and scored (implicit accuracy and margins are logged) but only
            the regulariser trains.
        perceptual_weight: weight of stage 1's perceptual term (``perceptual_type`` on the
            one-step estimate of the originals in that regulariser; default 0: VLIC's flow term
            alone). A post-training that must keep stage 1's perceptual quality while the
            preference signal is weak (few pairs, a small model) keeps it at stage 1's weight.
        perceptual_type: "lpips" (default), "ms_ssim" or "student" (see Stage1Module).
        perceptual_fallback_type: when LPIPS weights are missing: "ms_ssim", "none" or "error".
        lpips_weights: LPIPS backbone weights file (default: the weight cache).
        student_path: folder of a trained student, for ``perceptual_type="student"``.
        label_type: "hard" (default) or "soft": the expected DPO loss under the judge's
            P(winner better) where the judge reports answer probabilities (others count as sure).
        prior_weight: weight of the token prior's NLL (bpp), so the prior follows the encoder.
        dpo_batch_size: preference pairs per step.
        t_sampling_type: "uniform" or "logit_normal" timesteps for the DPO pairs.
        freeze_type: "none" (VLIC: encoder trainable) or "encoder".
        preference_type: "online" (buffer judged in the background) or "offline".
        judge: the judge, a ``compressai_vlic.judges.JudgeSpec`` (YAML: a ``judge:`` block with
            ``backend``, ``model``, ``options``, ``compose``, ...; default: SSIMULACRA 2). Python
            callers may also pass a ready judge object.
        judge_type, judge_kwargs, judge_compose: the older spelling of ``judge`` (its
            ``backend``, ``options`` and ``compose``), kept for one release.
        preference_dataset: JSONL written by ``compressai-vlic judge`` (offline mode).
        buffer_size: judged pairs trained on (VLIC: ~2,560).
        refresh_every: steps between buffer refreshes (VLIC: 250).
        pairs_per_step: candidates generated per step (default buffer_size / refresh_every).
        warmup_pairs: pairs judged before the first step (default buffer_size).
        buffer_dir: where pairs and judgments persist (default <default_root_dir>/preferences).
        judge_cache: judge cache file (default <buffer_dir>/judge_cache.sqlite).
        judge_worker_type: "thread" (background) or "inline" (synchronous, deterministic).
        judge_batch_size: pairs handed to the judge at once.
        judge_call_type: "async" (pair by pair, persisted as each answer arrives) or "batch".
        candidates: decodes per code (online mode); more than 2 needs ``candidate_type``
            "best_worst".
        candidate_type: "pair" (default: the two decodes are judged against each other) or
            "best_worst" (best-of-N: the ``candidates`` decodes are ranked by the judge's soft
            reward, N (N - 1) calls per code, and the pair is the best and the worst of them).
        keep_rounds: delete pair images of rounds older than this many refreshes (None: keep).
        decode_num_steps: sampler steps for the candidate decodes (default: the config's).
        decode_guidance_scale: CFG scale for the candidate decodes (default: the config's).
        val_decode_batches: validation batches decoded for PSNR.
        seed: base seed of decode noise and pair sampling (stable across resumes).
        gradient_checkpointing: recompute the trained encoder/decoder blocks in backward.
        compile_mode: ``torch.compile`` of the trained model's blocks ("none", "default",
            "max-autotune-no-cudagraphs").
    """

    def __init__(
        self,
        init_from: str | None = NOT_GIVEN,
        init_weights_type: WeightsType | None = None,
        quality: str = "test",
        model_overrides: dict[str, Any] | None = None,
        lr: float = 5e-7,
        weight_decay: float = 0.0,
        betas: tuple[float, float] = (0.9, 0.99),
        warmup_steps: int = 0,
        beta: float = DEFAULT_BETA,
        weighting_type: WeightingType = DEFAULT_WEIGHTING,
        lambda_flow: float = DEFAULT_LAMBDA_FLOW,
        dpo_weight: float = 1.0,
        perceptual_weight: float = 0.0,
        perceptual_type: PerceptualType = "lpips",
        perceptual_fallback_type: PerceptualFallbackType = "ms_ssim",
        lpips_weights: str | None = None,
        student_path: str | None = None,
        label_type: Literal["hard", "soft"] = "hard",
        prior_weight: float = 1.0,
        dpo_batch_size: int = 8,
        t_sampling_type: TSamplingType = "uniform",
        freeze_type: FreezeType = "none",
        preference_type: PreferenceType = "online",
        judge: JudgeSpec | None = None,
        judge_type: str | None = None,
        judge_kwargs: dict[str, Any] | None = None,
        judge_compose: dict[str, Any] | None = None,
        preference_dataset: str | None = None,
        buffer_size: int = 2560,
        refresh_every: int = 250,
        pairs_per_step: int | None = None,
        warmup_pairs: int | None = None,
        buffer_dir: str | None = None,
        judge_cache: str | None = None,
        judge_worker_type: WorkerType = "thread",
        judge_batch_size: int = 8,
        judge_call_type: CallType = "async",
        candidates: int = 2,
        candidate_type: CandidateType = "pair",
        keep_rounds: int | None = None,
        decode_num_steps: int | None = None,
        decode_guidance_scale: float | None = None,
        val_decode_batches: int = 1,
        seed: int = 0,
        gradient_checkpointing: bool = False,
        compile_mode: CompileMode = "none",
        weights: str | None = None,
    ) -> None:
        super().__init__()
        check_option("preference_type", preference_type, PreferenceType)
        check_option("freeze_type", freeze_type, FreezeType)
        check_option("t_sampling_type", t_sampling_type, TSamplingType)
        check_option("candidate_type", candidate_type, CandidateType)
        if candidates < 2 or (candidate_type == "pair" and candidates != 2):
            raise ConfigError(
                f"candidates={candidates}: a pair needs 2 decodes per code, best-of-N "
                f"(candidate_type='best_worst') at least 2"
            )
        if preference_type == "offline" and not preference_dataset:
            raise ConfigError(
                "preference_type='offline' needs preference_dataset=PATH (made by `compressai-vlic judge`)"
            )
        if refresh_every < 1 or buffer_size < 1 or dpo_batch_size < 1:
            raise ConfigError("refresh_every, buffer_size and dpo_batch_size must be >= 1")
        if perceptual_weight < 0:
            raise ConfigError(f"perceptual_weight must be >= 0, got {perceptual_weight}")
        if dpo_weight < 0:
            raise ConfigError(f"dpo_weight must be >= 0, got {dpo_weight}")
        # A ready judge object (Python use) is used as it is; anything else is a JudgeSpec.
        ready = judge is not None and not isinstance(judge, JudgeSpec | Mapping)
        self.judge_spec = None if ready else JudgeSpec.from_module_args(
            {"judge": judge, "judge_type": judge_type, "judge_kwargs": judge_kwargs,
             "judge_compose": judge_compose}
        )  # fmt: skip
        self.save_hyperparameters(ignore=["judge", "judge_type", "judge_kwargs", "judge_compose"])
        if self.judge_spec is not None:  # saved in one spelling, so a checkpoint reloads it
            self.hparams["judge"] = self.judge_spec.to_config()
        self._weights = weights_spec(weights, init_from, init_weights_type)
        if self._weights:  # the checkpoint's own config: quality/model_overrides are not needed
            self.model = load_codec(self._weights)
        else:
            self.model = build_model(quality, model_overrides)
            log.warning("stage 2 without weights: post-training a randomly initialised codec")
        self.reference = copy.deepcopy(self.model).eval().requires_grad_(False)
        # Checkpoints name the reference instead of carrying it (see on_save_checkpoint).
        self._reference_fingerprint = weights_fingerprint(self.reference)
        self._micro = 0
        if freeze_type == "encoder":
            self.model.encoder.requires_grad_(False)
        apply_speed_options(self.model, gradient_checkpointing, compile_mode)
        self.criterion = VLMRewardLoss(
            beta=beta, weighting_type=weighting_type, lambda_flow=lambda_flow, label_type=label_type
        )
        perceptual, self.perceptual_choice = make_perceptual_loss(
            perceptual_type if perceptual_weight > 0 else "none",
            perceptual_fallback_type,
            lpips_weights=lpips_weights,
            student_path=student_path,
        )
        # A list keeps the frozen metric network out of the checkpoint and the optimizer.
        self._perceptual = [perceptual] if perceptual is not None else []
        self.pairs_per_step = pairs_per_step or max(1, math.ceil(buffer_size / refresh_every))
        self.warmup_pairs = buffer_size if warmup_pairs is None else warmup_pairs
        self._judge = judge if ready else None
        self.buffer: PreferenceBuffer | None = None
        self.offline: OfflinePreferences | None = None
        self._last_stats = BufferJudgeStats()

    # ------------------------------------------------------------------ set-up
    def train(self, mode: bool = True) -> Stage2Module:
        super().train(mode)
        self.reference.eval()  # the reference never leaves eval mode
        return self

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Leave the frozen reference out: it is rebuilt from the stage-1 checkpoint it names."""
        state = checkpoint.get("state_dict", {})
        for key in [k for k in state if k.startswith("reference.")]:
            del state[key]
        base, _, kind = (self._weights or "").partition("#")
        checkpoint[REFERENCE_KEY] = {
            "weights": self._weights,
            "init_from": base or None,  # the older names, for readers of older checkpoints
            "init_weights_type": kind or "ema",
            "fingerprint": self._reference_fingerprint,
        }
        super().on_save_checkpoint(checkpoint)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self._attach_reference(checkpoint)
        super().on_load_checkpoint(checkpoint)  # checks the keys, keeps the random streams

    def _attach_reference(self, checkpoint: dict[str, Any]) -> None:
        """Put the frozen reference (rebuilt from ``weights``) back into the state dict."""
        state = checkpoint.get("state_dict")
        if state is None or any(k.startswith("reference.") for k in state):
            return  # an older checkpoint that carries its reference
        saved = checkpoint.get(REFERENCE_KEY) or {}
        expected = saved.get("fingerprint")
        if expected and expected != self._reference_fingerprint:
            raise CheckpointError(
                f"this stage-2 checkpoint was trained against the reference from "
                f"{saved.get('weights') or saved.get('init_from')!r}, but the module's reference "
                f"differs; pass --model.weights (formerly --model.init_from) with that stage-1 "
                "checkpoint"
            )
        for key, value in self.reference.state_dict().items():
            state[f"reference.{key}"] = value

    def _buffer_dir(self) -> Path:
        hp = self.hparams
        if hp.buffer_dir:
            root = Path(hp.buffer_dir)
        else:
            root = Path(self.trainer.default_root_dir) / "preferences"
        return root / f"rank{self.global_rank}" if self.trainer.world_size > 1 else root

    def _make_judge(self, cache: str) -> Any:
        """The judge, its backend cached in ``cache`` unless the spec names its own cache (a
        judge that cannot be cached runs uncached; said only for a cache the user named)."""
        from compressai_vlic.judges.cache import cached, default_cache

        named = self.hparams.judge_cache or (self.judge_spec and self.judge_spec.cache)
        with contextlib.nullcontext() if named else default_cache():
            if self._judge is not None:
                return cached(self._judge, cache)
            assert self.judge_spec is not None
            return replace(self.judge_spec, cache=self.judge_spec.cache or cache).build()

    def setup(self, stage: str) -> None:
        super().setup(stage)
        hp = self.hparams
        if stage != "fit":
            return
        if hp.preference_type == "offline":
            if self.offline is None:
                cfg = self.model.config
                self.offline = OfflinePreferences.from_dataset(
                    hp.preference_dataset, cfg.image_size, cfg.num_tokens, cfg.fsq_levels
                )
            return
        if self.buffer is None:
            directory = self._buffer_dir()
            cache = hp.judge_cache or str(directory / "judge_cache.sqlite")
            self.buffer = PreferenceBuffer(
                self._make_judge(cache),
                directory,
                capacity=hp.buffer_size,
                worker_type=hp.judge_worker_type,
                judge_batch_size=hp.judge_batch_size,
                call_type=hp.judge_call_type,
                candidate_type=hp.candidate_type,
                keep_rounds=hp.keep_rounds,
            )

    def on_train_start(self) -> None:
        if self.buffer is None:
            return
        restored = self.buffer.restore()
        if restored:
            log.info("resumed with %d judged pairs from %s", restored, self.buffer.directory)
            self._refresh()
            if len(self.buffer):
                return
        self._warm_up()

    def _warm_up(self) -> None:
        """Fill the first buffer before the first DPO step (pairs from the training data)."""
        assert self.buffer is not None
        loader = self.trainer.train_dataloader
        seen = i = 0
        while seen < self.warmup_pairs:
            for batch in loader:
                if seen >= self.warmup_pairs:
                    break
                batch = batch.to(self.device)[: self.warmup_pairs - seen]
                self._make_candidates(batch, tag=f"warmup{i}", step=self.global_step, round_=0)
                seen += batch.shape[0]
                i += 1
        log.info("judging %d warm-up pairs before the first step", seen)
        self.buffer.drain()
        self._refresh()

    def on_train_end(self) -> None:
        if self.buffer is not None:
            self.buffer.drain(timeout_s=600)
            self.buffer.close()
            self.buffer = None

    def on_exception(self, exception: BaseException) -> None:
        if self.buffer is not None:
            self.buffer.close()
            self.buffer = None

    # ------------------------------------------------------------------ pairs
    @torch.no_grad()
    def _make_candidates(self, originals: Tensor, tag: str, step: int, round_: int) -> int:
        """Decode each original's code ``candidates`` times (different noise) and submit them."""
        assert self.buffer is not None
        hp = self.hparams
        ids = [f"{tag}-r{self.global_rank}-{i}" for i in range(originals.shape[0])]
        keep = [i for i, pid in enumerate(ids) if not self.buffer.known(pid)]
        if not keep:
            return 0
        originals = originals[keep]
        was_training = self.model.training
        self.model.eval()
        try:
            indices = self.model.encode(originals).indices
            kwargs = {"num_steps": hp.decode_num_steps, "guidance_scale": hp.decode_guidance_scale}
            a = self.model.decode_codes(
                indices, seed=_seed(hp.seed, tag, self.global_rank, "a"), **kwargs
            )
            b = self.model.decode_codes(
                indices, seed=_seed(hp.seed, tag, self.global_rank, "b"), **kwargs
            )
            extra = [
                self.model.decode_codes(
                    indices, seed=_seed(hp.seed, tag, self.global_rank, f"c{k}"), **kwargs
                )
                for k in range(2, hp.candidates)
            ]
        finally:
            self.model.train(was_training)
        layout = self.model.layout_for(originals.shape[-2], originals.shape[-1])
        levels = self.model.config.fsq_levels
        codes = [PairCodes.from_layout(idx[None], layout, levels) for idx in indices]
        return self.buffer.submit(
            [ids[i] for i in keep],
            originals,
            a,
            b,
            step=step,
            round=round_,
            codes=codes,
            extra=extra,
        )

    def _refresh(self) -> None:
        assert self.buffer is not None
        self._last_stats = self.buffer.refresh()

    def _accumulation(self) -> int:
        trainer = self._trainer
        return max(1, int(getattr(trainer, "accumulate_grad_batches", 1) or 1)) if trainer else 1

    def _preferences(self) -> PreferenceBatch | None:
        """This micro-batch's slice of the pairs drawn once per optimizer step.

        With ``accumulate_grad_batches = k`` the step draws ``k * dpo_batch_size`` pairs and
        micro-batch ``i`` trains on rows ``[i n, (i + 1) n)``, so the accumulated gradient is the
        one of a single step on all of them.
        """
        hp = self.hparams
        gen = torch.Generator().manual_seed(
            _seed(hp.seed, "sample", self.global_step, self.global_rank)
        )
        n, k = hp.dpo_batch_size, self._accumulation()
        if self.offline is not None:
            pairs = self.offline.sample(n * k, gen)
        else:
            assert self.buffer is not None
            pairs = self.buffer.sample(n * k, gen)
        if pairs is None or k == 1:
            return pairs
        return _slice_pairs(pairs, self._micro * n, (self._micro + 1) * n)

    def _dpo_noise(self, n: int, shape: tuple[int, ...]) -> tuple[Tensor, Tensor]:
        """(t, noise) of this micro-batch's pairs, drawn once per optimizer step (like the pairs)."""
        hp = self.hparams
        k = self._accumulation()
        gen = torch.Generator().manual_seed(
            _seed(hp.seed, "dpo-noise", self.global_step, self.global_rank)
        )
        total = n * k
        if hp.t_sampling_type == "logit_normal":
            t = torch.sigmoid(torch.randn(total, generator=gen))
        else:
            t = torch.rand(total, generator=gen)
        noise = torch.randn((total, *shape), generator=gen)
        rows = slice(self._micro * n, (self._micro + 1) * n) if k > 1 else slice(0, n)
        return t[rows].to(self.device), noise[rows].to(self.device)

    # ------------------------------------------------------------------ training
    def dpo_losses(self, pairs: PreferenceBatch) -> Any:
        """Criterion output for one preference batch (winner and loser share noise and t)."""
        device = self.device
        ref_img = pairs.reference.to(device)
        winner, loser = pairs.winner.to(device), pairs.loser.to(device)
        n = ref_img.shape[0]
        codes = self.model.encode(ref_img).codes
        with torch.no_grad():
            ref_codes = self.reference.encode(ref_img).codes
        codes, ref_codes = self._stored_codes(pairs, codes, ref_codes)
        t, noise = self._dpo_noise(n, tuple(winner.shape[1:]))
        noise = noise.to(winner.dtype)
        images = torch.cat([winner, loser])
        keep = torch.zeros(2 * n, dtype=torch.bool, device=device)
        fm = self.model.flow_matching(
            images,
            torch.cat([codes, codes]),
            t=torch.cat([t, t]),
            noise=torch.cat([noise, noise]),
            drop_mask=keep,
        )
        with torch.no_grad():
            fm_ref = self.reference.flow_matching(
                images,
                torch.cat([ref_codes, ref_codes]),
                t=torch.cat([t, t]),
                noise=torch.cat([noise, noise]),
                drop_mask=keep,
            )
        policy_w, policy_l = _split(fm, n)
        ref_w, ref_l = _split(fm_ref, n)
        return policy_w, policy_l, ref_w, ref_l

    def _stored_codes(
        self, pairs: PreferenceBatch, codes: Tensor, ref_codes: Tensor
    ) -> tuple[Tensor, Tensor]:
        """Condition each pair on the code it was decoded from, where the pair stored one.

        The value is the stored code exactly (a re-encoding differs once the encoder moves);
        the trained encoder still gets the DPO gradient through a straight-through term.
        """
        if pairs.indices is None or pairs.has_codes is None:
            return codes, ref_codes
        stored = self.model.fsq.indices_to_codes(pairs.indices.to(codes.device))
        stored = stored.to(codes.dtype)
        mask = pairs.has_codes.to(codes.device).view(-1, 1, 1)
        codes = torch.where(mask, stored + (codes - codes.detach()), codes)
        return codes, torch.where(mask, stored, ref_codes)

    def training_step(self, batch: Tensor, batch_idx: int) -> Tensor:
        hp = self.hparams
        step = self.global_step
        self._micro = batch_idx % self._accumulation()
        if self.buffer is not None:
            self.buffer.raise_if_failed()
            round_ = step // hp.refresh_every
            originals = batch[: self.pairs_per_step]
            self._make_candidates(originals, tag=f"s{step}", step=step, round_=round_)
            if step > 0 and step % hp.refresh_every == 0 and self._micro == 0:
                self._refresh()
        enc = self.model.encode(batch)
        flow = self.model.flow_matching(batch, enc.codes)
        bits = self.model.token_nll_bits(enc.indices.detach())
        prior_bpp = bits.float().mean() / (batch.shape[-2] * batch.shape[-1])
        pairs = self._preferences()
        logs: dict[str, Any] = {
            "train/flow": flow.loss.detach(),
            "train/bpp_prior": prior_bpp.detach(),
        }
        if pairs is None or len(pairs) == 0:
            loss = hp.lambda_flow * flow.loss
            log.warning("step %d: no usable judged pair yet; flow loss only", step)
        else:
            out = self.criterion(
                *self.dpo_losses(pairs), flow=flow.loss, prob_winner=pairs.prob_winner
            )
            loss = hp.dpo_weight * out.dpo_loss + hp.lambda_flow * flow.loss
            logs.update(
                {
                    "train/dpo_loss": out.dpo_loss.detach(),
                    "train/implicit_accuracy": out.implicit_accuracy,
                    "train/reward_margin": out.reward_margin,
                }
            )
        if self._perceptual:
            perceptual = perceptual_distance(self._perceptual[0], flow.x0_hat, batch)
            loss = loss + hp.perceptual_weight * perceptual
            logs["train/perceptual"] = perceptual.detach()
        loss = loss + hp.prior_weight * prior_bpp
        logs["train/loss"] = loss.detach()
        logs.update(self._buffer_logs(step))
        self.log_dict(logs, on_step=True, batch_size=batch.shape[0])
        self.log("loss", loss.detach(), prog_bar=True, batch_size=batch.shape[0])
        return loss

    def _buffer_logs(self, step: int) -> dict[str, float]:
        out: dict[str, float] = {}
        if self.offline is not None:
            total = max(1, self.offline.total)
            out["judge/abstain_rate"] = self.offline.abstained / total
            out["judge/disagreement_rate"] = self.offline.disagreed / total
            out["buffer/size"] = float(len(self.offline))
            return out
        if self.buffer is None:
            return out
        stats = self._last_stats
        if stats.abstain_rate is not None:
            out["judge/abstain_rate"] = stats.abstain_rate
        if stats.disagreement_rate is not None:
            out["judge/disagreement_rate"] = stats.disagreement_rate
        out["judge/total_judged"] = float(stats.total_judged)
        out["judge/total_tokens"] = float(stats.total_tokens)
        out["judge/failed"] = float(stats.failed)
        out["buffer/size"] = float(len(self.buffer))
        out["buffer/pending"] = float(stats.pending)
        staleness = self.buffer.staleness(step)
        if staleness is not None:
            out["buffer/staleness"] = staleness
        return out

    # ------------------------------------------------------------------ validation
    def validation_step(self, batch: Tensor, batch_idx: int) -> None:
        hp = self.hparams
        b = batch.shape[0]
        enc, fm = fixed_flow_matching(self.model, batch, _seed(hp.seed, "val", batch_idx))
        metrics = {"flow": fm.loss}
        if batch_idx < hp.val_decode_batches:
            x_hat = self.model.decode_codes(enc.indices, seed=hp.seed).to(batch.device)
            metrics["psnr"] = psnr(x_hat, batch).mean()
        self.log_dict({f"val/{k}": v for k, v in metrics.items()}, batch_size=b, sync_dist=True)

    def on_train_epoch_start(self) -> None:
        self.model.train()  # Lightning keeps the mode a module had before fit; training needs CFG dropout

    def configure_optimizers(self) -> dict[str, Any]:
        hp = self.hparams
        params = [p for p in self.model.parameters() if p.requires_grad]
        return adamw(params, hp.lr, hp.weight_decay, hp.betas, hp.warmup_steps)
