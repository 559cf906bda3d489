"""The tiny demo end to end, then the translator verbs of the CLI on the store it made.

The demo runs once for the module (about a minute on CPU); every CLI test reuses its folder.
"""

from __future__ import annotations

import dataclasses
import json
import re
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from artefact_helpers import saved_options
from cli_helpers import assert_cli_error as _error

from modtrans.cli import main
from modtrans.data.store import EmbeddingStore, StoreWriter
from modtrans.demo import PRESETS, run_demo
from modtrans.eval.worldbench import markdown_table
from modtrans.translators.samplers import SamplerOptions

TINY = PRESETS["tiny-generation"]
SPLITS = [(d, s) for d in ("text2image", "image2text") for s in TINY.eval_splits]


@dataclasses.dataclass
class Demo:
    out: Path
    report: Path
    seconds: float

    @property
    def store(self) -> Path:
        return self.out / "store"

    def checkpoint(self, direction: str, method: str) -> Path:
        return self.out / "translators" / direction / method


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Demo:
    out = tmp_path_factory.mktemp("demo") / "out"
    start = time.perf_counter()
    report = run_demo(out, TINY, progress=False)
    return Demo(out, report, time.perf_counter() - start)


def _run(capsys: pytest.CaptureFixture[str], argv: list[str]) -> str:
    """``main(argv)`` must succeed; returns its stdout."""
    code = main(argv)
    out, err = capsys.readouterr()
    assert code == 0, (out, err)
    return out


# --- the demo ------------------------------------------------------------------------------


def test_demo_writes_every_result(demo: Demo) -> None:
    for direction, split in SPLITS:
        result = json.loads((demo.out / "results" / f"{direction}_{split}.json").read_text())
        assert (result["direction"], result["split"]) == (direction, split)
        assert [row["method"] for row in result["rows"]] == TINY.methods
        for row in result["rows"]:
            assert row["direction"] == direction
            assert 0 <= row["R@1"] <= 1 and -1 <= row["sim"] <= 1
            assert row["zero_shot"] is not None  # the world's shape task ran
            assert row["n_queries"] > 0
        by_method = {row["method"]: row for row in result["rows"]}
        assert by_method["ridge"]["diversity"] == 0.0
        assert by_method["ced"]["diversity"] > 0.0
        assert by_method["ridge"]["sim"] > by_method["identity"]["sim"]
        assert "| ridge |" in markdown_table(result["rows"])
    assert len(list((demo.out / "results").glob("*.json"))) == len(SPLITS)
    for direction, _ in SPLITS:
        for method in TINY.methods:
            assert (demo.checkpoint(direction, method) / "model.safetensors").is_file()


def test_demo_report(demo: Demo) -> None:
    assert demo.report == demo.out / "report.html"
    page = demo.report.read_text()
    assert page.startswith("<!doctype html>") and page.endswith("</html>")
    for heading in ("The world", "World CLIP", "WorldBench", "Training curves"):
        assert f"<h2>{heading}</h2>" in page
    for direction, split in SPLITS:
        assert f"<h3>{direction} — {split}</h3>" in page
    for method in TINY.methods:
        assert f"<td>{method}</td>" in page
    # it opens with who led on what, explains its metrics, warns that tiny is a smoke test
    assert page.index("<h2>Summary</h2>") < page.index("<h2>The world</h2>")
    assert "Sim: <b>" in page and "ahead of" in page
    assert "<dt>FD</dt>" in page and "smoke test" in page
    assert "<a href='#worldbench'>WorldBench</a>" in page and "<h2>Stage times</h2>" in page
    assert '{"world"' not in page  # stage times are a table, not a JSON dump
    # ced-paper's short budget is stated with where its fair-budget figures are
    assert "<h3>Sim against FD (unit)</h3>" in page and "at a fair budget" in page
    assert re.search(r"text2image: \d+ s, [\d,]+ pairs", page)
    # Plots: bars, the frontier, 4 histograms, curves; world samples are embedded PNGs too.
    assert page.count("data:image/png;base64,") >= 7 + 12
    timings = json.loads((demo.out / "timings.json").read_text())
    assert {"world", "fit-encoder", "embed", "eval image2text novel"} <= set(timings)


def test_demo_resumes_without_redoing_anything(
    demo: Demo, capsys: pytest.CaptureFixture[str]
) -> None:
    timings = (demo.out / "timings.json").read_bytes()
    results = {p: p.stat().st_mtime_ns for p in (demo.out / "results").glob("*.json")}
    ckpt = demo.checkpoint("text2image", "ced") / "model.safetensors"
    ckpt_mtime = ckpt.stat().st_mtime_ns
    start = time.perf_counter()
    out = _run(capsys, ["demo", "--out", str(demo.out), "--preset", "tiny-generation"])
    seconds = time.perf_counter() - start
    assert f"report: {demo.report}" in out
    assert (demo.out / "timings.json").read_bytes() == timings
    assert {p: p.stat().st_mtime_ns for p in results} == results
    assert ckpt.stat().st_mtime_ns == ckpt_mtime
    assert seconds < max(15.0, demo.seconds / 3), (seconds, demo.seconds)


def test_an_interrupted_demo_stage_continues_from_its_checkpoint(
    demo: Demo, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A stage whose model was not written yet (stopped after its last checkpoint) resumes
    from that checkpoint instead of training again."""
    import shutil

    from modtrans.training import fit as fit_module

    out = tmp_path / "demo"
    shutil.copytree(demo.out, out)
    ckpt = out / "translators" / "text2image" / "ced"
    weights = (ckpt / "model.safetensors").read_bytes()
    for name in ("model.safetensors", "config.json"):
        (ckpt / name).unlink()
    steps = []
    real = fit_module.FitModule.training_step
    monkeypatch.setattr(fit_module.FitModule, "training_step",
                        lambda self, *a: steps.append(1) or real(self, *a))
    run_demo(out, TINY, progress=False)
    assert steps == [] and (ckpt / "model.safetensors").read_bytes() == weights


def test_report_verb_regenerates_the_page(
    demo: Demo, capsys: pytest.CaptureFixture[str]
) -> None:
    before = demo.report.read_text()
    demo.report.unlink()
    out = _run(capsys, ["report", str(demo.out)])
    assert str(demo.report) in out
    page = demo.report.read_text()
    assert "<h2>WorldBench</h2>" in page and "<h2>Generation (end to end)</h2>" in page
    # t2i and i2t per split, and the joint VAE's coherence
    generation_tables = 2 * len({split for _, split in SPLITS}) + 1
    summaries = 2  # the world CLIP's figures and the stage times
    assert page.count("<table>") == before.count("<table>") == (
        len(SPLITS) + generation_tables + summaries)
    assert "Prompts → samples" in page and "Images → captions" in page
    assert "Joint samples" in page
    assert "route draws 2 images per prompt" in page


def test_tiny_demo_evaluates_generation_end_to_end(demo: Demo) -> None:
    import json

    results = json.loads((demo.out / "e2e" / "results.json").read_text())
    assert set(results["text_to_image"]) == set(results["image_to_text"]) == {"test", "novel"}
    for routes in results["text_to_image"].values():
        vae = {"ced", "ced-mean", "ridge", "direct", "oracle", "reconstruction", "ced-rerank",
               "ced-mean-rerank", "ridge-rerank", "direct-rerank"}
        assert set(routes) == vae | {f"tokens-{r}" for r in vae} | {
            "lverse", "lverse-reconstruction", "lverse-rerank", "joint", "real"}
        for name, route in routes.items():
            assert name == "real" or route["fd"] >= 0
            for scores in route["by_objects"].values():
                assert 0 <= scores["recall"] <= 1 and 0 <= scores["hallucination"] <= 1
    for routes in results["image_to_text"].values():
        assert set(routes) == {"ced", "ced-capdec-paper", "ridge", "clipcap", "lverse", "joint"}
        assert all(0 <= r["BLEU-1"] <= 1 and r["CIDEr"] >= 0 for r in routes.values())
    assert 0 <= results["recogniser"]["pairs_presence_accuracy"] <= 1
    probes = results["conditioning_probes"]
    assert set(probes) == {"image", "text"}
    for modality in probes.values():
        assert set(modality) <= {"all", "one_object"}
        assert all(0 <= modality[s][c]["accuracy"] <= 1 for s in modality for c in modality[s])
        assert modality["all"]["main_colour"]["n_val"] > modality.get("one_object", {}).get(
            "main_colour", {}).get("n_val", 0)
    from PIL import Image

    grid = Image.open(demo.out / "e2e" / "text2image.png")
    n_prompts = len(results["examples"]["prompts"])
    assert grid.size == (138 * 66 + 2, n_prompts * 66 + 2)  # 6 samples × 23 routes per row
    assert {"augvae_ml", "augvae", "biart", "tokenizer", "token_image",
            "token_text", "joint"} <= set(results["training"])
    captions = json.loads((demo.out / "e2e" / "image2text.json").read_text())["captions"]
    assert len(captions["lverse"]) == len(captions["clipcap"]) == len(captions["joint"])
    coherence = results["joint_coherence"]
    assert set(coherence) == {"joint", "random_pairing"}
    assert all(0 <= v["colours_found"] <= 1 for v in coherence.values()
               if v["colours_n"])


def test_e2e_reuses_a_trained_decoder_only_with_the_same_options(demo: Demo) -> None:
    from modtrans.demo import PRESETS
    from modtrans.eval.endtoend import EndToEndConfig, train_models

    generation = PRESETS["tiny-generation"].generation
    weights = sorted((demo.out / "e2e").glob("*/*.safetensors"))
    before = {p: p.stat().st_mtime_ns for p in weights}
    summaries = train_models(demo.out, EndToEndConfig.from_dict(generation), progress=False)
    assert summaries["capdec"]["mode"] == "capdec"
    assert len(weights) >= 5 and {p: p.stat().st_mtime_ns for p in weights} == before
    changed = {**generation, "capdec": {**generation["capdec"], "noise_variance": 0.5},
               "vae_text": {**generation["vae_text"], "prior": {
                   **generation["vae_text"]["prior"], "steps": 7}}}
    with pytest.raises(ValueError, match=r"e2e/vae_text was trained with other options than "
                                         r"asked for now \(prior.steps: 4 → 7\)"):
        train_models(demo.out, EndToEndConfig.from_dict(changed), progress=False)
    changed["vae_text"] = generation["vae_text"]
    with pytest.raises(ValueError, match=r"e2e/capdec .*\(noise_variance: 0.0013 → 0.5\)"):
        train_models(demo.out, EndToEndConfig.from_dict(changed), progress=False)
    biart = {**generation, "biart": {**generation["biart"], "layers": 2}}
    with pytest.raises(ValueError, match=r"e2e/biart .*\(layers: 1 → 2\)"):
        train_models(demo.out, EndToEndConfig.from_dict(biart), progress=False)
    judge = {**generation, "recogniser": {**generation["recogniser"], "epochs": 2}}
    with pytest.raises(ValueError, match=r"e2e/recogniser .*\(epochs: 1 → 2\)"):
        train_models(demo.out, EndToEndConfig.from_dict(judge), progress=False)


def test_report_verb_missing_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _error(capsys, ["report", str(tmp_path / "none")], "does not exist", "modtrans demo")


def test_demo_verb_unknown_preset(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _error(capsys, ["demo", "--out", str(tmp_path), "--preset", "huge"], "'huge'", "tiny")
    assert not list(tmp_path.iterdir())


# --- train, eval, translate on the demo's store --------------------------------------------


def test_train_then_eval(
    demo: Demo, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ckpt = tmp_path / "mlp"
    argv = ["train", "--data", str(demo.store), "--direction", "image2text", "--method", "mlp",
            "--out", str(ckpt), "--param", "width=16", "--param", "loss=mse", "--epochs", "2",
            "--batch-size", "128", "--accelerator", "cpu"]  # fmt: skip
    info = json.loads(_run(capsys, argv))
    assert info["method"] == "mlp" and info["direction"] == "image2text"
    assert info["epochs"] == 2 and info["steps"] > 0
    config = saved_options(ckpt)
    store = EmbeddingStore(demo.store / "train")
    assert config["params"]["width"] == 16 and config["params"]["loss"] == "mse"
    assert config["image_encoder"] == config["text_encoder"] == store.image_encoder
    train_info = json.loads((ckpt / "summary.json").read_text())
    assert train_info["train_config"]["batch_size"] == 128

    out = tmp_path / "eval.json"
    argv = ["eval", str(ckpt), "--data", str(demo.store), "--split", "novel", "--max-images",
            "10", "--n-samples", "2", "--out", str(out)]  # fmt: skip
    result = json.loads(_run(capsys, argv))
    assert result["method"] == "mlp" and result["split"] == "novel"
    assert result["n_queries"] == min(10, EmbeddingStore(demo.store / "novel").n_images)
    assert result["zero_shot"] is not None and result["diversity"] == 0.0
    assert json.loads(out.read_text()) == result
    assert "| mlp |" in out.with_suffix(".md").read_text()


def test_train_bad_option(demo: Demo, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["train", "--data", str(demo.store), "--direction", "text2image", "--method", "ridge",
            "--out", str(tmp_path / "r"), "--param", "lambda=1"]  # fmt: skip
    _error(capsys, argv, "'lambda'", "lambdas")
    _error(capsys, [*argv[:-2], "--param", "lambdas"], "KEY=VALUE")


def test_eval_closed_form_method_by_name(demo: Demo, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["eval", "ridge", "--direction", "text2image", "--data", str(demo.store),
            "--max-images", "10", "--n-samples", "1", "--no-zero-shot"]  # fmt: skip
    result = json.loads(_run(capsys, argv))
    assert result["method"] == "ridge" and result["direction"] == "text2image"
    assert result["split"] == "test" and "zero_shot" not in result  # held out by default
    assert 0 <= result["R@1"] <= 1
    _error(capsys, argv[:2] + argv[4:], "--direction")


def test_eval_warns_on_the_split_that_chose_the_hyperparameters(
    demo: Demo, capsys: pytest.CaptureFixture[str]
) -> None:
    from modtrans.artefacts import read_summary

    ckpt = demo.checkpoint("text2image", "ridge")
    assert read_summary(ckpt)["selected_on"] == "val"
    warning = "chose this translator's hyperparameters"
    for split, warned in (("val", True), ("test", False)):
        assert main(["eval", str(ckpt), "--data", str(demo.store), "--split", split,
                     "--max-images", "5", "--no-zero-shot"]) == 0
        err = " ".join(capsys.readouterr().err.split())  # the log, wrapped to the terminal
        assert (warning in err and "--split test" in err) == warned, err


def test_eval_passes_sampler_options(
    demo: Demo, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import modtrans.eval.worldbench as worldbench

    seen: list[SamplerOptions] = []
    real = worldbench.evaluate_translator

    def spy(model: Any, split: Any, *, options: Any, zero_shot: Any = None) -> dict:
        seen.append(options.sampling)
        return real(model, split, options=options, zero_shot=zero_shot)

    monkeypatch.setattr(worldbench, "evaluate_translator", spy)
    argv = ["eval", str(demo.checkpoint("text2image", "ced")), "--data", str(demo.store),
            "--max-images", "5", "--n-samples", "1", "--no-zero-shot", "--steps", "2",
            "--sampler", "ddim"]  # fmt: skip
    result = json.loads(_run(capsys, [*argv, "--guidance", "0"]))
    assert result["method"] == "ced" and result["diversity"] > 0
    assert seen == [SamplerOptions(steps=2, guidance=0.0, sampler="ddim")]  # 0 is a valid scale
    _error(capsys, [*argv[:-2], "--sampler", "nope"], "unknown sampler 'nope'")


def test_eval_trainable_method_by_name(demo: Demo, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["eval", "ced", "--direction", "text2image", "--data", str(demo.store)]
    _error(capsys, argv, "ced needs training", "modtrans train")
    _error(capsys, ["eval", "runs/no-such", "--direction", "text2image", "--data",
                    str(demo.store)],
           "'runs/no-such' is neither a checkpoint directory nor a method name", "ridge")


def test_eval_checkpoint_direction_mismatch(
    demo: Demo, capsys: pytest.CaptureFixture[str]
) -> None:
    ckpt = demo.checkpoint("text2image", "ridge")
    argv = ["eval", str(ckpt), "--data", str(demo.store), "--direction", "image2text"]
    _error(capsys, argv, "translates text2image, not image2text")


def _write_store(root: Path, dim: int, encoder: str) -> None:
    """A tiny test store of 3 images with 2 captions each."""
    rng = np.random.default_rng(0)
    with StoreWriter(root, split="test", image_encoder=encoder, text_encoder=encoder,
                     image_dim=dim, text_dim=dim) as writer:  # fmt: skip
        writer.write_shard(
            rng.standard_normal((3, dim)).astype(np.float32),
            rng.standard_normal((6, dim)).astype(np.float32),
            [{"image_id": i, "image_path": f"{i}.png"} for i in range(3)],
            [{"caption": f"caption {j}", "image_index": j // 2} for j in range(6)],
        )


@pytest.mark.parametrize(
    ("dim", "encoder", "needle"),
    [(8, "unknown", "was trained on other encoders"),
     (32, "hf:somewhere-else", "embed the data with the same encoders")],
    ids=["other-dims", "other-encoder"],
)
def test_eval_checkpoint_on_a_foreign_store(
    dim: int, encoder: str, needle: str, demo: Demo, tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    _write_store(tmp_path / "store", dim, encoder)
    ckpt = demo.checkpoint("text2image", "ridge")
    _error(capsys, ["eval", str(ckpt), "--data", str(tmp_path / "store")], needle)


def test_translate_texts(demo: Demo, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    texts = ["a red circle", "a blue square on a striped background"]
    out = tmp_path / "z.npy"
    argv = ["translate", str(demo.checkpoint("text2image", "ced")), "--text", texts[0],
            "--text", texts[1], "--out", str(out), "--gallery", str(demo.store), "--k", "3",
            "--n-samples", "2"]  # fmt: skip
    stdout = _run(capsys, argv)
    z = np.load(out)
    dim = EmbeddingStore(demo.store / "val").image_dim
    assert z.shape == (2, dim) and z.dtype == np.float32 and np.isfinite(z).all()
    assert f"wrote (2, {dim}) embeddings" in stdout
    lines = stdout.splitlines()
    for text in texts:
        i = lines.index(f"{text}:")
        neighbours = lines[i + 1 : i + 4]
        assert all(line.startswith("  ") and line.strip().endswith(".png") for line in neighbours)
        scores = [float(line.split()[0]) for line in neighbours]
        assert scores == sorted(scores, reverse=True)

    # The same seed gives the same embeddings.
    _run(capsys, [*argv[:6], "--out", str(tmp_path / "again.npy"), "--n-samples", "2"])
    np.testing.assert_array_equal(np.load(tmp_path / "again.npy"), z)


def test_same_query_same_seed_same_answer_in_every_verb(
    demo: Demo, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A query translated alone, among other queries (translate), and searched through the
    translator (retrieve) gets the same translation, so the same neighbours and scores."""
    ckpt, query = str(demo.checkpoint("text2image", "ced")), "a red circle"
    common = ["--mode", "sample", "--seed", "3"]
    _run(capsys, ["translate", ckpt, "--text", query, "--out", str(tmp_path / "alone.npy"),
                  *common])
    _run(capsys, ["translate", ckpt, "--text", "two blue stars", "--text", query, "--text",
                  "a green square", "--out", str(tmp_path / "among.npy"), *common])
    alone, among = np.load(tmp_path / "alone.npy"), np.load(tmp_path / "among.npy")
    np.testing.assert_allclose(alone[0], among[1], atol=1e-5)
    lines = _run(capsys, ["translate", ckpt, "--text", query, "--gallery", str(demo.store),
                          "-k", "3", *common]).splitlines()
    translated = [float(line.split()[0]) for line in lines[1:4]]
    _run(capsys, ["index", str(demo.store), "--split", "val", "--kind", "flat", "--out",
                  str(tmp_path / "ix")])
    results = json.loads(_run(capsys, ["retrieve", str(tmp_path / "ix"), "--text", "two blue "
                                       "stars", "--text", query, "--translator", ckpt, "-k",
                                       "3", "--json", *common]))
    retrieved = [hit["score"] for hit in results[1]["results"]]
    np.testing.assert_allclose(retrieved, translated, atol=2e-3)  # translate prints 3 digits


def test_translate_sampler_options(
    demo: Demo, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["translate", str(demo.checkpoint("text2image", "ced")), "--text", "a red circle",
            "--mode", "sample"]  # fmt: skip  (the mean may be the map alone: s = 0)
    outputs = {}
    for name, extra in (("saved", []), ("one", ["--steps", "1"]), ("again", ["--steps", "1"]),
                        ("ddim", ["--sampler", "ddim", "--eta", "0.5", "--guidance", "2"])):
        _run(capsys, [*argv, "--out", str(tmp_path / f"{name}.npy"), *extra])
        outputs[name] = np.load(tmp_path / f"{name}.npy")
    np.testing.assert_array_equal(outputs["one"], outputs["again"])
    assert not np.array_equal(outputs["one"], outputs["saved"])
    assert not np.array_equal(outputs["ddim"], outputs["saved"])
    _error(capsys, [*argv, "--steps", "0"], "steps must be an int >= 1", "--steps")
    _error(capsys, [*argv, "--sampler", "nope"], "unknown sampler 'nope'", "ddim")


def test_translate_image_with_a_text2image_checkpoint(
    demo: Demo, capsys: pytest.CaptureFixture[str]
) -> None:
    image = next((demo.out / "world" / "val" / "images").glob("*.png"))
    argv = ["translate", str(demo.checkpoint("text2image", "ridge")), "--image", str(image)]
    _error(capsys, argv, "translates text to image", "--text")


def test_translate_image2text(demo: Demo, tmp_path: Path, capsys: pytest.CaptureFixture[str]
                              ) -> None:
    images = sorted((demo.out / "world" / "val" / "images").glob("*.png"))[:2]
    argv = ["translate", str(demo.checkpoint("image2text", "ridge")), "--image", str(images[0]),
            "--image", str(images[1]), "--gallery", str(demo.store), "--k", "2"]  # fmt: skip
    lines = _run(capsys, argv).splitlines()
    assert lines[0] == f"{images[0]}:" and len(lines) == 6
    _error(capsys, [*argv[:2], "--text", "a red circle"], "translates image to text", "--image")
    _error(capsys, [*argv[:2], "--image", str(tmp_path / "no.png")], "not found", "no.png")


def test_translate_missing_checkpoint(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _error(capsys, ["translate", str(tmp_path), "--text", "x"], "holds no translator")


def test_the_report_renders_in_a_browser(demo: Demo, tmp_path: Path) -> None:
    """Headless Chromium draws the page: a tall, non-blank screenshot."""
    import shutil
    import subprocess

    from PIL import Image

    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        pytest.skip("chromium is not installed (.ci/run installs it)")
    shot = tmp_path / "report.png"
    subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu",
                    "--disable-background-networking", "--disable-component-update",
                    "--no-first-run", f"--user-data-dir={tmp_path / 'profile'}",
                    "--window-size=1200,3000", f"--screenshot={shot}",
                    demo.report.resolve().as_uri()], check=True, capture_output=True,
                   timeout=120)
    with Image.open(shot) as im:
        pixels = im.convert("L").resize((120, 300))
        assert im.size == (1200, 3000)
    colours = set(pixels.getdata())
    assert len(colours) > 20, "the screenshot is (nearly) blank"
