"""Noise schedules: small pure functions of the number of diffusion steps ``T``.

Every schedule returns the per-step variances ``β_t`` (t = 0 … T-1) of the forward process
``q(x_t | x_{t-1}) = N(√(1-β_t) x_{t-1}, β_t I)``; from them

    α_t = 1 - β_t,        ᾱ_t = ∏_{s≤t} α_s,        q(x_t | x_0) = N(√ᾱ_t x_0, (1-ᾱ_t) I).

Schedules are computed in float64 and returned as float32 tensors (on CPU).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

import torch
from torch import Tensor

__all__ = [
    "NoiseSchedule",
    "constant_betas",
    "cosine_betas",
    "get_betas",
    "linear_betas",
    "list_schedules",
]


def _check_T(T: int) -> None:
    if not isinstance(T, int) or T < 1:
        raise ValueError(f"number of diffusion steps T must be a positive int, got {T!r}")


def linear_betas(T: int, start: float = 1e-4, end: float = 2e-2) -> Tensor:
    """Linear schedule of Ho et al. (2020): ``β_t = start + (end - start)·t/(T-1)``.

    Args:
        T: number of diffusion steps.
        start: β_0.
        end: β_{T-1}.

    Returns:
        ``(T,)`` float32 tensor of β_t.
    """
    _check_T(T)
    if not 0.0 < start <= end < 1.0:
        raise ValueError(f"linear_betas needs 0 < start <= end < 1, got start={start}, end={end}")
    return torch.linspace(start, end, T, dtype=torch.float64).float()


def cosine_betas(T: int, s: float = 0.008, max_beta: float = 0.999) -> Tensor:
    """Cosine schedule of Nichol & Dhariwal (2021), eq. 17.

    ``ᾱ(t) = f(t)/f(0)`` with ``f(t) = cos²((t/T + s)/(1 + s) · π/2)``, and
    ``β_t = min(1 - ᾱ(t+1)/ᾱ(t), max_beta)``, so ᾱ_{T-1} ≈ 0.

    The clipped last step (β_{T-1} = max_beta) makes ᾱ_{T-1} ≈ 1e-3·ᾱ_{T-2} (2.4e-9 for
    T = 1000): near-zero terminal SNR. Pair it with the ``"v"`` or ``"x0"`` objective; an
    ε-model's x̂_0 = (x_t - √(1-ᾱ_t) ε̂)/√ᾱ_t divides its error by √ᾱ_{T-1} at the first step.

    Args:
        T: number of diffusion steps.
        s: small offset that keeps β_0 from vanishing.
        max_beta: upper clip on β_t, avoiding a singularity at t = T.

    Returns:
        ``(T,)`` float32 tensor of β_t.
    """
    _check_T(T)
    if s < 0 or not 0.0 < max_beta < 1.0:
        raise ValueError(f"cosine_betas needs s >= 0 and 0 < max_beta < 1, got s={s}, {max_beta=}")
    t = torch.arange(T + 1, dtype=torch.float64) / T
    f = torch.cos((t + s) / (1 + s) * math.pi / 2) ** 2
    alphas_cumprod = f / f[0]
    betas = 1 - alphas_cumprod[1:] / alphas_cumprod[:-1]
    return betas.clamp(max=max_beta).float()


def constant_betas(T: int, beta: float = 0.008) -> Tensor:
    """Constant schedule ``β_t = β`` (the seed's), so ``ᾱ_t = (1 - β)^{t+1}``.

    With the default β = 0.008 only T ≳ 1000 reaches noise (ᾱ_{999} = 3.3e-4; ᾱ_{99} = 0.45),
    and ᾱ_0 = 0.992 leaves noise of std 0.09 even at t = 0.

    Args:
        T: number of diffusion steps.
        beta: the constant variance.

    Returns:
        ``(T,)`` float32 tensor of β_t.
    """
    _check_T(T)
    if not 0.0 < beta < 1.0:
        raise ValueError(f"constant_betas needs 0 < beta < 1, got beta={beta}")
    return torch.full((T,), beta, dtype=torch.float64).float()


_SCHEDULES: dict[str, Callable[..., Tensor]] = {
    "linear": linear_betas,
    "cosine": cosine_betas,
    "constant": constant_betas,
}


def list_schedules() -> list[str]:
    """Names accepted by :func:`get_betas`."""
    return sorted(_SCHEDULES)


def get_betas(name: str, T: int, **kwargs: float) -> Tensor:
    """Build a schedule by name.

    Args:
        name: one of :func:`list_schedules`.
        T: number of diffusion steps.
        **kwargs: schedule-specific options (e.g. ``beta=`` for ``"constant"``).

    Returns:
        ``(T,)`` float32 tensor of β_t.
    """
    if name not in _SCHEDULES:
        raise ValueError(f"unknown noise schedule {name!r}; choose one of {list_schedules()}")
    return _SCHEDULES[name](T, **kwargs)


@dataclasses.dataclass(frozen=True, eq=False)
class NoiseSchedule:
    """The per-step quantities of a discrete forward process, as float32 ``(T,)`` tensors.

    Build with :meth:`from_betas` or :meth:`from_name`; the products are taken in float64.
    Move with :meth:`to` (returns a new schedule; the schedule itself is immutable).

    Attributes:
        betas: β_t.
        alphas_cumprod: ᾱ_t = ∏_{s≤t} (1 - β_s).
        sqrt_alphas_cumprod: √ᾱ_t, the signal scale of x_t.
        sqrt_one_minus_alphas_cumprod: √(1 - ᾱ_t), the noise scale of x_t.
    """

    betas: Tensor
    alphas_cumprod: Tensor
    sqrt_alphas_cumprod: Tensor
    sqrt_one_minus_alphas_cumprod: Tensor

    def __post_init__(self) -> None:
        if not isinstance(self.betas, Tensor) or self.betas.ndim != 1 or self.betas.numel() == 0:
            raise ValueError(
                f"NoiseSchedule.betas must be a non-empty 1-D tensor, got {self.betas!r}; "
                "build schedules with NoiseSchedule.from_betas(betas)"
            )
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if not isinstance(value, Tensor) or value.shape != self.betas.shape:
                raise ValueError(
                    f"NoiseSchedule.{field.name} must be a tensor of shape "
                    f"{tuple(self.betas.shape)}; build schedules with "
                    "NoiseSchedule.from_betas(betas)"
                )

    @classmethod
    def from_betas(cls, betas: Tensor) -> NoiseSchedule:
        """Derive ᾱ_t and its square roots (in float64) from a ``(T,)`` tensor of β_t."""
        betas64 = torch.as_tensor(betas, dtype=torch.float64).cpu()
        if betas64.ndim != 1 or betas64.numel() == 0:
            raise ValueError(f"betas must be a non-empty 1-D tensor, got {tuple(betas64.shape)}")
        if not bool(((betas64 > 0) & (betas64 < 1)).all()):
            raise ValueError(
                f"betas must lie in (0, 1), got min {betas64.min().item():.3g} "
                f"and max {betas64.max().item():.3g}"
            )
        alphas_cumprod = torch.cumprod(1 - betas64, dim=0)
        return cls(
            betas=betas64.float(),
            alphas_cumprod=alphas_cumprod.float(),
            sqrt_alphas_cumprod=alphas_cumprod.sqrt().float(),
            sqrt_one_minus_alphas_cumprod=(1 - alphas_cumprod).sqrt().float(),
        )

    @classmethod
    def from_name(cls, name: str, T: int, **kwargs: float) -> NoiseSchedule:
        """``NoiseSchedule.from_betas(get_betas(name, T, **kwargs))``."""
        return cls.from_betas(get_betas(name, T, **kwargs))

    @property
    def num_timesteps(self) -> int:
        """T, the number of training diffusion steps."""
        return self.betas.shape[0]

    @property
    def device(self) -> torch.device:
        return self.betas.device

    def to(self, device: torch.device | str) -> NoiseSchedule:
        """A copy with every tensor on ``device``."""
        moved = {f.name: getattr(self, f.name).to(device) for f in dataclasses.fields(self)}
        return NoiseSchedule(**moved)
