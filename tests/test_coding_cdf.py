"""Integer CDF tables: valid for compressai.ans, deterministic, and close to the float model."""

from __future__ import annotations

import decimal
import math

import pytest
import torch
from compressai.ans import BufferedRansEncoder, RansDecoder
from hypothesis import given, settings
from hypothesis import strategies as st

from compressai_vlic.coding.cdf import cdf_bits, check_cdf, exp_table, logits_to_cdf


def test_exp_table_is_the_rounded_exponential() -> None:
    table = exp_table(1 / 64)
    assert table[0] == 2**40
    for k in (1, 17, 64, 500, 1500):
        assert abs(int(table[k]) - 2**40 * math.exp(-k / 64)) <= 1
    assert int(table[-1]) >= 1 and table.numel() == 1819
    # Built with decimal arithmetic, not libm: recomputing gives the same integers.
    ctx = decimal.Context(prec=40)
    assert int(table[777]) == int(
        ctx.multiply(
            2**40, ctx.exp(ctx.multiply(-decimal.Decimal(1 / 64), 777))
        ).to_integral_value()
    )


@settings(max_examples=200, deadline=None)
@given(
    st.integers(2, 64),
    st.floats(0.01, 40.0),
    st.integers(0, 2**31 - 1),
)
def test_tables_are_valid_for_any_logits(levels: int, scale: float, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(6, levels, generator=gen, dtype=torch.float64) * scale
    logits[0] = 0.0  # uniform
    logits[1, 0] = 1e6  # one certain symbol
    cdf = logits_to_cdf(logits)
    assert cdf.shape == (6, levels + 2) and cdf.dtype == torch.int32
    check_cdf(cdf)
    freq = torch.diff(cdf[:, : levels + 1], dim=1)
    assert (freq >= 1).all() and (freq.sum(1) == 2**16).all()


def test_check_cdf_rejects_bad_tables() -> None:
    good = logits_to_cdf(torch.zeros(1, 4, dtype=torch.float64))
    check_cdf(good)
    for bad in (
        good.clone().index_fill_(1, torch.tensor([2]), 0),  # not monotone
        good.clone().index_fill_(1, torch.tensor([5]), 65535),  # does not end at 2**16
        good.to(torch.int64),
    ):
        with pytest.raises(ValueError):
            check_cdf(bad)


def test_quantisation_costs_almost_nothing() -> None:
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(2000, 8, generator=gen, dtype=torch.float64) * 3
    p = torch.softmax(logits, dim=1)
    q = torch.diff(logits_to_cdf(logits)[:, :9].double(), dim=1) / 2**16
    kl_bits = (p * torch.log2(p / q)).sum(1)
    entropy = -(p * torch.log2(p)).sum(1)
    assert kl_bits.mean() < 1e-3 * entropy.mean()


def test_tables_depend_only_on_the_grid_rounded_logits() -> None:
    logits = torch.tensor([[0.3, -1.2, 2.5, 0.0]], dtype=torch.float64)
    base = logits_to_cdf(logits)
    assert torch.equal(base, logits_to_cdf(logits + 1e-12))  # far from a grid boundary
    assert torch.equal(base, logits_to_cdf(logits + 7.0))  # shift invariance
    assert not torch.equal(base, logits_to_cdf(logits * 1.5))


def test_bad_inputs_are_refused() -> None:
    with pytest.raises(TypeError):
        logits_to_cdf(torch.zeros(2, 4))
    with pytest.raises(ValueError):
        logits_to_cdf(torch.tensor([[0.0, float("nan")]], dtype=torch.float64))
    with pytest.raises(ValueError):
        logits_to_cdf(torch.zeros(2, 1, dtype=torch.float64))


def test_tables_code_through_compressai_ans() -> None:
    """The zero-width escape works with the real coder, and code lengths match cdf_bits."""
    gen = torch.Generator().manual_seed(1)
    logits = torch.randn(500, 5, generator=gen, dtype=torch.float64) * 2
    cdf = logits_to_cdf(logits)
    symbols = torch.multinomial(torch.softmax(logits, 1), 1, generator=gen)[:, 0]
    rows = cdf.tolist()
    encoder = BufferedRansEncoder()
    encoder.encode_with_indexes(symbols.tolist(), list(range(500)), rows, [7] * 500, [0] * 500)
    data = encoder.flush()
    decoder = RansDecoder()
    decoder.set_stream(data)
    assert decoder.decode_stream(list(range(500)), rows, [7] * 500, [0] * 500) == symbols.tolist()
    ideal = float(cdf_bits(cdf, symbols).sum())
    assert ideal <= len(data) * 8 <= ideal + 64 + 32
