"""Forward process, parameterisation conversions and the training loss (no sampling here).

Notation (Ho et al. 2020; Salimans & Ho 2022), with ``a_t = √ᾱ_t`` and ``s_t = √(1-ᾱ_t)``
so that ``a_t² + s_t² = 1``:

    x_t = a_t x_0 + s_t ε                      (forward process, q(x_t | x_0))
    v   = a_t ε - s_t x_0                      (velocity)

The network predicts one of ``ε`` ("eps"), ``x_0`` ("x0") or ``v`` ("v"); all three carry
the same information given ``x_t`` and :func:`predict_x0_eps` converts any of them back to
the pair ``(x̂_0, ε̂)`` the samplers need.

Shapes: vectors ``(B, D)``; timesteps ``t`` are integer tensors ``(B,)`` (or a 0-d tensor
shared by the batch). The code broadcasts over any trailing dimensions.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal, Protocol

import torch
import torch.nn.functional as F
from torch import Tensor

from modtrans.translators.schedules import NoiseSchedule

__all__ = [
    "OBJECTIVES",
    "Denoiser",
    "Objective",
    "add_noise",
    "diffusion_loss",
    "predict_x0_eps",
    "randn",
    "training_target",
]

Objective = Literal["eps", "x0", "v"]
OBJECTIVES: tuple[str, ...] = ("eps", "x0", "v")
_LOSSES: tuple[str, ...] = ("l2", "l1")


class Denoiser(Protocol):
    """What losses and samplers call: ``model(x_t, t, cond, cond_mask) -> (B, D)``.

    ``x_t`` is ``(B, D)``, ``t`` integer ``(B,)``, ``cond`` ``(B, Dc)``, ``cond_mask`` bool
    ``(B,)`` or ``None``; ``False`` replaces that sample's condition by the null condition
    (classifier-free guidance), ``None`` keeps every condition.

    Samplers also use an optional ``with_condition(cond, cond_mask) -> f(x_t, t)`` (one
    integer ``t`` for every row) where the model has one, to fix the condition once per
    sampling call (:meth:`modtrans.translators.denoisers.ConditionalMLP.with_condition`).
    """

    def __call__(
        self, x: Tensor, t: Tensor, cond: Tensor, cond_mask: Tensor | None = None
    ) -> Tensor: ...


def randn(
    shape: tuple[int, ...],
    *,
    generator: torch.Generator | Sequence[torch.Generator] | None,
    device: torch.device,
    dtype: torch.dtype,
) -> Tensor:
    """Standard normal noise on ``device``, drawn on the generator's own device.

    A CPU generator therefore reproduces the same noise whatever ``device`` is. A sequence of
    generators (one per row of ``shape[0]``, as diffusers' schedulers take them) draws each
    row from its own.
    """
    if isinstance(generator, Sequence):
        if len(generator) != shape[0]:
            raise ValueError(f"{len(generator)} generators for {shape[0]} rows")
        rows = [torch.randn(shape[1:], generator=g, device=g.device, dtype=dtype)
                for g in generator]
        return torch.stack(rows).to(device)
    draw_on = generator.device if generator is not None else device
    return torch.randn(shape, generator=generator, device=draw_on, dtype=dtype).to(device)


def _check_objective(objective: str) -> None:
    if objective not in OBJECTIVES:
        raise ValueError(f"unknown objective {objective!r}; choose one of {list(OBJECTIVES)}")


def _coefs(schedule: NoiseSchedule, t: Tensor | int, like: Tensor) -> tuple[Tensor, Tensor]:
    """``(a_t, s_t)`` gathered at ``t`` and shaped to broadcast against ``like`` (B, D)."""
    t = torch.as_tensor(t, device=schedule.device)
    if t.dtype.is_floating_point or t.dtype == torch.bool:
        raise ValueError(f"timesteps must be an integer tensor, got dtype {t.dtype}")
    # Range-checked on CPU only, where it costs no device sync (a negative t would wrap).
    on_cpu = t.device.type == "cpu" and t.numel() > 0
    if on_cpu and (int(t.min()) < 0 or int(t.max()) >= schedule.num_timesteps):
        raise ValueError(
            f"timesteps must lie in [0, {schedule.num_timesteps - 1}], "
            f"got [{int(t.min())}, {int(t.max())}]"
        )
    a = schedule.sqrt_alphas_cumprod[t]
    s = schedule.sqrt_one_minus_alphas_cumprod[t]
    shape = a.shape + (1,) * (like.ndim - a.ndim)  # (B,) -> (B, 1); () -> (1, 1)
    return (
        a.reshape(shape).to(device=like.device, dtype=like.dtype),
        s.reshape(shape).to(device=like.device, dtype=like.dtype),
    )


def add_noise(x0: Tensor, noise: Tensor, t: Tensor, schedule: NoiseSchedule) -> Tensor:
    """Sample ``q(x_t | x_0)``: ``x_t = √ᾱ_t x_0 + √(1-ᾱ_t) ε`` (Ho et al. 2020, eq. 4).

    Args:
        x0: clean data ``(B, D)``.
        noise: ε ~ N(0, I), ``(B, D)``.
        t: integer timesteps ``(B,)`` in ``[0, T)``.
        schedule: the noise schedule.

    Returns:
        x_t, ``(B, D)``.
    """
    a, s = _coefs(schedule, t, x0)
    return a * x0 + s * noise


def training_target(
    x0: Tensor, noise: Tensor, t: Tensor, schedule: NoiseSchedule, objective: Objective
) -> Tensor:
    """What the network should output for ``x_t = add_noise(x0, noise, t)``.

    ``"eps"`` → ε, ``"x0"`` → x_0, ``"v"`` → ``√ᾱ_t ε - √(1-ᾱ_t) x_0``; all ``(B, D)``.
    """
    _check_objective(objective)
    if objective == "eps":
        return noise
    if objective == "x0":
        return x0
    a, s = _coefs(schedule, t, x0)
    return a * noise - s * x0


def predict_x0_eps(
    model_out: Tensor,
    x_t: Tensor,
    t: Tensor | int,
    schedule: NoiseSchedule,
    objective: Objective,
) -> tuple[Tensor, Tensor]:
    """Convert a network output in any parameterisation to ``(x̂_0, ε̂)``.

    - ``"eps"``: ``x̂_0 = (x_t - s_t ε̂) / a_t`` (DDIM eq. 9, "predicted x_0");
    - ``"x0"``:  ``ε̂ = (x_t - a_t x̂_0) / s_t``;
    - ``"v"``:   ``x̂_0 = a_t x_t - s_t v̂``, ``ε̂ = s_t x_t + a_t v̂`` (Salimans & Ho 2022, §4).

    Args:
        model_out: network output ``(B, D)``.
        x_t: the noisy input ``(B, D)``.
        t: integer timesteps ``(B,)``, or one shared step (int or 0-d tensor).
        schedule: the noise schedule.
        objective: what ``model_out`` predicts.

    Returns:
        ``(x̂_0, ε̂)``, each ``(B, D)``.
    """
    _check_objective(objective)
    a, s = _coefs(schedule, t, x_t)
    if objective == "eps":
        return (x_t - s * model_out) / a, model_out
    if objective == "x0":
        return model_out, (x_t - a * model_out) / s
    return a * x_t - s * model_out, s * x_t + a * model_out


def diffusion_loss(
    model: Denoiser,
    x0: Tensor,
    cond: Tensor,
    schedule: NoiseSchedule,
    *,
    objective: Objective = "eps",
    loss: Literal["l2", "l1"] = "l2",
    generator: torch.Generator | None = None,
    cond_mask: Tensor | None = None,
) -> Tensor:
    """The simple diffusion loss ``E_{t,ε} ‖target - model(x_t, t, c)‖`` (Ho et al. 2020, eq. 14).

    ``t ~ U{0, …, T-1}`` and ``ε ~ N(0, I)`` are drawn per sample from ``generator``.

    Args:
        model: the denoiser (see :class:`Denoiser`).
        x0: clean targets ``(B, D)``.
        cond: conditions ``(B, Dc)``.
        schedule: the noise schedule (on ``x0``'s device).
        objective: what the network predicts, one of ``"eps"``, ``"x0"``, ``"v"``.
        loss: ``"l2"`` (mean squared error) or ``"l1"`` (mean absolute error).
        generator: random generator for ``t`` and ``ε``.
        cond_mask: bool ``(B,)``; ``False`` trains that sample on the null condition.

    Returns:
        The scalar loss, averaged over batch and dimensions (float32).
    """
    _check_objective(objective)
    if loss not in _LOSSES:
        raise ValueError(f"unknown loss {loss!r}; choose one of {list(_LOSSES)}")
    batch = x0.shape[0]
    draw_on = generator.device if generator is not None else x0.device
    t = torch.randint(0, schedule.num_timesteps, (batch,), generator=generator, device=draw_on)
    t = t.to(x0.device)
    noise = randn(tuple(x0.shape), generator=generator, device=x0.device, dtype=x0.dtype)
    x_t = add_noise(x0, noise, t, schedule)
    target = training_target(x0, noise, t, schedule, objective)
    out = model(x_t, t, cond, cond_mask)
    if loss == "l2":
        return F.mse_loss(out.float(), target.float())
    return F.l1_loss(out.float(), target.float())
