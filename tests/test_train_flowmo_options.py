"""FlowMo's training options with FlowMo's defaults: encoder freeze, fixed weight norms, muP."""

from __future__ import annotations

import inspect

import pytest
import torch
from compressai_vlic_lightning import Stage1Module
from compressai_vlic_lightning.common import fixed_norm_weights
from conftest import photo_tensor
from torch.utils.data import DataLoader

from compressai_vlic.errors import ConfigError
from compressai_vlic.models import VLIC
from compressai_vlic.models.vlic import CONFIG_KEY
from compressai_vlic.zoo import quality_config, vlic

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_flowmo_defaults_where_vlic_is_silent() -> None:
    params = inspect.signature(Stage1Module).parameters
    assert params["freeze_encoder_after"].default == 200_000  # FlowMo's base.yaml
    assert params["fix_initial_norms"].default is True
    assert params["fix_norm_mode"].default == "l2"
    assert quality_config(1).mup and quality_config(2).mup  # FlowMo's enable_mup
    assert not quality_config("tiny").mup  # the shipped weights were trained without it
    with pytest.raises(ConfigError, match="fix_norm_mode"):
        Stage1Module(quality="test", perceptual_type="none", fix_norm_mode="rms")


def _fit(photos, quiet_cpu_trainer, **kwargs) -> tuple[Stage1Module, dict, dict]:
    torch.manual_seed(0)
    module = Stage1Module(quality="test", lr=1e-2, perceptual_type="none", **kwargs)
    size = module.model.config.image_size
    batch = torch.cat([photo_tensor(photos[n], (size, size)) for n in ("astronaut", "coffee")])
    loader = DataLoader([batch[i] for i in range(2)] * 4, batch_size=2, shuffle=False)
    before = {n: w.detach().clone() for n, w in fixed_norm_weights(module.model)}
    quiet_cpu_trainer(max_steps=4).fit(module, loader)
    after = {n: w.detach().clone() for n, w in fixed_norm_weights(module.model)}
    return module, before, after


@pytest.mark.parametrize("mode", ["l2", "channel"])
def test_fixed_initial_norms_hold_through_training(photos, quiet_cpu_trainer, mode) -> None:
    _, before, after = _fit(photos, quiet_cpu_trainer, fix_norm_mode=mode)
    assert len(before) > 10  # attention and MLP projections of every block, both networks
    dim = {"dim": 1} if mode == "channel" else {}
    trained = [n for n, w in after.items() if not torch.equal(w, before[n])]
    assert len(trained) > len(after) // 2  # the weights train ...
    for name, w in after.items():
        norm = torch.linalg.vector_norm  # ... at their initial norms
        assert torch.allclose(norm(w, **dim), norm(before[name], **dim), rtol=1e-5), name


def test_without_fixed_norms_the_norms_drift(photos, quiet_cpu_trainer) -> None:
    _, before, after = _fit(photos, quiet_cpu_trainer, fix_initial_norms=False)
    drift = [
        abs(float(torch.linalg.vector_norm(w) / torch.linalg.vector_norm(before[n])) - 1)
        for n, w in after.items()
    ]
    assert max(drift) > 1e-3


def test_mup_scales_attention_logits_by_8_over_head_dim() -> None:
    torch.manual_seed(0)
    base = vlic("test").eval()  # 16-dim heads: 8/16 instead of 1/4
    state = {k: v for k, v in base.state_dict().items() if k != CONFIG_KEY}
    mup = VLIC(base.config.replace(mup=True)).eval()
    mup.load_state_dict(state, strict=False)
    x, t, c = torch.rand(2, 3, 32, 32), torch.rand(2), torch.rand(2, 16, 3) * 2 - 1
    assert not torch.allclose(base.velocity(x, t, c), mup.velocity(x, t, c))
    assert mup.config.config_hash() != base.config.config_hash()
    # At 64-dim heads (the paper qualities) 8/d equals 1/sqrt(d): the same network.
    wide = base.config.replace(
        encoder_width=128, encoder_heads=2, decoder_width=128, decoder_heads=2
    )
    a, b = VLIC(wide).eval(), VLIC(wide.replace(mup=True)).eval()
    b.load_state_dict({k: v for k, v in a.state_dict().items() if k != CONFIG_KEY}, strict=False)
    assert torch.allclose(a.velocity(x, t, c), b.velocity(x, t, c), atol=1e-6)
    # Configs without the field keep their hash (streams stay decodable).
    assert (
        "mup" not in base.config.to_json()
        or base.config.config_hash() == vlic("test").config.config_hash()
    )
