"""A CLIP with a small convolutional image tower, as a transformers model (``hf:`` loads it).

A CNN tower because on small images a tiny ViT has no locality prior and learns shape far
more slowly (``docs/findings.md``, *World CLIP*). The text tower here *is* CLIP's
(``CLIPTextModel``); the image tower is a VGG-style CNN. The class is registered with
``AutoConfig``/``AutoModel``, saved with ``save_pretrained`` and loaded through the same
``hf:`` path as any CLIP.

The image embedding pools the tower's cell map. ``object_classes > 0`` adds an object head
(a 1×1 conv over the cells, class 0 meaning "no object") and pools twice: a mean weighted by
each cell's probability of holding an object, beside the plain mean. An object may fill
one or two cells, so the plain mean is dominated by the background (``docs/findings.md``,
*World CLIP*).
"""

from __future__ import annotations

from itertools import pairwise

import torch
import torch.nn.functional as F
from torch import nn
from transformers import (
    AutoConfig,
    AutoModel,
    CLIPTextConfig,
    CLIPTextModel,
    PretrainedConfig,
    PreTrainedModel,
)
from transformers.modeling_outputs import BaseModelOutputWithPooling
from transformers.models.clip.modeling_clip import CLIPOutput, image_text_contrastive_loss

MODEL_TYPE = "modtrans_conv_clip"


class ConvClipConfig(PretrainedConfig):
    """Config of :class:`ConvClipModel`.

    Args:
        text_config: a ``CLIPTextConfig`` as a dict.
        channels: output channels of the image tower's conv blocks (each but the last halves
            the size: 4 blocks leave an 8×8 map of a 64×64 image, mean-pooled).
        projection_dim: size of the shared embedding space.
        object_classes: classes of the object head (class 0: no object); 0 for none, and
            then the image is the plain mean of its cells.
        logit_scale_init_value: initial log inverse temperature (CLIP: log(1/0.07)).
    """

    model_type = MODEL_TYPE

    def __init__(
        self,
        text_config: dict | None = None,
        channels: tuple[int, ...] | list[int] = (32, 64, 128, 128),
        projection_dim: int = 128,
        object_classes: int = 0,
        logit_scale_init_value: float = 2.6592,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        if object_classes == 1 or object_classes < 0:
            raise ValueError(f"object_classes must be 0 (no object head) or at least 2 (class "
                             f"0 is 'no object'), got {object_classes}")
        self.text_config = dict(text_config or {})
        self.channels = list(channels)
        self.projection_dim = projection_dim
        self.object_classes = object_classes
        self.logit_scale_init_value = logit_scale_init_value


def conv_block(c_in: int, c_out: int, convs: int = 1, pool: bool = True) -> nn.Sequential:
    """``convs`` × (conv3×3 → BatchNorm → ReLU), then (if ``pool``) a 2×2 max-pool."""
    layers: list[nn.Module] = []
    for i in range(convs):
        layers += [nn.Conv2d(c_in if i == 0 else c_out, c_out, 3, padding=1),
                   nn.BatchNorm2d(c_out), nn.ReLU()]
    if pool:
        layers.append(nn.MaxPool2d(2))
    return nn.Sequential(*layers)


def conv_tower(channels: tuple[int, ...] | list[int], convs: int = 1) -> nn.Sequential:
    """Conv blocks from RGB through ``channels``; each but the last halves the size (4
    blocks leave an 8×8 map of a 64×64 image). The world CLIP's image tower and the judge's
    trunk, so one can warm-start the other."""
    sizes = [3, *channels]
    last = len(channels) - 1
    return nn.Sequential(*(conv_block(a, b, convs=convs, pool=i < last)
                           for i, (a, b) in enumerate(pairwise(sizes))))


class ConvClipModel(PreTrainedModel):
    """CLIP's text transformer and a CNN image tower, both projected to ``projection_dim``.

    ``get_image_features`` / ``get_text_features`` return ``BaseModelOutputWithPooling``
    whose ``pooler_output`` is the projected embedding, like ``CLIPModel``'s.
    """

    config_class = ConvClipConfig
    main_input_name = "pixel_values"

    def __init__(self, config: ConvClipConfig) -> None:
        super().__init__(config)
        text_config = CLIPTextConfig(**config.text_config)
        self.text_model = CLIPTextModel(text_config)
        self.vision_model = conv_tower(config.channels)
        width = config.channels[-1]
        self.object_head = (nn.Conv2d(width, config.object_classes, 1)
                            if config.object_classes else None)
        pooled = 2 * width if self.object_head is not None else width
        self.visual_projection = nn.Linear(pooled, config.projection_dim, bias=False)
        self.text_projection = nn.Linear(text_config.hidden_size, config.projection_dim,
                                         bias=False)
        self.logit_scale = nn.Parameter(torch.tensor(config.logit_scale_init_value))
        self.post_init()

    def get_image_features(self, pixel_values: torch.Tensor) -> BaseModelOutputWithPooling:
        hidden = self.vision_model(pixel_values)  # (B, C, h, w)
        pooled = hidden.mean(dim=(2, 3))  # (B, C)
        if self.object_head is not None:
            # P(the cell holds an object), (B, 1, h, w)
            weight = 1 - self.object_head(hidden).softmax(dim=1)[:, :1]
            objects = (weight * hidden).sum(dim=(2, 3)) / (weight.sum(dim=(2, 3)) + 1e-3)
            pooled = torch.cat([objects, pooled], dim=1)
        return BaseModelOutputWithPooling(last_hidden_state=hidden,
                                          pooler_output=self.visual_projection(pooled))

    def get_text_features(self, input_ids: torch.Tensor,
                          attention_mask: torch.Tensor | None = None
                          ) -> BaseModelOutputWithPooling:
        out = self.text_model(input_ids=input_ids, attention_mask=attention_mask)
        return BaseModelOutputWithPooling(last_hidden_state=out.last_hidden_state,
                                          pooler_output=self.text_projection(out.pooler_output))

    def forward(self, input_ids: torch.Tensor, pixel_values: torch.Tensor,
                attention_mask: torch.Tensor | None = None, return_loss: bool = False,
                **kwargs) -> CLIPOutput:
        image = F.normalize(self.get_image_features(pixel_values).pooler_output, dim=-1)
        text = F.normalize(self.get_text_features(input_ids, attention_mask).pooler_output,
                           dim=-1)
        logits_per_text = self.logit_scale.exp() * text @ image.T  # (B, B)
        loss = image_text_contrastive_loss(logits_per_text) if return_loss else None
        return CLIPOutput(loss=loss, logits_per_image=logits_per_text.T,
                          logits_per_text=logits_per_text, text_embeds=text, image_embeds=image)


AutoConfig.register(MODEL_TYPE, ConvClipConfig)
AutoModel.register(ConvClipConfig, ConvClipModel)
