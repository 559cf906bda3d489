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
import functools
from collections.abc import Callable, Sequence
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
from modtrans.translators.baselines import (
    RidgeMoments,
    check_lambdas,
    mlp_net,
    ridge_solutions,
    select_ridge,
)
from modtrans.translators.denoisers import DENOISERS, DenoiserConfig
from modtrans.translators.diffusion import OBJECTIVES, Denoiser, diffusion_loss, randn
from modtrans.translators.samplers import SPACINGS, Sampler, SamplerOptions, get_sampler
from modtrans.translators.schedules import NoiseSchedule


@dataclasses.dataclass
class DiffusionOptions(Config):
    """The options both CED methods share (defaults: ``ced``'s): the denoiser, its noise
    schedule and loss, the sampler and γ.

    Attributes:
        net: the denoiser, a name in :data:`DENOISERS` (``film``: :class:`ConditionalMLP`;
            ``seed``: the seed's network, :class:`SeedMLP`).
        width, depth, dropout, time_dim, emb_dim: the :class:`DenoiserConfig` of the denoiser.
        schedule, timesteps: the noise schedule's name and T.
        objective: what the denoiser predicts (``eps``, ``x0`` or ``v``).
        loss: the diffusion loss, ``l2`` or ``l1``.
        cond_drop: fraction of conditions replaced by the null one in training (for guidance).
        sampler, steps, guidance, eta: the saved :class:`SamplerOptions`.
        spacing: DDIM's timesteps, ``linspace`` or the seed's ``leading`` (:data:`SPACINGS`).
        gamma: γ, the size of the residual term (None: the mean residual norm on train).
    """

    net: str = "film"
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
    spacing: str = "linspace"
    gamma: float | None = None

    def __post_init__(self) -> None:
        for name, value, allowed in (("net", self.net, DENOISERS),
                                     ("spacing", self.spacing, SPACINGS)):
            if value not in allowed:
                raise ValueError(f"{name} must be one of {sorted(allowed)}, got {value!r} "
                                 f"(--param {name}={next(iter(allowed))})")
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
        self.denoiser = DENOISERS[o.net](o.denoiser_config(config.target_dim, config.cond_dim))
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

    needs_moments = True

    def prepare(self, cn: Tensor, zn: Tensor, val_cn: Tensor, val_zn: Tensor) -> dict[str, Any]:
        lam = self._choose_map(ridge_solutions(cn, zn, self.options.ridge_lambdas), val_cn,
                               val_zn)
        residual = zn - cn @ self.mapping
        return self._set_scales(float(residual.std()), residual, lam)

    def prepare_streamed(self, moments: RidgeMoments | None, sample: tuple[Tensor, Tensor],
                         val_cn: Tensor, val_zn: Tensor) -> dict[str, Any]:
        """M and the residual's std from the whole split's moments; γ (the mean residual
        norm, not a sum of moments) from the sample."""
        assert moments is not None
        lam = self._choose_map(moments.solutions(self.options.ridge_lambdas), val_cn, val_zn)
        cn, zn = sample
        return self._set_scales(moments.residual_std(self.mapping), zn - cn @ self.mapping, lam)

    def _choose_map(self, solutions: list[Tensor], val_cn: Tensor, val_zn: Tensor) -> float:
        weight, lam, _ = select_ridge(self, solutions, val_cn, val_zn, self.options.ridge_lambdas)
        self.mapping.copy_(weight)
        return lam

    def _set_scales(self, residual_std: float, residual: Tensor, lam: float) -> dict[str, Any]:
        self.residual_scale.fill_(residual_std)
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
        return self._sampler(s)(
            self.denoiser, noise, self.schedule.to(cn.device), cn, steps=s.steps, eta=s.eta,
            guidance=s.guidance, objective=self.options.objective, generator=generator,
        )

    def _sampler(self, s: SamplerOptions) -> Sampler:
        """The sampler ``s`` names, with DDIM on the saved ``spacing``."""
        sampler = get_sampler(s.sampler)
        if s.sampler == "ddim":
            return functools.partial(sampler, spacing=self.options.spacing)
        return sampler

    def combine(self, cn: Tensor, residual: Tensor, draws: int = 1) -> Tensor:
        """ẑ = c·M + γ·F/‖F‖ (per-sample normalisation) for ``residual`` (draws·N, D)."""
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
        z_hat = self.combine(cn.repeat(k, 1), draws, k).view(k, len(cn), -1)  # (K, N, D)
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
    """Options of ``ced-paper``: the seed's method as its code runs it, each modtrans change
    to it one option away (:class:`DiffusionOptions` with the seed's defaults, plus these).

    The seed's guidance mixes two chains as (1 + w)·x_c − w·x_u with w = 5; written as
    x_u + g·(x_c − x_u), that is g = ``guidance`` = 6.

    Attributes:
        guidance_mode: ``chains`` (the seed: two independent DDIM chains, conditional and
            unconditional, mixed at the end) or ``step`` (the noise prediction guided at every
            step of one chain).
        normalize: ``batch`` (the seed: the term is divided by the norm of the whole batch of
            rows drawn together, so a row's output depends on its batch) or ``row`` (F/‖F‖).
        space: ``raw`` (the seed: M acts on the raw condition, the diffusion sample is
            un-normalised before it is added and the L1 is taken against the raw target) or
            ``z`` (everything in z-normalised space).
        cond_drop_mode: ``batch`` (the seed: with probability ``cond_drop`` a whole step is
            unconditional and has no reconstruction loss) or ``sample`` (per-sample dropping).
        lambda_rec, lambda_diff: weights of the L1 reconstruction and the diffusion loss (the
            seed's code passes 2 for the reconstruction; its slides say the reverse).
        grad_clip: the gradient norm clipped to (None: no clipping).
        lr, weight_decay: AdamW's.
        ema_decay: decay of the EMA weights that are saved (None: no EMA; the seed evaluates
            its raw weights).
    """

    net: str = "seed"
    width: int = 2048
    depth: int = 9
    dropout: float = 0.0
    time_dim: int = 64
    emb_dim: int = 512
    schedule: str = "constant"
    objective: str = "eps"
    loss: str = "l1"
    cond_drop: float = 0.05
    sampler: str = "ddim"
    steps: int = 50
    guidance: float = 6.0
    spacing: str = "leading"
    gamma: float | None = 1.0
    guidance_mode: str = "chains"
    normalize: str = "batch"
    space: str = "raw"
    cond_drop_mode: str = "batch"
    lambda_rec: float = 2.0
    lambda_diff: float = 1.0
    grad_clip: float | None = 1.0
    lr: float = 1e-4
    weight_decay: float = 1e-2
    ema_decay: float | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        for name, allowed in CED_PAPER_CHOICES.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {list(allowed)}, got "
                                 f"{getattr(self, name)!r} (--param {name}={allowed[0]})")
        if self.grad_clip is not None and not self.grad_clip > 0:
            raise ValueError(f"grad_clip must be > 0 or None, got {self.grad_clip}")


#: ``ced-paper``'s switches: the seed's choice first, then the modtrans one.
CED_PAPER_CHOICES: dict[str, tuple[str, str]] = {
    "guidance_mode": ("chains", "step"), "normalize": ("batch", "row"), "space": ("raw", "z"),
    "cond_drop_mode": ("batch", "sample")}

#: What ``ced-paper`` checkpoints written before the seed's options existed ran with.
_PRE_SEED_OPTIONS = {"net": "film", "spacing": "linspace", "guidance_mode": "step",
                     "normalize": "row", "space": "z", "cond_drop_mode": "sample",
                     "grad_clip": None}


class _Unconditional:
    """A denoiser with every condition dropped: the seed's unconditional chain."""

    def __init__(self, model: Denoiser) -> None:
        self.model = model

    def __call__(self, x: Tensor, t: Tensor, cond: Tensor, cond_mask: Tensor | None = None
                 ) -> Tensor:
        return self.model(x, t, cond, torch.zeros(len(cond), dtype=torch.bool,
                                                  device=cond.device))

    def with_condition(self, cond: Tensor, cond_mask: Tensor | None = None
                       ) -> Callable[[Tensor, int], Tensor]:
        null = torch.zeros(len(cond), dtype=torch.bool, device=cond.device)
        return self.model.with_condition(cond, null)


@register_translator
class CEDPaperTranslator(CEDTranslator):
    """The seed's CED: learned M, diffusion of z, L1 through a guided DDIM sample."""

    method = "ced-paper"
    default_epochs = 1
    options_class = CEDPaperOptions
    options: CEDPaperOptions
    mean_shrink = 1.0  # the seed averages its draws as they are

    @classmethod
    def migrate_params(cls, params: dict[str, Any]) -> dict[str, Any]:
        """A checkpoint from before the seed's options ran without them."""
        return params if "normalize" in params else {**_PRE_SEED_OPTIONS, **params}

    def finish(self, cn: Tensor, zn: Tensor, val_cn: Tensor, val_zn: Tensor) -> dict[str, Any]:
        """Nothing: the seed chooses nothing after training."""
        return {}

    def _init_mapping(self) -> None:
        self.projection = nn.Linear(self.config.cond_dim, self.config.target_dim, bias=False)
        self.register_buffer("gamma", torch.ones(()))
        self.correction = None

    def _map(self, cn: Tensor) -> Tensor:
        """c·M in the space M works in (raw or normalised)."""
        if self.options.space == "z":
            return self.projection(cn)
        return self.projection(self.cond_norm.inverse(cn))

    def mapped(self, cn: Tensor) -> Tensor:
        """The mean term c·M, in normalised target space."""
        mapped = self._map(cn)
        return mapped if self.options.space == "z" else self.target_norm(mapped)

    needs_moments = False

    def prepare(self, cn: Tensor, zn: Tensor, val_cn: Tensor, val_zn: Tensor) -> dict[str, Any]:
        self.gamma.fill_(float(self.options.gamma))
        return {"gamma": float(self.gamma)}

    def _combine_own_space(self, cn: Tensor, residual: Tensor, draws: int) -> Tensor:
        """ẑ = c·M + γ·Normalize(F) in M's space; in ``raw`` space F is un-normalised first.

        ``batch`` Normalize divides each of the ``draws`` blocks of N rows by its Frobenius
        norm, ‖F‖ over the (N, D) rows drawn together, as the seed divides by
        ``torch.norm(batch)``; ``row`` divides each row by its own norm."""
        if self.options.space == "raw":
            residual = self.target_norm.inverse(residual)
        if self.options.normalize == "row":
            term = F.normalize(residual, dim=-1)
        else:
            blocks = residual.view(draws, -1, residual.shape[-1])  # (K, N, D)
            term = (blocks / blocks.flatten(1).norm(dim=1)[:, None, None]).view_as(residual)
        return self._map(cn) + self.gamma * term

    def combine(self, cn: Tensor, residual: Tensor, draws: int = 1) -> Tensor:
        """ẑ = c·M + γ·Normalize(F) for ``residual`` (draws·N, D), in normalised space."""
        out = self._combine_own_space(cn, residual, draws)
        return out if self.options.space == "z" else self.target_norm(out)

    def sample_residual(self, cn: Tensor, *,
                        generator: torch.Generator | Sequence[torch.Generator] | None = None,
                        noise: Tensor | None = None,
                        sampling: SamplerOptions | None = None) -> Tensor:
        """F(c), guided as ``guidance_mode`` says: in ``chains`` mode the unconditional chain
        starts from its own noise (drawn from ``generator`` after the conditional chain's) and
        the two samples are mixed as x_u + g·(x_c − x_u)."""
        s = self.options.sampling.merged(sampling)
        if self.options.guidance_mode == "step" or s.guidance == 1.0:
            return super().sample_residual(cn, generator=generator, noise=noise, sampling=s)
        single = dataclasses.replace(s, guidance=1.0)
        x_cond = super().sample_residual(cn, generator=generator, noise=noise, sampling=single)
        noise_null = randn(tuple(x_cond.shape), generator=generator, device=cn.device,
                           dtype=cn.dtype)
        x_null = self._sampler(single)(
            _Unconditional(self.denoiser), noise_null, self.schedule.to(cn.device), cn,
            steps=s.steps, eta=s.eta, objective=self.options.objective, generator=generator)
        return x_null + s.guidance * (x_cond - x_null)

    def prepare_streamed(self, moments: RidgeMoments | None, sample: tuple[Tensor, Tensor],
                         val_cn: Tensor, val_zn: Tensor) -> dict[str, Any]:
        return self.prepare(*sample, val_cn, val_zn)

    def training_loss(self, cn: Tensor, zn: Tensor) -> Tensor:
        o = self.options
        n = len(cn)
        schedule = self.schedule.to(cn.device)
        if o.cond_drop_mode == "batch":
            if float(torch.rand(())) < o.cond_drop:  # the whole step unconditional, no L1
                null = torch.zeros(n, dtype=torch.bool, device=cn.device)
                # M takes no part in this step; its zero-weighted use gives it a zero gradient,
                # which DDP needs from every parameter on every rank (ranks drop apart).
                unused = 0.0 * self.projection.weight.sum()
                return unused + o.lambda_diff * diffusion_loss(
                    self.denoiser, zn, cn, schedule, objective=o.objective, loss=o.loss,
                    cond_mask=null)
            mask = None
        else:
            mask = self._drop_mask(n, cn.device)
        diff = diffusion_loss(self.denoiser, zn, cn, schedule, objective=o.objective,
                              loss=o.loss, cond_mask=mask)
        # The reconstruction backpropagates through the whole guided DDIM sample.
        sample = self.sample_residual(cn, noise=torch.randn_like(zn),
                                      sampling=SamplerOptions(sampler="ddim"))
        pred = self._combine_own_space(cn, sample, 1)
        target = zn if o.space == "z" else self.target_norm.inverse(zn)
        return o.lambda_rec * F.l1_loss(pred, target) + o.lambda_diff * diff
