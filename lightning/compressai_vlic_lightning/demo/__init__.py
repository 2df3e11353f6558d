"""`compressai-vlic demo`: the demo on a CPU, end to end (about 25 minutes on 2 cores).

1. stage 1: a short fine-tune of the shipped ``"tiny"`` codec on the photos bundled with
   scikit-image / scikit-learn (``chelsea`` and ``flower`` are held out and never trained on);
   ``init_type="scratch"`` (``--from-scratch``) runs the whole of stage 1 from random weights;
2. stage 2: Diffusion-DPO post-training on judge preferences (SSIMULACRA 2 unanimous with LPIPS
   offline by default, a VLM behind an OpenAI-compatible endpoint when one is configured);
3. a prior-only refit of the post-trained codec on its own tokens (skipped by default when stage
   2 froze the encoder: the tokens are then stage 1's);
4. CompressAI's own ``python -m compressai.utils.eval_model`` (a subprocess, real bitstreams) on
   the held-out photos, and this package's ``compare`` against JPEG, WebP (and AVIF when Pillow
   writes it), with JPEG and WebP also at the lowest quality that reaches the codec's rate;
5. a report folder: ``report.md``, ``report.json``, ``rate_quality.png``, ``training_curves.png``
   and side-by-side images (original | before | after post-training | JPEG | WebP).

The steps read the training configs (``tiny_stage1``, ``tiny_stage1_scratch``, ``tiny_stage2``,
``tiny_prior_refit``) as ``compressai-vlic-train fit`` does. Modules: :mod:`.plan` (settings and
the run's state), :mod:`.pipeline` (the steps), :mod:`.selection` (which post-trained checkpoint
is reported), :mod:`.report` (what is written and printed).

Nothing is downloaded. One torch thread by default (``--threads N``: stage 1, the refit and
the evaluation use N, stage 2 one fewer so that the judge keeps a core for its background thread):
small models run fastest without thread hand-offs, and the judge works on the second core.
"""

from __future__ import annotations

from compressai_vlic_lightning.demo.pipeline import finetune, prepare, run
from compressai_vlic_lightning.demo.plan import (
    INIT_TYPES,
    PRESETS,
    DemoConfigs,
    DemoPlan,
    add_arguments,
)

__all__ = [
    "INIT_TYPES",
    "PRESETS",
    "DemoConfigs",
    "DemoPlan",
    "add_arguments",
    "finetune",
    "prepare",
    "run",
]
