"""Samplers against an exact oracle denoiser, determinism, and classifier-free guidance."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from torch import Tensor, nn

from modtrans.translators.diffusion import Objective
from modtrans.translators.samplers import (
    SamplerOptions,
    ddim_sample,
    dpm_solver_sample,
    get_sampler,
    leading_timesteps,
    linspace_timesteps,
    list_samplers,
)
from modtrans.translators.schedules import NoiseSchedule


class GaussianOracle(nn.Module):
    """The exact denoiser for x_0 ~ N(μ = cond, σ² I) (null condition: μ = 0).

    With a = √ᾱ_t, s = √(1-ᾱ_t): x_t ~ N(aμ, V I), V = a²σ² + s², and
    E[ε | x_t] = s (x_t - aμ)/V,  E[x_0 | x_t] = μ + aσ² (x_t - aμ)/V.
    """

    def __init__(self, schedule: NoiseSchedule, sigma: float, objective: Objective) -> None:
        super().__init__()
        self.schedule, self.sigma, self.objective = schedule, sigma, objective

    def forward(
        self, x: Tensor, t: Tensor, cond: Tensor, cond_mask: Tensor | None = None
    ) -> Tensor:
        a = self.schedule.sqrt_alphas_cumprod[t].double()[:, None]
        s = self.schedule.sqrt_one_minus_alphas_cumprod[t].double()[:, None]
        mu = cond.double() if cond_mask is None else cond.double() * cond_mask[:, None]
        var = a**2 * self.sigma**2 + s**2
        y = x.double() - a * mu
        eps, x0 = s * y / var, mu + a * self.sigma**2 * y / var
        out = {"eps": eps, "x0": x0, "v": a * eps - s * x0}[self.objective]
        return out.to(x.dtype)


SIGMA = 0.5


@pytest.fixture(scope="module")
def gaussian_problem() -> tuple[Tensor, Tensor]:
    """4000 conditions μ_i ~ N(0, 4 I) in 4-D, and the initial noise x_T."""
    g = torch.Generator().manual_seed(0)
    cond = 2 * torch.randn(4000, 4, generator=g)
    x_T = torch.randn(4000, 4, generator=g)
    return cond, x_T


def _standardised(samples: Tensor, cond: Tensor) -> Tensor:
    return (samples - cond) / SIGMA  # ~ N(0, I) when the sampler is right


def test_registry() -> None:
    assert list_samplers() == ["ddim", "dpm"]
    assert get_sampler("ddim") is ddim_sample and get_sampler("dpm") is dpm_solver_sample
    with pytest.raises(ValueError, match=r"unknown sampler 'euler'.*\['ddim', 'dpm'\]"):
        get_sampler("euler")


def test_leading_timesteps_are_the_seeds() -> None:
    assert leading_timesteps(1000, 50) == list(range(980, -1, -20))
    assert leading_timesteps(1000, 10)[:2] == [900, 800] and leading_timesteps(7, 7)[0] == 6
    with pytest.raises(ValueError, match="spacing 'even'"):
        ddim_sample(_trained_looking_mlp(), torch.randn(2, 6, dtype=torch.float64),
                    NoiseSchedule.from_name("cosine", 100), torch.randn(2, 5, dtype=torch.float64),
                    steps=4, spacing="even")


def test_seed_net_drops_the_condition_as_no_shift() -> None:
    """A dropped row's output does not depend on its condition; a kept row's does."""
    model = _trained_looking_mlp("seed")
    x, t = torch.randn(4, 6, dtype=torch.float64), torch.full((4,), 300)
    c1, c2 = torch.randn(4, 5, dtype=torch.float64), torch.randn(4, 5, dtype=torch.float64)
    mask = torch.tensor([True, False, True, False])
    a, b = model(x, t, c1, mask), model(x, t, c2, mask)
    torch.testing.assert_close(a[~mask], b[~mask])
    assert (a[mask] - b[mask]).abs().min() > 1e-6


def test_linspace_timesteps() -> None:
    ts = linspace_timesteps(1000, 50)
    assert len(ts) == 50 and ts[0] == 999 and ts[-1] == 0
    assert all(a > b for a, b in itertools.pairwise(ts))
    assert linspace_timesteps(1000, 1) == [999]
    assert linspace_timesteps(7, 7) == [6, 5, 4, 3, 2, 1, 0]
    for bad in (0, 8, 2.0):
        with pytest.raises(ValueError, match=r"steps must be an int in \[1, 7\]"):
            linspace_timesteps(7, bad)  # type: ignore[arg-type]


@pytest.mark.parametrize("objective", ["eps", "x0", "v"])
@pytest.mark.parametrize(("sampler", "steps", "tol"), [("ddim", 50, 0.05), ("dpm", 10, 0.06)])
def test_oracle_samples_match_the_data_distribution(
    gaussian_problem: tuple[Tensor, Tensor],
    objective: Objective,
    sampler: str,
    steps: int,
    tol: float,
) -> None:
    cond, x_T = gaussian_problem
    schedule = NoiseSchedule.from_name("cosine", 1000)
    oracle = GaussianOracle(schedule, SIGMA, objective)
    z = _standardised(
        get_sampler(sampler)(oracle, x_T, schedule, cond, steps=steps, objective=objective), cond
    )
    assert z.mean().abs() < 0.03
    assert abs(z.std().item() - 1) < tol


@pytest.mark.parametrize(("sampler", "steps", "eta"), [("dpm", 20, 0.0), ("ddim", 200, 1.0)])
def test_oracle_converges_with_more_steps(
    gaussian_problem: tuple[Tensor, Tensor], sampler: str, steps: int, eta: float
) -> None:
    cond, x_T = gaussian_problem
    schedule = NoiseSchedule.from_name("cosine", 1000)
    gen = torch.Generator().manual_seed(1)
    out = get_sampler(sampler)(
        GaussianOracle(schedule, SIGMA, "eps"),
        x_T,
        schedule,
        cond,
        steps=steps,
        eta=eta,
        generator=gen,
    )
    z = _standardised(out, cond)
    assert z.mean().abs() < 0.03
    assert abs(z.std().item() - 1) < 0.03


def test_ddim_matches_its_closed_form_on_the_oracle(
    gaussian_problem: tuple[Tensor, Tensor],
) -> None:
    """For the Gaussian oracle each η=0 DDIM step (eq. 12) is affine: x_{t'} - a'μ = c·(x_t - aμ),
    c = (a'a σ² + s's)/V_t; the last jump (a' = 1, s' = 0) has c = aσ²/V_t."""
    cond, x_T = gaussian_problem
    schedule = NoiseSchedule.from_name("linear", 1000)
    ab = schedule.alphas_cumprod.double().tolist()
    ts = linspace_timesteps(1000, 10)
    gain = 1.0
    for i, t in enumerate(ts):
        a, s = math.sqrt(ab[t]), math.sqrt(1 - ab[t])
        ab_prev = ab[ts[i + 1]] if i + 1 < len(ts) else 1.0
        a_prev, s_prev = math.sqrt(ab_prev), math.sqrt(1 - ab_prev)
        gain *= (a_prev * a * SIGMA**2 + s_prev * s) / (a**2 * SIGMA**2 + s**2)
    expected = cond + gain * (x_T - math.sqrt(ab[ts[0]]) * cond)
    out = ddim_sample(GaussianOracle(schedule, SIGMA, "eps"), x_T, schedule, cond, steps=10)
    torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-4)


def _zero_eps_model(x: Tensor, t: Tensor, cond: Tensor, cond_mask: Tensor | None = None) -> Tensor:
    return 0.1 * x + cond.mean(-1, keepdim=True)


def test_ddim_eta_zero_is_deterministic_and_eta_positive_follows_the_generator() -> None:
    schedule = NoiseSchedule.from_name("linear", 100)
    x, cond = torch.randn(8, 3), torch.randn(8, 2)

    def run(eta: float, seed: int) -> Tensor:
        gen = torch.Generator().manual_seed(seed)
        return ddim_sample(_zero_eps_model, x, schedule, cond, steps=10, eta=eta, generator=gen)

    torch.testing.assert_close(run(0.0, 1), run(0.0, 2), rtol=0, atol=0)
    torch.testing.assert_close(run(0.5, 1), run(0.5, 1), rtol=0, atol=0)
    assert not torch.allclose(run(0.5, 1), run(0.5, 2))
    assert not torch.allclose(run(0.5, 1), run(0.0, 1))
    with pytest.raises(ValueError, match="eta must be >= 0"):
        run(-0.1, 0)


def test_dpm_sde_follows_the_generator_and_rejects_other_eta() -> None:
    schedule = NoiseSchedule.from_name("linear", 100)
    x, cond = torch.randn(8, 3), torch.randn(8, 2)

    def run(eta: float, seed: int) -> Tensor:
        gen = torch.Generator().manual_seed(seed)
        return dpm_solver_sample(
            _zero_eps_model, x, schedule, cond, steps=5, eta=eta, generator=gen
        )

    torch.testing.assert_close(run(0.0, 1), run(0.0, 2), rtol=0, atol=0)
    torch.testing.assert_close(run(1.0, 1), run(1.0, 1), rtol=0, atol=0)
    assert not torch.allclose(run(1.0, 1), run(1.0, 2))
    with pytest.raises(ValueError, match=r"eta=0 .* or eta=1"):
        run(0.5, 0)


class CountingLinear(nn.Module):
    """ε̂ = W x + U c̃ with c̃ = cond, or the null vector where cond_mask is False."""

    def __init__(self, dim: int, cond_dim: int) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.w = nn.Parameter(0.1 * torch.randn(dim, dim, generator=g))
        self.u = nn.Parameter(torch.randn(cond_dim, dim, generator=g))
        self.null_cond = nn.Parameter(torch.randn(cond_dim, generator=g))
        self.calls: list[tuple[int, Tensor | None]] = []

    def forward(
        self, x: Tensor, t: Tensor, cond: Tensor, cond_mask: Tensor | None = None
    ) -> Tensor:
        self.calls.append((x.shape[0], cond_mask))
        if cond_mask is not None:
            cond = torch.where(cond_mask[:, None], cond, self.null_cond.expand_as(cond))
        return x @ self.w + cond @ self.u


@pytest.mark.parametrize("sampler", ["ddim", "dpm"])
@pytest.mark.parametrize("guidance", [1.0, 3.0, 0.0])
def test_guidance_on_the_model_output(sampler: str, guidance: float) -> None:
    """One step from t = T-1 lands on x̂_0 = (x - s ε̂)/a, ε̂ = ε_∅ + g (ε_c - ε_∅)."""
    schedule = NoiseSchedule.from_name("linear", 100)
    model = CountingLinear(3, 2)
    x, cond = torch.randn(5, 3), torch.randn(5, 2)
    with torch.no_grad():
        out = get_sampler(sampler)(model, x, schedule, cond, steps=1, guidance=guidance)

        eps_cond = x @ model.w + cond @ model.u
        eps_null = x @ model.w + model.null_cond @ model.u
    eps = eps_null + guidance * (eps_cond - eps_null)
    a, s = schedule.sqrt_alphas_cumprod[-1], schedule.sqrt_one_minus_alphas_cumprod[-1]
    torch.testing.assert_close(out, (x - s * eps) / a, rtol=1e-4, atol=1e-4)

    (batch, mask), *rest = model.calls
    assert not rest  # one forward per step
    if guidance == 1.0:  # conditional forward only
        assert batch == 5 and mask is None
    else:  # one batched forward: conditional half, then null half
        assert batch == 10 and mask.tolist() == [True] * 5 + [False] * 5


def test_samplers_keep_dtype_and_reject_bad_inputs() -> None:
    schedule = NoiseSchedule.from_name("cosine", 50)
    x, cond = torch.randn(4, 3, dtype=torch.float64), torch.randn(4, 2, dtype=torch.float64)
    for name in list_samplers():
        sample = get_sampler(name)
        assert sample(_zero_eps_model, x, schedule, cond, steps=5).dtype == torch.float64
        with pytest.raises(ValueError, match="same B"):
            sample(_zero_eps_model, x, schedule, cond[:3], steps=5)
        with pytest.raises(ValueError, match="guidance must be >= 0"):
            sample(_zero_eps_model, x, schedule, cond, steps=5, guidance=-1.0)
        with pytest.raises(ValueError, match="steps must be an int"):
            sample(_zero_eps_model, x, schedule, cond, steps=51)
        with pytest.raises(ValueError, match="unknown objective"):
            sample(_zero_eps_model, x, schedule, cond, steps=5, objective="score")  # type: ignore[arg-type]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize(("sampler", "eta"), [("ddim", 0.5), ("dpm", 1.0)])
def test_sampling_on_cuda_matches_cpu_with_a_cpu_generator(sampler: str, eta: float) -> None:
    from modtrans.translators.denoisers import ConditionalMLP, DenoiserConfig

    torch.manual_seed(0)
    model = ConditionalMLP(DenoiserConfig(dim=3, cond_dim=2, width=32, depth=2, time_dim=8))
    nn.init.normal_(model.out.weight, std=0.1)
    model.eval()
    schedule = NoiseSchedule.from_name("linear", 100)
    x, cond = torch.randn(16, 3), torch.randn(16, 2)

    def run(device: torch.device) -> Tensor:
        gen = torch.Generator().manual_seed(1)  # CPU generator on purpose
        return get_sampler(sampler)(
            model.to(device),
            x.to(device),
            schedule.to(device),
            cond.to(device),
            steps=10,
            eta=eta,
            guidance=2.0,
            generator=gen,
        ).cpu()

    torch.testing.assert_close(
        run(torch.device("cuda")), run(torch.device("cpu")), rtol=1e-3, atol=1e-3
    )


class _PlainForward(nn.Module):
    """The same denoiser without ``with_condition``: samplers call its full forward."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: Tensor, t: Tensor, cond: Tensor,
                cond_mask: Tensor | None = None) -> Tensor:
        return self.model(x, t, cond, cond_mask)


def _trained_looking_mlp(net: str = "film"):
    """A small vector denoiser (``film`` or ``seed``) with every weight random (its output
    layer too)."""
    from modtrans.translators.denoisers import DENOISERS, DenoiserConfig

    torch.manual_seed(0)
    model = DENOISERS[net](DenoiserConfig(dim=6, cond_dim=5, width=16, depth=3, dropout=0.1,
                                          time_dim=8, emb_dim=12)).double().eval()
    nn.init.normal_(model.out.weight, std=0.3)
    return model


@pytest.mark.parametrize("net", ["film", "seed"])
def test_with_condition_equals_the_forward(net: str) -> None:
    model = _trained_looking_mlp(net)
    x, cond = torch.randn(7, 6, dtype=torch.float64), torch.randn(7, 5, dtype=torch.float64)
    mask = torch.tensor([True, False, True, True, False, True, True])
    for t in (0, 137, 999):
        for m in (None, mask):
            want = model(x, torch.full((7,), t), cond, m)
            torch.testing.assert_close(model.with_condition(cond, m)(x, t), want)
    with pytest.raises(ValueError, match="cond_mask"):
        model.with_condition(cond, mask[:3])


@pytest.mark.parametrize("net", ["film", "seed"])
@pytest.mark.parametrize(("sampler", "guidance"), [("ddim", 1.0), ("ddim", 3.0),
                                                   ("dpm", 1.0), ("dpm", 3.0)])
def test_samplers_fix_the_condition_once_with_the_same_result(sampler: str, guidance: float,
                                                              net: str) -> None:
    """with_condition is a speed-up only: the samples and (for ddim, which ced-paper trains
    through) the gradients equal those of the plain forward at every step."""
    model = _trained_looking_mlp(net)
    schedule = NoiseSchedule.from_name("cosine", 1000)
    cond = torch.randn(9, 5, dtype=torch.float64, requires_grad=True)
    x_T = torch.randn(9, 6, dtype=torch.float64)
    run = get_sampler(sampler)
    fast = run(model, x_T, schedule, cond, steps=6, guidance=guidance, objective="v")
    plain = run(_PlainForward(model), x_T, schedule, cond, steps=6, guidance=guidance,
                objective="v")
    torch.testing.assert_close(fast, plain)
    assert not torch.equal(fast, x_T)
    if sampler == "ddim":
        (grad_fast,) = torch.autograd.grad(fast.square().sum(), cond)
        (grad_plain,) = torch.autograd.grad(plain.square().sum(), cond)
        torch.testing.assert_close(grad_fast, grad_plain)
        assert grad_fast.abs().sum() > 0


@pytest.mark.parametrize(
    ("values", "needle"),
    [
        ({"sampler": "euler"}, r"unknown sampler 'euler'; choose one of \['ddim', 'dpm'\]"),
        ({"steps": 0}, r"steps must be an int >= 1, got 0 \(--steps"),
        ({"steps": 2.5}, "steps must be an int >= 1, got 2.5"),
        ({"guidance": -0.5}, r"guidance must be >= 0, got -0.5 \(--guidance"),
        ({"eta": -1.0}, r"eta must be >= 0, got -1.0 \(--eta"),
        ({"eta": math.nan}, "eta must be >= 0"),
    ],
)
def test_sampler_options_validation(values: dict, needle: str) -> None:
    with pytest.raises(ValueError, match=needle):
        SamplerOptions(**values)


def test_sampler_options_merge_only_the_fields_an_override_sets() -> None:
    saved = SamplerOptions(sampler="dpm", steps=10, guidance=1.0, eta=0.0)
    assert SamplerOptions() == SamplerOptions(None, None, None, None)  # all "the saved value"
    assert saved.merged(None) is saved and saved.merged(SamplerOptions()) == saved
    assert saved.merged(SamplerOptions(steps=2, guidance=0.0)) == SamplerOptions(
        sampler="dpm", steps=2, guidance=0.0, eta=0.0)  # 0 is a value, not "unset"
    assert set(list_samplers()) == {"ddim", "dpm"}
