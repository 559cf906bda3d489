"""Forward process, parameterisations, loss, the conditional MLP, and a tiny training run."""

from __future__ import annotations

import math
from collections.abc import Iterator

import pytest
import torch
from torch import Tensor, nn

from modtrans.translators.denoisers import (
    ConditionalGridUNet,
    ConditionalMLP,
    DenoiserConfig,
    flops_per_sample,
    sampling_flops_per_sample,
    timestep_embedding,
)
from modtrans.translators.diffusion import (
    Objective,
    add_noise,
    diffusion_loss,
    predict_x0_eps,
    training_target,
)
from modtrans.translators.samplers import ddim_sample, dpm_solver_sample
from modtrans.translators.schedules import NoiseSchedule

TINY = DenoiserConfig(dim=3, cond_dim=5, width=16, depth=3, dropout=0.0, time_dim=8, emb_dim=12)
# (denoiser, size of the vectors it denoises): the MLP, and the U-Net over 2 × 4 × 4 grids
DENOISERS = {
    "mlp": (lambda: ConditionalMLP(TINY), 3),
    "unet": (lambda: ConditionalGridUNet(2, 4, 5, width=8, time_dim=8, emb_dim=12), 32),
}


@pytest.fixture
def one_thread() -> Iterator[None]:
    """Tiny nets run far faster on one thread, above all on a shared, busy CPU."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# --- forward process and parameterisations -------------------------------------------------


def test_add_noise_formula() -> None:
    schedule = NoiseSchedule.from_name("linear", 100)
    x0, noise, t = torch.randn(4, 3), torch.randn(4, 3), torch.tensor([0, 10, 50, 99])
    ab = schedule.alphas_cumprod[t][:, None]
    torch.testing.assert_close(
        add_noise(x0, noise, t, schedule), ab.sqrt() * x0 + (1 - ab).sqrt() * noise
    )


def test_add_noise_statistics() -> None:
    schedule = NoiseSchedule.from_name("cosine", 1000)
    g = torch.Generator().manual_seed(0)
    mu = torch.tensor([2.0, -1.0, 0.5, 0.0])
    n, t = 20_000, 300
    x_t = add_noise(mu.expand(n, 4), torch.randn(n, 4, generator=g), torch.full((n,), t), schedule)
    a, s = schedule.sqrt_alphas_cumprod[t], schedule.sqrt_one_minus_alphas_cumprod[t]
    torch.testing.assert_close(x_t.mean(0), a * mu, rtol=0, atol=0.03)
    torch.testing.assert_close(x_t.std(0), s.expand(4), rtol=0, atol=0.02)


@pytest.mark.parametrize("name", ["linear", "cosine", "constant"])
@pytest.mark.parametrize("objective", ["eps", "x0", "v"])
def test_conversions_round_trip(name: str, objective: Objective) -> None:
    """predict_x0_eps applied to the true training target gives back (x_0, ε)."""
    schedule = NoiseSchedule.from_name(name, 1000)
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(64, 5, generator=g, dtype=torch.float64)
    noise = torch.randn(64, 5, generator=g, dtype=torch.float64)
    t = torch.cat([torch.tensor([0, 999]), torch.randint(0, 1000, (62,), generator=g)])
    x_t = add_noise(x0, noise, t, schedule)
    target = training_target(x0, noise, t, schedule, objective)
    x0_hat, eps_hat = predict_x0_eps(target, x_t, t, schedule, objective)
    # float64 maths on float32 coefficients: only a_t² + s_t² = 1 is off, by ~1e-7
    torch.testing.assert_close(x0_hat, x0, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(eps_hat, noise, rtol=1e-6, atol=1e-6)


def test_v_target_definition() -> None:
    schedule = NoiseSchedule.from_name("cosine", 50)
    x0, noise, t = torch.randn(3, 2), torch.randn(3, 2), torch.tensor([1, 20, 49])
    a = schedule.sqrt_alphas_cumprod[t][:, None]
    s = schedule.sqrt_one_minus_alphas_cumprod[t][:, None]
    torch.testing.assert_close(training_target(x0, noise, t, schedule, "v"), a * noise - s * x0)


def test_predict_accepts_one_shared_timestep() -> None:
    schedule = NoiseSchedule.from_name("linear", 100)
    out, x_t = torch.randn(4, 3), torch.randn(4, 3)
    per_sample = predict_x0_eps(out, x_t, torch.full((4,), 7), schedule, "v")
    for shared in (7, torch.tensor(7)):
        for got, want in zip(
            predict_x0_eps(out, x_t, shared, schedule, "v"), per_sample, strict=True
        ):
            torch.testing.assert_close(got, want)


def test_bad_objective_and_timesteps_raise() -> None:
    schedule = NoiseSchedule.from_name("linear", 10)
    x = torch.randn(2, 3)
    with pytest.raises(ValueError, match=r"unknown objective 'score'.*\['eps', 'x0', 'v'\]"):
        training_target(x, x, torch.tensor([0, 1]), schedule, "score")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"timesteps must lie in \[0, 9\], got \[0, 10\]"):
        add_noise(x, x, torch.tensor([0, 10]), schedule)
    with pytest.raises(ValueError, match=r"timesteps must lie in \[0, 9\]"):
        add_noise(x, x, torch.tensor([-1, 0]), schedule)
    with pytest.raises(ValueError, match="integer tensor"):
        add_noise(x, x, torch.tensor([0.5, 1.0]), schedule)


# --- loss ----------------------------------------------------------------------------------


class Recorder(nn.Module):
    """Outputs zeros (plus a trainable 0·w) and records what it was called with."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.ones(()))
        self.seen: dict[str, Tensor | None] = {}

    def forward(
        self, x: Tensor, t: Tensor, cond: Tensor, cond_mask: Tensor | None = None
    ) -> Tensor:
        self.seen = {"x": x, "t": t, "cond": cond, "cond_mask": cond_mask}
        return 0 * self.w * x


def test_diffusion_loss_values_and_reproducibility() -> None:
    schedule = NoiseSchedule.from_name("linear", 100)
    x0, cond = 3 * torch.ones(4096, 8), torch.randn(4096, 2)

    def loss(objective: Objective, kind: str, seed: int = 0) -> Tensor:
        gen = torch.Generator().manual_seed(seed)
        return diffusion_loss(
            Recorder(), x0, cond, schedule, objective=objective, loss=kind, generator=gen
        )  # type: ignore[arg-type]

    # a zero output scores E[ε²] = 1, E|ε| = √(2/π), and E[x_0²] = 9 on the x_0 target
    assert loss("eps", "l2").item() == pytest.approx(1.0, abs=0.03)
    assert loss("eps", "l1").item() == pytest.approx(math.sqrt(2 / math.pi), abs=0.02)
    assert loss("x0", "l2").item() == pytest.approx(9.0, rel=1e-6)
    assert loss("eps", "l2", 1).item() == loss("eps", "l2", 1).item() != loss("eps", "l2", 2).item()
    with pytest.raises(ValueError, match=r"unknown loss 'huber'"):
        loss("eps", "huber")


def test_diffusion_loss_passes_condition_and_mask_and_backpropagates() -> None:
    schedule = NoiseSchedule.from_name("linear", 100)
    model = Recorder()
    x0, cond, mask = torch.randn(6, 3), torch.randn(6, 2), torch.tensor([True, False] * 3)
    loss = diffusion_loss(
        model, x0, cond, schedule, cond_mask=mask, generator=torch.Generator().manual_seed(0)
    )
    assert model.seen["cond"] is cond and model.seen["cond_mask"] is mask
    t = model.seen["t"]
    assert t is not None and t.dtype == torch.int64 and t.shape == (6,)
    loss.backward()
    assert model.w.grad is not None


# --- the conditional MLP -------------------------------------------------------------------


def test_conditional_mlp_shapes_and_zero_init_output() -> None:
    model = ConditionalMLP(TINY)
    x, t, cond = torch.randn(7, 3), torch.randint(0, 100, (7,)), torch.randn(7, 5)
    out = model(x, t, cond)
    assert out.shape == (7, 3)
    assert bool((out == 0).all())  # zero-initialised output layer
    assert model.null_cond.shape == (5,) and model.null_cond.requires_grad


@pytest.mark.parametrize("kind", DENOISERS)
def test_denoiser_null_condition_per_sample(kind: str) -> None:
    torch.manual_seed(0)
    build, dim = DENOISERS[kind]
    model = build()
    nn.init.normal_(model.out.weight)  # make the output depend on the input
    x, t, cond = torch.randn(6, dim), torch.randint(0, 100, (6,)), torch.randn(6, 5)
    mask = torch.tensor([True, False, True, False, False, True])
    with torch.no_grad():
        mixed = model(x, t, cond, mask)
        conditional = model(x, t, cond)
        null = model(x, t, model.null_cond.expand(6, 5))
    torch.testing.assert_close(mixed[mask], conditional[mask])
    torch.testing.assert_close(mixed[~mask], null[~mask])
    assert not torch.allclose(conditional, null)
    torch.testing.assert_close(model(x, t, cond, torch.ones(6, dtype=torch.bool)), conditional)
    with pytest.raises(ValueError, match=r"cond_mask must be a bool tensor of shape \(6,\)"):
        model(x, t, cond, torch.ones(6))


def test_grid_unet_shapes_zero_init_and_rows_independent() -> None:
    build, dim = DENOISERS["unet"]
    model = build()
    x, t, cond = torch.randn(7, dim), torch.randint(0, 100, (7,)), torch.randn(7, 5)
    assert bool((model(x, t, cond) == 0).all())  # zero-initialised output conv
    nn.init.normal_(model.out.weight)
    with torch.no_grad():
        out = model(x, t, cond)
        first = model(x[:1], t[:1], cond[:1])
    assert out.shape == (7, dim)
    torch.testing.assert_close(out[:1], first)  # GroupNorm, not BatchNorm: rows independent
    with pytest.raises(ValueError, match="multiple of 8"):
        ConditionalGridUNet(2, 4, 5, width=12)
    with pytest.raises(ValueError, match="grid even"):
        ConditionalGridUNet(2, 3, 5)


def test_conditional_mlp_dropout_only_in_training() -> None:
    model = ConditionalMLP(
        DenoiserConfig(dim=3, cond_dim=5, width=16, depth=2, dropout=0.5, time_dim=8)
    )
    nn.init.normal_(model.out.weight)
    x, t, cond = torch.randn(4, 3), torch.randint(0, 100, (4,)), torch.randn(4, 5)
    assert not torch.allclose(model(x, t, cond), model(x, t, cond))
    model.eval()
    torch.testing.assert_close(model(x, t, cond), model(x, t, cond))


def test_timestep_embedding() -> None:
    emb = timestep_embedding(torch.tensor([0, 5, 999]), 8)
    assert emb.shape == (3, 8) and emb.dtype == torch.float32
    torch.testing.assert_close(emb[0], torch.tensor([1.0] * 4 + [0.0] * 4))
    assert emb[1, 0].item() == pytest.approx(math.cos(5.0)) and emb[1, 4].item() == pytest.approx(
        math.sin(5.0)
    )


@pytest.mark.parametrize(
    "config",
    [TINY, DenoiserConfig(dim=7, cond_dim=2, width=9, depth=1, time_dim=4, emb_dim=3)],
)
def test_flops_per_sample_matches_brute_force_count(config: DenoiserConfig) -> None:
    model = ConditionalMLP(config)
    counted = 0

    def count(module: nn.Module, inputs: tuple[Tensor, ...], output: Tensor) -> None:
        nonlocal counted
        assert isinstance(module, nn.Linear)
        rows = inputs[0].numel() // module.in_features
        counted += 2 * module.in_features * module.out_features * rows

    for module in model.modules():
        if isinstance(module, nn.Linear):
            module.register_forward_hook(count)
    batch = 5
    model(torch.randn(batch, config.dim), torch.arange(batch), torch.randn(batch, config.cond_dim))
    assert counted == batch * flops_per_sample(config)


@pytest.mark.parametrize(
    "config",
    [TINY, DenoiserConfig(dim=7, cond_dim=2, width=9, depth=1, time_dim=4, emb_dim=3)],
)
def test_sampling_flops_match_a_count_of_the_fixed_condition_path(config: DenoiserConfig
                                                                  ) -> None:
    """Counted by torch's FLOP counter for two batch sizes: the per-row difference is the
    formula's (the once-per-step timestep work, the same for both batches, cancels)."""
    from torch.utils.flop_counter import FlopCounterMode

    model, steps = ConditionalMLP(config).eval(), 4

    def counted(batch: int) -> int:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            step = model.with_condition(torch.randn(batch, config.cond_dim))
            for t in range(steps):
                step(torch.randn(batch, config.dim), t)
        return counter.get_total_flops()

    assert counted(8) - counted(3) == 5 * sampling_flops_per_sample(config, steps)
    full = steps * flops_per_sample(config)
    assert sampling_flops_per_sample(config, steps) < full


def test_seed_sized_flops() -> None:
    """The seed's net (depth 10, width 2048) on 512-d CLIP vectors: ~0.2 GFLOP per sample."""
    flops = flops_per_sample(DenoiserConfig(dim=512, cond_dim=512))
    assert 0.1e9 < flops < 0.3e9


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"width": 0}, r"DenoiserConfig.width must be a positive int, got 0"),
        ({"depth": 2.0}, r"DenoiserConfig.depth must be a positive int"),
        ({"time_dim": 7}, r"DenoiserConfig.time_dim must be even .* use 8"),
        ({"dropout": 1.0}, r"DenoiserConfig.dropout must lie in \[0, 1\)"),
    ],
)
def test_denoiser_config_validation(options: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        DenoiserConfig(dim=4, cond_dim=4, **options)  # type: ignore[arg-type]


def test_denoiser_config_round_trip(tmp_path) -> None:  # type: ignore[no-untyped-def]
    assert DenoiserConfig.from_dict(TINY.to_dict()) == TINY
    TINY.save(tmp_path / "denoiser.yaml")
    assert DenoiserConfig.load(tmp_path / "denoiser.yaml") == TINY


# --- end to end: a tiny training run -------------------------------------------------------


@pytest.mark.usefixtures("one_thread")
def test_tiny_training_run_learns_the_conditional_mean() -> None:
    """2-D targets x_0 = M c + 0.2 n from 8-D conditions: the loss falls, samples land on M c.

    (8-D, not 2-D, conditions: in 2-D the randomly initialised null condition can fall next
    to a test condition, which the net then cannot tell from "no condition".)
    """
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    mixing = torch.randn(2, 8, generator=g) / math.sqrt(8)  # (2, 8): marginal spread ~1

    def batch(n: int) -> tuple[Tensor, Tensor]:
        cond = torch.randn(n, 8, generator=g)
        return cond @ mixing.T + 0.2 * torch.randn(n, 2, generator=g), cond

    config = DenoiserConfig(
        dim=2, cond_dim=8, width=64, depth=3, dropout=0.0, time_dim=16, emb_dim=32
    )
    model = ConditionalMLP(config)
    schedule = NoiseSchedule.from_name("cosine", 100)
    optimiser = torch.optim.Adam(model.parameters(), lr=2e-3)
    losses = []
    for _ in range(400):
        x0, cond = batch(256)
        keep = torch.rand(256, generator=g) > 0.1  # per-sample condition dropout
        loss = diffusion_loss(model, x0, cond, schedule, objective="v", generator=g, cond_mask=keep)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        losses.append(loss.item())
    assert sum(losses[-50:]) / 50 < 0.5 * sum(losses[:20]) / 20

    model.eval()
    cond = torch.randn(4, 8, generator=g)
    repeated = cond.repeat_interleave(256, 0)  # (1024, 8)
    x_T = torch.randn(1024, 2, generator=g)
    for sample, steps in ((ddim_sample, 20), (dpm_solver_sample, 10)):
        out = sample(model, x_T, schedule, repeated, steps=steps, objective="v").view(4, 256, 2)
        torch.testing.assert_close(out.mean(1), cond @ mixing.T, rtol=0, atol=0.15)
        assert out.std(1).max() < 0.5  # the conditional spread is 0.2, the marginal ~1
