"""CLIP-style contrastive training of a transformers dual encoder: the step :func:`fit` runs.

The model (``CLIPModel``, ``ConvClipModel``) takes dict batches with ``pixel_values``
(B, 3, H, W), ``input_ids`` and ``attention_mask`` (B, L); called with ``return_loss=True``
it returns the symmetric InfoNCE loss, and it has a learned ``logit_scale``.
"""

from __future__ import annotations

import math

import torch
from transformers import PreTrainedModel


def contrastive_step(model: PreTrainedModel, batch: dict[str, torch.Tensor]
                     ) -> dict[str, torch.Tensor]:
    """The symmetric InfoNCE loss of a batch, and the temperature it was computed at."""
    out = model(**batch, return_loss=True)
    return {"loss": out.loss, "logit_scale": model.logit_scale.exp().detach()}


def clamp_logit_scale(model: PreTrainedModel) -> None:
    """CLIP clamps the learned temperature at 100 (Radford et al. 2021, section 2.5)."""
    with torch.no_grad():
        model.logit_scale.clamp_(0, math.log(100.0))
