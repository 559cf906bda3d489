"""The conditional encoder-decoder (seeds 000/001): ẑ = c·M + γ·Normalize(F(c)).

F(c) is a sample of a conditional diffusion model (a :class:`ConditionalMLP` denoiser) and
Normalize is per sample (F/‖F‖). Everything lives in z-normalised space.

Two ways to train the same output form:

* ``ced-paper`` — as the seed trained it: M a learned linear map, the diffusion model of the
  target z itself, and the loss λ_rec·‖z − ẑ‖₁ (backpropagated through a 50-step DDIM sample
  with guidance 5) + λ_diff·‖ε − ε_θ(z_t, t, c)‖². Seed defaults: 10×2048 MLP, T = 1000,
  constant β = 0.008, condition drop 0.05, γ = 1. The seed's slides say λ_rec = 1, λ_diff = 2
  while its code passes ``--lambda_2 2.0`` to the other term: both are exposed.
* ``ced`` — the modtrans default: M the closed-form ridge solution (λ chosen on val), and a
  diffusion model of the residual r = z − c·M, trained with the plain diffusion loss only (no
  backpropagation through the sampler), v-prediction on a cosine schedule, per-sample
  condition dropping, EMA weights, a 10-step DPM-Solver++ sampler. γ defaults to the mean
  residual norm on train, so a draw has the residual's typical size. With ``mean_map="mlp"``
  the mean term is c·M + g(c), g an MLP that starts at zero and is learned jointly by MSE
  (the residual target of the diffusion loss is detached from it), and γ is re-measured on
  the trained map's val residual.

Both average their K draws in ``mean`` mode from antithetic noise pairs (ε, −ε): the
deterministic sampler is a smooth map of the noise, so each pair cancels the first-order
noise term (``docs/findings.md``, *Translators*).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from modtrans.config import Config
from modtrans.translators.base import (
    Mode,
    Translator,
    TranslatorConfig,
    register_translator,
    row_generators,
    row_seeds,
)
from modtrans.translators.baselines import check_lambdas, mlp_net, select_ridge
from modtrans.translators.denoisers import ConditionalMLP, DenoiserConfig
from modtrans.translators.diffusion import OBJECTIVES, diffusion_loss, randn
from modtrans.translators.samplers import SamplerOptions, ddim_sample, get_sampler
from modtrans.translators.schedules import NoiseSchedule


@dataclasses.dataclass
class DiffusionOptions(Config):
    """The options both CED methods share (defaults: ``ced``'s): the denoiser, its noise
    schedule and loss, the sampler and γ.

    Attributes:
        width, depth, dropout, time_dim, emb_dim: the :class:`DenoiserConfig` of the denoiser.
        schedule, timesteps: the noise schedule's name and T.
        objective: what the denoiser predicts (``eps``, ``x0`` or ``v``).
        loss: the diffusion loss, ``l2`` or ``l1``.
        cond_drop: fraction of conditions replaced by the null one in training (for guidance).
        sampler, steps, guidance, eta: the saved :class:`SamplerOptions`.
        gamma: γ, the size of the residual term (None: the mean residual norm on train).
    """

    width: int = 512
    depth: int = 4
    dropout: float = 0.0
    time_dim: int = 128
    emb_dim: int = 256
    schedule: str = "cosine"
    timesteps: int = 1000
    objective: str = "v"
    loss: str = "l2"
    cond_drop: float = 0.1
    sampler: str = "dpm"
    steps: int = 10
    guidance: float = 1.0
    eta: float = 0.0
    gamma: float | None = None

    def __post_init__(self) -> None:
        if not 0 <= self.cond_drop < 1:
            raise ValueError(f"cond_drop must be in [0, 1), got {self.cond_drop} "
                             "(e.g. --param cond_drop=0.1)")
        if self.objective not in OBJECTIVES:
            raise ValueError(f"objective must be one of {list(OBJECTIVES)}, got "
                             f"{self.objective!r} (e.g. --param objective=v)")
        if None in dataclasses.astuple(self.sampling):  # building it validates the values
            raise ValueError("sampler, steps, guidance and eta need values (None is only "
                             "for overrides), e.g. --param steps=10")

    @property
    def sampling(self) -> SamplerOptions:
        """The saved sampler settings, into which ``translate(..., sampling=...)`` merges."""
        return SamplerOptions(sampler=self.sampler, steps=self.steps, guidance=self.guidance,
                              eta=self.eta)

    def denoiser_config(self, dim: int, cond_dim: int) -> DenoiserConfig:
        """The denoiser's shape for D = ``dim`` targets and Dc = ``cond_dim`` conditions."""
        return DenoiserConfig(dim=dim, cond_dim=cond_dim, width=self.width, depth=self.depth,
                              dropout=self.dropout, time_dim=self.time_dim, emb_dim=self.emb_dim)


@dataclasses.dataclass
class CEDOptions(DiffusionOptions):
    """Options of ``ced`` (besides :class:`DiffusionOptions`).

    Attributes:
        ridge_lambdas: the ridge grid of the map M (λ chosen on val).
        mean_map: ``ridge`` (c·M) or ``mlp`` (c·M + g(c), g learned jointly).
        map_width, map_depth: the size of g.
        lr, weight_decay: AdamW's.
        ema_decay: decay of the EMA weights that are saved (None: no EMA).
        mean_shrink: s in ``mean`` mode's c·M + s·(mean of the K draws − c·M): 1 keeps the
            draws' mean, 0 is the map alone. The average of K residual draws still carries
            their sampling error; shrinking it toward the map trades that against bias.
        mean_shrinks: the grid ``mean_shrink`` is chosen from on val after training, by the
            mean mode's Sim ([]: keep ``mean_shrink`` as given).
    """

    ridge_lambdas: list[float] = dataclasses.field(
        default_factory=lambda: [1e-4, 1e-3, 1e-2, 0.1, 1.0])
    mean_map: str = "ridge"
    map_width: int = 1024
    map_depth: int = 2
    lr: float = 1e-3
    weight_decay: float = 0.0
    ema_decay: float | None = 0.995
    mean_shrink: float = 1.0
    mean_shrinks: list[float] = dataclasses.field(
        default_factory=lambda: [0.0, 0.25, 0.5, 0.75, 1.0])

    def __post_init__(self) -> None:
        super().__post_init__()
        check_lambdas("ridge_lambdas", self.ridge_lambdas)
        for s in [self.mean_shrink, *self.mean_shrinks]:
            if not 0 <= s <= 1:
                raise ValueError(f"mean_shrink values must be in [0, 1], got {s} "
                                 "(--param mean_shrink=0.5)")
        if self.mean_map not in ("ridge", "mlp"):
            raise ValueError(f"mean_map must be 'ridge' or 'mlp', got {self.mean_map!r} "
                             "(--param mean_map=mlp)")


@register_translator
class CEDTranslator(Translator):
    """The modtrans CED: ridge M (+ an optional MLP), a diffusion model of the residual."""

    method = "ced"
    stochastic = True
    trainable = True
    default_epochs = 2
    options_class = CEDOptions
    options: CEDOptions

    def __init__(self, config: TranslatorConfig) -> None:
        super().__init__(config)
        o = self.options
        self.denoiser = ConditionalMLP(o.denoiser_config(config.target_dim, config.cond_dim))
        self.schedule = NoiseSchedule.from_name(o.schedule, o.timesteps)
        self._init_mapping()

    def _init_mapping(self) -> None:
        o, config = self.options, self.config
        self.register_buffer("mapping", torch.zeros(config.cond_dim, config.target_dim))
        self.register_buffer("residual_scale", torch.ones(()))
        self.register_buffer("gamma", torch.ones(()))
        self.correction: nn.Sequential | None = None
        if o.mean_map == "mlp":
            # No dropout: the residual the diffusion model learns is the one it is used with.
            self.correction = mlp_net(config.cond_dim, config.target_dim, o.map_width,
                                      o.map_depth, dropout=0.0)
            nn.init.zeros_(self.correction[-1].weight)  # training starts at the ridge map
            nn.init.zeros_(self.correction[-1].bias)

    def mapped(self, cn: Tensor) -> Tensor:
        """The mean term: c·M, plus the MLP correction g(c) when ``mean_map`` is ``mlp``."""
        out = cn @ self.mapping
        return out if self.correction is None else out + self.correction(cn)

    def prepare(self, cn: Tensor, zn: Tensor, val_cn: Tensor, val_zn: Tensor) -> dict[str, Any]:
        weight, lam, _ = select_ridge(self, cn, zn, val_cn, val_zn, self.options.ridge_lambdas)
        self.mapping.copy_(weight)
        residual = zn - cn @ self.mapping
        self.residual_scale.fill_(float(residual.std()))
        gamma = self.options.gamma
        self.gamma.fill_(float(residual.norm(dim=-1).mean()) if gamma is None else gamma)
        return {"ridge_lambda": lam, "gamma": float(self.gamma),
                "residual_scale": float(self.residual_scale)}

    def _drop_mask(self, n: int, device: torch.device) -> Tensor:
        """Per-sample condition dropping for classifier-free guidance: False → null condition."""
        return torch.rand(n, device=device) >= self.options.cond_drop

    @property
    def mean_shrink(self) -> float:
        """How far ``mean`` mode keeps its draws' mean from the map (see :class:`CEDOptions`)."""
        return self.options.mean_shrink

    def finish(self, cn: Tensor, zn: Tensor, val_cn: Tensor, val_zn: Tensor) -> dict[str, Any]:
        """With an MLP mean map, γ (when not given) is re-measured on the trained map's val
        residual: the MLP fits the train split more closely than ridge does, so its train
        residual is smaller than the one it meets on new data. Then ``mean_shrink`` is
        chosen on val from ``mean_shrinks``."""
        chosen: dict[str, Any] = {}
        if self.correction is not None and self.options.gamma is None:
            self.gamma.fill_(float((val_zn - self.mapped(val_cn)).norm(dim=-1).mean()))
            chosen["gamma"] = float(self.gamma)
        if self.options.mean_shrinks:
            chosen.update(self._choose_mean_shrink(val_cn, val_zn))
        return chosen

    @torch.no_grad()
    def _choose_mean_shrink(self, val_cn: Tensor, val_zn: Tensor, k: int = 8
                            ) -> dict[str, Any]:
        """The ``mean_shrinks`` value whose mean mode (K = ``k`` draws) has the best val Sim."""
        self.set_options(mean_shrink=1.0)
        n = len(val_cn)
        mean = self._translate(val_cn, mode="mean", n_samples=k,
                               generators=row_generators(row_seeds(0, n), n))
        mapped = self.mapped(val_cn)
        sims = {s: self.val_similarity(mapped + s * (mean - mapped), val_zn)
                for s in self.options.mean_shrinks}
        best = max(sims, key=sims.get)
        self.set_options(mean_shrink=best)
        return {"mean_shrink": best, "mean_shrink_val_sim": {str(s): round(v, 5)
                                                             for s, v in sims.items()}}

    def training_loss(self, cn: Tensor, zn: Tensor) -> Tensor:
        mean = self.mapped(cn)
        # Scaled by the ridge residual's std: unit scale for ridge, a little less once an
        # MLP correction has learned part of it.
        x0 = (zn - mean.detach()) / self.residual_scale
        loss = diffusion_loss(
            self.denoiser, x0, cn, self.schedule.to(cn.device),
            objective=self.options.objective, loss=self.options.loss,
            cond_mask=self._drop_mask(len(cn), cn.device),
        )
        if self.correction is not None:
            # The map is fitted jointly by MSE (the conditional mean, as ridge is in closed
            # form); the residual target is detached, so the two losses share no parameters.
            loss = loss + F.mse_loss(mean, zn)
        return loss

    def sample_residual(self, cn: Tensor, *,
                        generator: torch.Generator | Sequence[torch.Generator] | None = None,
                        noise: Tensor | None = None,
                        sampling: SamplerOptions | None = None) -> Tensor:
        """F(c): one diffusion draw per row, (N, D), from ``noise`` (default: drawn from
        ``generator``); the fields ``sampling`` sets override the saved sampler settings."""
        s = self.options.sampling.merged(sampling)
        if noise is None:
            noise = randn(tuple((len(cn), self.config.target_dim)), generator=generator,
                          device=cn.device, dtype=cn.dtype)
        sampler = get_sampler(s.sampler)
        return sampler(
            self.denoiser, noise, self.schedule.to(cn.device), cn, steps=s.steps, eta=s.eta,
            guidance=s.guidance, objective=self.options.objective, generator=generator,
        )

    def combine(self, cn: Tensor, residual: Tensor) -> Tensor:
        """ẑ = c·M + γ·F/‖F‖ (per-sample normalisation)."""
        return self.mapped(cn) + self.gamma * F.normalize(residual, dim=-1)

    def _translate(self, cn: Tensor, *, mode: Mode, n_samples: int,
                   generators: list[torch.Generator],
                   sampling: SamplerOptions | None = None) -> Tensor:
        k = 1 if mode == "sample" else n_samples
        noise = randn((len(cn), k, self.config.target_dim), generator=generators,
                      device=cn.device, dtype=cn.dtype).transpose(0, 1)  # (K, N, D)
        if mode == "mean":
            # Antithetic pairs (ε, −ε): the deterministic sampler maps noise to F smoothly,
            # so the pair's first-order noise terms cancel and the mean of K draws estimates
            # E[ẑ | c] with far less variance than K independent draws.
            half = (k + 1) // 2
            noise = torch.cat([noise[:half], -noise[:half]])[:k]
        # Draw j of row i is row j·N + i: the sampler's own noise, if any, also comes from
        # row i's generator.
        draws = self.sample_residual(cn.repeat(k, 1), generator=generators * k,
                                     noise=noise.reshape(k * len(cn), -1), sampling=sampling)
        z_hat = self.combine(cn.repeat(k, 1), draws).view(k, len(cn), -1)  # (K, N, D)
        if mode == "sample":
            return z_hat[0]
        if mode == "mean":
            mean, s = z_hat.mean(0), self.mean_shrink
            if s == 1.0:
                return mean
            mapped = self.mapped(cn)
            return mapped + s * (mean - mapped)
        # unCLIP's trick: keep the draw most similar to the mapped condition.
        score = F.cosine_similarity(z_hat, self.mapped(cn).unsqueeze(0), dim=-1)  # (K, N)
        best = score.argmax(0)
        return z_hat[best, torch.arange(len(cn), device=cn.device)]


@dataclasses.dataclass
class CEDPaperOptions(DiffusionOptions):
    """Options of ``ced-paper``: :class:`DiffusionOptions` with the seed's defaults, and its
    loss weights.

    Attributes:
        lambda_rec, lambda_diff: weights of the L1 reconstruction and the diffusion loss.
        lr, weight_decay: AdamW's.
        ema_decay: decay of the EMA weights that are saved (None: no EMA).
    """

    width: int = 2048
    depth: int = 10
    dropout: float = 0.1
    emb_dim: int = 512
    schedule: str = "constant"
    objective: str = "eps"
    cond_drop: float = 0.05
    sampler: str = "ddim"
    steps: int = 50
    guidance: float = 5.0
    gamma: float | None = 1.0
    lambda_rec: float = 1.0
    lambda_diff: float = 2.0
    lr: float = 1e-4
    weight_decay: float = 1e-2
    ema_decay: float | None = None


@register_translator
class CEDPaperTranslator(CEDTranslator):
    """The seed's training: learned M, diffusion of z, L1 through a 50-step guided DDIM."""

    method = "ced-paper"
    default_epochs = 1
    options_class = CEDPaperOptions
    options: CEDPaperOptions
    mean_shrink = 1.0  # the seed averages its draws as they are

    def finish(self, cn: Tensor, zn: Tensor, val_cn: Tensor, val_zn: Tensor) -> dict[str, Any]:
        """Nothing: the seed chooses nothing after training."""
        return {}

    def _init_mapping(self) -> None:
        self.projection = nn.Linear(self.config.cond_dim, self.config.target_dim, bias=False)
        self.register_buffer("gamma", torch.ones(()))
        self.correction = None

    def mapped(self, cn: Tensor) -> Tensor:
        return self.projection(cn)

    def prepare(self, cn: Tensor, zn: Tensor, val_cn: Tensor, val_zn: Tensor) -> dict[str, Any]:
        self.gamma.fill_(float(self.options.gamma))
        return {"gamma": float(self.gamma)}

    def training_loss(self, cn: Tensor, zn: Tensor) -> Tensor:
        o = self.options
        mask = self._drop_mask(len(cn), cn.device)
        schedule = self.schedule.to(cn.device)
        diff = diffusion_loss(self.denoiser, zn, cn, schedule, objective=o.objective,
                              loss=o.loss, cond_mask=mask)
        noise = torch.randn_like(zn)
        sample = ddim_sample(self.denoiser, noise, schedule, cn, steps=o.steps, eta=o.eta,
                             guidance=o.guidance, objective=o.objective)
        rec = F.l1_loss(self.combine(cn, sample), zn)
        return o.lambda_rec * rec + o.lambda_diff * diff
