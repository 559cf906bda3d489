"""Tests for modtrans.eval.metrics: hand-computed values and brute-force references."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.linalg
import torch

from modtrans.eval.metrics import (
    class_embeddings_from_prompts,
    cosine_suite,
    diversity,
    frechet_distance,
    mean_cosine,
    median_rank,
    random_derangement,
    recall_at_k,
    retrieval_metrics,
    retrieval_ranks,
    zero_shot_accuracy,
)


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ---------------------------------------------------------------- cosine


def test_mean_cosine_hand_computed() -> None:
    a = torch.tensor([[1.0, 0.0], [0.0, 2.0], [3.0, 4.0]])
    b = torch.tensor([[2.0, 0.0], [1.0, 1.0], [-3.0, -4.0]])
    assert mean_cosine(a, b) == pytest.approx((1.0 + 1.0 / math.sqrt(2.0) - 1.0) / 3.0, abs=1e-12)


def test_mean_cosine_is_float64_accurate() -> None:
    a = torch.randn(1000, 64, generator=_gen(), dtype=torch.float32)
    assert mean_cosine(a, a) == pytest.approx(1.0, abs=1e-12)


@pytest.mark.parametrize(
    ("a", "b", "match"),
    [
        (torch.zeros(3, 4), torch.zeros(3, 5), r"same shape \(N, D\); got \(3, 4\) and \(3, 5\)"),
        (torch.zeros(3), torch.zeros(3), r"a must have shape \(N, D\); got shape \(3,\)"),
        (torch.zeros(0, 4), torch.zeros(0, 4), r"a is empty \(shape \(0, 4\)\)"),
        (torch.zeros(2, 2, dtype=torch.long), torch.zeros(2, 2), r"floating-point.*torch.int64"),
        (torch.zeros(2, 2), torch.tensor([[0.0, float("nan")], [1.0, 1.0]]), r"b contains 1 NaN"),
    ],
)
def test_mean_cosine_rejects_bad_input(a: torch.Tensor, b: torch.Tensor, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        mean_cosine(a, b)


def test_non_tensor_is_a_type_error() -> None:
    with pytest.raises(TypeError, match=r"a must be a torch.Tensor of shape \(N, D\); got list"):
        mean_cosine([[1.0]], torch.ones(1, 1))  # type: ignore[arg-type]


@pytest.mark.parametrize("n", [2, 3, 5, 17, 100])
def test_random_derangement_has_no_fixed_points(n: int) -> None:
    for seed in range(20):
        perm = random_derangement(n, generator=_gen(seed))
        assert sorted(perm.tolist()) == list(range(n))
        assert not (perm == torch.arange(n)).any()


def test_random_derangement_is_seeded_and_validated() -> None:
    assert torch.equal(
        random_derangement(50, generator=_gen(3)), random_derangement(50, generator=_gen(3))
    )
    with pytest.raises(ValueError, match=r"needs n >= 2 items; got n=1"):
        random_derangement(1)


def test_cosine_suite_hand_computed() -> None:
    z = torch.eye(4)  # orthogonal rows: any unrelated pair has cosine 0
    out = cosine_suite(-z, z, z, generator=_gen())
    assert out == {
        "cos_c_z": pytest.approx(-1.0),
        "cos_zhat_c": pytest.approx(-1.0),
        "cos_zhat_z": pytest.approx(1.0),
        "cos_zhat_z_unrelated": pytest.approx(0.0),
    }


def test_cosine_suite_unrelated_pairs_against_loop() -> None:
    z_hat, z = torch.randn(2, 30, 8, generator=_gen(1), dtype=torch.float64)
    out = cosine_suite(torch.randn(30, 5, dtype=torch.float64), z_hat, z, generator=_gen(7))
    assert out["cos_c_z"] is None and out["cos_zhat_c"] is None
    perm = random_derangement(30, generator=_gen(7))
    expected = np.mean(
        [torch.cosine_similarity(z_hat[i], z[perm[i]], dim=0).item() for i in range(30)]
    )
    assert out["cos_zhat_z_unrelated"] == pytest.approx(expected, abs=1e-12)


def test_cosine_suite_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match=r"c and z must have the same number of rows N"):
        cosine_suite(torch.ones(3, 2), torch.ones(4, 2), torch.ones(4, 2))
    with pytest.raises(ValueError, match=r"z_hat and z must have the same shape"):
        cosine_suite(torch.ones(4, 2), torch.ones(4, 3), torch.ones(4, 2))
    with pytest.raises(ValueError, match=r"needs N >= 2 pairs.*got N=1"):
        cosine_suite(torch.ones(1, 2), torch.ones(1, 2), torch.ones(1, 2))


# ---------------------------------------------------------------- retrieval


def _brute_force_ranks(
    queries: torch.Tensor, gallery: torch.Tensor, positives: list[set[int]]
) -> list[int]:
    """Sort the gallery by cosine for each query; the rank is where the first positive lands."""
    ranks = []
    for i, q in enumerate(queries):
        sims = [torch.cosine_similarity(q, g, dim=0).item() for g in gallery]
        order = sorted(range(len(gallery)), key=lambda j: -sims[j])
        ranks.append(next(r for r, j in enumerate(order, start=1) if j in positives[i]))
    return ranks


@pytest.mark.parametrize("chunk_size", [1, 3, 7, 1000])
def test_retrieval_ranks_target_index_matches_brute_force(chunk_size: int) -> None:
    g = _gen(2)
    queries = torch.randn(23, 6, generator=g, dtype=torch.float64)
    gallery = torch.randn(40, 6, generator=g, dtype=torch.float64)
    target = torch.randint(0, 40, (23,), generator=g)
    ranks = retrieval_ranks(queries, gallery, target_index=target, chunk_size=chunk_size)
    assert ranks.dtype == torch.long
    assert ranks.tolist() == _brute_force_ranks(queries, gallery, [{int(t)} for t in target])


@pytest.mark.parametrize("chunk_size", [1, 4, 9, 1000])
def test_retrieval_ranks_gallery_owner_matches_brute_force(chunk_size: int) -> None:
    g = _gen(3)
    n = 17
    # every query owns one row, and some own several
    owner = torch.cat([torch.arange(n), torch.randint(0, n, (38,), generator=g)])
    owner = owner[torch.randperm(owner.numel(), generator=g)]
    queries = torch.randn(n, 5, generator=g, dtype=torch.float64)
    gallery = torch.randn(owner.numel(), 5, generator=g, dtype=torch.float64)
    ranks = retrieval_ranks(queries, gallery, gallery_owner=owner, chunk_size=chunk_size)
    positives = [set((owner == i).nonzero().flatten().tolist()) for i in range(n)]
    assert ranks.tolist() == _brute_force_ranks(queries, gallery, positives)


def test_retrieval_ranks_hand_computed() -> None:
    queries = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    gallery = torch.tensor([[1.0, 0.0], [1.0, 1.0], [-1.0, -0.5]])
    assert retrieval_ranks(queries, gallery, target_index=torch.tensor([2, 0])).tolist() == [3, 2]
    owner = torch.tensor([1, 0, 1])  # query 0 owns row 1 only; query 1 owns rows 0 and 2
    assert retrieval_ranks(queries, gallery, gallery_owner=owner).tolist() == [2, 2]


def test_retrieval_ranks_ties() -> None:
    gallery = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])  # rows 0 and 1 are duplicates
    query = torch.tensor([[1.0, 0.0]])
    target = torch.tensor([1])
    assert retrieval_ranks(query, gallery, target_index=target).tolist() == [2]
    assert retrieval_ranks(query, gallery, target_index=target, ties="optimistic").tolist() == [1]
    # A constant output ties with everything: pessimistic ranks put it last.
    constant = torch.ones(5, 3)
    ranks = retrieval_ranks(constant, torch.ones(5, 3), target_index=torch.arange(5))
    assert ranks.tolist() == [5] * 5


def test_retrieval_ranks_rejects_bad_input() -> None:
    q, g = torch.randn(4, 3), torch.randn(6, 3)
    with pytest.raises(ValueError, match=r"exactly one of target_index.*got neither"):
        retrieval_ranks(q, g)
    with pytest.raises(ValueError, match=r"exactly one of target_index.*got both"):
        retrieval_ranks(
            q,
            g,
            target_index=torch.zeros(4, dtype=torch.long),
            gallery_owner=torch.zeros(6, dtype=torch.long),
        )
    with pytest.raises(
        ValueError, match=r"target_index values must lie in \[0, 6\); got values from 0 to 6"
    ):
        retrieval_ranks(q, g, target_index=torch.tensor([0, 1, 2, 6]))
    with pytest.raises(
        ValueError, match=r"target_index must have shape \(N,\) = \(4,\); got shape \(3,\)"
    ):
        retrieval_ranks(q, g, target_index=torch.tensor([0, 1, 2]))
    with pytest.raises(
        ValueError, match=r"target_index must be an integer tensor; got dtype torch.float32"
    ):
        retrieval_ranks(q, g, target_index=torch.zeros(4))
    with pytest.raises(ValueError, match=r"2 of 4 queries own no gallery row.*first: \[2, 3\]"):
        retrieval_ranks(q, g, gallery_owner=torch.tensor([0, 1, 0, 1, 0, 1]))
    with pytest.raises(
        ValueError, match=r"same embedding dimension; got queries \(4, 3\) and gallery \(6, 2\)"
    ):
        retrieval_ranks(q, torch.randn(6, 2), target_index=torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError, match=r"chunk_size must be a positive int; got 0"):
        retrieval_ranks(q, g, target_index=torch.zeros(4, dtype=torch.long), chunk_size=0)
    with pytest.raises(ValueError, match=r"ties must be 'pessimistic' or 'optimistic'; got 'mean'"):
        retrieval_ranks(q, g, target_index=torch.zeros(4, dtype=torch.long), ties="mean")  # type: ignore[arg-type]


def test_recall_and_median_rank_on_known_ranks() -> None:
    ranks = torch.tensor([1, 2, 5, 11, 3])
    assert recall_at_k(ranks) == {
        "R@1": pytest.approx(0.2),
        "R@5": pytest.approx(0.8),
        "R@10": pytest.approx(0.8),
    }
    assert recall_at_k(ranks, ks=(2, 20)) == {"R@2": pytest.approx(0.4), "R@20": pytest.approx(1.0)}
    assert median_rank(ranks) == 3.0
    assert median_rank(torch.tensor([11, 1, 5, 2])) == 3.5
    assert median_rank(torch.tensor([7])) == 7.0


def test_recall_and_median_rank_reject_bad_input() -> None:
    with pytest.raises(ValueError, match=r"ranks are 1-based and must be >= 1; got a minimum of 0"):
        recall_at_k(torch.tensor([0, 1]))
    with pytest.raises(ValueError, match=r"ranks must be an integer tensor.*torch.float32"):
        median_rank(torch.tensor([1.0, 2.0]))
    with pytest.raises(ValueError, match=r"non-empty tensor of shape \(N,\); got shape \(0,\)"):
        median_rank(torch.tensor([], dtype=torch.long))
    with pytest.raises(
        ValueError, match=r"ks must be a non-empty sequence of ints >= 1; got \(0, 5\)"
    ):
        recall_at_k(torch.tensor([1, 2]), ks=(0, 5))


def test_retrieval_metrics_combines_ranks() -> None:
    queries = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    gallery = torch.tensor([[1.0, 0.0], [1.0, 1.0], [-1.0, -0.5]])
    out = retrieval_metrics(queries, gallery, target_index=torch.tensor([0, 0]), ks=(1, 2))
    assert out == {"R@1": 0.5, "R@2": 1.0, "MedR": 1.5}


# ---------------------------------------------------------------- Fréchet distance


def _fd_scipy(x: np.ndarray, y: np.ndarray) -> float:
    """The pytorch-fid formula with scipy's sqrtm, as an independent reference."""
    mu1, mu2 = x.mean(0), y.mean(0)
    s1, s2 = np.cov(x, rowvar=False), np.cov(y, rowvar=False)
    covmean = scipy.linalg.sqrtm(s1 @ s2).real
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


def _with_exact_statistics(
    n: int, mean: torch.Tensor, std: torch.Tensor, seed: int
) -> torch.Tensor:
    """n samples whose sample mean and (unbiased) covariance are exactly mean and diag(std²)."""
    x = torch.randn(n, mean.numel(), generator=_gen(seed), dtype=torch.float64)
    x = x - x.mean(0)
    chol = torch.linalg.cholesky(x.T @ x / (n - 1))
    white = torch.linalg.solve_triangular(chol, x.T, upper=False).T
    return white * std + mean


def test_frechet_distance_of_a_set_with_itself_is_zero() -> None:
    x = torch.randn(200, 16, generator=_gen(4))
    assert frechet_distance(x, x) == pytest.approx(0.0, abs=1e-6)


def test_frechet_distance_of_a_shifted_copy_is_the_squared_shift() -> None:
    x = torch.randn(300, 8, generator=_gen(5), dtype=torch.float64)
    shift = torch.tensor([1.0, -2.0, 0.5, 0.0, 3.0, 0.0, 0.0, 1.0], dtype=torch.float64)
    assert frechet_distance(x, x + shift) == pytest.approx(shift.square().sum().item(), abs=1e-6)


def test_frechet_distance_closed_form_for_diagonal_gaussians() -> None:
    # FD(N(mu1, diag s1²), N(mu2, diag s2²)) = |mu1 - mu2|² + sum_i (s1_i - s2_i)²
    mu1, mu2 = torch.tensor([0.0, 1.0, 2.0, -1.0]), torch.tensor([1.0, 1.0, 0.0, 0.0])
    s1, s2 = torch.tensor([1.0, 2.0, 0.5, 1.0]), torch.tensor([3.0, 1.0, 0.5, 2.0])
    x = _with_exact_statistics(500, mu1.double(), s1.double(), seed=6)
    y = _with_exact_statistics(700, mu2.double(), s2.double(), seed=7)
    expected = (mu1 - mu2).square().sum() + (s1 - s2).square().sum()
    assert frechet_distance(x, y) == pytest.approx(expected.item(), rel=1e-9)


def test_frechet_distance_is_symmetric_and_matches_scipy() -> None:
    g = _gen(8)
    x = torch.randn(400, 12, generator=g, dtype=torch.float64)
    y = (
        torch.randn(300, 12, generator=g, dtype=torch.float64)
        @ torch.randn(12, 12, generator=g, dtype=torch.float64)
        + 0.3
    )
    fd = frechet_distance(x, y)
    assert fd == pytest.approx(frechet_distance(y, x), rel=1e-9)
    assert fd == pytest.approx(_fd_scipy(x.numpy(), y.numpy()), rel=1e-7)


def test_frechet_distance_handles_singular_covariances() -> None:
    x = torch.randn(10, 64, generator=_gen(9), dtype=torch.float64)  # N < D: rank-deficient
    assert frechet_distance(x, x) == pytest.approx(0.0, abs=1e-5)
    assert frechet_distance(x, x + 1.0) == pytest.approx(64.0, abs=1e-5)


def test_frechet_distance_rejects_bad_input() -> None:
    with pytest.raises(
        ValueError, match=r"at least 2 samples in y to estimate a covariance; got 1"
    ):
        frechet_distance(torch.randn(5, 3), torch.randn(1, 3))
    with pytest.raises(
        ValueError, match=r"same embedding dimension; got x \(5, 3\) and y \(5, 4\)"
    ):
        frechet_distance(torch.randn(5, 3), torch.randn(5, 4))
    with pytest.raises(ValueError, match=r"y must have shape \(M, D\); got shape \(5,\)"):
        frechet_distance(torch.randn(5, 3), torch.randn(5))


# ---------------------------------------------------------------- diversity


def test_diversity_hand_computed() -> None:
    u = torch.tensor([[1.0, 0.0]])
    assert diversity(torch.stack([u, 3 * u])) == pytest.approx(0.0, abs=1e-12)
    assert diversity(torch.stack([u, -u])) == pytest.approx(2.0)
    # three draws: e1, e2, e1 -> pair distances 1, 0, 1
    three = torch.tensor([[[1.0, 0.0]], [[0.0, 1.0]], [[1.0, 0.0]]])
    assert diversity(three) == pytest.approx(2.0 / 3.0)


def test_diversity_identical_draws_is_zero_and_independent_draws_about_one() -> None:
    base = torch.randn(1, 20, 32, generator=_gen(10))
    assert diversity(base.expand(4, 20, 32)) == pytest.approx(0.0, abs=1e-12)
    independent = torch.randn(4, 20, 2048, generator=_gen(11))
    assert diversity(independent) == pytest.approx(1.0, abs=0.02)


def test_diversity_matches_pairwise_loop() -> None:
    samples = torch.randn(5, 7, 6, generator=_gen(12), dtype=torch.float64)
    per_condition = [
        np.mean(
            [
                1 - torch.cosine_similarity(samples[i, n], samples[j, n], dim=0).item()
                for i in range(5)
                for j in range(i + 1, 5)
            ]
        )
        for n in range(7)
    ]
    assert diversity(samples) == pytest.approx(float(np.mean(per_condition)), abs=1e-12)


def test_diversity_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match=r"needs K >= 2 draws per condition.*got K=1"):
        diversity(torch.randn(1, 4, 3))
    with pytest.raises(
        ValueError, match=r"samples must have shape \(K, N, D\); got shape \(4, 3\)"
    ):
        diversity(torch.randn(4, 3))


# ---------------------------------------------------------------- zero-shot


def test_class_embeddings_from_prompts_hand_computed() -> None:
    prompts = torch.tensor([[[2.0, 0.0], [0.0, 3.0]], [[0.0, 1.0], [0.0, 5.0]]])  # (C=2, P=2, D=2)
    expected = torch.tensor([[1.0, 1.0], [0.0, 1.0]]) / torch.tensor([[math.sqrt(2.0)], [1.0]])
    out = class_embeddings_from_prompts(prompts)
    assert out.shape == (2, 2) and out.dtype == torch.float32
    torch.testing.assert_close(out, expected)


def test_zero_shot_accuracy_constructed_example() -> None:
    class_emb = class_embeddings_from_prompts(torch.eye(3)[:, None, :].repeat(1, 4, 1) * 5)
    images = torch.tensor([[0.9, 0.1, 0.0], [0.2, 0.7, 0.1], [0.0, 0.3, 0.4], [0.6, 0.5, 0.0]])
    labels = torch.tensor([0, 1, 2, 1])  # the last image is nearer class 0: 3 of 4 correct
    assert zero_shot_accuracy(images, class_emb, labels) == pytest.approx(0.75)
    assert zero_shot_accuracy(images, class_emb, torch.tensor([0, 1, 2, 0])) == pytest.approx(1.0)


def test_zero_shot_rejects_bad_input() -> None:
    images, classes = torch.randn(4, 3), torch.randn(2, 3)
    with pytest.raises(
        ValueError, match=r"labels values must lie in \[0, 2\); got values from 0 to 2"
    ):
        zero_shot_accuracy(images, classes, torch.tensor([0, 1, 2, 0]))
    with pytest.raises(
        ValueError, match=r"labels must have shape \(N,\) = \(4,\); got shape \(2,\)"
    ):
        zero_shot_accuracy(images, classes, torch.tensor([0, 1]))
    with pytest.raises(
        ValueError, match=r"same embedding dimension; got image_emb \(4, 3\) and class_emb \(2, 5\)"
    ):
        zero_shot_accuracy(images, torch.randn(2, 5), torch.zeros(4, dtype=torch.long))
    with pytest.raises(
        ValueError, match=r"prompt_emb must have shape \(C, P, D\); got shape \(2, 3\)"
    ):
        class_embeddings_from_prompts(torch.randn(2, 3))
