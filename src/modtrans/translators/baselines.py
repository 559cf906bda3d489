"""Regression baselines, all behind the :class:`Translator` interface.

identity (ẑ = c), mean-shift (ẑ = c − μ_c + μ_z), ridge (closed form, λ chosen on val),
MLP regression (cosine or MSE loss) and k-nearest-neighbour averaging. They are deterministic:
every inference mode returns the same output.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from modtrans.config import Config
from modtrans.translators.base import Translator, TranslatorConfig, register_translator


def _require_same_dims(config: TranslatorConfig, method: str) -> None:
    if config.cond_dim != config.target_dim:
        raise ValueError(
            f"{method} needs condition and target embeddings of the same size; got "
            f"{config.cond_dim} and {config.target_dim} (use ridge or mlp across encoders)"
        )


@register_translator
class IdentityTranslator(Translator):
    """ẑ = c: the raw cross-modal embedding, the floor every translator must clear."""

    method = "identity"

    def __init__(self, config: TranslatorConfig) -> None:
        _require_same_dims(config, self.method)
        super().__init__(config)

    def _translate(self, cn: Tensor, **kwargs: Any) -> Tensor:
        c = self.cond_norm.inverse(cn)
        return self.target_norm(c)


@register_translator
class MeanShiftTranslator(Translator):
    """ẑ = c − μ_c + μ_z: closes the modality gap's offset, nothing more."""

    method = "mean-shift"

    def __init__(self, config: TranslatorConfig) -> None:
        _require_same_dims(config, self.method)
        super().__init__(config)

    def _translate(self, cn: Tensor, **kwargs: Any) -> Tensor:
        return cn * self.cond_norm.std / self.target_norm.std


def ridge_solutions(cn: Tensor, zn: Tensor, lambdas: list[float]) -> list[Tensor]:
    """W_λ = (CᵀC + λN·I)⁻¹ CᵀZ for every λ (float64)."""
    c, z = cn.double(), zn.double()
    return ridge_from_products(c.T @ c, c.T @ z, len(c), lambdas)


def ridge_from_products(ctc: Tensor, ctz: Tensor, n: int, lambdas: list[float]
                        ) -> list[Tensor]:
    """The ridge solutions from CᵀC and CᵀZ over ``n`` pairs, by one eigendecomposition."""
    evals, evecs = torch.linalg.eigh(ctc.double())
    proj = evecs.T @ ctz.double()  # (Dc, D)
    return [(evecs @ (proj / (evals + lam * n).unsqueeze(1))).float() for lam in lambdas]


def select_ridge(translator: Translator, solutions: list[Tensor], val_cn: Tensor,
                 val_zn: Tensor, lambdas: list[float]) -> tuple[Tensor, float, dict]:
    """The ridge solution (one per λ) whose λ gives the best val Sim.

    Returns:
        (W (Dc, D), the chosen λ, val Sim for every λ).
    """
    sims = [translator.val_similarity(val_cn @ w, val_zn) for w in solutions]
    best = max(range(len(lambdas)), key=sims.__getitem__)
    return solutions[best], lambdas[best], dict(zip(lambdas, sims, strict=True))


@dataclasses.dataclass
class RidgeMoments:
    """Sums over a split's normalised pairs (float64) from which its ridge solutions and the
    size of their residual follow without the pairs: n, CᵀC, CᵀZ, Σc, Σz and Σ‖z‖²
    (accumulated from disk by :func:`modtrans.data.stream.ridge_moments`)."""

    n: int
    ctc: Tensor
    ctz: Tensor
    c_sum: Tensor
    z_sum: Tensor
    z_sq: float

    def solutions(self, lambdas: list[float]) -> list[Tensor]:
        return ridge_from_products(self.ctc, self.ctz, self.n, lambdas)

    def residual_std(self, weight: Tensor) -> float:
        """The standard deviation of every element of z − c·W over the pairs."""
        w = weight.double()
        total = self.z_sq - 2 * float((w * self.ctz).sum()) + float((w * (self.ctc @ w)).sum())
        elements = self.n * w.shape[1]
        mean_sum = float((self.z_sum - self.c_sum @ w).sum())
        return float(math.sqrt(max(total - mean_sum**2 / elements, 0.0) / (elements - 1)))


def check_lambdas(name: str, lambdas: list[float]) -> None:
    """A ridge grid must hold at least one λ and no negative one."""
    if not lambdas or min(lambdas) < 0:
        raise ValueError(f"{name} must be a non-empty list of λ >= 0, got {lambdas!r}; "
                         f"e.g. --param {name}=[0.01,0.1,1]")


@dataclasses.dataclass
class RidgeOptions(Config):
    """Options of ``ridge``.

    Attributes:
        lambdas: the grid of λ (times N) tried; the one with the best val Sim is kept.
    """

    lambdas: list[float] = dataclasses.field(
        default_factory=lambda: [1e-4, 1e-3, 3e-3, 1e-2, 3e-2, 0.1, 0.3, 1.0])

    def __post_init__(self) -> None:
        check_lambdas("lambdas", self.lambdas)


@register_translator
class RidgeTranslator(Translator):
    """ẑ = c·W with W the ridge solution in normalised space; λ chosen by val Sim."""

    method = "ridge"
    needs_moments = True
    options_class = RidgeOptions
    options: RidgeOptions

    def __init__(self, config: TranslatorConfig) -> None:
        super().__init__(config)
        self.register_buffer("weight", torch.zeros(config.cond_dim, config.target_dim))

    def prepare(self, cn: Tensor, zn: Tensor, val_cn: Tensor, val_zn: Tensor) -> dict[str, Any]:
        return self._choose(ridge_solutions(cn, zn, self.options.lambdas), val_cn, val_zn)

    def prepare_streamed(self, moments: RidgeMoments | None, sample: tuple[Tensor, Tensor],
                         val_cn: Tensor, val_zn: Tensor) -> dict[str, Any]:
        assert moments is not None
        return self._choose(moments.solutions(self.options.lambdas), val_cn, val_zn)

    def _choose(self, solutions: list[Tensor], val_cn: Tensor, val_zn: Tensor
                ) -> dict[str, Any]:
        weight, lam, sims = select_ridge(self, solutions, val_cn, val_zn, self.options.lambdas)
        self.weight.copy_(weight)
        return {"lambda": lam, "val_sim_by_lambda": sims}

    def _translate(self, cn: Tensor, **kwargs: Any) -> Tensor:
        return cn @ self.weight


def mlp_net(in_dim: int, out_dim: int, width: int, depth: int, dropout: float) -> nn.Sequential:
    """``depth`` hidden layers of ``width`` (GELU, dropout) and a linear output layer."""
    layers: list[nn.Module] = [nn.Linear(in_dim, width)]
    for _ in range(depth - 1):
        layers += [nn.GELU(), nn.Dropout(dropout), nn.Linear(width, width)]
    layers += [nn.GELU(), nn.Dropout(dropout), nn.Linear(width, out_dim)]
    return nn.Sequential(*layers)


@dataclasses.dataclass
class MLPOptions(Config):
    """Options of ``mlp``.

    Attributes:
        width, depth: hidden width and number of hidden layers.
        dropout: dropout probability after every hidden layer.
        loss: ``cosine`` (in the raw target space) or ``mse`` (in normalised space).
        lr, weight_decay: AdamW's.
    """

    width: int = 1024
    depth: int = 2
    dropout: float = 0.1
    loss: str = "cosine"
    lr: float = 1e-3
    weight_decay: float = 1e-4

    def __post_init__(self) -> None:
        if self.loss not in ("cosine", "mse"):
            raise ValueError(f"mlp loss must be 'cosine' or 'mse', got {self.loss!r} "
                             "(--param loss=mse)")
        if self.width < 1 or self.depth < 1:
            raise ValueError(f"width and depth must be at least 1, got {self.width} and "
                             f"{self.depth} (e.g. --param width=1024 --param depth=2)")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout} "
                             "(e.g. --param dropout=0.1)")


@register_translator
class MLPTranslator(Translator):
    """A residual MLP regressor trained with a cosine or MSE loss."""

    method = "mlp"
    trainable = True
    default_epochs = 3
    options_class = MLPOptions
    options: MLPOptions

    def __init__(self, config: TranslatorConfig) -> None:
        super().__init__(config)
        o = self.options
        self.net = mlp_net(config.cond_dim, config.target_dim, o.width, o.depth, o.dropout)
        self.skip = nn.Linear(config.cond_dim, config.target_dim, bias=False)

    def _forward(self, cn: Tensor) -> Tensor:
        return self.skip(cn) + self.net(cn)

    def training_loss(self, cn: Tensor, zn: Tensor) -> Tensor:
        pred = self._forward(cn)
        if self.options.loss == "mse":
            return F.mse_loss(pred, zn)
        pred_raw, z_raw = self.target_norm.inverse(pred), self.target_norm.inverse(zn)
        return 1 - F.cosine_similarity(pred_raw, z_raw, dim=-1).mean()

    def _translate(self, cn: Tensor, **kwargs: Any) -> Tensor:
        return self._forward(cn)


@dataclasses.dataclass
class KNNOptions(Config):
    """Options of ``knn``.

    Attributes:
        ks: the k tried on val; the one with the best val Sim is kept (as ``k``).
        k: neighbours averaged (set by fitting).
        n_train: training pairs kept as neighbours (set by fitting).
    """

    ks: list[int] = dataclasses.field(default_factory=lambda: [1, 5, 10, 20, 50])
    k: int = 10
    n_train: int = 0

    def __post_init__(self) -> None:
        if not self.ks or min(self.ks) < 1:
            raise ValueError(f"ks must be a non-empty list of k >= 1, got {self.ks!r}; "
                             "e.g. --param ks=[1,5,10]")
        if self.k < 1 or self.n_train < 0:
            raise ValueError(f"k must be >= 1 and n_train >= 0, got {self.k} and "
                             f"{self.n_train} (both are set by fitting)")


@register_translator
class KNNTranslator(Translator):
    """ẑ = the mean target of the k training conditions nearest to c (cosine); k chosen on val."""

    method = "knn"
    options_class = KNNOptions
    options: KNNOptions

    def __init__(self, config: TranslatorConfig) -> None:
        super().__init__(config)
        n = self.options.n_train
        self.register_buffer("keys", torch.zeros(n, config.cond_dim))
        self.register_buffer("values", torch.zeros(n, config.target_dim))

    def prepare(self, cn: Tensor, zn: Tensor, val_cn: Tensor, val_zn: Tensor) -> dict[str, Any]:
        self.keys = F.normalize(cn, dim=-1)
        self.values = zn.clone()
        ks = [k for k in self.options.ks if k <= len(cn)]
        sims = {k: self.val_similarity(self._neighbour_mean(val_cn, k), val_zn) for k in ks}
        self.set_options(n_train=len(cn), k=max(sims, key=sims.__getitem__))
        return {"k": self.options.k, "val_sim_by_k": sims}

    def _neighbour_mean(self, cn: Tensor, k: int, chunk: int = 1024) -> Tensor:
        out = []
        for part in cn.split(chunk):
            idx = (F.normalize(part, dim=-1) @ self.keys.T).topk(k, dim=1).indices  # (n, k)
            out.append(self.values[idx].mean(1))
        return torch.cat(out)

    def _translate(self, cn: Tensor, **kwargs: Any) -> Tensor:
        return self._neighbour_mean(cn, self.options.k)
