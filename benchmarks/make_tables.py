"""Render the results from the JSON files in ``benchmarks/results/``: every table into the
docs' ``docs/results.md`` (the whole page), the headline table into README.md between
``<!-- BEGIN RESULTS -->`` and ``<!-- END RESULTS -->``. Nothing in either is typed by hand.
Usage: ``python benchmarks/make_tables.py``.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path

from _common import RESULTS

from modtrans.eval.worldbench import markdown_table
from modtrans.io import atomic_open
from modtrans.world.recogniser import describe_report

ROOT = Path(__file__).resolve().parent.parent
README, RESULTS_PAGE = ROOT / "README.md", ROOT / "docs" / "results.md"
HEADLINE = ("method", "Sim", "R@1", "R@5", "MedR", "FD (unit)", "diversity")
BEGIN, END = "<!-- BEGIN RESULTS -->", "<!-- END RESULTS -->"


def _load(name: str) -> dict | None:
    """``benchmarks/results/<name>.json`` with its file name under ``"file"``, or None."""
    path = RESULTS / f"{name}.json"
    return {**json.loads(path.read_text()), "file": path.name} if path.is_file() else None


def _source(result: dict) -> str:
    m = result["machine"]
    return (f"*`benchmarks/results/{result['file']}`, commit "
            f"{result['git_commit'][:8]}, {m.get('gpu') or str(m['cpu_count']) + ' CPU cores'}, "
            f"{result['date'][:10]}.*")


def world_section() -> list[str]:
    r = _load("world_throughput")
    if not r:
        return []
    f = r["figures"]
    return ["### World generator", "",
            f"{f.get('n_images', r['config'].get('world', {}).get('n_images'))} images in "
            f"{f['seconds']:.1f} s: **{f['images_per_s']:.0f} images/s**.", "", _source(r), ""]


VARIANTS = {"": "",
            "meanpool": " — variant: CNN tower, plain mean pool (an earlier default)",
            "cnn": " — variant: wider CNN tower (32–64–128–128), warm-started, plain mean pool",
            "vit": " — variant: ViT tower, no warm start (the first default)"}


def clip_section(tag: str = "") -> list[str]:
    r = _load("world_clip" + (f"_{tag}" if tag else ""))
    if not r:
        return []
    rep, train = r["figures"]["report"], r["figures"]["training"]
    rows = ["| | R@1 | R@5 | R@10 | MedR |", "|---|---|---|---|---|"]
    for key, title in (("text_to_image", "text → image"), ("image_to_text", "image → text")):
        m = rep[key]
        rows.append(f"| {title} | {m['R@1']:.3f} | {m['R@5']:.3f} | {m['R@10']:.3f} | "
                    f"{m['MedR']:.1f} |")
    probes = ", ".join(f"{k} {v['accuracy']:.3f} (chance {v['chance']:.3f})"
                       for k, v in rep.get("probes", {}).items())
    warm = train.get("warm_start_epochs", 0)
    warm_text = (f" after {warm} warm-start epochs ({train['warm_start_seconds']:.0f} s)"
                 if warm else "")
    return [f"### World CLIP{VARIANTS[tag]}", "",
            f"Trained on {train['pairs']} images for {train['epochs']} contrastive epochs in "
            f"{train['seconds']:.0f} s{warm_text}. Retrieval among {rep['n_images']} val "
            f"images and their {rep['n_captions']} captions:", "", *rows, "",
            f"Modality gap (mean cosine of paired raw embeddings): "
            f"{rep.get('modality_gap_cosine', float('nan')):.3f}. Linear probes of the image "
            f"embedding (largest object): {probes}.", "", _source(r), ""]


def worldbench_section(tag: str = "") -> list[str]:
    r = _load("worldbench" + (f"_{tag}" if tag else ""))
    if not r:
        return []
    out = [f"### WorldBench{VARIANTS[tag]}", "",
           "Mean mode (average of draws) for Sim, cosine suite and retrieval; one draw for FD "
           "and diversity. FD (unit): the FD of unit vectors (– where the run predates it). "
           "Queries: every caption (text → image) or every image (image → text) of the "
           "evaluated images.", ""]
    order = {"text2image": 0, "image2text": 1, "val": 0, "test": 1, "novel": 2}
    tables = sorted(r["figures"]["tables"],
                    key=lambda t: (order.get(t["direction"], 9), order.get(t["split"], 9)))
    for table in tables:
        out += [f"**{table['direction']} — {table['split']}**", "",
                markdown_table(table["rows"]), ""]
    timings = r["figures"]["timings_s"]
    top = sorted(timings.items(), key=lambda kv: -kv[1])[:4]
    params, train = r["config"]["method_params"], r["config"]["method_train"]
    trained = r["figures"]["train"]
    epochs = {m: {"epochs": info["train_config"]["epochs"]} for key, info in trained.items()
              if "train_config" in info and "steps" in info
              for m in [key.split("/", 1)[1]]}  # what ran, defaults included
    settings = "; ".join(
        f"{m}: " + ", ".join(f"{k} {v}" for k, v in {**params.get(m, {}), **epochs.get(m, {}),
                                                     **train.get(m, {})}.items())
        for m in r["config"]["methods"] if m in params or m in train or m in epochs)
    out += [f"The demo pipeline's stages (as timed in `timings.json`; a resumed run keeps the "
            f"earlier stages' times) took **{sum(timings.values()):.0f} s** in all "
            f"(largest: {', '.join(f'{k} {v:.0f} s' for k, v in top)}). Per-method settings: "
            f"{settings}.", "", _source(r), ""]
    return out


def mean_map_section() -> list[str]:
    r = _load("mean_map")
    if not r:
        return []
    variants = list(r["config"]["variants"])
    head = ["store", "direction", "split", *(f"Sim {v}" for v in variants),
            *(f"R@1 {v}" for v in variants)]
    rows = [" | ".join(head), " | ".join("---" for _ in head)]
    for store, figures in r["figures"].items():
        for table in figures["tables"]:
            by = {row["variant"]: row for row in table["rows"]}
            rows.append(" | ".join([store, table["direction"], table["split"],
                                    *(f"{by[v]['sim']:.4f}" for v in variants),
                                    *(f"{by[v]['R@1']:.3f}" for v in variants)]))
    out = ["### `ced`'s mean map: ridge or ridge + MLP", "",
           f"`ced` with `mean_map` ridge (the default) against `mean_map` mlp (ridge plus an "
           f"MLP correction trained jointly), beside the ridge and MLP regressions; mean of "
           f"{r['config']['n_samples']} draws, {r['config']['eval_images']} images per split. "
           "`minilm-text`: the world CLIP's images with all-MiniLM-L6-v2 captions.", "",
           *(f"| {row} |" for row in rows), ""]
    draws = [(store, table, row) for store, figures in r["figures"].items()
             for table in figures["tables"] for row in table["rows"] if "sim_by_draws" in row]
    if draws:
        keys = list(draws[0][2]["sim_by_draws"])
        head = ["store", "direction", "split", "variant",
                *("Sim of the map alone" if k == "map" else f"Sim, mean of {k}" for k in keys)]
        out += ["Where `ced`'s Sim goes: its mean term alone, and the mean of more draws.", "",
                "| " + " | ".join(head) + " |", "|" + "---|" * len(head),
                *("| " + " | ".join([store, table["direction"], table["split"], row["variant"],
                                     *(f"{row['sim_by_draws'][k]:.4f}" for k in keys)]) + " |"
                  for store, table, row in draws), ""]
    return [*out, _source(r), ""]


BUDGET_METHODS = ("ridge", "mlp", "ced", "ced-paper")
FRONTIER_ROWS = ("ridge", "mlp", "ced", "ced, s=1", "ced-paper")
#: Pairs the seed's own code had seen after 300 s (349 steps of 256), issue-side measurement.
SEED_CODE_PAIRS, SEED_CODE_VAL_SIM = 349 * 256, 0.711


def _at(curve: list[dict], key: str, value: float) -> dict | None:
    """The last curve point with ``key`` ≤ ``value`` (None before the first)."""
    points = [p for p in curve if p[key] <= value]
    return points[-1] if points else None


def _interpolated(curve: list[dict], key: str, value: float) -> float | None:
    """val Sim at ``key`` = ``value``, linear between the curve points around it."""
    for a, b in itertools.pairwise(curve):
        if a[key] <= value <= b[key]:
            w = (value - a[key]) / (b[key] - a[key])
            return a["val_sim"] + w * (b["val_sim"] - a["val_sim"])
    return None


def budget_plots(r: dict) -> list[str]:
    """Draw the learning curves and the frontier of ``ced_budget.json`` into docs/img/."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    f = r["figures"]
    fig, axes = plt.subplots(2, 2, figsize=(10, 7), constrained_layout=True)
    for row, direction in zip(axes, ("text2image", "image2text"), strict=True):
        for ax, key, label in zip(row, ("seconds", "pairs"), ("training seconds", "pairs seen"),
                                  strict=True):
            for method in ("ced-paper", "ced", "mlp"):
                curve = f[direction][method]["curve"]
                ax.plot([p[key] for p in curve], [p["val_sim"] for p in curve], marker=".",
                        label=method)
            ax.axhline(f[direction]["ridge"]["final"]["test"]["sim"], color="grey", ls=":",
                       label="ridge (test)")
            ax.set(xscale="log", xlabel=label, ylabel="val Sim", title=direction)
            ax.legend(fontsize=8)
    fig.savefig(ROOT / "docs" / "img" / "ced_budget_curves.png", dpi=90)
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(7, 5), constrained_layout=True)
    rows = f["frontier"]
    for method in FRONTIER_ROWS:
        for g in sorted({row.get("guidance") for row in rows if row["method"] == method},
                        key=lambda x: x or 0):
            pts = [row for row in rows if row["method"] == method and row.get("guidance") == g]
            name = method if g is None else f"{method}, guidance {g:g}"
            ax.plot([p["fd_unit_mean"] for p in pts], [p["sim"] for p in pts], marker="o",
                    label=name)
            for p in pts:
                if "K" in p:
                    ax.annotate(f"K={p['K']}", (p["fd_unit_mean"], p["sim"]), fontsize=6)
    ax.set(xscale="log", xlabel="FD (unit) of the mean-mode outputs", ylabel="Sim (mean mode)",
           title="text → image, test: Sim against FD across K and guidance")
    ax.legend(fontsize=7)
    fig.savefig(ROOT / "docs" / "img" / "ced_budget_frontier.png", dpi=90)
    plt.close(fig)
    return ["![Learning curves](img/ced_budget_curves.png)", "",
            "![Frontier](img/ced_budget_frontier.png)", ""]


def ced_budget_section() -> list[str]:
    r = _load("ced_budget")
    if not r:
        return []
    f, c = r["figures"], r["config"]
    size = c["ced_paper"]
    out = ["### The seed's method at a fair budget", "",
           f"`ced-paper` as the seed's code runs it (batch Normalize, raw space, two guided "
           f"chains, L1 diffusion loss, 1·diffusion + 2·reconstruction, whole-batch condition "
           f"drop, the seed's MLP, clipping 1.0), shrunk from 10 × 2048 and 50 DDIM steps to "
           f"{size['depth'] + 1} × {size['width']} and {size['steps']} steps, trained for "
           f"{c['budget_minutes'][0]:g} min (text → image) and {c['budget_minutes'][1]:g} min "
           f"(image → text) at {c['threads']} torch thread on a machine shared with other "
           "jobs; `ced` and `mlp` at their defaults, stopped once val Sim stopped rising. "
           f"Test and novel: {c['eval_images']} images each, the WorldBench code.", ""]
    rows = []
    for direction in ("text2image", "image2text"):
        for method in BUDGET_METHODS:
            m = f[direction][method]
            final = m["final"]
            trained = ("closed form" if method == "ridge" else
                       f"{final['seconds']:.0f} s, {final['pairs']:,} pairs")
            rows.append([direction, method, trained,
                         *(f"{final[s][k]:.3f}" for s in ("test", "novel") for k in ("sim", "R@1")),
                         f"{final['test']['fd_unit']:.3f}"])
    out += _table(["direction", "method", "trained", "test Sim", "test R@1", "novel Sim",
                   "novel R@1", "FD (unit)"], rows)
    rows = []
    for direction in ("text2image", "image2text"):
        for method in ("ced-paper", "ced", "mlp"):
            m = f[direction][method]
            cells = []
            for b in c["budgets_s"]:
                snap = m["budgets"].get(str(b))
                if snap is None and m["final"]["seconds"] < b and method != "ced-paper":
                    snap = m["final"]  # stopped early: converged before this budget
                if snap is None and m["final"]["seconds"] >= b * 0.98:
                    snap = m["final"]
                cells.append("—" if snap is None else
                             f"{snap['test']['sim']:.3f} / {snap['test']['R@1']:.3f}")
            rows.append([direction, method, *cells])
    out += ["Equal wall-clock (test Sim / R@1 of the weights at each budget; a method stopped "
            "earlier holds its final figure; — : not trained that long):", "",
            *_table(["direction", "method", *(f"{b // 60} min" for b in c["budgets_s"])], rows)]
    marks = (5_000, 20_000, SEED_CODE_PAIRS, 200_000)
    rows = []
    for direction in ("text2image", "image2text"):
        for method in ("ced-paper", "ced", "mlp"):
            curve = f[direction][method]["curve"]
            pts = [_at(curve, "pairs", p) for p in marks]
            rows.append([direction, method, *("—" if p is None or p["pairs"] < 0.8 * mark
                                              else f"{p['val_sim']:.3f}"
                                              for p, mark in zip(pts, marks, strict=True))])
    out += ["Equal pairs seen (val Sim of the current weights, mean of 4 draws, "
            f"{c['val_pairs']} val pairs; the last curve point at or before each count):", "",
            *_table(["direction", "method", *(f"{p:,} pairs" for p in marks)], rows)]
    t2i = f["text2image"]
    paper = t2i["ced-paper"]["curve"]
    at300 = _interpolated(paper, "seconds", 300)
    at_pairs = _interpolated(paper, "pairs", SEED_CODE_PAIRS)
    best_paper = max(p["val_sim"] for p in paper)
    reach = next((p for p in t2i["ced"]["curve"] if p["val_sim"] >= best_paper), None)
    out += [f"Against the seed's own code (val Sim {SEED_CODE_VAL_SIM} after 300 s, "
            f"{SEED_CODE_PAIRS:,} pairs, 2 free threads), text → image: `ced-paper` here "
            f"reaches {at300:.3f} at 300 s of one core and {at_pairs:.3f} at "
            f"{SEED_CODE_PAIRS:,} pairs (interpolated between the curve's points); its best "
            f"val Sim is {best_paper:.3f}. " + (
                f"`ced` passes that at {reach['seconds']:.0f} s, "
                f"{reach['seconds'] / paper[-1]['seconds']:.3f} of `ced-paper`'s "
                f"{paper[-1]['seconds']:.0f} s." if reach else
                "`ced` never reaches it."), ""]
    frontier, shown = [row for row in f["frontier"] if "K" in row], []
    for row in frontier:  # one row where K changes nothing (ced's mean is its map: s = 0)
        same = [r for r in frontier if (r["method"], r["guidance"]) == (row["method"],
                                                                         row["guidance"])]
        if len({r["sim"] for r in same}) > 1:
            shown.append([str(row["K"]), row])
        elif row is same[0]:
            shown.append(["any", row])
    out += ["Frontier (text → image, test, "
            f"{c['frontier_images']} images): Sim and R@1 of the mean of K draws, FD (unit) of "
            "those means and of one draw, one-draw Sim and diversity; `ced, s=1` averages its "
            "draws as they are, where `ced` keeps the shrink val chose.", "",
            *_table(["method", "guidance", "K", "Sim", "R@1", "FD (unit) mean", "one-draw Sim",
                     "FD (unit) one draw", "diversity"],
                    [[row["method"], f"{row['guidance']:g}", k,
                      *(f"{row[key]:.3f}" for key in ("sim", "R@1", "fd_unit_mean",
                                                      "sim_sample", "fd_unit", "diversity"))]
                     for k, row in shown])]
    return [*out, *budget_plots(r), _source(r), ""]


def speed_section() -> list[str]:
    out = []
    for name in ("train_speed", "train_speed_cuda"):
        r = _load(name)
        if r:
            f = r["figures"]
            out += [f"### Training speed ({name})", "",
                    f"ced {f['ced_pairs_per_s']:.0f} pairs/s, ced-paper "
                    f"{f['ced-paper_pairs_per_s']:.1f} pairs/s (batch {r['config']['batch']}, "
                    f"{r['config']['depth']}×{r['config']['width']} MLP; ced-paper trains "
                    f"through {r['config']['ced_paper_sampler']}): ced is "
                    f"**{f['speedup_ced_over_ced_paper']:.0f}×** faster per pair.", "",
                    _source(r), ""]
    return out


def sampling_section() -> list[str]:
    out = []
    for name in ("sampling_cpu", "sampling_cuda"):
        r = _load(name)
        if not r:
            continue
        c, f = r["config"], r["figures"]
        gpu = c["device"] != "cpu"
        rows = ["| steps | " + ("embeddings/s | " if gpu else "")
                + "fraction of the FLOP roofline | speed-up of the fixed condition |",
                "|---|" + ("---|" if gpu else "") + "---|---|"]
        for steps in (10, 50):
            s = f[f"steps_{steps}"]
            rows.append(f"| {steps} | " + (f"{s['embeddings_per_s']:.0f} | " if gpu else "")
                        + f"{s['fraction_of_roofline']:.1%} | "
                        f"{s['speedup_of_fixed_condition']:.2f}× |")
        out += [f"### Sampling speed ({name})", "",
                f"{c['depth']}×{c['width']} MLP on {c['dim']}-d vectors, batch {c['batch']}, "
                f"{c['sampler']} with guidance {c['guidance']}, {c['dtype']}. The speed-up "
                "compares the sampler fixing the condition once per call "
                "(`ConditionalMLP.with_condition`) with the full forward at every step, in "
                "the same run" + ("." if gpu else "; CPU times are not quoted.") + "", "",
                *rows, "", _source(r), ""]
    return out


def embed_section() -> list[str]:
    out = []
    for name in ("embed_throughput", "embed_throughput_cuda"):
        r = _load(name)
        if r:
            f, c = r["figures"], r["config"]
            out += [f"### Embedding throughput ({name})", "",
                    f"{c['model']}, {c['n']} JPEGs ({c['jpeg_sizes']}), batch {c['batch_size']}, "
                    f"{c['workers']} workers, {c['dtype']} on {c['device']}: decode + preprocess "
                    f"{f['decode_images_per_s']:.0f} images/s, model "
                    f"{f['model_images_per_s']:.0f} images/s, end to end "
                    f"**{f['end_to_end_images_per_s']:.0f} images/s** (bound: {f['bound']}).",
                    "", _source(r), ""]
    return out


E2E_RUNS = {"": "End to end (e2e)",
            "budget": "End to end sized for 60 minutes, L-Verse included (e2e_budget)",
            "tokens": "The token decoder beside the VAE + latent prior (e2e_tokens)"}


def e2e_section(tag: str = "") -> list[str]:
    name = f"e2e_{tag}" if tag else "e2e"
    r = _load(name)
    if not r:
        return []
    f = r["figures"]
    judge = f["recogniser"]
    out = [f"### {E2E_RUNS[tag]}", ""]
    if "demo" in r["config"]:
        demo = r["config"]["demo"]
        out += [f"Every route trained and judged in one run on a world of {demo['n_images']} "
                f"images: configs `benchmarks/configs/{name}_demo.yaml` and "
                f"`benchmarks/configs/{name}.yaml`. Training costs (CPU minutes): "
                + ", ".join(f"{stage} {_minutes(summary):.1f}"
                            for stage, summary in f["training"].items()) + ".", ""]
    out += [f"The judge (attribute recogniser), per label, {describe_report(judge)}", ""]
    if "conditioning_probes" in f:
        probes = f["conditioning_probes"]

        def read(modality: str, column: str) -> str:
            one = probes[modality].get("one_object")
            return f"{probes[modality]['all'][column]['accuracy']:.3f}" + (
                f" (on images with one object {one[column]['accuracy']:.3f})" if one else "")

        out += ["What the image decoders are conditioned on, as linear probes read it on val: "
                f"the image embedding (`vae_image`) names the main shape at "
                f"{read('image', 'main_shape')} and the main colour at "
                f"{read('image', 'main_colour')}; the mean of an image's caption embeddings "
                f"(`vae_text` is trained on single captions) names the main shape at "
                f"{read('text', 'main_shape')} and the main colour at "
                f"{read('text', 'main_colour')}.", ""]
    refit = [name for name, summary in f["training"].items() if summary.get("prior_refit")]
    if refit:
        out += [f"The latent priors of {', '.join(refit)} were retrained (`modtrans "
                "fit-decoder image --prior-only`) on VAEs kept from an earlier run: "
                + ", ".join(f"{name} prior {f['training'][name]['prior_seconds']:.0f} s"
                            for name in refit) + ".", ""]
    lverse = "lverse" in next(iter(f["text_to_image"].values()))
    keys = ("colours_recall", "shapes_recall", "pairs_recall", "pairs_hallucination")
    for split, routes in f["text_to_image"].items():
        out += [f"**text → image — {split}** (prompts naming every object; recall of the "
                "named attributes the judge finds; FD in the world CLIP's image space; "
                "`ced` is one draw of the translator, `ced-mean` the mean of 8; "
                "`oracle` decodes the embedding of the image the prompt describes, "
                "`reconstruction` redraws that image from the VAE's posterior, `real` "
                "judges that image"
                + ("; `lverse`: BiART draws the image tokens from the prompt, "
                   "`lverse-reconstruction` is the AugVAE tokenizer's redrawing of the "
                   "prompt's image" if lverse else "")
                + ("; `tokens-<route>`: the same route with the token decoder in the VAE's "
                   "place, `tokens-reconstruction` its tokenizer's redrawing of the prompt's "
                   "image" if "tokens-oracle" in routes else "")
                + (f"; `-rerank`: the route draws {r['config']['candidates']} images per "
                   "prompt and the one the world CLIP scores highest against the prompt is "
                   "judged"
                   if r["config"].get("candidates", 1) > 1 else "") + ")", "",
                "| route | objects | " + " | ".join(k.replace("_", " ") for k in keys)
                + " | FD |", "|---|---|" + "---|" * (len(keys) + 1)]
        for route, v in routes.items():
            for group, scores in v["by_objects"].items():
                cells = " | ".join(f"{scores[k]:.3f}" for k in keys)
                fd = f"{v['fd']:.3f}" if "fd" in v else "—"
                out.append(f"| {route} | {group.split('_')[0]} | {cells} | {fd} |")
        out.append("")
    keys = ("BLEU-4", "METEOR", "ROUGE-L", "CIDEr", "colours_recall", "shapes_precision",
            "pairs_precision", "pairs_recall")
    for split, routes in f["image_to_text"].items():
        out += [f"**image → text — {split}** ({r['config']['images']} images; `ced` and "
                "ridge: the translator's mean of 8 draws into CapDec trained on caption-set "
                "means; "
                "`ced-capdec-paper`: the same `ced` translations into the paper's CapDec, "
                "trained on single captions; clipcap: the image embedding into ClipCap"
                + ("; lverse: BiART's greedy caption from the image's tokens" if lverse else "")
                + ")", "",
                "| route | " + " | ".join(k.replace("_", " ") for k in keys) + " |",
                "|---|" + "---|" * len(keys)]
        for route, v in routes.items():
            out.append(f"| {route} | " + " | ".join(f"{v[k]:.3f}" for k in keys) + " |")
        out.append("")
    out += [f"Samples: `benchmarks/results/{name}_text2image.png` (rows: "
            + "; ".join(f"“{p}”" for p in f.get("examples", {}).get("prompts", []))
            + "; columns: " + ", ".join(f.get("examples", {}).get("columns", []))
            + (f"); captions: `benchmarks/results/{name}_image2text.json`."
               if f["image_to_text"] else ")."), "", _source(r), ""]
    return out


def token_decoder_section() -> list[str]:
    return [*_token_decoder_part("token_decoder_cpu"), *_token_decoder_part("token_decoder_cuda")]


def _tokenizer_study(t: dict) -> list[str]:
    """The tokenizer study's table: what each tokenizer's reconstructions keep, per budget."""
    def three(by: dict, key: str) -> str:
        return " / ".join(f"{by[f'{n}_objects'][key]:.2f}" for n in (1, 2, 3))

    rows = [["real images", "—", "—", "—", "—", three(t["real"]["test"], "shapes_recall"),
             three(t["real"]["test"], "colours_recall"), three(t["real"]["novel"],
                                                               "shapes_recall")]]
    for name, v in t.items():
        if isinstance(v, dict) and "tokens" in v:
            rows.append([name.rsplit("_", 1)[0], str(v["tokens"]),
                         f"{v['images']:,} × {v['epochs']}", f"{v['seconds']:.0f}",
                         f"{v['val']['psnr']:.1f}", three(v["test"], "shapes_recall"),
                         three(v["test"], "colours_recall"), three(v["novel"], "shapes_recall")])
    return ["The tokenizer study (`--parts tokenizers`): in a world of "
            f"{t['world_images']:,} images, the judge's recall of the ground truth in each "
            "tokenizer's reconstructions of the test and novel images (1 / 2 / 3 objects), at "
            "the end-to-end benchmark's budget (images × epochs) and at a long one:", "",
            *_table(["tokenizer", "codes", "budget", "train s", "val PSNR",
                     "shapes, test", "colours, test", "shapes, novel"], rows)]


def _token_decoder_part(name: str) -> list[str]:
    r = _load(name)
    if not r:
        return []
    f = r["figures"]
    out = [f"### Token decoder ({name})", ""]
    if "speed" in f:
        sp = f["speed"]
        batches = sorted(int(k.split("_")[1]) for k in sp if k.startswith("batch_"))
        out += [f"Seconds per image of the token decoder ({sp['tokens']} codes, width "
                f"{sp['width']}, {sp['layers']} layers, guidance {sp['guidance']:g}, then the "
                "tokenizer's decoder) with the KV cache and without it, beside the VAE + "
                f"latent prior ({sp['prior_steps']} sampler steps), in one run at "
                f"{r['config']['threads']} thread(s)"
                + (" (the decoders trained by the end-to-end run)" if sp["trained"] else
                   " (random weights)") + ":", "",
                *_table(["images a call", "tokens, cache", "tokens, no cache", "cache speed-up",
                         "VAE + prior", "tokens / VAE"],
                        [[str(b), f"{c['tokens_cache']:.3f}", f"{c['tokens_no_cache']:.3f}",
                          f"{c['cache_speedup']:.1f}×", f"{c['vae_prior']:.3f}",
                          f"{c['tokens_over_vae']:.2f}"]
                         for b in batches for c in [sp[f"batch_{b}"]]])]
    if "ceiling" in f:
        c = f["ceiling"]
        probes = c["probe_main_shape_val"]
        columns = ("real", "reconstruction", "oracle", "tokens-reconstruction", "tokens-oracle")
        rows = [[split, group.split("_")[0], f"{probes[group]:.3f}",
                 *(f"{by[group][k]:.3f}" if k in by[group] else "—" for k in columns)]
                for split, by in c.items() if split != "probe_main_shape_val"
                for group in probes]
        out += ["The ceiling study: the val accuracy of a linear probe of the main shape in the "
                "image embeddings of images with n objects (what the decoders are handed), "
                "beside the judge's shape recall on the `oracle` route of each decoder (the "
                "prompt's own image embedding decoded), what each can draw at all "
                "(`reconstruction`: the VAE's posterior; `tokens-reconstruction`: the "
                "tokenizer) and the real images (from `e2e_tokens`):", "",
                *_table(["split", "objects", "probe", *columns], rows)]
    if "tokenizers" in f:
        out += _tokenizer_study(f["tokenizers"])
    return [*out, _source(r), ""]


def _minutes(summary: dict) -> float:
    """A model's training seconds (all its stages) in minutes."""
    return sum(v for k, v in summary.items()
               if k == "seconds" or (k.endswith("_seconds") and isinstance(v, int | float))) / 60


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    """A markdown table and the blank line after it."""
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header),
            *("| " + " | ".join(row) + " |" for row in rows), ""]


def scale_section() -> list[str]:
    r = _load("scale")
    if not r:
        return []
    done, c = r["figures"]["measurements"], r["config"]

    def cell(key: str, field: str, fmt: str = "{:.0f}") -> str:
        value = done.get(key, {}).get(field)
        return "—" if value is None else fmt.format(value)

    def index_cell(n: int, kind: str, field: str, fmt: str = "{:.0f}") -> str:
        value = done.get(f"index/index/{n}", {}).get(kind, {}).get(field)
        return "—" if value is None else fmt.format(value)

    rows = [[f"{n:,}",
             cell(f"train/mlp/{n}", "pairs_per_second"), cell(f"train/mlp/{n}", "peak_rss_mb"),
             cell(f"train/mlp/{n}", "prepare_seconds", "{:.1f}"),
             cell(f"train/ced/{n}", "pairs_per_second"), cell(f"train/ced/{n}", "peak_rss_mb"),
             cell(f"train/ced/{n}", "prepare_seconds", "{:.1f}"),
             cell(f"eval/mlp/{n}", "seconds", "{:.1f}"), cell(f"eval/mlp/{n}", "peak_rss_mb"),
             "/".join(index_cell(n, "ivfpq", key) for key in ("nlist", "nprobe", "rerank")),
             index_cell(n, "ivfpq", "build_seconds", "{:.0f}"),
             index_cell(n, "ivfpq", "index_mb", "{:.1f}"),
             index_cell(n, "ivfpq", "recall@10_vs_exact", "{:.3f}"),
             index_cell(n, "ivfpq", "qps"), index_cell(n, "ivfpq", "exact_qps"),
             index_cell(n, "hnsw", "recall@10_vs_exact", "{:.3f}"), index_cell(n, "hnsw", "qps")]
            for n in r["figures"]["sizes"]]
    return ["### Cost growth with the store (scale)", "",
            f"Synthetic paired {c['dim']}-d {c['dtype']} embeddings, one thread, each figure "
            f"from its own process. Training reads the store from its shards (`--stream`) for "
            f"{c['steps']} steps of {c['batch_size']} pairs; *passes* are the closed-form "
            "passes over the whole store before training (normaliser statistics; ced also "
            "the ridge moments). Eval: `evaluate_translator` on the store's first 1,000 images "
            "(the `eval` default). IVF-PQ: recall@10 and queries/s on "
            f"{c['queries']} held-out queries against exact search in the same process; "
            "*rerank* r: its best r·10 candidates re-scored exactly from the shards. RSS in "
            "MiB; — not measured (see the scaling guide).", "",
            *_table(["N", "mlp pairs/s", "mlp RSS", "mlp passes s", "ced pairs/s", "ced RSS",
                     "ced passes s", "eval s", "eval RSS", "IVF-PQ lists/probes/rerank",
                     "IVF-PQ build s", "IVF-PQ MiB",
                     "IVF-PQ recall@10", "IVF-PQ q/s", "exact q/s", "HNSW recall@10",
                     "HNSW q/s"], rows),
            "Plot: `benchmarks/results/scale.png`.", "", *_embed_engine_rows(done, c),
            *_kept(c), _source(r), ""]


def _kept(c: dict) -> list[str]:
    """Which measurements an earlier run of the benchmark made (``--keep-results``)."""
    kept = c.get("kept_from")
    if not kept:
        return []
    kinds = ", ".join(sorted({key.rsplit("/", 1)[0] for key in kept["keys"]}))
    return [f"{len(kept['keys'])} of these measurements ({kinds}) were made by the run at "
            f"commit {kept['git_commit'][:8]} ({kept['date'][:10]}) and kept; the rest at the "
            "commit below.", ""]


def _embed_engine_rows(done: dict, c: dict) -> list[str]:
    """The scale benchmark's embedding rows: the single-process job against the Ray job."""
    e = c.get("embed")
    runs = {m: done[f"embed/{m}/{e['images']}"] for m in e["methods"]
            if f"embed/{m}/{e['images']}" in done} if e else {}
    if not runs:
        return []
    names = {"local": "single process (`--engine local`, decoding in-process)",
             "ray-1": "Ray, 1 worker (`--engine ray --workers 1`)",
             "ray-2": "Ray, 2 workers (`--engine ray --workers 2`)"}
    base = runs.get("local", {}).get("images_per_second")
    rows = [[names[m], f"{v['images_per_second']:.1f}", f"{v['seconds']:.1f}",
             "—" if base is None else f"{v['images_per_second'] / base:.2f}×",
             str(v.get("units", "—")), f"{v['cluster_start_seconds']:.1f}"
             if "cluster_start_seconds" in v else "—",
             f"{v['load_average_before']:.1f} → {v['load_average_after']:.1f}"
             if "load_average_before" in v else "—"] for m, v in runs.items()]
    return [f"Embedding {e['images']} JPEGs (200–1000 px) through a CLIP ({e['model']} "
            "weights), "
            f"one thread per process, batches of {e['batch_size']}, shards (and Ray units) of "
            f"{e['shard_size']} images; seconds from the call's start to its end, the local "
            "cluster started before (its start beside); the machine's 1-minute load average "
            "before and after (other jobs shared its 2 cores).", "",
            *_table(["job", "images/s", "seconds", "vs single process", "units",
                     "cluster start s", "load"], rows)]


def lverse_section() -> list[str]:
    r = _load("lverse_cpu")
    if not r:
        return []
    f = r["figures"]
    out = ["### L-Verse (lverse_cpu)", ""]
    if "speed" in f:
        sp = f["speed"]
        batches = sorted({int(k.split("_")[1]) for k in sp if k.startswith("batch_")})
        out += [f"BiART text → image sampling ({sp['image_tokens']} image tokens, width "
                f"{sp['width']}, {sp['layers']} layers, then the tokenizer's decoder), seconds "
                "an image and image tokens per second, with the KV cache and without it "
                "(every step re-reads the sequence), in one run:", "",
                *_table(["images a call", "cache s/image", "cache tokens/s",
                         "no cache s/image", "no cache tokens/s", "speed-up"],
                        [[str(b), f"{c['seconds_per_image']:.3f}", f"{c['tokens_per_s']:.0f}",
                          f"{n['seconds_per_image']:.3f}", f"{n['tokens_per_s']:.0f}",
                          f"{sp[f'batch_{b}_cache_speedup']:.1f}×"]
                         for b in batches
                         for c, n in [(sp[f"batch_{b}_cache"], sp[f"batch_{b}_no_cache"])]])]
    if "tokenizer" in f:
        tk = f["tokenizer"]
        real = tk["real"]["judge"]
        rows = [["real images", *(f"{real[k]:.3f}" for k in JUDGED), "—", "—", "—", "—"]]
        rows += [[f"{name} ({t['variant']}, {'+'.join(map(str, t['levels']))} grid)",
                  *(f"{t['judge'][k]:.3f}" for k in JUDGED), f"{t['psnr']:.2f}",
                  f"{t['codebook_usage']:.3f}", f"{t['perplexity']:.0f}", f"{t['fd']:.3f}"]
                 for name in ("augvae", "augvae_ml") for t in [tk[name]]]
        out += [f"The tokenizers of `{r['config']['work']}` on {tk['val_images']} val images: "
                "the judge's recall of each image's shapes, colours and colour–shape pairs in "
                "its reconstruction (and in the image itself), PSNR, codebook usage and "
                "perplexity, FD in the world CLIP's image space:", "",
                *_table(["tokenizer", "shapes", "colours", "pairs", "PSNR dB", "usage",
                         "perplexity", "FD"], rows)]
    if "guidance" in f:
        g = f["guidance"]
        out += [f"Classifier-free guidance of BiART, {g['prompts']} val prompts naming every "
                "object, judged as in the end-to-end tables:", "",
                *_table(["guidance", "pairs recall", "shapes recall", "colours recall",
                         "pairs hallucination", "s/image"],
                        [[key.removeprefix("guidance_"),
                          *(f"{v[k]:.3f}" for k in ("pairs_recall", "shapes_recall",
                                                    "colours_recall", "pairs_hallucination",
                                                    "seconds_per_image"))]
                         for key, v in g.items() if key.startswith("guidance_")])]
    return [*out, _source(r), ""]


JUDGED = ("shapes_recall", "colours_recall", "pairs_recall")
#: The end-to-end routes the joint VAE's rows are set beside.
JOINT_BESIDE_T2I = ("ced", "ced-rerank", "direct", "lverse", "reconstruction", "real")
JOINT_BESIDE_I2T = ("ced", "clipcap", "lverse")
COHERENCE = ("colours", "colours_found", "shapes", "pairs", "pairs_found", "count")


def _cell(value: float) -> str:
    return "—" if value != value else f"{value:.3f}"  # NaN: nothing to score


def joint_vae_section(tag: str = "") -> list[str]:
    name = f"joint_vae_{tag}" if tag else "joint_vae"
    r = _load(name)
    if not r:
        return []
    f, c = r["figures"], r["config"]
    t, co = f["training"], f["coherence"]
    budget = None if tag else _load("e2e_budget")  # a variant's rows stand alone
    out = [f"### The joint image–caption VAE ({name})", "",
           f"`{c['joint_vae']['fusion']}` over a {c['joint_vae']['latent_dim']}-wide latent, "
           f"trained on the {t['images']} train images of `{c['work']}` for {t['epochs']} "
           f"epochs ({t['steps']} steps) in {t['seconds'] / 60:.1f} CPU minutes (config "
           f"`{c.get('config_file', 'benchmarks/configs/joint_vae.yaml')}`).", "",
           f"Coherence of {co['samples']} joint samples (image and caption decoded from one "
           "latent of the prior: "
           + (f"the mixture of {c['joint_vae']['prior_components']} Gaussians fitted to the "
              "train pairs' joint posterior means, and N(0, I) beside it"
              if c["joint_vae"].get("prior_components") else "N(0, I)")
           + "): the share of captions naming a colour (shape, colour–shape pair) whose "
           "every one the judge finds in the image; `found`: the share of all "
           "named that it finds; count: the share of captions stating a number of objects "
           "whose number the judge counts. `random pairing` scores the same captions against "
           "other samples' images; `real val pairs` scores each val image against its first "
           "real caption (what this judge lets agreement reach), `captioned val` against the "
           "joint VAE's caption of it:", "",
           *_table(["pairs", *(k.replace("_", " ") for k in COHERENCE)],
                   [[name, *(_cell(scores[k]) for k in COHERENCE)]
                    for name, scores in (("joint samples", co["prior"]["joint"]),
                                         ("random pairing", co["prior"]["random_pairing"]),
                                         *((("joint samples, N(0, I) prior",
                                             co["standard_prior"]["joint"]),
                                            ("random pairing, N(0, I) prior",
                                             co["standard_prior"]["random_pairing"]))
                                           if "standard_prior" in co else ()),
                                         ("real val pairs", co["real_pairs"]["joint"]),
                                         ("captioned val", co["captioned_val"]["joint"]))])]
    if "reconstruction" in f:
        rec = f["reconstruction"]
        out += [f"What the image decoder can draw at all: the share of {rec['images']} val "
                "images' shapes, colours and colour–shape pairs the judge finds in their "
                "redrawing from the mean of q(z | image), and in the images themselves:", "",
                *_table(["images", *(k.replace("_", " ") for k in JUDGED)],
                        [[name, *(_cell(rec[key][k]) for k in JUDGED)]
                         for name, key in (("redrawn", "redrawn"), ("real", "real"))])]
    keys = ("colours_recall", "shapes_recall", "pairs_recall", "pairs_hallucination")
    i2t_keys = ("BLEU-4", "CIDEr", "colours_recall", "pairs_precision", "pairs_recall")
    for split, rows in f["cross_modal"].items():
        beside = (budget or {}).get("figures", {})
        t2i = {k: v for k, v in beside.get("text_to_image", {}).get(split, {}).items()
               if k in JOINT_BESIDE_T2I}
        i2t = {k: v for k, v in beside.get("image_to_text", {}).get(split, {}).items()
               if k in JOINT_BESIDE_I2T}
        t2i["joint"], i2t["joint"] = rows["text_to_image"], rows["image_to_text"]
        source = " beside the routes of `e2e_budget.json` (same world, prompts and images)" \
            if budget else ""
        out += [f"**text → image — {split}**{source}: `joint` draws z from q(z | prompt) "
                "and decodes its image", "",
                *_table(["route", "objects", *(k.replace("_", " ") for k in keys), "FD"],
                        [[route, group.split("_")[0], *(_cell(scores[k]) for k in keys),
                          _cell(v["fd"]) if "fd" in v else "—"]
                         for route, v in t2i.items()
                         for group, scores in v["by_objects"].items()]),
                f"**image → text — {split}**{source}: `joint` captions the mean of "
                "q(z | image) greedily", "",
                *_table(["route", *(k.replace("_", " ") for k in i2t_keys)],
                        [[route, *(_cell(v[k]) for k in i2t_keys)] for route, v in i2t.items()])]
    out += [f"Samples: `benchmarks/results/{f['grid']['file']}` (row-major), captions: "
            + "; ".join(f"“{text}”" for text in f["grid"]["captions"]) + ".", "",
            _source(r), *([_source(budget)] if budget else []), ""]
    return out


def faults_section() -> list[str]:
    r = _load("faults")
    if not r:
        return []
    f = r["figures"]
    e, t = f["embed"], f["train"]
    return ["### Faults (randomized kill -9)", "",
            f"`benchmarks/faults.py`: `modtrans embed` killed {e['kills']} times over "
            f"{e['rounds']} runs, each resumed until it finished: {e['rows_lost']} rows lost, "
            f"{e['rows_duplicated']} duplicated, {e['stores_differing']} stores differing from "
            f"an uninterrupted run (largest embedding difference "
            f"{e['max_abs_embedding_difference']:.1e}); `modtrans train` killed {t['kills']} "
            f"times over {t['rounds']} runs: {t['checkpoints_unreadable']} unreadable and "
            f"{t['checkpoints_non_finite']} non-finite checkpoints of "
            f"{t['checkpoints_checked']} checked, {t['models_differing']} final models "
            "differing from an uninterrupted run's.", "", _source(r), ""]


def own_data_section() -> list[str]:
    r = _load("own_data")
    if not r:
        return []
    f = r["figures"]
    fitted, report = f["fit_encoder"], f["eval_encoder_val"]["output"]
    share = max(e["output"].get("unknown_token_share", 0.0) for e in f["embed"].values())
    rows = [[key.replace("/", " "), f"{v['test']['sim']:.3f}", f"{v['test']['R@1']:.3f}",
             f"{v['test']['R@5']:.3f}", f"{v['train_seconds']:.0f}"]
            for key, v in f["translators"].items()]
    return ["### Your own data (a foreign COCO-format dataset)", "",
            f"`benchmarks/bench_own_data.py`: {r['config']['n_images']:,} images with shapes, "
            "colours, backgrounds and caption grammar the world never has, through the CLI with "
            f"no manual step. `fit-encoder` ({fitted['seconds']:.0f} s, vocabulary "
            f"{fitted['output']['vocabulary']} words from the data's own captions), `embed` "
            f"(largest unknown-token share {share:.3f}); raw text → image retrieval on val: "
            f"R@5 {report['text_to_image']['R@5']:.3f}, **{f['raw_r5_over_chance']:.0f}× "
            f"chance** ({report['chance_text_to_image_R@5']:.4f}). Translators at `train`'s "
            "defaults, scored on test:", "",
            *_table(["direction / method", "Sim", "R@1", "R@5", "train s"], rows), "",
            _source(r), ""]


def serve_section() -> list[str]:
    r = _load("serve")
    if not r:
        return []
    f, c = r["figures"], r["config"]
    fields = {s["name"]: s for s in c["scenarios"]}
    rows = [[f"`{fields[name]['endpoint']}` ({name})", str(run["clients"]),
             f"{run['requests_per_s']:.0f}", f"{run['p50_ms']:.1f}", f"{run['p95_ms']:.1f}",
             f"{run['p99_ms']:.1f}", str(run["5xx"]), str(run["lost"])]
            for name, runs in f["runs"].items() for run in runs]
    stages = ("encode", "translate", "search", "decode", "http_and_framework", "total")
    breakdown = [[name, *(f"{v[s]:.1f}" if s in v else "—" for s in stages)]
                 for name, v in f["stage_latency_ms"].items()]
    ratios = ", ".join(f"{name} {ratio:.1f}×" for name, ratio in
                       f["throughput_ratio_16_vs_1"].items())
    batches = ", ".join(f"{op} {size:.1f}" for op, size in f["mean_batch_size"].items())
    preset = f"the `{c['preset']}` demo" if c.get("preset") else f"`{c['folder']}`"
    return ["### Serving (modtrans serve)", "",
            f"`benchmarks/bench_serve.py`: `modtrans serve` on {preset}, closed-loop clients "
            f"over 127.0.0.1 for {c['seconds_per_run']:.0f} s per row, on the same cores as "
            f"the server; the indexes hold "
            + ", ".join(f"{n} {size}" for n, size in f["index_size"].items())
            + f" items. Throughput at 16 clients over 1 client: {ratios} (micro-batching; "
            f"mean requests per model call over the run: {batches}). "
            f"{f['total_5xx']} answers with 5xx and {f['total_lost']} lost requests in all.",
            "", *_table(["endpoint", "clients", "req/s", "p50 ms", "p95 ms", "p99 ms", "5xx",
                         "lost"], rows),
            "Latency of one lone request by stage (medians of the server's own timings, ms; "
            "`http_and_framework`: the rest of the round trip):", "",
            *_table(["request", *stages], breakdown), _source(r), ""]


def image_decoder_section() -> list[str]:
    r = _load("image_decoder")
    if not r:
        return []
    f, c = r["figures"], r["config"]
    keys = ("colours_recall", "shapes_recall", "pairs_recall")
    out = ["### Image decoder variants (image_decoder)", "",
           f"Variants of the benchmark folder's `e2e/vae_image`, judged on {c['prompts']} "
           f"{c['split']} prompts per object count, the same prompts and seeds for every "
           "variant. A variant that sets only `prior` options keeps the VAE and retrains "
           "its latent prior; others train a whole decoder. `reconstruction` redraws the "
           "prompt's image from the VAE's posterior, `oracle` decodes the embedding of that "
           f"image, `ced` one translator draw, `ced-rerank` the best of {c['candidates']} "
           "`ced` draws by CLIP score, `real` judges the prompt's image.", "",
           "| variant | options | VAE val KL | prior val loss | route | objects | "
           + " | ".join(k.replace("_", " ") for k in keys) + " |",
           "|---|---|---|---|---|---|" + "---|" * len(keys)]

    def rows(cells: str, route: str, groups: dict) -> list[str]:
        return [f"| {cells} | {route} | {g.split('_')[0]} | "
                + " | ".join(f"{v[k]:.3f}" for k in keys) + " |" for g, v in groups.items()]

    for name, v in f["variants"].items():
        options = f"`{json.dumps(v['options'])}`" if v["options"] else "—"
        cells = f"{name} | {options} | {v['val_vae_kl']:.0f} | {v['val_prior_loss']:.3f}"
        for route, groups in v["routes"].items():
            out += rows(cells, route, groups)
    out += rows("— | — | — | —", "real", f["real"])
    return [*out, "", _source(r), ""]


def _reported(splits: list[str]) -> str:
    """The split a headline reports: test, held out from every choice (val in results
    measured before the demo moved to test, which then say so)."""
    return "test" if "test" in splits else "val"


def headline_section() -> list[str]:
    """The README's table: WorldBench on test, both directions, a few columns."""
    r = _load("worldbench")
    if not r:
        return []
    out = ["| direction | " + " | ".join(HEADLINE) + " |",
           "|---|" + "---|" * len(HEADLINE)]
    split = _reported([t["split"] for t in r["figures"]["tables"]])
    budget = _load("ced_budget")
    for table in sorted(r["figures"]["tables"], key=lambda t: t["direction"] != "text2image"):
        if table["split"] != split:
            continue
        rows = list(table["rows"])
        if budget and split == "test":  # the seed's method at a fair budget, beside the demo's
            final = budget["figures"][table["direction"]]["ced-paper"]["final"]
            rows.append({"method": f"ced-paper, {final['seconds'] / 60:.0f} min", **final["test"]})
        for row in rows:
            cells = {"method": row["method"], "Sim": row["sim"], "R@1": row["R@1"],
                     "R@5": row["R@5"], "MedR": row.get("MedR"), "FD (unit)": row.get("fd_unit"),
                     "diversity": row["diversity"]}
            out.append(f"| {table['direction']} | " + " | ".join(
                "–" if v is None else v if isinstance(v, str) else f"{v:.3f}"
                if k != "MedR" else f"{v:.1f}" for k, v in cells.items()) + " |")
    sources = [_source(r)] + ([_source(budget).replace("*`", "*`ced-paper, N min`: `", 1)]
                              if budget else [])
    return ["", *out, "", " ".join(sources)]


GENERATION_T2I = ("ced-rerank", "direct-rerank", "lverse-rerank", "lverse", "oracle",
                  "reconstruction", "lverse-reconstruction", "real")
GENERATION_I2T = ("ced", "clipcap", "lverse")


def generation_headline(tag: str = "budget") -> list[str]:
    """The README's generation table: L-Verse beside the translate-then-decode routes."""
    r = _load(f"e2e_{tag}")
    if not r:
        return []
    f = r["figures"]
    split = _reported(list(f["text_to_image"]))
    t2i, i2t = f["text_to_image"][split], f["image_to_text"][split]
    chose = "" if split == "test" else (" (measured before the benchmark moved to test: val "
                                        "also chose the translators' λ and γ)")
    out = ["", f"Generation on {split}{chose}, every route trained and judged in one run sized "
           "for 60 "
           f"minutes ({r['config']['demo']['n_images']}-image world): pairs recall is the share "
           "of the colour–shape pairs a prompt names that the judge finds; `-rerank` keeps the "
           f"best of {r['config']['candidates']} draws by CLIP score.", "",
           "| text → image | pairs recall 1 obj. | 2 obj. | 3 obj. | FD |", "|---|---|---|---|---|"]
    for route in (x for x in GENERATION_T2I if x in t2i):
        groups = t2i[route]["by_objects"]
        out.append(f"| {route} | " + " | ".join(
            f"{groups[f'{n}_objects']['pairs_recall']:.3f}" for n in (1, 2, 3)) + " | "
            + (f"{t2i[route]['fd']:.3f}" if "fd" in t2i[route] else "—") + " |")
    out += ["", "| image → text | BLEU-4 | CIDEr | pairs precision | pairs recall |",
            "|---|---|---|---|---|"]
    out += [f"| {route} | " + " | ".join(f"{i2t[route][k]:.3f}" for k in (
        "BLEU-4", "CIDEr", "pairs_precision", "pairs_recall")) + " |"
        for route in GENERATION_I2T if route in i2t]
    return [*out, "", _source(r)]


def main() -> None:
    body = ["# Results", "", "Generated by `benchmarks/make_tables.py` from "
            "`benchmarks/results/*.json`; every table names the file and commit it came "
            "from.", "",
            *[line.replace("### ", "## ", 1) if line.startswith("### ") else line
              for line in [*world_section(), *clip_section(), *worldbench_section(),
                           *e2e_section(), *e2e_section("budget"), *e2e_section("tokens"),
                           *token_decoder_section(), *lverse_section(), *joint_vae_section(),
                           *joint_vae_section("jmvae"), *joint_vae_section("hier"),
                           *image_decoder_section(),
                           *(part for tag in VARIANTS if tag
                             for part in (*clip_section(tag), *worldbench_section(tag))),
                           *mean_map_section(), *ced_budget_section(), *speed_section(),
                           *sampling_section(),
                           *embed_section(), *own_data_section(), *serve_section(),
                           *scale_section(), *faults_section()]]]
    with atomic_open(RESULTS_PAGE) as f:
        f.write("\n".join(body).rstrip() + "\n")
    text = README.read_text()
    if BEGIN not in text or END not in text:
        raise ValueError(f"README.md needs the markers {BEGIN} and {END}")
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    with atomic_open(README) as f:
        f.write(head + BEGIN + "\n".join([*headline_section(), *generation_headline()]) + "\n"
                + END + tail)


if __name__ == "__main__":
    main()
