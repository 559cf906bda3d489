"""Noise schedules: shapes, dtypes, closed forms and the NoiseSchedule container."""

from __future__ import annotations

import math

import pytest
import torch

from modtrans.translators.schedules import (
    NoiseSchedule,
    constant_betas,
    cosine_betas,
    get_betas,
    linear_betas,
    list_schedules,
)


def test_registry_lists_every_schedule() -> None:
    assert list_schedules() == ["constant", "cosine", "linear"]
    with pytest.raises(ValueError, match=r"unknown noise schedule 'quadratic'.*linear"):
        get_betas("quadratic", 10)


@pytest.mark.parametrize("name", ["constant", "cosine", "linear"])
@pytest.mark.parametrize("T", [1, 7, 1000])
def test_betas_shape_dtype_range(name: str, T: int) -> None:
    betas = get_betas(name, T)
    assert betas.shape == (T,)
    assert betas.dtype == torch.float32
    assert bool(((betas > 0) & (betas < 1)).all())


@pytest.mark.parametrize("name", ["constant", "cosine", "linear"])
def test_alphas_cumprod_strictly_decreasing_in_unit_interval(name: str) -> None:
    schedule = NoiseSchedule.from_name(name, 1000)
    ab = schedule.alphas_cumprod
    assert ab.dtype == torch.float32
    assert bool((ab[1:] < ab[:-1]).all())
    assert ab[-1] > 0 and ab[0] < 1
    torch.testing.assert_close(
        schedule.sqrt_alphas_cumprod**2 + schedule.sqrt_one_minus_alphas_cumprod**2,
        torch.ones(1000),
    )


def test_linear_endpoints() -> None:
    betas = linear_betas(5, start=0.1, end=0.5)
    torch.testing.assert_close(betas, torch.tensor([0.1, 0.2, 0.3, 0.4, 0.5]))


def test_constant_closed_form() -> None:
    beta, T = 0.008, 300
    assert bool((constant_betas(T, beta=beta) == torch.tensor(beta)).all())
    ab = NoiseSchedule.from_betas(constant_betas(T, beta=beta)).alphas_cumprod.double()
    expected = (1 - beta) ** torch.arange(1, T + 1, dtype=torch.float64)  # ᾱ_t = (1-β)^{t+1}
    torch.testing.assert_close(ab, expected, rtol=1e-6, atol=0)


def test_cosine_reaches_pure_noise_and_starts_gently() -> None:
    betas = cosine_betas(1000)
    ab = NoiseSchedule.from_betas(betas).alphas_cumprod
    assert ab[-1] < 1e-6  # ᾱ_{T-1} ≈ 0
    assert betas[0] < 1e-4
    assert betas.max() == pytest.approx(0.999)  # the clip

    # ᾱ at T/2 from the closed form f(t)/f(0)
    def f(u: float) -> float:
        return math.cos((u + 0.008) / 1.008 * math.pi / 2) ** 2

    assert ab[499].item() == pytest.approx(f(0.5) / f(0.0), rel=1e-5)


def test_schedule_functions_reject_bad_options() -> None:
    with pytest.raises(ValueError, match="positive int"):
        linear_betas(0)
    with pytest.raises(ValueError, match="start <= end"):
        linear_betas(10, start=0.1, end=0.01)
    with pytest.raises(ValueError, match="0 < beta < 1"):
        constant_betas(10, beta=1.5)
    with pytest.raises(ValueError, match="max_beta"):
        cosine_betas(10, max_beta=1.0)


def test_from_betas_matches_float64_products() -> None:
    betas = linear_betas(1000)
    schedule = NoiseSchedule.from_betas(betas)
    ab64 = torch.cumprod(1 - betas.double(), 0)
    assert schedule.num_timesteps == 1000
    assert all(
        getattr(schedule, name).dtype == torch.float32
        for name in ("betas", "alphas_cumprod", "sqrt_alphas_cumprod")
    )
    torch.testing.assert_close(schedule.alphas_cumprod, ab64.float(), rtol=0, atol=0)
    torch.testing.assert_close(schedule.sqrt_one_minus_alphas_cumprod, (1 - ab64).sqrt().float())


def test_from_betas_rejects_invalid() -> None:
    with pytest.raises(ValueError, match=r"betas must lie in \(0, 1\)"):
        NoiseSchedule.from_betas(torch.tensor([0.1, 1.0]))
    with pytest.raises(ValueError, match="1-D"):
        NoiseSchedule.from_betas(torch.ones(2, 2) * 0.1)
    with pytest.raises(ValueError, match="from_betas"):
        NoiseSchedule(torch.full((3,), 0.1), torch.ones(2), torch.ones(3), torch.ones(3))


def test_to_returns_a_moved_copy() -> None:
    schedule = NoiseSchedule.from_name("linear", 10)
    moved = schedule.to("meta")
    assert moved is not schedule
    assert moved.device == torch.device("meta") and moved.alphas_cumprod.device.type == "meta"
    assert schedule.device == torch.device("cpu")
