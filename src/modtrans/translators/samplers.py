"""Reverse-process samplers: pure functions with one shared signature.

    sample(model, x, schedule, cond, *, steps, eta=0.0, guidance=1.0, objective="eps",
           generator=None) -> Tensor

``x`` is the initial noise x_T ``(B, D)``; device and dtype are read from it. ``cond`` is
``(B, Dc)``. Samplers leave the model's train/eval mode as it is (put it in ``eval()``
first) and do not switch gradients off: wrap inference in ``torch.no_grad()``. ``ddim_sample``
is differentiable, which the seed's training (``ced-paper``) needs.

Classifier-free guidance (Ho & Salimans 2022) acts on the model output at every step,
``out = out_∅ + g·(out_c − out_∅)``, with both halves from one batched forward whose second
half carries ``cond_mask=False`` (the model's null condition). ``g = 1`` runs only the
conditional forward. In the ε-parameterisation this is eq. 6 of the paper; since x̂_0 and ε̂
are affine in the output for a fixed x_t, guiding x_0 or v outputs is the same combination.

Timestep spacing. DDIM uses ``steps`` evenly spaced integers from T-1 down to 0, both ends
included (diffusers' "linspace", Lin et al. 2024 Table 2): like "trailing" it starts at the
noisiest trained step (x_T ~ N(0, I) matches q(x_{T-1}) best), like "leading" it ends at
t = 0 before the last jump to ᾱ = 1, so that jump — a denoise to the posterior mean, which
shrinks the sample spread by √(ᾱσ²/(ᾱσ² + 1-ᾱ)) for data of spread σ — starts from the least
noise. DPM-Solver++ uses diffusers' "trailing" spacing, with which its multistep update is
stable (ending at t = 0 makes its last step too long in log-SNR). ``ddim_sample(...,
spacing="leading")`` takes the seed's steps instead, ``{0, T/steps, 2T/steps, …}`` from the
largest down (guided-diffusion's respacing: DDIM over those steps' ᾱ).

:class:`SamplerOptions` carries the settings a translator's sampler runs with (name, steps,
guidance, η) from the command line down to these functions.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Sequence
from typing import Protocol

import numpy as np
import torch
from diffusers import DPMSolverMultistepScheduler
from torch import Tensor

from modtrans.config import Config
from modtrans.translators.diffusion import (
    OBJECTIVES,
    Denoiser,
    Objective,
    predict_x0_eps,
    randn,
)
from modtrans.translators.schedules import NoiseSchedule

__all__ = [
    "SPACINGS",
    "Sampler",
    "SamplerOptions",
    "ddim_sample",
    "dpm_solver_sample",
    "get_sampler",
    "leading_timesteps",
    "linspace_timesteps",
    "list_samplers",
]

logger = logging.getLogger(__name__)

_DIFFUSERS_PREDICTION_TYPE = {"eps": "epsilon", "x0": "sample", "v": "v_prediction"}


class Sampler(Protocol):
    """The shared sampler signature (see the module docstring)."""

    def __call__(
        self,
        model: Denoiser,
        x: Tensor,
        schedule: NoiseSchedule,
        cond: Tensor,
        *,
        steps: int,
        eta: float = 0.0,
        guidance: float = 1.0,
        objective: Objective = "eps",
        generator: torch.Generator | Sequence[torch.Generator] | None = None,
    ) -> Tensor: ...


def _check_steps(num_timesteps: int, steps: int) -> None:
    if not isinstance(steps, int) or not 1 <= steps <= num_timesteps:
        raise ValueError(
            f"steps must be an int in [1, {num_timesteps}] (the schedule's T), got {steps!r}"
        )


def linspace_timesteps(num_timesteps: int, steps: int) -> list[int]:
    """``steps`` evenly spaced timesteps from ``T-1`` down to 0: ``round((T-1)(1 - i/(steps-1)))``.

    One step gives ``[T-1]``. The values are distinct because ``steps <= T``.
    """
    _check_steps(num_timesteps, steps)
    return np.round(np.linspace(num_timesteps - 1, 0, steps)).astype(int).tolist()


def leading_timesteps(num_timesteps: int, steps: int) -> list[int]:
    """The seed's ``steps`` timesteps ``k·(T // steps)`` for k = steps−1 … 0 (with T = 1000
    and 50 steps: 980, 960, …, 0)."""
    _check_steps(num_timesteps, steps)
    stride = num_timesteps // steps
    return list(range(stride * (steps - 1), -1, -stride))


SPACINGS = {"linspace": linspace_timesteps, "leading": leading_timesteps}


def _check_inputs(x: Tensor, cond: Tensor, guidance: float, objective: str) -> None:
    if objective not in OBJECTIVES:
        raise ValueError(f"unknown objective {objective!r}; choose one of {list(OBJECTIVES)}")
    if x.ndim < 2 or cond.shape[0] != x.shape[0]:
        raise ValueError(
            f"x must be (B, D) and cond (B, Dc) with the same B, got x {tuple(x.shape)} "
            f"and cond {tuple(cond.shape)}"
        )
    if guidance < 0:
        raise ValueError(f"guidance must be >= 0 (1 = conditional only), got {guidance}")


def _guided(model: Denoiser, cond: Tensor, guidance: float) -> Callable[[Tensor, int], Tensor]:
    """``f(x_t, t)``: the model output ``(B, D)`` at step ``t`` with classifier-free guidance.

    The condition is fixed once per sampling call through the model's ``with_condition``
    (which modtrans's denoisers make cheaper than a full forward per step); a model without
    it is called as a plain :class:`Denoiser`.
    """
    batch = cond.shape[0]
    if guidance == 1.0:
        both, mask = cond, None
    else:
        both = torch.cat([cond, cond])
        mask = torch.arange(2 * batch, device=cond.device) < batch  # (2B,): cond, then null
    fixed = getattr(model, "with_condition", None)
    if fixed is not None:
        output = fixed(both, mask)
    else:
        def output(x: Tensor, t: int) -> Tensor:
            t_batch = torch.full((x.shape[0],), t, device=x.device, dtype=torch.long)
            return model(x, t_batch, both, mask)
    if guidance == 1.0:
        return output

    def guided(x: Tensor, t: int) -> Tensor:
        out_cond, out_null = output(torch.cat([x, x]), t).chunk(2)  # one batched forward
        return out_null + guidance * (out_cond - out_null)

    return guided


def ddim_sample(
    model: Denoiser,
    x: Tensor,
    schedule: NoiseSchedule,
    cond: Tensor,
    *,
    steps: int,
    eta: float = 0.0,
    guidance: float = 1.0,
    objective: Objective = "eps",
    generator: torch.Generator | Sequence[torch.Generator] | None = None,
    spacing: str = "linspace",
) -> Tensor:
    """DDIM (Song et al. 2021, eq. 12) from x_T to x_0 in ``steps`` evenly spaced steps.

    Args:
        model: the denoiser.
        x: initial noise x_T ``(B, D)``.
        schedule: the noise schedule the model was trained with.
        cond: conditions ``(B, Dc)``.
        steps: number of denoising steps (1 … T).
        eta: η; 0 is the deterministic DDIM ODE, 1 the DDPM posterior variance.
        guidance: classifier-free guidance scale g.
        objective: what the model predicts (``"eps"``, ``"x0"`` or ``"v"``).
        generator: random generator for the η > 0 noise, or one per row.
        spacing: ``linspace`` (T−1 … 0) or ``leading`` (the seed's, see the module docstring).

    Returns:
        Samples x_0, ``(B, D)``, dtype of ``x``.
    """
    _check_inputs(x, cond, guidance, objective)
    if eta < 0:
        raise ValueError(f"eta must be >= 0 (0 = deterministic DDIM), got {eta}")
    if spacing not in SPACINGS:
        raise ValueError(f"unknown spacing {spacing!r}; choose one of {sorted(SPACINGS)}")
    timesteps = SPACINGS[spacing](schedule.num_timesteps, steps)
    alphas_cumprod = schedule.alphas_cumprod.tolist()
    output = _guided(model, cond, guidance)
    for i, t in enumerate(timesteps):
        out = output(x, t)
        x0_hat, eps_hat = predict_x0_eps(out, x, t, schedule, objective)  # (B, D) each
        ab_t = alphas_cumprod[t]
        ab_prev = alphas_cumprod[timesteps[i + 1]] if i + 1 < len(timesteps) else 1.0
        # σ_t(η) = η·√((1-ᾱ_prev)/(1-ᾱ_t))·√(1-ᾱ_t/ᾱ_prev)            (eq. 16)
        sigma = eta * ((1 - ab_prev) / (1 - ab_t) * (1 - ab_t / ab_prev)) ** 0.5
        # x_prev = √ᾱ_prev·x̂_0 + √(1-ᾱ_prev-σ²)·ε̂ + σ·z,  z ~ N(0, I)    (eq. 12)
        x = ab_prev**0.5 * x0_hat + max(1 - ab_prev - sigma**2, 0.0) ** 0.5 * eps_hat
        if sigma > 0:
            z = randn(tuple(x.shape), generator=generator, device=x.device, dtype=x.dtype)
            x = x + sigma * z
    return x


@torch.no_grad()
def dpm_solver_sample(
    model: Denoiser,
    x: Tensor,
    schedule: NoiseSchedule,
    cond: Tensor,
    *,
    steps: int,
    eta: float = 0.0,
    guidance: float = 1.0,
    objective: Objective = "eps",
    generator: torch.Generator | Sequence[torch.Generator] | None = None,
) -> Tensor:
    """DPM-Solver++(2M) (Lu et al. 2022) via diffusers' ``DPMSolverMultistepScheduler``.

    A second-order multistep solver of the same ODE as DDIM η=0: ~10-20 steps reach the
    quality DDIM needs ~50-100 for. The scheduler is built from ``schedule.betas``
    (``trained_betas``) with trailing timesteps and a final step to σ = 0.

    Args:
        model, x, schedule, cond, steps, guidance, objective: as :func:`ddim_sample`.
        eta: 0 for the ODE solver (``dpmsolver++``), 1 for its SDE variant
            (``sde-dpmsolver++``, noise from ``generator``); other values are rejected.
        generator: random generator for the SDE noise, or one per row.

    Returns:
        Samples x_0, ``(B, D)``, dtype of ``x``.
    """
    _check_inputs(x, cond, guidance, objective)
    if eta not in (0.0, 1.0):
        raise ValueError(
            f"dpm_solver_sample supports eta=0 (ODE) or eta=1 (SDE), got {eta}; "
            "use ddim_sample for other values of eta"
        )
    _check_steps(schedule.num_timesteps, steps)
    scheduler = DPMSolverMultistepScheduler(
        num_train_timesteps=schedule.num_timesteps,
        trained_betas=schedule.betas.double().cpu().numpy(),
        prediction_type=_DIFFUSERS_PREDICTION_TYPE[objective],
        algorithm_type="sde-dpmsolver++" if eta == 1.0 else "dpmsolver++",
        solver_order=2,
        timestep_spacing="trailing",
        final_sigmas_type="zero",
    )
    scheduler.set_timesteps(steps, device=x.device)
    logger.debug("dpm_solver_sample timesteps %s", scheduler.timesteps.tolist())
    output = _guided(model, cond, guidance)
    for t in scheduler.timesteps:
        out = output(x, int(t))
        x = scheduler.step(out, t, x, generator=generator).prev_sample
    return x


_SAMPLERS: dict[str, Callable[..., Tensor]] = {
    "ddim": ddim_sample,
    "dpm": dpm_solver_sample,
}


def list_samplers() -> list[str]:
    """Names accepted by :func:`get_sampler`."""
    return sorted(_SAMPLERS)


def get_sampler(name: str) -> Sampler:
    """The sampler function registered under ``name`` (one of :func:`list_samplers`)."""
    if name not in _SAMPLERS:
        raise ValueError(f"unknown sampler {name!r}; choose one of {list_samplers()}")
    return _SAMPLERS[name]


@dataclasses.dataclass
class SamplerOptions(Config):
    """Which sampler a translator draws with and how; None leaves the translator's saved value.

    Attributes:
        sampler: a name from :func:`list_samplers`.
        steps: denoising steps (at least 1, at most the schedule's T).
        guidance: classifier-free guidance scale (0 = unconditional, 1 = conditional only).
        eta: η, the noise added per step (0 = deterministic; ``dpm`` takes only 0 or 1).
    """

    sampler: str | None = None
    steps: int | None = None
    guidance: float | None = None
    eta: float | None = None

    def __post_init__(self) -> None:
        if self.sampler is not None and self.sampler not in _SAMPLERS:
            raise ValueError(f"unknown sampler {self.sampler!r}; choose one of "
                             f"{list_samplers()} (--sampler)")
        if self.steps is not None and (not isinstance(self.steps, int) or self.steps < 1):
            raise ValueError(f"steps must be an int >= 1, got {self.steps!r} (--steps 10)")
        for name in ("guidance", "eta"):
            value = getattr(self, name)
            if value is not None and not value >= 0:
                raise ValueError(f"{name} must be >= 0, got {value!r} (--{name} 0 or more)")

    def merged(self, override: SamplerOptions | None) -> SamplerOptions:
        """These settings with every field that ``override`` sets (not None) in its place."""
        if override is None:
            return self
        changes = {k: v for k, v in dataclasses.asdict(override).items() if v is not None}
        return dataclasses.replace(self, **changes)
