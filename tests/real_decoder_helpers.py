"""Tiny random stand-ins for real decoders, built from configs and saved the way the real
weights are laid out: diffusers' unCLIP image-variation and stable unCLIP pipelines (after
diffusers' own fast tests), and a ClipCap ``ClipCaptionModel`` state dict in the published
key layout (an independent reimplementation of its modules, used as the reference)."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

TEXT_LENGTH = 16  # the tiny CLIP tokenizer's and text encoder's context


def clip_tokenizer(root: Path):
    """A tiny CLIP BPE tokenizer written to ``root`` (the hub's test tokenizer is offline)."""
    from transformers import CLIPTokenizer

    root.mkdir(parents=True, exist_ok=True)
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1, "a</w>": 2, "a": 3}
    (root / "vocab.json").write_text(json.dumps(vocab))
    (root / "merges.txt").write_text("#version: 0.2\n")
    return CLIPTokenizer(str(root / "vocab.json"), str(root / "merges.txt"),
                         model_max_length=TEXT_LENGTH)


def _clip_towers(dim: int, text_hidden: int, text_class: str):
    import transformers
    from transformers import (
        CLIPImageProcessor,
        CLIPTextConfig,
        CLIPVisionConfig,
        CLIPVisionModelWithProjection,
    )

    torch.manual_seed(0)
    text = getattr(transformers, text_class)(CLIPTextConfig(
        bos_token_id=0, eos_token_id=1, pad_token_id=1, hidden_size=text_hidden,
        projection_dim=dim, intermediate_size=37, num_attention_heads=2, num_hidden_layers=1,
        vocab_size=100, max_position_embeddings=TEXT_LENGTH))
    vision = CLIPVisionModelWithProjection(CLIPVisionConfig(
        hidden_size=32, projection_dim=dim, num_hidden_layers=1, num_attention_heads=2,
        image_size=32, intermediate_size=37, patch_size=8))
    return text.eval(), vision.eval(), CLIPImageProcessor(crop_size=32, size=32)


def save_unclip_variation(root: Path, dim: int) -> Path:
    """A tiny ``UnCLIPImageVariationPipeline`` reading ``dim``-d image embeddings, saved in
    ``root``; it draws 64×64 images (32 px decoder, ×2 super-resolution)."""
    from diffusers import (
        UnCLIPImageVariationPipeline,
        UnCLIPScheduler,
        UNet2DConditionModel,
        UNet2DModel,
    )
    from diffusers.pipelines.deprecated.unclip.text_proj import UnCLIPTextProjModel

    text, vision, processor = _clip_towers(dim, dim, "CLIPTextModelWithProjection")
    torch.manual_seed(0)
    text_proj = UnCLIPTextProjModel(clip_embeddings_dim=dim, time_embed_dim=32,
                                    cross_attention_dim=24)
    decoder = UNet2DConditionModel(
        sample_size=32, in_channels=3, out_channels=6,
        down_block_types=("ResnetDownsampleBlock2D", "SimpleCrossAttnDownBlock2D"),
        up_block_types=("SimpleCrossAttnUpBlock2D", "ResnetUpsampleBlock2D"),
        mid_block_type="UNetMidBlock2DSimpleCrossAttn", block_out_channels=(8, 16),
        layers_per_block=1, cross_attention_dim=24, attention_head_dim=4, norm_num_groups=4,
        resnet_time_scale_shift="scale_shift", class_embed_type="identity")
    super_res = {"sample_size": 64, "layers_per_block": 1, "in_channels": 6, "out_channels": 3,
                 "down_block_types": ("ResnetDownsampleBlock2D",) * 2,
                 "up_block_types": ("ResnetUpsampleBlock2D",) * 2,
                 "block_out_channels": (8, 16), "norm_num_groups": 4}
    torch.manual_seed(0)
    first = UNet2DModel(**super_res)
    torch.manual_seed(1)
    last = UNet2DModel(**super_res)
    pipe = UnCLIPImageVariationPipeline(
        decoder=decoder, text_encoder=text, tokenizer=clip_tokenizer(root / "_tok"),
        text_proj=text_proj, feature_extractor=processor, image_encoder=vision,
        super_res_first=first, super_res_last=last,
        decoder_scheduler=UnCLIPScheduler(variance_type="learned_range"),
        super_res_scheduler=UnCLIPScheduler(variance_type="fixed_small_log"))
    pipe.save_pretrained(root)
    return root


def save_stable_unclip(root: Path, dim: int) -> Path:
    """A tiny ``StableUnCLIPImg2ImgPipeline`` reading ``dim``-d image embeddings, saved in
    ``root``; it draws 32×32 images."""
    from diffusers import (
        AutoencoderKL,
        DDIMScheduler,
        DDPMScheduler,
        StableUnCLIPImg2ImgPipeline,
        UNet2DConditionModel,
    )
    from diffusers.pipelines.stable_diffusion.stable_unclip_image_normalizer import (
        StableUnCLIPImageNormalizer,
    )

    text, vision, processor = _clip_towers(dim, 32, "CLIPTextModel")
    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        sample_size=32, in_channels=4, out_channels=4,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), block_out_channels=(8, 16),
        attention_head_dim=(2, 4), norm_num_groups=4, class_embed_type="projection",
        projection_class_embeddings_input_dim=2 * dim, cross_attention_dim=32,
        layers_per_block=1, upcast_attention=True, use_linear_projection=True)
    torch.manual_seed(0)
    vae = AutoencoderKL(block_out_channels=(8,), norm_num_groups=4)
    pipe = StableUnCLIPImg2ImgPipeline(
        feature_extractor=processor, image_encoder=vision,
        image_normalizer=StableUnCLIPImageNormalizer(embedding_dim=dim).eval(),
        image_noising_scheduler=DDPMScheduler(beta_schedule="squaredcos_cap_v2"),
        tokenizer=clip_tokenizer(root / "_tok"), text_encoder=text, unet=unet.eval(),
        scheduler=DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085,
                                beta_end=0.012, prediction_type="v_prediction",
                                set_alpha_to_one=False, steps_offset=1),
        vae=vae.eval())
    pipe.save_pretrained(root)
    return root


# -- ClipCap's ClipCaptionModel, in its published state-dict layout -------------------------


class PublishedMLP(nn.Module):
    """``clip_project`` as an MLP: ``model`` = Linear, Tanh, Linear."""

    def __init__(self, embed_dim: int, hidden: int, out: int) -> None:
        super().__init__()
        self.model = nn.Sequential(nn.Linear(embed_dim, hidden), nn.Tanh(), nn.Linear(hidden, out))

    def forward(self, e: torch.Tensor) -> torch.Tensor:
        return self.model(e)


class _Attention(nn.Module):
    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.to_queries = nn.Linear(width, width, bias=False)
        self.to_keys_values = nn.Linear(width, 2 * width, bias=False)
        self.project = nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        d = c // self.heads
        q = self.to_queries(x).view(b, n, self.heads, d)
        kv = self.to_keys_values(x).view(b, n, 2, self.heads, d)
        scores = torch.einsum("bnhd,bmhd->bnmh", q, kv[:, :, 0]) * d ** -0.5
        out = torch.einsum("bnmh,bmhd->bnhd", scores.softmax(dim=2), kv[:, :, 1])
        return self.project(out.reshape(b, n, c))


class _FeedForward(nn.Module):
    def __init__(self, width: int, hidden: int) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(width, hidden), nn.Linear(hidden, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.relu(self.fc1(x)))


class _Layer(nn.Module):
    def __init__(self, width: int, heads: int, hidden: int) -> None:
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(width), nn.LayerNorm(width)
        self.attn, self.mlp = _Attention(width, heads), _FeedForward(width, hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class PublishedTransformerMapper(nn.Module):
    """``clip_project`` as ClipCap's transformer mapper (pre-norm layers, 8 heads, ReLU)."""

    def __init__(self, embed_dim: int, width: int, prefix_length: int, clip_length: int,
                 layers: int, heads: int = 8) -> None:
        super().__init__()
        self.clip_length = clip_length
        self.linear = nn.Linear(embed_dim, clip_length * width)
        self.prefix_const = nn.Parameter(torch.randn(prefix_length, width))
        self.transformer = nn.Module()
        self.transformer.layers = nn.ModuleList(_Layer(width, heads, 2 * width)
                                                for _ in range(layers))

    def forward(self, e: torch.Tensor) -> torch.Tensor:
        x = self.linear(e).view(len(e), self.clip_length, -1)
        x = torch.cat([x, self.prefix_const.expand(len(e), -1, -1)], dim=1)
        for layer in self.transformer.layers:
            x = layer(x)
        return x[:, self.clip_length:]


class PublishedClipCap(nn.Module):
    """``ClipCaptionModel``: ``clip_project`` (the mapper) and ``gpt`` (a GPT2LMHeadModel)."""

    def __init__(self, clip_project: nn.Module, gpt: nn.Module, prefix_length: int) -> None:
        super().__init__()
        self.clip_project, self.gpt, self.prefix_length = clip_project, gpt, prefix_length

    @torch.no_grad()
    def greedy(self, e: torch.Tensor, max_length: int, stop_ids: set[int]) -> list[int]:
        """ClipCap's greedy decoding of one embedding (1, D): the argmax token, fed back as
        its embedding, until a stop token (included) or ``max_length`` tokens."""
        embeds = self.clip_project(e).view(1, self.prefix_length, -1)
        tokens: list[int] = []
        for _ in range(max_length):
            token = int(self.gpt(inputs_embeds=embeds).logits[0, -1].argmax())
            tokens.append(token)
            if token in stop_ids:
                break
            embeds = torch.cat([embeds, self.gpt.transformer.wte(torch.tensor([[token]]))], 1)
        return tokens


def save_gpt2(root: Path, captions: list[str], width: int = 16):
    """A tiny GPT-2 directory (config and a word-level tokenizer, no weights needed) and the
    freshly initialised model."""
    from transformers import GPT2Config, GPT2LMHeadModel

    from modtrans.encoders.tokenizer import build_tokenizer

    tokenizer = build_tokenizer(captions)
    config = GPT2Config(vocab_size=len(tokenizer), n_positions=128, n_embd=width, n_layer=1,
                        n_head=2, bos_token_id=tokenizer.bos_token_id,
                        eos_token_id=tokenizer.eos_token_id,
                        pad_token_id=tokenizer.pad_token_id)
    config.save_pretrained(root)
    tokenizer.save_pretrained(root)
    torch.manual_seed(0)
    model = GPT2LMHeadModel(config).eval()
    with torch.no_grad():  # a random model would often pick [PAD]/[UNK]/[BOS], decoded as ""
        model.transformer.wte.weight[:3] = 0
    return model, tokenizer
