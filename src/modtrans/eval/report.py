"""``report.html``: tables, training curves and plots from a demo or benchmark folder.

Everything shown is read from the JSON and CSV files the pipeline wrote, never recomputed
or typed in; pictures are embedded as PNG so the page is a single file.
"""

from __future__ import annotations

import base64
import csv
import html
import io
import json
import math
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from modtrans.eval.worldbench import TABLE_COLUMNS
from modtrans.io import atomic_open
from modtrans.world.recogniser import describe_report

_STYLE = """body{font-family:system-ui,sans-serif;max-width:1200px;margin:2em auto;color:#222}
table{border-collapse:collapse;margin:1em 0;font-size:0.9em}
td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}
th{background:#f3f3f3}td:first-child{text-align:left}
img{max-width:100%}.grid{display:flex;flex-wrap:wrap;gap:12px}
.grid figure{margin:0;width:180px;font-size:0.75em}
.warn{background:#fff3cd;border:1px solid #e0c36c;padding:0.6em 1em}
nav ul{columns:2}dl{font-size:0.9em}dt{font-weight:600}dd{margin:0 0 0.4em 1.5em}"""

#: What each WorldBench column means and what a good value looks like.
METRICS = {
    "Sim": "mean cosine between the translation ẑ and the true target z; higher is better, "
           "but a regression to the mean maximises it, so read it with FD and diversity",
    "cos(c,z)": "cosine between the condition and the target as given (the modality gap); "
                "the same for every method",
    "cos(ẑ,c)": "cosine between the translation and its condition: how far it moved",
    "cos(ẑ,z') unrel.": "mean cosine to unrelated targets; lower means less collapse",
    "R@1": "share of queries whose own target is the nearest of the split's items; higher is "
           "better (R@5, R@10 likewise; MedR: the median rank, lower is better)",
    "FD": "Fréchet distance between translated and real target embeddings; lower means the "
          "translations are distributed like real ones (FD (unit): on unit vectors)",
    "Sim (1 draw)": "Sim of a single draw rather than the mean of several",
    "diversity": "spread of several draws for the same condition; 0 for a deterministic map",
    "zero-shot": "world-shape classification through the translator (raw: without it)",
}
SMOKE_TEST_IMAGES = 2000  # a world smaller than this is a smoke test (the tiny preset)


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    return f'<img src="data:image/png;base64,{base64.b64encode(buf.getvalue()).decode()}">'


def _table(rows: list[dict[str, Any]]) -> str:
    cols = [(k, t, f) for k, t, f in TABLE_COLUMNS if any(r.get(k) is not None for r in rows)]
    head = "".join(f"<th>{html.escape(t)}</th>" for _, t, _ in cols)
    body = "".join(
        "<tr>" + "".join(
            f"<td>{html.escape(f.format(r[k])) if r.get(k) is not None else '–'}</td>"
            for k, _, f in cols) + "</tr>"
        for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _bars(results: list[dict[str, Any]]) -> str:
    fig, axes = plt.subplots(1, 2, figsize=(12, 3.5))
    for ax, key in zip(axes, ("sim", "R@1"), strict=True):
        labels, width = [], 0.8 / max(len(results), 1)
        for i, res in enumerate(results):
            rows = res["rows"]
            labels = [r["method"] for r in rows]
            ax.bar([j + i * width for j in range(len(rows))], [r[key] for r in rows], width,
                   label=f"{res['direction']} / {res['split']}")
        ax.set_xticks([j + 0.4 - width / 2 for j in range(len(labels))], labels, rotation=30)
        ax.set_title(key)
    # one legend beside the plots: inside, it hid the last method's bars
    fig.legend(*axes[0].get_legend_handles_labels(), loc="center right", fontsize=7)
    fig.subplots_adjust(right=0.86)
    return _png(fig)


def _frontier(results: list[dict[str, Any]]) -> str:
    """Sim (mean mode) against FD (unit) for every method: what a translator's Sim costs in
    distribution, as the mean of its draws (open) and as one draw (filled)."""
    fig, axes = plt.subplots(1, len(results), figsize=(4 * len(results), 3.5), squeeze=False)
    for ax, res in zip(axes[0], results, strict=True):
        for row in res["rows"]:
            if row.get("fd_unit") is None:
                continue
            dot = ax.scatter(row["fd_unit"], row["sim_sample"], label=row["method"])
            if row.get("fd_unit_mean") is not None and row["method"] != "identity":
                ax.scatter(row["fd_unit_mean"], row["sim"], facecolors="none",
                           edgecolors=dot.get_facecolor())
        ax.set(xscale="log", xlabel="FD (unit)", ylabel="Sim",
               title=f"{res['direction']} / {res['split']}")
    axes[0][0].legend(fontsize=7)
    return _png(fig)


def _budget_note(folder: Path) -> str:
    """How long the demo trained ``ced-paper`` and where its figure at a fair budget is."""
    summaries = sorted(folder.glob("translators/*/ced-paper/summary.json"))
    if not summaries:
        return ""
    runs = []
    for path in summaries:
        info = json.loads(path.read_text())
        if "train_seconds" in info:
            runs.append(f"{path.parts[-3]}: {info['train_seconds']:.0f} s, "
                        f"{info['steps'] * info['train_config']['batch_size']:,} pairs")
    return ("<p><code>ced-paper</code> (the seed's method) trains on a short budget here ("
            + "; ".join(runs) + "), far from where it levels off: its learning curve and "
            "its figures at a fair budget are in the documentation's <em>Results</em>, "
            "<em>The seed's method at a fair budget</em> "
            "(<code>benchmarks/bench_ced_budget.py</code>).</p>")


def _histograms(res: dict[str, Any]) -> str:
    fig, ax = plt.subplots(figsize=(6, 3.2))
    for row in res["rows"]:
        edges, counts = row["cos_hist"]["edges"], row["cos_hist"]["counts"]
        total = max(sum(counts), 1)
        ax.step(edges[:-1], [c / total for c in counts], where="post", label=row["method"])
    ax.set_xlabel("cos(ẑ, z) per pair")
    ax.set_title(f"{res['direction']} / {res['split']}")
    ax.legend(fontsize=7)
    return _png(fig)


def _read_metrics(path: Path) -> dict[str, list[tuple[float, float]]]:
    series: dict[str, list[tuple[float, float]]] = {}
    with open(path) as f:
        for row in csv.DictReader(f):
            for key, value in row.items():
                if key not in ("epoch", "step") and value:
                    series.setdefault(key, []).append((float(row["step"]), float(value)))
    return series


def _curves(folder: Path) -> str:
    logs = sorted(folder.glob("translators/*/*/logs/metrics.csv"))
    clip_log = folder / "world_clip" / "logs" / "metrics.csv"
    if clip_log.is_file():
        logs.insert(0, clip_log)
    if not logs:
        return ""
    fig, axes = plt.subplots(1, 3, figsize=(15, 3.5))
    for path in logs:
        series = _read_metrics(path)
        name = "world CLIP" if path == clip_log else f"{path.parts[-4]} {path.parts[-3]}"
        if path == clip_log and "train/loss" in series:
            axes[0].plot(*zip(*series["train/loss"], strict=True), label=name)
            continue
        if "train/loss" in series:
            axes[1].plot(*zip(*series["train/loss"], strict=True), label=name)
        if "val/sim" in series:
            axes[2].plot(*zip(*series["val/sim"], strict=True), marker="o", label=name)
    for ax, title in zip(axes, ("world CLIP loss", "translator loss", "val Sim"), strict=True):
        ax.set_title(title)
        ax.set_xlabel("step")
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    axes[1].set_yscale("log")
    return _png(fig)


def _world_samples(folder: Path, n: int = 12) -> str:
    captions = folder / "world" / "val" / "captions.json"
    if not captions.is_file():
        return ""
    data = json.loads(captions.read_text())
    by_image: dict[int, list[str]] = {}
    for ann in data["annotations"]:
        by_image.setdefault(ann["image_id"], []).append(ann["caption"])
    figures = []
    for image in data["images"][:n]:
        raw = (captions.parent / "images" / image["file_name"]).read_bytes()
        caps = "<br>".join(html.escape(c) for c in by_image.get(image["id"], []))
        figures.append(f"<figure>{_image_tag(raw, 128)}<figcaption>{caps}</figcaption></figure>")
    return f'<div class="grid">{"".join(figures)}</div>'


def _image_tag(raw: bytes, width: int | None = None) -> str:
    size = f' width="{width}"' if width else ""
    return (f'<img{size} style="image-rendering:pixelated" '
            f'src="data:image/png;base64,{base64.b64encode(raw).decode()}">')


def _simple_table(header: list[str], rows: list[list[Any]]) -> str:
    def cell(v: Any) -> str:
        if isinstance(v, float):
            return "–" if math.isnan(v) else f"{v:.3f}"
        return html.escape(str(v))

    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{cell(v)}</td>" for v in row) + "</tr>"
                   for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _generation(folder: Path) -> list[str]:
    """The end-to-end section: the judge, the scores, the example grid and captions."""
    path = folder / "e2e" / "results.json"
    if not path.is_file():
        return []
    res = json.loads(path.read_text())
    judge = res["recogniser"]
    parts = ["<a id='generation'></a><h2>Generation (end to end)</h2>",
             f"<p>Judge: the attribute recogniser, {html.escape(describe_report(judge))}</p>"]
    if res.get("candidates", 1) > 1:
        parts.append(f"<p>A <code>-rerank</code> route draws {res['candidates']} images per "
                     "prompt and the one the world CLIP scores highest against the prompt is "
                     "judged.</p>")
    for split, routes in res["text_to_image"].items():
        keys = ("pairs_recall", "colours_recall", "shapes_recall", "pairs_hallucination")
        rows = [[route, *(v["by_objects"].get(f"{n}_objects", {}).get(k, float("nan"))
                          for n in (1, 2, 3) for k in keys), v.get("fd", float("nan"))]
                for route, v in routes.items()]
        header = ["route", *(f"{n} obj. {k.replace('_', ' ')}" for n in (1, 2, 3)
                             for k in keys), "FD"]
        parts += [f"<h3>text → image — {html.escape(split)}</h3>", _simple_table(header, rows)]
    keys = ("BLEU-4", "METEOR", "ROUGE-L", "CIDEr", "pairs_precision", "pairs_recall")
    for split, routes in res["image_to_text"].items():
        rows = [[route, *(v[k] for k in keys)] for route, v in routes.items()]
        parts += [f"<h3>image → text — {html.escape(split)}</h3>",
                  _simple_table(["route", *keys], rows)]
    grid = folder / "e2e" / "text2image.png"
    if grid.is_file():
        ex = res.get("examples", {})
        prompts = "".join(f"<li>{html.escape(p)}</li>" for p in ex.get("prompts", []))
        parts += ["<h3>Prompts → samples</h3>",
                  f"<p>Rows: <ol>{prompts}</ol> Columns: "
                  f"{html.escape(', '.join(ex.get('columns', [])))}.</p>",
                  _image_tag(grid.read_bytes())]
    captioned = folder / "e2e" / "image2text.json"
    if captioned.is_file():
        cap = json.loads(captioned.read_text())
        figures = []
        for i, image in enumerate(cap["images"]):
            path = Path(image)
            if not path.is_file():
                continue
            lines = "".join(f"<br><b>{html.escape(route)}</b>: {html.escape(texts[i])}"
                            for route, texts in cap["captions"].items())
            figures.append(f"<figure>{_image_tag(path.read_bytes(), 128)}"
                           f"<figcaption>{lines}</figcaption></figure>")
        parts += ["<h3>Images → captions</h3>", f'<div class="grid">{"".join(figures)}</div>']
    return parts + _joint_samples(folder / "e2e")


def _joint_samples(e2e: Path) -> list[str]:
    """The joint VAE's samples (each image with the caption drawn with it) and their
    coherence against a random pairing."""
    path = e2e / "joint_samples.json"
    if not path.is_file():
        return []
    data = json.loads(path.read_text())
    figures = [f"<figure>{_image_tag((e2e / file).read_bytes(), 128)}"
               f"<figcaption>{html.escape(caption)}</figcaption></figure>"
               for file, caption in zip(data["files"], data["captions"], strict=True)
               if (e2e / file).is_file()]
    keys = ("colours", "shapes", "pairs", "count")
    rows = [[name, *(scores[k] for k in keys)] for name, scores in data["coherence"].items()]
    return ["<h3>Joint samples</h3>",
            f"<p>Image and caption decoded from one latent drawn from the joint VAE's "
            f"{'fitted mixture' if data.get('prior') == 'fitted' else 'N(0, I)'} prior. "
            f"Coherence of {data['samples']} samples: the share of captions naming a colour "
            "(shape, colour–shape pair) whose every one the judge finds in the image, and of "
            "captions stating a number of objects whose number the judge counts; "
            "<code>random_pairing</code>: the same captions against other samples' "
            "images.</p>",
            _simple_table(["pairing", *keys], rows),
            f'<div class="grid">{"".join(figures)}</div>']


def _summary(results: list[dict[str, Any]]) -> str:
    """Which method led on Sim, R@1 and FD (unit) in each direction and split, and by how
    much over the runner-up."""
    items = []
    for res in results:
        rows = res["rows"]
        parts = []
        for key, title, best in (("sim", "Sim", max), ("R@1", "R@1", max),
                                 ("fd_unit", "FD (unit)", min)):
            scored = sorted((r for r in rows if r.get(key) is not None),
                            key=lambda r: r[key], reverse=best is max)
            if len(scored) < 2:
                continue
            first, second = scored[0], scored[1]
            parts.append(f"{title}: <b>{html.escape(first['method'])}</b> {first[key]:.3f} "
                         f"({abs(first[key] - second[key]):.3f} "
                         f"{'ahead of' if best is max else 'below'} "
                         f"{html.escape(second['method'])})")
        items.append(f"<li>{html.escape(res['direction'])} — {html.escape(res['split'])}: "
                     + "; ".join(parts) + "</li>")
    return "<a id='summary'></a><h2>Summary</h2><ul>" + "".join(items) + "</ul>"


def _metric_legend() -> str:
    return "<dl>" + "".join(f"<dt>{html.escape(k)}</dt><dd>{html.escape(v)}</dd>"
                            for k, v in METRICS.items()) + "</dl>"


def _flat(data: dict[str, Any], prefix: str = "") -> list[list[Any]]:
    """A nested mapping as (key path, value) rows."""
    rows: list[list[Any]] = []
    for key, value in data.items():
        if isinstance(value, dict):
            rows += _flat(value, f"{prefix}{key} / ")
        else:
            rows.append([f"{prefix}{key}", value])
    return rows


def _smoke_test_warning(folder: Path) -> str:
    info = folder / "world" / "world.json"
    if not info.is_file():
        return ""
    n = sum(json.loads(info.read_text())["counts"].values())
    if n >= SMOKE_TEST_IMAGES:
        return ""
    return (f"<p class='warn'>This run used a world of {n} images (the tiny preset): a smoke "
            "test of the pipeline. Its figures mean nothing; run the default preset for "
            "results.</p>")


def write_report(folder: str | Path) -> Path:
    """Write ``folder/report.html`` from the files the demo or a benchmark left there."""
    folder = Path(folder)
    results = [json.loads(p.read_text()) for p in sorted((folder / "results").glob("*.json"))]
    parts = ["<h1>modtrans report</h1>", _smoke_test_warning(folder)]
    if results:
        parts.append(_summary(results))
    parts += ["<a id='world'></a><h2>The world</h2>", _world_samples(folder)]
    enc = folder / "encoder_report.json"
    if enc.is_file():
        parts += ["<a id='encoder'></a><h2>World CLIP</h2>",
                  "<p>Retrieval between the world's images and captions with the raw "
                  "embeddings, the modality gap, and linear probes of the main shape and "
                  "colour (against chance).</p>",
                  _simple_table(["figure", "value"], _flat(json.loads(enc.read_text())))]
    if results:
        parts += ["<a id='worldbench'></a><h2>WorldBench</h2>", _metric_legend()]
        for res in results:
            parts += [f"<h3>{res['direction']} — {res['split']}</h3>", _table(res["rows"])]
        parts += [_budget_note(folder), "<h3>Sim and R@1 by method</h3>", _bars(results),
                  "<h3>Sim against FD (unit)</h3>", _frontier(results),
                  "<h3>Distribution of cos(ẑ, z)</h3>",
                  "".join(_histograms(r) for r in results)]
    parts += _generation(folder)
    curves = _curves(folder)
    if curves:
        parts += ["<a id='curves'></a><h2>Training curves</h2>", curves]
    timings = folder / "timings.json"
    if timings.is_file():
        t = json.loads(timings.read_text())
        parts += ["<a id='timings'></a><h2>Stage times</h2>",
                  _simple_table(["stage", "seconds (this machine)"],
                                [[k, round(v, 1)] for k, v in t.items()]
                                + [["total", round(sum(t.values()), 1)]])]
    body = "".join(parts)
    toc = "".join(f"<li><a href='#{anchor}'>{html.escape(title)}</a></li>"
                  for anchor, title in _SECTIONS if f"<a id='{anchor}'>" in body)
    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>modtrans report</title>"
            f"<style>{_STYLE}</style></head><body>"
            f"{body.replace('</h1>', f'</h1><nav><ul>{toc}</ul></nav>', 1)}</body></html>")
    path = folder / "report.html"
    with atomic_open(path) as f:
        f.write(page)
    return path


_SECTIONS = (("summary", "Summary"), ("world", "The world"), ("encoder", "World CLIP"),
             ("worldbench", "WorldBench"), ("generation", "Generation (end to end)"),
             ("curves", "Training curves"), ("timings", "Stage times"))
