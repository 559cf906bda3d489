"""Embed a source on a Ray cluster: independent work units, each its own store, merged into one.

The source is cut into contiguous units (image ranges of a COCO, table or folder source;
ranges of whole ``.tar`` shards of a webdataset). A Ray task embeds one unit with
:func:`~modtrans.data.embed.embed_captioned_images`, the single-process job's own code, into
``OUT/units/unit_<i>/``, shard by shard, atomically. As soon as the units before it are in,
a finished unit's shards are appended to ``OUT`` in unit order and its folder removed, so
``OUT`` holds the rows the single-process job writes, in its order. A unit whose task fails
or whose worker dies is run again (from its last complete shard) up to ``retries`` times and
counted; ``resume`` passes over finished and merged units. Ray was chosen over PySpark by
measurement (docs/guides/scaling.md): a third of the install, no JVM, faster start.
"""

from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from modtrans.data.embed import BadInputError, embed_captioned_images
from modtrans.data.records import CaptionSource
from modtrans.data.store import MANIFEST, EmbeddingStore, StoreWriter
from modtrans.encoders.base import Encoder
from modtrans.io import read_json

logger = logging.getLogger(__name__)

UNITS = "units"

#: The encoders this worker process fetched from the object store, by object id: a worker
#: deserialises them once, not once per unit.
_ENCODERS: dict[str, tuple[Encoder, Encoder]] = {}


def _unit_dir(out: Path, index: int) -> Path:
    return out / UNITS / f"unit_{index:05d}"


def _finished(unit_dir: Path) -> bool:
    path = unit_dir / MANIFEST
    return path.is_file() and bool(read_json(path).get("complete"))


def embed_unit(part: CaptionSource, encoders: tuple[Encoder, Encoder], unit_dir: str,
               options: dict[str, Any]) -> dict:
    """Embed one work unit into its own store, continuing it after its last complete shard
    when an earlier attempt left one (the body of every Ray task)."""
    unit_dir = Path(unit_dir)
    if unit_dir.is_dir() and not (unit_dir / MANIFEST).is_file():
        shutil.rmtree(unit_dir)  # an attempt that died before its store's first manifest
    return embed_captioned_images(part, *encoders, unit_dir, resume=unit_dir.is_dir(),
                                  workers=0, progress=False, **options)


def _ray_unit(part: CaptionSource, encoders: list, unit_dir: str, options: dict[str, Any]
              ) -> dict:
    """A Ray task: :func:`embed_unit` with the encoders behind ``encoders[0]`` (an object
    reference, wrapped in a list so that Ray passes it unresolved)."""
    import ray

    key = encoders[0].hex()
    if key not in _ENCODERS:
        _ENCODERS.clear()
        _ENCODERS[key] = ray.get(encoders[0])
    return embed_unit(part, _ENCODERS[key], unit_dir, options)


def embed_on_ray(
    data: CaptionSource,
    image_encoder: Encoder,
    text_encoder: Encoder,
    out_dir: str | Path,
    *,
    split: str,
    source: dict,
    sidecar: dict[Any, dict] | None = None,
    units: int | None = None,
    workers: int = 2,
    retries: int = 2,
    address: str | None = None,
    shard_size: int = 10_000,
    dtype: str = "float16",
    batch_size: int = 256,
    resume: bool = False,
    strict: bool = False,
    progress: bool = True,
) -> dict:
    """Embed every image and caption of a source into a store at ``out_dir``, on Ray.

    The store is the one :func:`~modtrans.data.embed.embed_captioned_images` writes: the same
    rows in the same order (shards end at unit boundaries too).

    Args:
        data: the captioned images; its ``units(n)`` cuts it into work units.
        image_encoder, text_encoder: the pair, sent once to the cluster's object store.
        out_dir: the store directory.
        split, source, sidecar, shard_size, dtype, batch_size, strict: as for
            :func:`~modtrans.data.embed.embed_captioned_images`.
        units: how many work units (default: one per ``shard_size`` images, at least
            ``workers``); a resumed job keeps the count it started with.
        workers: units run at once; a local cluster of this many CPUs is started unless Ray
            is already initialised or ``address`` names a running cluster.
        retries: how often a failed unit is run again before the job stops.
        address: a running Ray cluster's address (``auto``: the one this machine joined).
        resume: continue a job stopped or failed in ``out_dir``.
        progress: show a progress bar over units.

    Returns:
        The single-process job's summary plus ``units``, ``units_done_before`` (finished by
        an earlier run), ``retries`` (failed attempts run again) and every failure's
        ``errors``; the manifest's ``units`` keeps the plan and the retries of every run.
    """
    try:
        import ray
    except ImportError as e:
        raise ImportError("the ray engine needs Ray: pip install 'modtrans[distributed]'") from e
    if workers < 1:
        raise ValueError(f"workers must be at least 1 on the ray engine, got {workers}")
    if retries < 0:
        raise ValueError(f"retries must be at least 0, got {retries}")
    out = Path(out_dir)
    start = time.perf_counter()
    options = dict(split=split, source=source, sidecar=sidecar or {}, shard_size=shard_size,
                   dtype=dtype, batch_size=batch_size, strict=strict)
    with StoreWriter(out, split=split, image_encoder=image_encoder.spec,
                     text_encoder=text_encoder.spec, image_dim=image_encoder.dim,
                     text_dim=text_encoder.dim, dtype=dtype, source=source,
                     resume=resume) as writer:
        plan = writer.manifest.get(UNITS)
        if plan is None and writer.n_shards:
            raise ValueError(f"{out} was started by the single-process job; resume it with "
                             "--engine local, or choose a new directory")
        if plan is None:
            plan = {"planned": units or max(workers, -(-len(data) // shard_size)), "merged": 0,
                    "retries": 0}
        elif units and units != plan["planned"]:
            logger.warning("resuming %s with its %d units (not %d)", out, plan["planned"], units)
        parts = data.units(plan["planned"])
        plan["planned"] = len(parts)
        writer.note(UNITS, plan)
        before = writer.n_images_done, writer.n_captions_done
        pending = [i for i in range(plan["merged"], len(parts))
                   if not _finished(_unit_dir(out, i))]
        done_before = len(parts) - plan["merged"] - len(pending)
        errors: list[str] = []
        retried = 0
        if pending:
            retried = _run_units(ray, parts, pending, (image_encoder, text_encoder), options,
                                 writer, out, plan, errors, workers=workers, retries=retries,
                                 address=address, progress=progress)
        _merge_ready(writer, out, plan, len(parts))  # units an earlier run finished
        if plan["merged"] != len(parts):
            raise RuntimeError(f"{out}: only {plan['merged']} of {len(parts)} units are merged; "
                               "rerun with --resume")
        shutil.rmtree(out / UNITS, ignore_errors=True)
        written = writer.n_images_done - before[0], writer.n_captions_done - before[1]
        skipped = writer.skipped
    return {
        "store": str(out), "split": split, "images_written": written[0],
        "captions_written": written[1], "skipped": skipped,
        "seconds": round(time.perf_counter() - start, 2), "engine": "ray",
        "units": len(parts), "units_done_before": done_before, "retries": retried,
        "errors": errors,
    }  # fmt: skip


def _run_units(ray: Any, parts: list[CaptionSource], pending: list[int],
               encoders: tuple[Encoder, Encoder], options: dict[str, Any], writer: StoreWriter,
               out: Path, plan: dict, errors: list[str], *, workers: int, retries: int,
               address: str | None, progress: bool) -> int:
    """Run the ``pending`` units as Ray tasks, retrying failed ones and merging finished
    ones as they come; a unit failing past ``retries`` cancels the others and raises.

    Returns:
        How many failed attempts were run again (each failure is listed in ``errors``).
    """
    retried = 0
    running: dict[Any, int] = {}  # task → unit
    started_here = not ray.is_initialized()
    if started_here:
        ray.init(address=address, num_cpus=None if address else workers,
                 include_dashboard=False, configure_logging=False)
    try:
        task = ray.remote(num_cpus=1, max_retries=0)(_ray_unit)
        encoders_ref, shared = ray.put(encoders), ray.put(options)
        attempts = dict.fromkeys(pending, 0)

        def submit(i: int) -> None:
            attempts[i] += 1
            running[task.remote(parts[i], [encoders_ref], str(_unit_dir(out, i)), shared)] = i

        for i in pending:
            submit(i)
        with tqdm(total=len(parts), initial=len(parts) - len(pending), unit="unit",
                  desc=f"embed {options['split']} on ray", disable=not progress) as bar:
            while running:
                [ref], _ = ray.wait(list(running))
                i = running.pop(ref)
                try:
                    ray.get(ref)
                except BadInputError:
                    raise
                except ray.exceptions.RayError as e:
                    errors.append(f"unit {i}, attempt {attempts[i]}: {type(e).__name__}: "
                                  f"{str(e).strip().splitlines()[-1]}")
                    logger.warning("embedding unit %d failed (%s)", i, errors[-1])
                    if attempts[i] > retries:
                        raise RuntimeError(
                            f"unit {i} of {out} failed {attempts[i]} time(s), last: "
                            f"{errors[-1]}; the store keeps every finished unit: fix the "
                            "cause and rerun with --resume") from e
                    retried += 1
                    plan["retries"] += 1
                    writer.note(UNITS, plan)
                    submit(i)
                    continue
                bar.update()
                _merge_ready(writer, out, plan, len(parts))
    finally:
        for ref in running:  # a unit failed for good: stop the others, resume continues them
            ray.cancel(ref, force=True)
        if running:
            ray.wait(list(running), num_returns=len(running), timeout=60)
        if started_here:
            ray.shutdown()
    return retried


def _merge_ready(writer: StoreWriter, out: Path, plan: dict, n_units: int) -> None:
    """Append every finished unit that follows the merged ones, in order, then drop its folder."""
    while plan["merged"] < n_units and _finished(unit := _unit_dir(out, plan["merged"])):
        manifest = read_json(unit / MANIFEST)
        if manifest["shards"]:
            writer.append_store(EmbeddingStore(unit))
        else:  # every image of the unit was skipped
            for entry in manifest["skipped"]:
                writer.record_skipped(entry["item"], entry["reason"],
                                      unknown_tokens=entry.get("unknown_tokens"))
        plan["merged"] += 1
        writer.note(UNITS, plan)
        shutil.rmtree(unit)
