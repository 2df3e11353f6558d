"""One epoch of CompressAI's example training loop (examples/train.py) runs on VLIC.

The loop body below is train_one_epoch / test_epoch of CompressAI 1.2.8's examples/train.py with
its own RateDistortionLoss. VLIC has no EntropyBottleneck, so there are no ``.quantiles`` for the
auxiliary optimizer: it gets an empty parameter group, and ``aux_loss()`` is a zero tensor that
``backward()`` and ``item()`` accept.
"""

from __future__ import annotations

import torch
from compressai.losses import RateDistortionLoss
from conftest import photo_tensor

from compressai_vlic.zoo import vlic


def test_compressai_training_loop_steps_the_model(photos):
    torch.manual_seed(0)
    model = vlic("test")
    batches = [photo_tensor(photos["astronaut"], crop=(32, 32)).repeat(2, 1, 1, 1)]
    batches.append(photo_tensor(photos["coffee"], crop=(32, 32)).repeat(2, 1, 1, 1))
    criterion = RateDistortionLoss(lmbda=1e-2)
    aux_names = [n for n, p in model.named_parameters() if n.endswith(".quantiles")]
    assert aux_names == []
    net_params = [p for n, p in model.named_parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(net_params, lr=1e-3)
    aux_optimizer = torch.optim.Adam([{"params": []}], lr=1e-3)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}

    model.train()
    for d in batches:  # train_one_epoch
        optimizer.zero_grad()
        aux_optimizer.zero_grad()
        out_net = model(d)
        out_criterion = criterion(out_net, d)
        out_criterion["loss"].backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        aux_loss = model.aux_loss()
        aux_loss.backward()
        aux_optimizer.step()
        assert torch.isfinite(out_criterion["loss"])
        assert out_criterion["bpp_loss"].item() > 0 and aux_loss.item() == 0.0

    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert any(n.startswith("prior.") for n in changed)  # the rate term trains the prior

    model.eval()
    with torch.no_grad():  # test_epoch
        out_criterion = criterion(model(batches[0]), batches[0])
        assert float(model.aux_loss()) == 0.0
        assert torch.isfinite(out_criterion["loss"]) and out_criterion["mse_loss"].item() >= 0
