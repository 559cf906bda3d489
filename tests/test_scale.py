"""Beyond one process and beyond memory: DDP training on 2 CPU processes matches one
process; a split read from its shards gives the statistics, batches and resumed weights of
one read into memory."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from modtrans.data.pairs import load_pairs
from modtrans.data.store import open_store
from modtrans.data.stream import PairBatches, StorePairs, pair_statistics, ridge_moments
from modtrans.data.synthetic import write_paired_store
from modtrans.training.translator import fit_translator
from modtrans.translators.base import Normalizer, Translator
from modtrans.translators.baselines import ridge_solutions
from tests.ddp_script import PARAMS, RECIPE
from tests.faults.test_training_faults import Killed, _assert_same_weights, _kill_at

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def paired(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A synthetic store root: train (3000 pairs in shards of 700) and val (500)."""
    root = tmp_path_factory.mktemp("paired")
    write_paired_store(root / "train", 3000, dim=32, shard_size=700)
    write_paired_store(root / "val", 500, dim=32, shard_size=500, split="val")
    return root


def _val_sim(checkpoint: Path, root: Path) -> float:
    val = load_pairs(open_store(root, "val"), "text2image")
    pred = Translator.load(checkpoint).translate(val.cond, n_samples=4)
    return float(torch.nn.functional.cosine_similarity(pred, val.target).mean())


def test_ddp_on_two_processes_matches_one(paired: Path, tmp_path: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    run = subprocess.run([sys.executable, str(ROOT / "tests" / "ddp_script.py"), str(paired),
                          str(tmp_path / "ddp")], env=env, capture_output=True, text=True,
                         timeout=600, cwd=ROOT)
    assert run.returncode == 0, run.stderr[-3000:]
    train = load_pairs(open_store(paired, "train"), "text2image")
    val = load_pairs(open_store(paired, "val"), "text2image")
    for method, params in PARAMS.items():
        fit_translator(method, train, val, tmp_path / "one" / method, params=params,
                       recipe=RECIPE, progress=False)
        one, two = tmp_path / "one" / method, tmp_path / "ddp" / method
        sims = _val_sim(one, paired), _val_sim(two, paired)
        assert sims[0] > 0.3 and abs(sims[0] - sims[1]) < 0.005, (method, sims)
        a, b = load_file(one / "model.safetensors"), load_file(two / "model.safetensors")
        # the closed-form parts were fitted once (rank 0) on the whole split, as one process
        # fits them, and only rank 0 wrote a checkpoint
        for key in [k for k in a if k.split(".")[0] in ("cond_norm", "target_norm", "mapping",
                                                         "gamma", "residual_scale")]:
            torch.testing.assert_close(a[key], b[key], msg=f"{method}: {key}")
        assert sorted(p.name for p in (two / "lightning").iterdir()) == ["last.ckpt"]
    assert "Restored all states from the checkpoint" in run.stderr
    _assert_same_weights(tmp_path / "ddp" / "mlp", tmp_path / "ddp" / "mlp-resumed")


@pytest.mark.parametrize("direction", ["text2image", "image2text"])
def test_streamed_pairs_and_statistics_equal_the_split_in_memory(
    tiny_store: Path, direction: str
) -> None:
    store = open_store(tiny_store, "train")  # several captions per image
    memory, streamed = load_pairs(store, direction), StorePairs(store, direction)
    chunks = list(streamed.chunks(size=37))
    torch.testing.assert_close(torch.cat([c for c, _ in chunks]), memory.cond)
    torch.testing.assert_close(torch.cat([z for _, z in chunks]), memory.target)
    norms = [Normalizer(memory.cond.shape[1]), Normalizer(memory.target.shape[1])]
    pair_statistics(streamed, *norms)
    expected = Normalizer(memory.cond.shape[1]).fit(memory.cond)
    torch.testing.assert_close(norms[0].mean, expected.mean)
    torch.testing.assert_close(norms[0].std, expected.std)
    cn, zn = norms[0](memory.cond), norms[1](memory.target)
    moments = ridge_moments(streamed, *norms)
    lambdas = [1e-2, 0.1]  # chunk products are float32: the smallest λ amplify their rounding
    for got, want in zip(moments.solutions(lambdas), ridge_solutions(cn, zn, lambdas),
                         strict=True):
        torch.testing.assert_close(got, want, rtol=1e-3, atol=1e-4)
    w = want
    assert moments.residual_std(w) == pytest.approx(float((zn - cn @ w).std()), rel=1e-4)


def test_stream_batches_cover_each_pair_once_split_among_ranks(paired: Path) -> None:
    pairs = StorePairs(open_store(paired, "train"), "text2image")
    batches = PairBatches(pairs, 256, seed=3, drop_last=False)
    assert len(batches) == 12  # 3000 pairs
    train = load_pairs(open_store(paired, "train"), "text2image")
    row_of = {tuple(np.round(t.numpy(), 4)): i for i, t in enumerate(train.cond)}
    orders = []
    for epoch in (0, 1):
        seen = []
        for b in range(len(batches)):
            whole = batches[(epoch, b, 0, 1)]
            halves = [batches[(epoch, b, r, 2)] for r in (0, 1)]
            assert sorted(map(tuple, whole[0].tolist())) == sorted(
                map(tuple, torch.cat([h[0] for h in halves]).tolist()))
            rows = [row_of[tuple(np.round(c.numpy(), 4))] for c in whole[0]]
            torch.testing.assert_close(whole[1], train.target[rows])  # pairs kept together
            seen += rows
        assert sorted(seen) == list(range(3000))
        orders.append(seen)
    assert orders[0] != orders[1] and orders[0] != sorted(orders[0])


def test_streamed_training_killed_resumes_to_the_same_weights(
    paired: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    train = StorePairs(open_store(paired, "train"), "text2image")
    val = load_pairs(open_store(paired, "val"), "text2image")
    kwargs = {"params": PARAMS["ced"], "recipe": RECIPE, "progress": False, "workers": 1}
    fit_translator("ced", train, val, tmp_path / "whole", **kwargs)
    with monkeypatch.context() as m:
        _kill_at(m, 40)
        with pytest.raises(Killed):
            fit_translator("ced", train, val, tmp_path / "cut", **kwargs)
    _, resumed = fit_translator("ced", train, val, tmp_path / "cut", resume=True, **kwargs)
    assert resumed["steps"] == 2 * (3000 // 32) and resumed["streamed"]
    _assert_same_weights(tmp_path / "whole", tmp_path / "cut")


def test_stream_refuses_what_needs_the_split_in_memory(paired: Path, tmp_path: Path) -> None:
    train = StorePairs(open_store(paired, "train"), "text2image")
    val = load_pairs(open_store(paired, "val"), "text2image")
    with pytest.raises(ValueError, match="without --stream"):
        fit_translator("knn", train, val, tmp_path, progress=False)
    with pytest.raises(ValueError, match="skip-bad-rows"):
        StorePairs(open_store(paired, "train", skip_bad_rows=True), "text2image")
