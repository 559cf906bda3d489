"""Tests for the command line: help of every verb, world → embed → eval-encoder, errors."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest
import typer
from cli_helpers import assert_cli_error

import modtrans.cli
from modtrans.cli import main
from modtrans.data.store import EmbeddingStore
from modtrans.translators.base import list_translators, translator_class

VERBS = sorted(typer.main.get_command(modtrans.cli.app).commands)


def _json_documents(text: str) -> list[Any]:
    """Every JSON document printed one after another on stdout (nothing else allowed)."""
    decoder, docs, pos = json.JSONDecoder(), [], 0
    text = text.strip()
    while pos < len(text):
        doc, end = decoder.raw_decode(text, pos)
        docs.append(doc)
        pos = end
        while pos < len(text) and text[pos].isspace():
            pos += 1
    return docs


# --- help ----------------------------------------------------------------------------------


def test_expected_verbs_are_registered() -> None:
    assert {"world", "embed", "encoders", "fit-encoder", "eval-encoder"} <= set(VERBS)


def test_top_level_help(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert "Usage: modtrans" in out
    for verb in VERBS:
        assert verb in out


@pytest.mark.parametrize("verb", VERBS)
def test_verb_help(verb: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([verb, "--help"]) == 0
    out = capsys.readouterr().out
    assert f"Usage: modtrans {verb}" in out
    assert "--help" in out


def test_train_help_shows_the_defaults_train_uses() -> None:
    """The defaults `train --help` states are the ones it runs: each trainable method's own
    epochs and the Recipe's."""
    from modtrans.training.fit import Recipe

    command = typer.main.get_command(modtrans.cli.app).commands["train"]
    helps = {p.name: getattr(p, "help", None) for p in command.params}
    for name in list_translators():
        cls = translator_class(name)
        if cls.trainable:
            assert f"{name} {cls.default_epochs}" in helps["epochs"], name
    recipe = Recipe()
    for name in ("batch_size", "precision", "accelerator", "devices", "strategy", "logger",
                 "seed", "checkpoint_every"):
        assert f"default: {getattr(recipe, name)})" in helps[name], name


#: Options that every verb taking them spells the same way.
SPELLINGS = {"out": {"--out", "-o"}, "k": {"--k", "-k"}, "n": {"--n", "-n"}, "seed": {"--seed"},
             "device": {"--device"}, "accelerator": {"--accelerator"}}


def test_one_spelling_per_option_across_verbs() -> None:
    for verb, command in typer.main.get_command(modtrans.cli.app).commands.items():
        for param in command.params:
            if param.name in SPELLINGS and getattr(param, "opts", None) and \
                    param.param_type_name == "option":
                assert set(param.opts) == SPELLINGS[param.name], (verb, param.opts)


def test_encoders_lists_kinds(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["encoders"]) == 0
    out = capsys.readouterr().out
    for kind in ("hf:", "sbert:", "open_clip:"):
        assert kind in out


def test_methods_lists_the_options_dataclasses(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["methods"]) == 0
    blocks: dict[str, list[str]] = {}
    for line in capsys.readouterr().out.splitlines():
        if line.startswith("  "):  # an option of the method above
            blocks[next(reversed(blocks))].append(line.strip())
        else:
            blocks[line.split(":")[0]] = []
    assert sorted(blocks) == list_translators()
    for method, lines in blocks.items():
        options_class = translator_class(method).options_class
        defaults = options_class().to_dict()
        assert lines == [f"{f.name}: {f.type} = {json.dumps(defaults[f.name])}"
                         for f in dataclasses.fields(options_class)]
    assert "steps: int = 10" in blocks["ced"] and "loss: str = \"cosine\"" in blocks["mlp"]
    assert blocks["identity"] == [] and "ridge_lambdas" not in str(blocks["ced-paper"])


def test_usage_errors_exit_2_without_traceback(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["embed", "--no-such-option"]) == 2
    err = capsys.readouterr().err
    assert "--no-such-option" in err and "Traceback" not in err
    assert main(["world"]) == 2
    assert "Missing argument" in capsys.readouterr().err
    assert main(["no-such-verb"]) == 2
    assert "no-such-verb" in capsys.readouterr().err


# --- world → embed → eval-encoder ----------------------------------------------------------


def test_world_embed_eval_end_to_end(
    tiny_clip: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    world, store = tmp_path / "world", tmp_path / "store"
    assert main(["world", str(world), "--n", "60", "--workers", "1"]) == 0
    (summary,) = _json_documents(capsys.readouterr().out)  # stdout holds the JSON only
    counts = summary["counts"]
    assert summary["n_images"] == 60 == sum(counts.values())
    assert (world / "world.json").is_file()

    assert main(["embed", str(world), "--out", str(store), "--encoder", tiny_clip.spec]) == 0
    summaries = _json_documents(capsys.readouterr().out)
    assert {s["split"] for s in summaries} == set(counts)
    for split, n in counts.items():
        opened = EmbeddingStore(store / split)
        assert opened.split == split
        assert opened.n_images == n and opened.n_captions == 5 * n
        assert opened.image_encoder == opened.text_encoder == tiny_clip.spec
        assert opened.image_dim == tiny_clip.config.projection_dim
        assert opened.dtype.name == "float16"
        assert "main_shape" in opened.image_metadata().column_names

    report_file = tmp_path / "report.json"
    argv = ["eval-encoder", str(store), "--n-items", "10", "--probe", "", "--out",
            str(report_file)]  # fmt: skip
    assert main(argv) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["n_images"] == min(10, counts["val"])
    assert set(report["text_to_image"]) >= {"R@1", "R@5", "MedR"}
    assert 0.0 <= report["text_to_image"]["R@1"] <= 1.0
    assert "probes" not in report
    assert json.loads(report_file.read_text()) == report


def test_embed_captions_file_and_resume(
    tiny_world: Path, tiny_clip: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    captions = tiny_world / "val" / "captions.json"
    store = tmp_path / "store"
    argv = ["embed", str(captions), "--out", str(store), "--encoder", tiny_clip.spec,
            "--split", "val", "--dtype", "float32", "--shard-size", "3"]  # fmt: skip
    assert main(argv) == 0
    (summary,) = _json_documents(capsys.readouterr().out)
    opened = EmbeddingStore(store)
    assert opened.split == "val" and opened.dtype.name == "float32"
    assert opened.n_images == summary["images_written"] > 0
    assert len(opened.manifest["shards"]) == -(-opened.n_images // 3)

    assert_cli_error(capsys, argv, str(store), "--resume")
    assert main([*argv, "--resume"]) == 0
    (again,) = _json_documents(capsys.readouterr().out)
    assert again["images_written"] == 0
    assert EmbeddingStore(store).n_images == opened.n_images


def test_embed_mixed_pair(
    tiny_world: Path, tiny_clip: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["embed", str(tiny_world), "--split", "val", "--out", str(tmp_path / "store"),
            "--image-encoder", tiny_clip.spec, "--text-encoder", "sbert:minilm"]  # fmt: skip
    assert main(argv) == 0
    capsys.readouterr()
    opened = EmbeddingStore(tmp_path / "store" / "val")
    assert opened.image_encoder == tiny_clip.spec and opened.text_encoder == "sbert:minilm"
    assert (opened.image_dim, opened.text_dim) == (tiny_clip.config.projection_dim, 384)


# --- errors --------------------------------------------------------------------------------


def test_unknown_encoder_spec(
    tiny_world: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["embed", str(tiny_world), "--out", str(tmp_path / "s"), "--encoder", "nope:x"]
    assert_cli_error(capsys, argv, "nope", "known kinds", "hf", "sbert")
    assert not (tmp_path / "s").exists()


def test_missing_model_dir(
    tiny_world: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "no-such-model"
    argv = ["embed", str(tiny_world), "--out", str(tmp_path / "s"), "--encoder", f"hf:{missing}"]
    assert_cli_error(capsys, argv, str(missing), "fit-encoder")


def test_embed_needs_an_encoder(
    tiny_world: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["embed", str(tiny_world), "--out", str(tmp_path / "s"), "--image-encoder", "hf:x"]
    assert_cli_error(capsys, argv, "--encoder")


@pytest.mark.parametrize("kind", ["absent", "empty_dir"])
def test_embed_source_neither_captions_nor_world(
    kind: str, tiny_clip: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = tmp_path / "source"
    if kind == "empty_dir":
        source.mkdir()
    argv = ["embed", str(source), "--out", str(tmp_path / "s"), "--encoder", tiny_clip.spec]
    assert_cli_error(capsys, argv, str(source), "modtrans world", "webdataset", ".txt captions")


@pytest.mark.parametrize(
    ("content", "needle"),
    [('{"images": []}', "not a COCO captions file"), ("not json at all", "not valid JSON")],
)
def test_embed_file_that_is_not_a_captions_file(
    content: str, needle: str, tiny_clip: Any, tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    source = tmp_path / "notes.json"
    source.write_text(content)
    argv = ["embed", str(source), "--out", str(tmp_path / "s"), "--encoder", tiny_clip.spec]
    assert_cli_error(capsys, argv, needle)


def test_embed_missing_split_of_world(
    tiny_world: Path, tiny_clip: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["embed", str(tiny_world), "--split", "nope", "--out", str(tmp_path / "s"),
            "--encoder", tiny_clip.spec]  # fmt: skip
    assert_cli_error(capsys, argv, "'nope'", "train")


@pytest.mark.parametrize(
    ("holdout", "needle"),
    [
        ("green", "'green'"),
        ("green star,red", "'red'"),
        ("black star", "black"),
        ("red blob", "blob"),
    ],
)
def test_world_bad_holdout(
    holdout: str, needle: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "world"
    argv = ["world", str(out), "--n", "10", "--workers", "1", "--holdout", holdout]
    assert_cli_error(capsys, argv, needle)
    assert not (out / "world.json").exists()


def test_world_refuses_non_empty_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "keep.txt").write_text("mine")
    assert_cli_error(capsys, ["world", str(tmp_path), "--n", "10", "--workers", "1"], "not empty")
    assert (tmp_path / "keep.txt").read_text() == "mine"


def test_fit_encoder_missing_world(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["fit-encoder", str(tmp_path / "no-world"), "--out", str(tmp_path / "clip")]
    assert_cli_error(capsys, argv, "modtrans world")
    assert not (tmp_path / "clip").exists()


def test_eval_encoder_missing_store(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert_cli_error(capsys, ["eval-encoder", str(tmp_path / "none")], "modtrans embed")
