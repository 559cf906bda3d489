"""CLIP-style contrastive training of a transformers dual encoder with Lightning."""

from __future__ import annotations

import lightning as L
import torch
from transformers import PreTrainedModel, get_cosine_schedule_with_warmup


class ContrastiveModule(L.LightningModule):
    """Wraps a CLIP-like model (``CLIPModel``, ``ConvClipModel``: called with
    ``return_loss=True`` it returns the symmetric InfoNCE loss, and it has ``logit_scale``)
    with AdamW and a cosine schedule.

    Batches are dicts with ``pixel_values`` (B, 3, H, W), ``input_ids`` and
    ``attention_mask`` (B, L).
    """

    def __init__(
        self,
        model: PreTrainedModel,
        *,
        lr: float,
        weight_decay: float,
        warmup_steps: int,
        total_steps: int,
    ) -> None:
        super().__init__()
        self.model = model
        self.lr, self.weight_decay = lr, weight_decay
        self.warmup_steps, self.total_steps = warmup_steps, total_steps

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        out = self.model(**batch, return_loss=True)
        self.log("train/loss", out.loss, prog_bar=True, batch_size=batch["input_ids"].shape[0])
        self.log("train/logit_scale", self.model.logit_scale.exp(), batch_size=1)
        return out.loss

    def on_train_batch_end(self, *args, **kwargs) -> None:
        # CLIP clamps the learned temperature at 100 (Radford et al. 2021, section 2.5).
        with torch.no_grad():
            self.model.logit_scale.clamp_(0, torch.log(torch.tensor(100.0)).item())

    def configure_optimizers(self):
        decay, no_decay = [], []
        for name, p in self.model.named_parameters():
            (no_decay if p.ndim < 2 or "embedding" in name else decay).append(p)
        optimizer = torch.optim.AdamW(
            [
                {"params": decay, "weight_decay": self.weight_decay},
                {"params": no_decay, "weight_decay": 0.0},
            ],
            lr=self.lr,
            betas=(0.9, 0.98),
        )
        scheduler = get_cosine_schedule_with_warmup(optimizer, self.warmup_steps, self.total_steps)
        schedule = {"scheduler": scheduler, "interval": "step"}
        return {"optimizer": optimizer, "lr_scheduler": schedule}
