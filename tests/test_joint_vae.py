"""The joint image–caption VAE on tiny configs (fusion, the objective's parts, the triplet
term, save/load, the three generations), its CLI verbs on the tiny world, and the coherence
of joint samples on known inputs."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from cli_helpers import assert_cli_error

from modtrans.cli import main
from modtrans.decoders.joint_vae import (
    JointVAE,
    JointVAEConfig,
    batch_hard_triplet,
    fit_joint_vae,
    gaussian_kl,
    refit_joint_prior,
)
from modtrans.encoders.tokenizer import build_tokenizer
from modtrans.world.captions import SHAPES
from modtrans.world.recogniser import COLOUR_NAMES, PAIRS
from modtrans.world.semantic import joint_coherence

TINY = {"latent_dim": 4, "channels": (8, 8, 8, 8), "text_width": 16, "text_layers": 1,
        "heads": 2, "prefix_length": 2, "max_text_length": 8, "batch_size": 4, "epochs": 1,
        "kl_warmup": 4}
CAPTIONS = ["a red disc", "a photo of a blue star", "two objects", "a green ring"]


def _model(**options) -> JointVAE:
    torch.manual_seed(0)
    tokenizer = build_tokenizer(CAPTIONS)
    return JointVAE(JointVAEConfig(**{**TINY, **options}, text_vocab=len(tokenizer)),
                    tokenizer)


def _images(n: int = 4) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return torch.randint(0, 256, (n, 64, 64, 3), dtype=torch.uint8, generator=g)


def test_product_of_experts_weights_by_precision_and_mvae_adds_the_prior() -> None:
    a = (torch.tensor([[2.0]]), torch.tensor([[0.0]]))  # precision 1
    b = (torch.tensor([[5.0]]), torch.tensor([[-math.log(2.0)]]))  # precision 2
    mu, logvar = _model(latent_dim=1).fuse([a, b])
    assert mu.item() == pytest.approx(4.0) and logvar.item() == pytest.approx(-math.log(3.0))
    mu, logvar = _model(latent_dim=1, fusion="mvae").fuse([a, b])
    assert mu.item() == pytest.approx(3.0) and logvar.item() == pytest.approx(-math.log(4.0))


@pytest.mark.parametrize("fusion", ["mopoe", "mvae"])
def test_loss_has_every_subset_and_mvae_decodes_unimodal_subsets_alone(fusion: str) -> None:
    model = _model(fusion=fusion, triplet_weight=0.5, kl_align_weight=1.0).train()
    out = model.training_loss((_images(), model.text_ids(CAPTIONS)))
    assert torch.isfinite(out["loss"]) and out["triplet"] > 0 and out["kl_align"] > 0
    for subset in ("image", "text", "image+text"):
        assert out[f"{subset}_kl"] >= 0
    cross = (out["image_text_nll"], out["text_image_nll"])
    assert all((c == 0) == (fusion == "mvae") for c in cross)
    out["loss"].backward()
    assert model.text_posterior.weight.grad.abs().sum() > 0


def test_gaussian_kl_is_zero_for_equal_gaussians_and_known_otherwise() -> None:
    mu, logvar = torch.zeros(2, 3), torch.zeros(2, 3)
    assert gaussian_kl(mu, logvar, mu, logvar).item() == 0
    assert gaussian_kl(mu + 1, logvar, mu, logvar).item() == pytest.approx(1.5)


def test_kl_weight_is_annealed_over_the_warmup_steps() -> None:
    model = _model(beta=2.0).train()
    weights = []
    for _ in range(6):
        weights.append(model.kl_weight())
        model.training_loss((_images(), model.text_ids(CAPTIONS)))
    assert weights == pytest.approx([0.0, 0.5, 1.0, 1.5, 2.0, 2.0])


def test_batch_hard_triplet_is_small_for_aligned_pairs_and_large_for_swapped() -> None:
    a = torch.eye(3)
    assert batch_hard_triplet(a, a, 0.1) < 1e-3
    assert batch_hard_triplet(a, a.roll(1, dims=0), 0.1) > 10


def test_save_load_keeps_all_three_generations(tmp_path: Path) -> None:
    model = _model().eval()
    model.save(tmp_path / "joint")
    loaded = JointVAE.load(tmp_path / "joint")
    for m in (model, loaded):
        assert m.kl_step.item() == 0
    draws = [m.sample_pairs(3, generator=torch.Generator().manual_seed(1)) for m in
             (model, loaded)]
    assert torch.equal(draws[0][0], draws[1][0]) and draws[0][1] == draws[1][1]
    assert draws[0][0].shape == (3, 64, 64, 3) and len(draws[0][1]) == 3
    assert torch.equal(model.generate_image(CAPTIONS[:2], sample=False),
                       loaded.generate_image(CAPTIONS[:2], sample=False))
    assert model.caption(_images(2)) == loaded.caption(_images(2))
    with pytest.raises(ValueError, match="uint8"):
        model.caption(_images(2).float())


def test_spatial_latent_adds_only_its_own_parameters_and_a_positive_kl() -> None:
    off, on = _model(), _model(spatial_latent=2)
    assert not any(k.startswith("spatial_") for k in off.state_dict())
    extra = set(on.state_dict()) - set(off.state_dict())
    assert extra and all(k.startswith("spatial_") for k in extra)
    assert set(off.state_dict()) <= set(on.state_dict())
    on.train()
    out = on.training_loss((_images(), on.text_ids(CAPTIONS)))
    for subset in ("image", "image+text"):
        kl = out[f"{subset}_spatial_kl"]
        assert torch.isfinite(kl) and kl > 0
    assert "text_spatial_kl" not in out and "image_spatial_kl" not in off.train().training_loss(
        (_images(), off.text_ids(CAPTIONS)))
    out["loss"].backward()
    assert on.spatial_posterior[-1].weight.grad.abs().sum() > 0
    assert on.spatial_prior[-1].weight.grad.abs().sum() > 0
    for bad in (-1, 1.5, True):
        with pytest.raises(ValueError, match="spatial_latent must be"):
            JointVAEConfig(spatial_latent=bad)


def test_spatial_latent_fits_saves_loads_and_generates_three_ways(tmp_path: Path) -> None:
    captions = [[c] for c in CAPTIONS]
    config = JointVAEConfig(**{**TINY, "spatial_latent": 2})
    fit_joint_vae(_images(), captions, _images(2), captions[:2], tmp_path / "joint", config,
                  accelerator="cpu", progress=False)
    loaded = JointVAE.load(tmp_path / "joint")
    assert loaded.config.spatial_latent == 2
    images, texts = loaded.sample_pairs(2, generator=torch.Generator().manual_seed(0))
    assert images.shape == (2, 64, 64, 3) and len(texts) == 2
    generated = loaded.generate_image(CAPTIONS[:2], sample=False)
    assert generated.shape == (2, 64, 64, 3)
    assert torch.equal(generated, loaded.generate_image(CAPTIONS[:2], sample=False))
    assert len(loaded.caption(_images(2))) == 2


def test_fitted_prior_is_refitted_in_place_and_drawn_from(tmp_path: Path) -> None:
    model = _model().eval()
    model.save(tmp_path / "joint", {"images": 4})
    with pytest.raises(ValueError, match="prior must be"):
        model.sample_pairs(2, prior="fitted")
    summary = refit_joint_prior(tmp_path / "joint", _images(), [[c] for c in CAPTIONS], 2)
    assert summary["prior_components"] == 2 and summary["images"] == 4
    fitted = JointVAE.load(tmp_path / "joint")
    assert fitted.prior_weight.sum().item() == pytest.approx(1.0)
    assert torch.equal(fitted.prefix.weight, model.prefix.weight)
    g = torch.Generator().manual_seed(0)
    standard = model.sample_pairs(2, generator=g)[0]
    assert not torch.equal(fitted.sample_pairs(2, generator=torch.Generator().manual_seed(0))[0],
                           standard)
    assert torch.equal(fitted.sample_pairs(2, prior="standard",
                                           generator=torch.Generator().manual_seed(0))[0],
                       standard)


def test_cli_fits_and_runs_the_three_generations(tiny_world: Path, tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "tiny.json"
    config.write_text(json.dumps(TINY))
    out = tmp_path / "joint"
    assert main(["fit-joint", "--data", str(tiny_world), "--out", str(out), "--config",
                 str(config), "--max-images", "16", "--max-val-images", "4",
                 "--accelerator", "cpu"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["images"] == 16 and summary["fusion"] == "mopoe"
    capsys.readouterr()
    assert main(["generate", "--system", "joint", "--decoder", str(out), "--text",
                 "a red disc", "-n", "2", "--out", str(tmp_path / "g.png")]) == 0
    assert (tmp_path / "g.png").is_file()
    image = sorted((tiny_world / "val" / "images").iterdir())[0]
    capsys.readouterr()
    assert main(["caption", "--system", "joint", "--decoder", str(out), "--image",
                 str(image)]) == 0
    assert capsys.readouterr().out.startswith(f"{image}\t")
    assert main(["sample-pairs", "--system", "joint", "--model", str(out), "-n", "6",
                 "--out", str(tmp_path / "pairs.png")]) == 0
    assert len(json.loads((tmp_path / "pairs.json").read_text())["captions"]) == 6
    assert main(["fit-joint", "--data", str(tiny_world), "--out", str(out), "--prior-only",
                 "--prior-components", "2", "--max-images", "16"]) == 0
    assert json.loads((out / "config.json").read_text())["config"]["prior_components"] == 2
    assert_cli_error(capsys, ["generate", str(out), "--system", "joint", "--decoder",
                              str(out), "--text", "x"], "drop the translator")
    assert_cli_error(capsys, ["fit-joint", "--data", str(tiny_world), "--out",
                              str(tmp_path / "x"), "--fusion", "moe"], "fusion must be")


class _Judge:
    """Stands in for the recogniser: reports fixed attributes per image."""

    def __init__(self, seen: list[list[tuple[str, str]]], counts: list[int]) -> None:
        self.seen, self.counts = seen, counts

    def predict(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """The fixed attributes of the first images, a red circle in every other."""
        n = len(images)
        seen = [*self.seen, *[[("red", "circle")]] * n][:n]
        out = {"pairs": torch.zeros(n, len(PAIRS), dtype=torch.bool),
               "shapes": torch.zeros(n, len(SHAPES), dtype=torch.bool),
               "colours": torch.zeros(n, len(COLOUR_NAMES), dtype=torch.bool)}
        for i, pairs in enumerate(seen):
            for colour, shape in pairs:
                out["pairs"][i, PAIRS.index((colour, shape))] = True
                out["shapes"][i, SHAPES.index(shape)] = True
                out["colours"][i, COLOUR_NAMES.index(colour)] = True
        return {**out, "count": torch.tensor([*self.counts, *[1] * n][:n])}


def test_coherence_counts_agreement_against_a_random_pairing() -> None:
    judge = _Judge([[("red", "circle")], [("blue", "square"), ("green", "star")],
                    [("yellow", "triangle")]], counts=[1, 2, 1])
    captions = ["a red circle", "a blue square and a red star", "three objects"]
    scores = joint_coherence(judge, _images(3), captions)
    joint = scores["joint"]
    # caption 1 names blue and red: red is not in image 1
    assert joint["colours"] == pytest.approx(0.5) and joint["colours_n"] == 2
    assert joint["colours_found"] == pytest.approx(2 / 3, abs=1e-4)
    assert joint["pairs"] == pytest.approx(0.5) and joint["shapes"] == pytest.approx(1.0)
    assert joint["count"] == 0.0 and joint["count_n"] == 1  # states 3, the judge counts 1
    shuffled = scores["random_pairing"]
    assert shuffled["pairs"] <= 0.5 and shuffled["colours_n"] == 2
    with pytest.raises(ValueError, match="one caption per image"):
        joint_coherence(judge, _images(3), captions[:2])


def test_joint_rows_and_samples_are_scored_and_reported(tiny_world: Path,
                                                        tmp_path: Path) -> None:
    from modtrans.eval.endtoend import EndToEndConfig, joint_rows, joint_samples
    from modtrans.eval.report import write_report

    judge, model = _Judge([], []), _model().eval()
    config = EndToEndConfig(prompts_per_group=2, images=3, splits=["val"], joint=True)
    rows = joint_rows(tiny_world, "val", config, judge, model)
    groups = rows["text_to_image"]["by_objects"]
    assert groups and all(g["n_prompts"] <= 2 for g in groups.values())
    assert {"CIDEr", "BLEU-4", "pairs_precision"} <= set(rows["image_to_text"])
    assert len(rows["captions"]) == 3
    scores = joint_samples(tmp_path / "e2e", model, judge, 4, seed=0)
    assert set(scores) == {"joint", "random_pairing"}
    assert len(list((tmp_path / "e2e" / "joint_samples").glob("*.png"))) == 4
    figures = dict.fromkeys(("shapes_presence_accuracy", "colours_presence_accuracy",
                             "pairs_presence_accuracy", "pairs_set_exact", "count_accuracy"),
                            1.0)
    (tmp_path / "e2e" / "results.json").write_text(json.dumps({
        "recogniser": {"n_images": 1, "split": "test", **figures}, "text_to_image": {},
        "image_to_text": {}}))
    page = write_report(tmp_path).read_text()
    assert "Joint samples" in page and "random_pairing" in page
