"""ARPrior: teacher-forced training path and the deterministic incremental coding path."""

from __future__ import annotations

import copy

import pytest
import torch

from compressai_vlic.errors import ConfigError, InvalidTokensError
from compressai_vlic.models.prior import ARPrior, deterministic_coding

LEVELS = (8, 5, 5)
K = 12


@pytest.fixture
def prior() -> ARPrior:
    torch.manual_seed(0)
    return ARPrior(LEVELS, num_tokens=K, width=32, depth=2, heads=4)


def _tokens(batch: int, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.stack([torch.randint(0, n, (batch, K), generator=gen) for n in LEVELS], dim=-1)


def test_teacher_forced_outputs(prior: ARPrior) -> None:
    idx = _tokens(3)
    logits = prior(idx).logits
    assert [tuple(lg.shape) for lg in logits] == [(3, K, n) for n in LEVELS]
    lik = prior.likelihoods(idx)
    assert lik.shape == (3, K, 3) and (lik > 0).all() and (lik <= 1).all()
    bits = prior.nll_bits(idx)
    assert bits.shape == (3,)
    torch.testing.assert_close(bits, -torch.log2(lik).sum(dim=(1, 2)), rtol=1e-5, atol=1e-4)
    bits.sum().backward()
    assert prior.head.weight.grad is not None and prior.start_token.grad is not None
    assert prior.transformer.wte.weight.grad is None  # unused table: no DDP complaints


def test_prediction_is_causal(prior: ARPrior) -> None:
    idx = _tokens(1)
    changed = idx.clone()
    changed[0, 7] = (changed[0, 7] + 1) % torch.tensor(LEVELS)
    a, b = prior(idx).logits[0], prior(changed).logits[0]
    torch.testing.assert_close(a[:, :8], b[:, :8])  # token 7 only informs positions > 7
    assert not torch.allclose(a[:, 8:], b[:, 8:])


def test_incremental_path_matches_teacher_forcing(prior: ARPrior) -> None:
    idx = _tokens(2)
    reference = prior(idx).logits
    state = prior.start(2)
    prev = None
    for k in range(K):
        logits = prior.step(state, prev)
        assert all(
            lg.dtype == torch.float64 and lg.shape == (2, n) for lg, n in zip(logits, LEVELS)
        )
        for lg, ref in zip(logits, reference):
            torch.testing.assert_close(lg.float(), ref[:, k].detach(), rtol=1e-4, atol=1e-4)
        prev = idx[:, k]
    with pytest.raises(InvalidTokensError):
        prior.step(state, prev)


def test_coding_copy_follows_weight_updates(prior: ARPrior) -> None:
    first = prior.coding_copy()
    assert first.head_b.dtype == torch.float64 and first.device == torch.device("cpu")
    with torch.no_grad():
        prior.head.bias.add_(1.0)
    torch.testing.assert_close(prior.coding_copy().head_b, prior.head.bias.double())
    prior.head.bias.data.mul_(3.0)  # no version bump through .data: must still be seen
    torch.testing.assert_close(prior.coding_copy().head_b, prior.head.bias.double())
    prior.head.bias.data = prior.head.bias.data + 1.0  # what module.to() does: new .data
    torch.testing.assert_close(prior.coding_copy().head_b, prior.head.bias.double())
    torch.testing.assert_close(prior.coding_copy().head_w, prior.head.weight.double().t())
    assert prior.coding_copy() is first  # buffers are reused, not reallocated


def test_fast_step_matches_transformers_kv_cache(prior: ARPrior) -> None:
    """The hand-written float64 step equals GPT-2's own incremental forward (DynamicCache)."""
    from transformers import DynamicCache

    idx = _tokens(3, seed=4)
    reference = copy.deepcopy(prior).double()
    cache = DynamicCache(config=reference.transformer.config)
    state = prior.start(3)
    with torch.no_grad():
        for k in range(K):
            if k == 0:
                inputs = reference.start_token.expand(3, 1, -1)
            else:
                inputs = reference._embed(idx[:, k - 1 : k])
            hidden = reference.transformer(
                inputs_embeds=inputs, cache=cache, use_cache=True
            ).last_hidden_state
            expected = reference._split(hidden[:, 0])
            for lg, ref in zip(prior.step(state, None if k == 0 else idx[:, k - 1]), expected):
                torch.testing.assert_close(lg, ref, rtol=1e-12, atol=1e-12)


@pytest.fixture
def causal(prior: ARPrior) -> ARPrior:
    """A causal prior with the factorised one's weights and a random intra-token head."""
    model = ARPrior(LEVELS, num_tokens=K, width=32, depth=2, heads=4, digits="causal")
    missing, unexpected = model.load_state_dict(prior.state_dict(), strict=False)
    assert not unexpected and all(name.startswith("intra.") for name in missing)
    return model


def test_causal_prior_starts_as_the_factorized_one(prior: ARPrior, causal: ARPrior) -> None:
    idx = _tokens(2, seed=1)
    torch.testing.assert_close(causal.nll_bits(idx), prior.nll_bits(idx))


def test_causal_digits_depend_on_earlier_digits_only(causal: ARPrior) -> None:
    torch.manual_seed(3)
    with torch.no_grad():
        for p in causal.intra.parameters():
            p.normal_(std=0.3)
    idx = _tokens(1, seed=2)
    changed = idx.clone()
    changed[0, 5, 1] = (changed[0, 5, 1] + 1) % LEVELS[1]
    a, b = causal(idx).logits, causal(changed).logits
    torch.testing.assert_close(a[0][:, :6], b[0][:, :6])  # digit 0 does not see digit 1
    torch.testing.assert_close(a[1][:, :6], b[1][:, :6])  # nor does digit 1 itself
    assert not torch.allclose(a[2][:, 5], b[2][:, 5])  # digit 2 of the same token does
    torch.testing.assert_close(a[2][:, :5], b[2][:, :5])
    # The incremental coding path gives the teacher-forced logits, digit by digit.
    state = causal.start(1)
    for k in range(K):
        causal.advance(state, None if k == 0 else idx[:, k - 1])
        for j in range(len(LEVELS)):
            lg = causal.digit_logits(state, j, None if j == 0 else idx[:, k, j - 1])
            assert lg.dtype == torch.float64
            torch.testing.assert_close(lg.float(), a[j][:, k].detach(), rtol=1e-4, atol=1e-4)
    state = causal.start(1)
    causal.advance(state, None)
    with pytest.raises(InvalidTokensError):
        causal.digit_logits(state, 1, idx[:, 0, 0])  # digits must come in order
    with pytest.raises(ConfigError):
        causal.step(state, None)  # all digits at once is a factorised-only shortcut
    with pytest.raises(ConfigError):
        ARPrior(LEVELS, K, width=32, depth=1, heads=4, digits="joint")  # type: ignore[arg-type]


def test_coding_path_restores_thread_count(prior: ARPrior) -> None:
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        state = prior.start(1)
        with deterministic_coding():
            assert torch.get_num_threads() == 1
        prior.step(state, None)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_invalid_tokens_are_refused(prior: ARPrior) -> None:
    idx = _tokens(1)
    with pytest.raises(InvalidTokensError):
        prior(idx[:, :-1])
    with pytest.raises(InvalidTokensError):
        prior(idx.float())
    bad = idx.clone()
    bad[0, 0, 1] = 5
    with pytest.raises(InvalidTokensError):
        prior(bad)
    state = prior.start(1)
    with pytest.raises(InvalidTokensError):
        prior.step(state, idx[:, 0])  # first step takes no previous token
    with pytest.raises(ConfigError):
        ARPrior(LEVELS, K, width=30, depth=1, heads=4)


def test_factorized_configs_keep_their_hash_and_causal_changes_it() -> None:
    """Checkpoints and streams made before ``prior_digits`` existed still match their model."""
    import hashlib
    import json

    from compressai_vlic.models.config import _UNHASHED_FIELDS, VLICConfig
    from compressai_vlic.zoo import quality_config

    # Quality 1 itself now uses the causal prior and muP; its older form is the legacy one here.
    for config in (quality_config("test"), quality_config(1, prior_digits="factorized", mup=False)):
        old = {k: v for k, v in config.to_dict().items() if k not in _UNHASHED_FIELDS}
        del old["prior_digits"], old["mup"]  # what a config of an older version serialised
        text = json.dumps(old, sort_keys=True, separators=(",", ":"))
        assert config.config_hash() == hashlib.sha256(text.encode()).digest()[:4]
        legacy = {k: v for k, v in config.to_dict().items() if k not in ("prior_digits", "mup")}
        assert VLICConfig.from_dict(legacy) == config
        assert config.replace(prior_digits="causal").config_hash() != config.config_hash()
        assert config.replace(mup=True).config_hash() != config.config_hash()
    with pytest.raises(ConfigError):
        quality_config("test", prior_digits="joint")


def test_vlic_with_a_causal_prior_compresses_and_decompresses(photos) -> None:
    from compressai_vlic.zoo import vlic

    torch.manual_seed(0)
    model = vlic("test", prior_digits="causal").eval()
    assert model.prior.intra is not None
    x = torch.from_numpy(photos["coffee"][:40, :56].copy()).permute(2, 0, 1)[None].float() / 255
    with torch.no_grad():
        out = model.compress(x)
        again = model.compress(x)
        rec = model.decompress(out["strings"], out["shape"])["x_hat"]
    assert out["strings"] == again["strings"] and rec.shape == x.shape
    layout, enc = model.encode_image(x)
    payload = model.token_coder.encode(enc.indices, model.prior)
    decoded = model.token_coder.decode(payload, model.prior, layout.num_tiles, 16)
    assert torch.equal(decoded, enc.indices.cpu())
