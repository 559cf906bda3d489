"""Evaluation metrics as pure tensor functions.

Conventions: embeddings are rows of a ``(N, D)`` tensor; ``c`` is the condition (source
modality), ``z`` the target and ``z_hat`` the translator's estimate of ``z``. Cosines, Fréchet
distances and diversities are computed in float64 and returned as Python floats. Retrieval
ranks are 1-based ``int64`` tensors; recalls are fractions in [0, 1], not percentages.

Retrieval supports both pairings found in captioned-image data:

- text → image, one correct item per query: ``target_index`` (N,) gives each query's gallery
  row;
- image → text, several correct items per query: ``gallery_owner`` (M,) gives, for each
  gallery row, the query it belongs to; any of a query's rows counts as a hit.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "class_embeddings_from_prompts",
    "cosine_suite",
    "diversity",
    "frechet_distance",
    "mean_cosine",
    "median_rank",
    "random_derangement",
    "recall_at_k",
    "retrieval_metrics",
    "retrieval_ranks",
    "zero_shot_accuracy",
]

Ties = Literal["pessimistic", "optimistic"]
DEFAULT_CHUNK_SIZE = 256


def _check_embeddings(name: str, x: Tensor, shape_doc: str = "(N, D)") -> None:
    """Raise unless ``x`` is a non-empty, finite, float tensor of the rank ``shape_doc`` shows."""
    if not isinstance(x, Tensor):
        raise TypeError(
            f"{name} must be a torch.Tensor of shape {shape_doc}; got {type(x).__name__}"
        )
    ndim = shape_doc.count(",") + 1
    if x.ndim != ndim:
        raise ValueError(f"{name} must have shape {shape_doc}; got shape {tuple(x.shape)}")
    if x.numel() == 0:
        raise ValueError(
            f"{name} is empty (shape {tuple(x.shape)}); expected shape {shape_doc} with every "
            "dimension at least 1"
        )
    if not x.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor; got dtype {x.dtype}")
    bad = int((~torch.isfinite(x)).sum())
    if bad:
        raise ValueError(
            f"{name} contains {bad} NaN or infinite entries out of {x.numel()}; expected finite "
            "embeddings (check the encoder or translator that produced them)"
        )


def _check_index(name: str, index: Tensor, *, length: int, high: int, shape_doc: str) -> None:
    """Raise unless ``index`` is an integer (length,) tensor with values in [0, high)."""
    if not isinstance(index, Tensor):
        raise TypeError(
            f"{name} must be a torch.Tensor of shape {shape_doc}; got {type(index).__name__}"
        )
    if index.ndim != 1 or index.shape[0] != length:
        raise ValueError(
            f"{name} must have shape {shape_doc} = ({length},); got shape {tuple(index.shape)}"
        )
    if index.is_floating_point() or index.is_complex() or index.dtype == torch.bool:
        raise ValueError(f"{name} must be an integer tensor; got dtype {index.dtype}")
    low_value, high_value = int(index.min()), int(index.max())
    if low_value < 0 or high_value >= high:
        raise ValueError(
            f"{name} values must lie in [0, {high}); got values from {low_value} to {high_value}"
        )


def _check_same_dim(name_a: str, a: Tensor, name_b: str, b: Tensor) -> None:
    if a.shape[-1] != b.shape[-1]:
        raise ValueError(
            f"{name_a} and {name_b} must have the same embedding dimension; got {name_a} "
            f"{tuple(a.shape)} and {name_b} {tuple(b.shape)}"
        )


def _check_ranks(ranks: Tensor) -> None:
    if not isinstance(ranks, Tensor):
        raise TypeError(f"ranks must be a torch.Tensor of shape (N,); got {type(ranks).__name__}")
    if ranks.ndim != 1 or ranks.numel() == 0:
        raise ValueError(
            f"ranks must be a non-empty tensor of shape (N,); got shape {tuple(ranks.shape)}"
        )
    if ranks.is_floating_point() or ranks.is_complex() or ranks.dtype == torch.bool:
        raise ValueError(
            f"ranks must be an integer tensor of 1-based ranks; got dtype {ranks.dtype}"
        )
    if int(ranks.min()) < 1:
        raise ValueError(f"ranks are 1-based and must be >= 1; got a minimum of {int(ranks.min())}")


def _row_cosine(a: Tensor, b: Tensor) -> Tensor:
    """Row-wise cosine of two (N, D) tensors in float64, (N,); a zero row has cosine 0."""
    return (F.normalize(a.double(), dim=-1) * F.normalize(b.double(), dim=-1)).sum(-1)


def mean_cosine(a: Tensor, b: Tensor) -> float:
    """Mean row-wise cosine similarity, the seed's "Sim" when ``a = z_hat`` and ``b = z``.

    Args:
        a: (N, D) embeddings.
        b: (N, D) embeddings, row ``i`` paired with ``a[i]``.

    Returns:
        ``mean_i cos(a_i, b_i)`` in [-1, 1]; a zero row counts as cosine 0.
    """
    _check_embeddings("a", a)
    _check_embeddings("b", b)
    if a.shape != b.shape:
        raise ValueError(
            f"a and b must have the same shape (N, D); got {tuple(a.shape)} and {tuple(b.shape)}"
        )
    return _row_cosine(a, b).mean().item()


def random_derangement(n: int, *, generator: torch.Generator | None = None) -> Tensor:
    """A random permutation of ``range(n)`` with no fixed point.

    Draws a random n-cycle (uniform over cycles, not over all derangements), which is all an
    "unrelated pair" baseline needs.

    Args:
        n: number of items, at least 2.
        generator: random generator; its device is used.

    Returns:
        (n,) int64 tensor ``perm`` with ``perm[i] != i`` for every ``i``.
    """
    if n < 2:
        raise ValueError(f"a derangement needs n >= 2 items; got n={n}")
    device = generator.device if generator is not None else torch.device("cpu")
    order = torch.randperm(n, generator=generator, device=device)
    perm = torch.empty_like(order)
    perm[order] = order.roll(-1)  # order[i] -> order[i + 1]: one n-cycle
    return perm


def cosine_suite(
    c: Tensor, z_hat: Tensor, z: Tensor, *, generator: torch.Generator | None = None
) -> dict[str, float | None]:
    """Cosine report of a translator, after DALLE2-pytorch's prior evaluation.

    Args:
        c: (N, Dc) condition embeddings.
        z_hat: (N, D) translated embeddings, row ``i`` translated from ``c[i]``.
        z: (N, D) true target embeddings, row ``i`` paired with ``c[i]``; N >= 2.
        generator: random generator for the unrelated pairing.

    Returns:
        ``cos_c_z``: mean cos(c, z), the raw cross-modal baseline (None when Dc != D);
        ``cos_zhat_c``: mean cos(z_hat, c) (None when Dc != D);
        ``cos_zhat_z``: mean cos(z_hat, z), the seed's "Sim";
        ``cos_zhat_z_unrelated``: mean cos(z_hat_i, z_perm(i)) over a random derangement,
        the floor that ``cos_zhat_z`` must clear.
    """
    _check_embeddings("c", c, "(N, Dc)")
    _check_embeddings("z_hat", z_hat)
    _check_embeddings("z", z)
    if z_hat.shape != z.shape:
        raise ValueError(
            f"z_hat and z must have the same shape (N, D); got {tuple(z_hat.shape)} and "
            f"{tuple(z.shape)}"
        )
    if c.shape[0] != z.shape[0]:
        raise ValueError(
            f"c and z must have the same number of rows N; got c {tuple(c.shape)} and "
            f"z {tuple(z.shape)}"
        )
    if z.shape[0] < 2:
        raise ValueError(
            f"cosine_suite needs N >= 2 pairs to form unrelated pairs; got N={z.shape[0]}"
        )
    same_dim = c.shape[1] == z.shape[1]
    perm = random_derangement(z.shape[0], generator=generator).to(z.device)
    return {
        "cos_c_z": _row_cosine(c, z).mean().item() if same_dim else None,
        "cos_zhat_c": _row_cosine(z_hat, c).mean().item() if same_dim else None,
        "cos_zhat_z": _row_cosine(z_hat, z).mean().item(),
        "cos_zhat_z_unrelated": _row_cosine(z_hat, z[perm]).mean().item(),
    }


def retrieval_ranks(
    queries: Tensor,
    gallery: Tensor,
    *,
    target_index: Tensor | None = None,
    gallery_owner: Tensor | None = None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    ties: Ties = "pessimistic",
) -> Tensor:
    """Rank of the best-ranked correct gallery item for each query, by cosine similarity.

    Give exactly one of ``target_index`` (one correct item per query) or ``gallery_owner``
    (any gallery row owned by the query is correct). Queries are processed ``chunk_size`` at
    a time, so memory is O(chunk_size × M). Similarities are computed in the inputs' dtype,
    promoted to at least float32.

    Args:
        queries: (N, D) query embeddings.
        gallery: (M, D) gallery embeddings.
        target_index: (N,) int, the gallery row that is correct for each query.
        gallery_owner: (M,) int, the query each gallery row belongs to; every query must own
            at least one row.
        chunk_size: queries per similarity block.
        ties: ``"pessimistic"`` ranks a wrong item tied with the best correct one ahead of
            it (so a constant output cannot score), ``"optimistic"`` behind it.

    Returns:
        (N,) int64 tensor of 1-based ranks on the queries' device: 1 + the number of wrong
        gallery items scoring above (or tied with, if pessimistic) the best correct one.
    """
    _check_embeddings("queries", queries)
    _check_embeddings("gallery", gallery, "(M, D)")
    _check_same_dim("queries", queries, "gallery", gallery)
    n, m = queries.shape[0], gallery.shape[0]
    if (target_index is None) == (gallery_owner is None):
        raise ValueError(
            "give exactly one of target_index (N,), the correct gallery row per query, or "
            "gallery_owner (M,), the query that owns each gallery row; got "
            f"{'both' if target_index is not None else 'neither'}"
        )
    if not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive int; got {chunk_size!r}")
    if ties not in ("pessimistic", "optimistic"):
        raise ValueError(f"ties must be 'pessimistic' or 'optimistic'; got {ties!r}")

    device = queries.device
    if target_index is not None:
        _check_index("target_index", target_index, length=n, high=m, shape_doc="(N,)")
        target_index = target_index.to(device=device, dtype=torch.long)
    else:
        _check_index("gallery_owner", gallery_owner, length=m, high=n, shape_doc="(M,)")
        gallery_owner = gallery_owner.to(device=device, dtype=torch.long)
        orphans = (torch.bincount(gallery_owner, minlength=n) == 0).nonzero().flatten()
        if orphans.numel():
            raise ValueError(
                f"{orphans.numel()} of {n} queries own no gallery row in gallery_owner "
                f"(first: {orphans[:5].tolist()}); every query needs at least one correct item"
            )

    dtype = torch.promote_types(torch.promote_types(queries.dtype, gallery.dtype), torch.float32)
    q = F.normalize(queries.to(dtype), dim=-1)
    g = F.normalize(gallery.to(dtype), dim=-1)
    ranks = torch.empty(n, dtype=torch.long, device=device)
    for start in range(0, n, chunk_size):
        stop = min(start + chunk_size, n)
        sims = q[start:stop] @ g.T  # (B, M)
        if target_index is not None:
            positive = torch.zeros_like(sims, dtype=torch.bool)
            positive.scatter_(1, target_index[start:stop, None], True)
        else:
            rows = torch.arange(start, stop, device=device)
            positive = gallery_owner[None, :] == rows[:, None]  # (B, M)
        best = sims.masked_fill(~positive, float("-inf")).amax(dim=1, keepdim=True)  # (B, 1)
        ahead = sims >= best if ties == "pessimistic" else sims > best
        ranks[start:stop] = 1 + (ahead & ~positive).sum(dim=1)
    return ranks


def recall_at_k(ranks: Tensor, ks: Sequence[int] = (1, 5, 10)) -> dict[str, float]:
    """Fraction of queries whose correct item is within the top ``k``.

    Args:
        ranks: (N,) int, 1-based ranks, e.g. from :func:`retrieval_ranks`.
        ks: cut-offs, each >= 1.

    Returns:
        ``{"R@k": fraction in [0, 1]}`` for each ``k`` in ``ks``.
    """
    _check_ranks(ranks)
    if len(ks) == 0 or any(isinstance(k, bool) or not isinstance(k, int) or k < 1 for k in ks):
        raise ValueError(f"ks must be a non-empty sequence of ints >= 1; got {ks!r}")
    return {f"R@{k}": (ranks <= k).double().mean().item() for k in ks}


def median_rank(ranks: Tensor) -> float:
    """Median of 1-based ranks ("MedR"); the mean of the two middle ranks when N is even.

    Args:
        ranks: (N,) int, 1-based ranks.

    Returns:
        The median rank as a float.
    """
    _check_ranks(ranks)
    ordered = ranks.sort().values.double()
    n = ordered.numel()
    return ((ordered[(n - 1) // 2] + ordered[n // 2]) / 2).item()


def retrieval_metrics(
    queries: Tensor,
    gallery: Tensor,
    *,
    target_index: Tensor | None = None,
    gallery_owner: Tensor | None = None,
    ks: Sequence[int] = (1, 5, 10),
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    ties: Ties = "pessimistic",
) -> dict[str, float]:
    """Recall at ``ks`` and median rank of ``queries`` against ``gallery``.

    Args:
        queries, gallery, target_index, gallery_owner, chunk_size, ties: as in
            :func:`retrieval_ranks`.
        ks: recall cut-offs.

    Returns:
        ``{"R@1": ..., "R@5": ..., "R@10": ..., "MedR": ...}`` (one ``R@k`` per ``k``).
    """
    ranks = retrieval_ranks(
        queries,
        gallery,
        target_index=target_index,
        gallery_owner=gallery_owner,
        chunk_size=chunk_size,
        ties=ties,
    )
    return {**recall_at_k(ranks, ks), "MedR": median_rank(ranks)}


def _mean_and_covariance(x: Tensor) -> tuple[Tensor, Tensor]:
    """Mean (D,) and unbiased covariance (D, D) of the rows of x, in float64."""
    x = x.double()
    mu = x.mean(dim=0)
    centred = x - mu
    return mu, centred.T @ centred / (x.shape[0] - 1)


def _psd_sqrt(matrix: Tensor) -> Tensor:
    """Symmetric square root of a symmetric PSD matrix; rounding-negative eigenvalues -> 0."""
    eigenvalues, eigenvectors = torch.linalg.eigh(matrix)
    return (eigenvectors * eigenvalues.clamp_min(0).sqrt()) @ eigenvectors.T


def frechet_distance(x: Tensor, y: Tensor) -> float:
    """Fréchet distance between Gaussians fitted to two sets of embeddings (as in FID).

    ``FD = |mu_x - mu_y|^2 + Tr(S_x + S_y - 2 (S_x S_y)^{1/2})`` (Dowson & Landau 1982).
    The trace of the matrix root is taken as the sum of square roots of the eigenvalues of
    the symmetric PSD matrix ``S_x^{1/2} S_y S_x^{1/2}``, which shares its non-zero
    eigenvalues with ``S_x S_y``: no complex ``sqrtm``, stable for singular covariances.

    Args:
        x: (N, D) embeddings, N >= 2.
        y: (M, D) embeddings, M >= 2.

    Returns:
        The Fréchet distance, >= 0 (a rounding-negative result is returned as 0).
    """
    _check_embeddings("x", x)
    _check_embeddings("y", y, "(M, D)")
    _check_same_dim("x", x, "y", y)
    for name, t in (("x", x), ("y", y)):
        if t.shape[0] < 2:
            raise ValueError(
                f"frechet_distance needs at least 2 samples in {name} to estimate a covariance; "
                f"got {t.shape[0]}"
            )
    mu_x, cov_x = _mean_and_covariance(x)
    mu_y, cov_y = _mean_and_covariance(y)
    root_x = _psd_sqrt(cov_x)
    middle = root_x @ cov_y @ root_x
    middle = (middle + middle.T) / 2  # symmetric up to rounding; eigvalsh reads one triangle
    trace_root = torch.linalg.eigvalsh(middle).clamp_min(0).sqrt().sum()
    fd = (mu_x - mu_y).square().sum() + cov_x.trace() + cov_y.trace() - 2 * trace_root
    return max(fd.item(), 0.0)


def diversity(samples: Tensor) -> float:
    """Mean pairwise cosine distance between several draws for the same condition.

    Args:
        samples: (K, N, D), K >= 2 draws for each of N conditions.

    Returns:
        ``mean_n mean_{i<j} (1 - cos(samples[i, n], samples[j, n]))``: 0 for identical draws,
        about 1 for independent high-dimensional draws.
    """
    _check_embeddings("samples", samples, "(K, N, D)")
    k = samples.shape[0]
    if k < 2:
        raise ValueError(
            f"diversity needs K >= 2 draws per condition in samples (K, N, D); got K={k}"
        )
    unit = F.normalize(samples.double(), dim=-1)  # (K, N, D)
    # sum_{i<j} <u_i, u_j> = (|sum_i u_i|^2 - sum_i |u_i|^2) / 2, per condition
    pair_sum = (unit.sum(dim=0).square().sum(-1) - unit.square().sum(dim=(0, 2))) / 2  # (N,)
    mean_cos = pair_sum / (k * (k - 1) / 2)
    return (1 - mean_cos).mean().item()


def class_embeddings_from_prompts(prompt_emb: Tensor) -> Tensor:
    """Class embeddings by prompt ensembling, as in CLIP: normalise, average, normalise.

    Args:
        prompt_emb: (C, P, D), P prompt embeddings ("a photo of a {class}", ...) per class.

    Returns:
        (C, D) unit-norm class embeddings, in ``prompt_emb``'s dtype.
    """
    _check_embeddings("prompt_emb", prompt_emb, "(C, P, D)")
    mean = F.normalize(prompt_emb.double(), dim=-1).mean(dim=1)  # (C, D)
    return F.normalize(mean, dim=-1).to(prompt_emb.dtype)


def zero_shot_predict(image_emb: Tensor, class_emb: Tensor) -> Tensor:
    """(N,) index of each image's most cosine-similar class (ties: the lower index)."""
    _check_embeddings("image_emb", image_emb)
    _check_embeddings("class_emb", class_emb, "(C, D)")
    _check_same_dim("image_emb", image_emb, "class_emb", class_emb)
    logits = F.normalize(image_emb.double(), dim=-1) @ F.normalize(class_emb.double(), dim=-1).T
    return logits.argmax(dim=1)


def zero_shot_accuracy(image_emb: Tensor, class_emb: Tensor, labels: Tensor) -> float:
    """Accuracy of classifying each image as its most cosine-similar class embedding.

    Args:
        image_emb: (N, D) image embeddings (raw, or translated into the class space).
        class_emb: (C, D) class embeddings, e.g. from :func:`class_embeddings_from_prompts`.
        labels: (N,) int, the true class of each image, in [0, C).

    Returns:
        Fraction of images classified correctly (ties go to the lower class index).
    """
    predicted = zero_shot_predict(image_emb, class_emb)  # (N,)
    _check_index(
        "labels", labels, length=image_emb.shape[0], high=class_emb.shape[0], shape_doc="(N,)"
    )
    return (predicted == labels.to(predicted.device)).double().mean().item()
