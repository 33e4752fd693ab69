"""`img2img data ingest`: images -> Parquet shards of PNG pairs + a manifest, on the object store.

The work is planned up front as a deterministic list of rows (file, crop, copy, seed), cut into
shards (jobs/data/plan.py), and the shards are built in parallel processes
(jobs/data/worker.py). Every finished shard leaves a progress marker; a re-run with the same
inputs and options skips shards already written and verified, so a killed or interrupted ingest
resumes without duplicates. Ctrl-C stops the workers at once: a shard is one PUT, so none is
half-written, and the finished ones are kept for the resume.

Readers find shards only through the manifest, so the manifest is written last and is the
commit point: shard names carry a version (a hash of the ingest's fingerprint and the manifest
it replaces), so an `--overwrite` never touches the old dataset's shards while it builds the new
ones; the old objects are deleted only after the new manifest is in place. A failed or killed
overwrite leaves the old dataset as it was.

Two ingests of one name at once: the manifest is written with an S3 conditional write (only if
it is still absent, or still the one this run read), so exactly one commits; the other removes
what it wrote that the winner does not use and stops with one `Error:` line (or succeeds, when
the winner built the same content). The sweep after a commit removes only objects older than
that commit, never the shards of an ingest that started after it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import signal
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone

from cluster.errors import Img2ImgError
from cluster.settings import Settings
from cluster.storage import Conflict, Storage
from jobs.data.plan import (  # noqa: F401 (re-export)
    IngestOptions,
    ShardPlan,
    plan_rows,
    plan_shards,
    super_resolution,
    unmatched,
)
from jobs.data.sources import SourceFile, list_sample, scan_source
from jobs.data.worker import build_shard, pair_scale
from registry.manifest import (
    PAIRED_KINDS,
    Manifest,
    Shard,
    dataset_prefix,
    manifest_key,
    read_manifest,
    verify_shard,
)
from translator import degrade

log = logging.getLogger(__name__)


@dataclass
class IngestResult:
    manifest: Manifest
    written: int = 0
    reused: int = 0
    skipped: list[dict[str, str]] = field(default_factory=list)


# ---- the whole ingest ---------------------------------------------------------------------------
def _fingerprint(files: list[SourceFile], opts: IngestOptions) -> str:
    """sha256 hex of what this ingest reads and how: the options and each file's key, place and
    stamp (size, modification time). The same for a re-run over unchanged files (a killed run
    resumes); different for another folder, or an edited file, with the same names, so two such
    ingests never write the same shards, nor reuse each other's."""
    data = json.dumps({"opts": asdict(opts), "files": [[f.key, f.bucket, f.location, f.stamp] for f in files]},
                      sort_keys=True)
    return hashlib.sha256(data.encode()).hexdigest()


def _replaced(storage: Storage, name: str) -> tuple[str, str | None, list[str]]:
    """The dataset this ingest replaces, as it is now -> (sha256 of its manifest, the manifest's
    ETag for the conditional commit, its shard paths), or ("", None, []) when there is none."""
    key = manifest_key(name)
    if not storage.exists(key):
        return "", None, []
    data, etag = storage.get_versioned(key)
    old = Manifest.from_json(data.decode())
    return hashlib.sha256(data).hexdigest(), etag, [s.path for shards in old.splits.values() for s in shards]


def _version(fingerprint: str, previous: str) -> str:
    """The shard-name version of this ingest: the same for a re-run of the same ingest over the
    same existing dataset (so a killed run resumes), different from every shard name the
    existing dataset uses (so building the new one never overwrites the old one's shards)."""
    return hashlib.sha256(f"{fingerprint}|{previous}".encode()).hexdigest()[:12]


def _resumable(storage: Storage, opts: IngestOptions, fingerprint: str, plans: list[ShardPlan]) -> dict[str, tuple]:
    """Shards a previous, interrupted run of the same ingest finished and that still verify.
    Markers of other ingests are left alone here (the sweep after the manifest removes them)."""
    prefix = dataset_prefix(opts.name)
    wanted = {p.path for p in plans}
    done = {}
    for obj in storage.list(prefix + "_ingest/"):
        marker = json.loads(storage.get_bytes(obj.key))
        shard = Shard(**marker["shard"])
        if (marker["fingerprint"] == fingerprint and shard.path in wanted
                and not (shard.rows and shard.min_side is None)  # a marker from before min_side: rebuild
                and verify_shard(storage, opts.name, shard) is None):
            done[shard.path] = (shard, marker["skipped"])
    return done


def _sweep(storage: Storage, manifest: Manifest, known: list[str]) -> int:
    """Delete the objects under the dataset's prefix that `manifest` (just written) does not
    reference: `known` ones (this run's markers, the replaced dataset's shards; relative keys),
    and any other that is older than the commit (shards and markers of killed runs). Newer ones
    may be an ingest that started after this commit to replace it (the next commit's sweep
    removes them if not). -> count."""
    prefix = dataset_prefix(manifest.name)
    objects = storage.list(prefix)
    committed = next((o.modified for o in objects if o.key == manifest_key(manifest.name)), None)
    keep = {manifest_key(manifest.name)} | {prefix + s.path for shards in manifest.splits.values() for s in shards}
    ours = {prefix + k for k in known}
    old = [o.key for o in objects if o.key not in keep and (
        o.key in ours or committed is None or o.modified is None or o.modified < committed)]
    return storage.delete_keys(old, prefix)


def _commit(storage: Storage, manifest: Manifest, etag: str | None, own: list[str]) -> Manifest:
    """Write the manifest if the dataset is still as this run found it (absent, or the manifest
    with `etag`): the one atomic step that makes the new dataset visible. -> the manifest now in
    place. When another ingest of the name committed first, this run's objects (`own`, relative
    keys) that the winner does not list are removed; the winner's dataset stands, and this run
    succeeds if it holds the same content, else raises Img2ImgError."""
    key, name = manifest_key(manifest.name), manifest.name
    try:
        storage.put_if(key, manifest.to_json().encode(), etag)
        return manifest
    except Conflict:
        pass
    winner = read_manifest(storage, name)
    prefix = dataset_prefix(name)
    used = {s.path for shards in winner.splits.values() for s in shards}
    storage.delete_keys([prefix + k for k in own if k not in used], prefix)
    if winner.sha256 == manifest.sha256 and winner.kind == manifest.kind:
        log.info("dataset %s was committed by another ingest of the same content", name)
        return winner
    raise Img2ImgError(f"another ingest of dataset {name!r} finished first and its dataset stands (see `img2img "
                       f"data show {name}`); this run's shards were removed; run again with --overwrite to "
                       "replace it")


def _ignore_sigint() -> None:
    """Worker processes leave Ctrl-C (sent to the whole terminal process group) to the parent,
    which stops them (see `_build`)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _stop(pool: ProcessPoolExecutor) -> None:
    """Terminate the pool's workers now, queued shards dropped (Python 3.14's
    `terminate_workers`; the same steps by hand before it)."""
    if hasattr(pool, "terminate_workers"):
        pool.terminate_workers()
        return
    procs = list((pool._processes or {}).values())
    pool.shutdown(wait=False, cancel_futures=True)
    for proc in procs:
        proc.terminate()
    for proc in procs:
        proc.join(timeout=5)


def _build(todo: list[ShardPlan], settings: Settings, opts: IngestOptions, fingerprint: str, workers: int,
           done: Callable[[ShardPlan, tuple], None]) -> None:
    """Build the planned shards in `workers` processes, handing each result to `done` as it
    finishes. On any exception here (Ctrl-C's KeyboardInterrupt, a failed shard) the workers are
    stopped at once and the exception goes on: every shard is one PUT, so none is half-written,
    and the finished ones keep their markers for a resume."""
    pool = ProcessPoolExecutor(max_workers=max(1, min(workers, len(todo))), initializer=_ignore_sigint)
    try:
        pending = {pool.submit(build_shard, settings, opts, p, fingerprint): p for p in todo}
        while pending:
            finished, _ = wait(pending, return_when=FIRST_COMPLETED)
            for fut in finished:
                done(pending.pop(fut), fut.result())
    except BaseException:
        _stop(pool)
        raise
    pool.shutdown()


@dataclass
class IngestPlan:
    """A validated ingest, ready to run: nothing has been written yet."""
    src: str | None
    opts: IngestOptions
    files: list[SourceFile]
    plans: list[ShardPlan]
    skipped: list[dict[str, str]]  # left out while listing / matching, each with its reason
    overwrite: bool = False
    replaces: bool = False  # a dataset of that name exists (kept until the new manifest is written)

    @property
    def total_rows(self) -> int:
        return sum(len(p.rows) for p in self.plans)


def prepare(src: str | None, opts: IngestOptions, settings: Settings, overwrite: bool = False) -> IngestPlan:
    """Check everything a user can get wrong (options, store, name, source, layout) and plan the
    shards, writing nothing: a CLI shows progress only after this passed."""
    opts.validate()
    storage = Storage(settings)
    storage.check()
    replaces = storage.exists(manifest_key(opts.name))
    if replaces and not overwrite:
        raise Img2ImgError(f"dataset {opts.name!r} already exists; pass --overwrite to replace it")
    if src is None:
        files, skipped = list_sample(), []
    else:
        files, skipped = scan_source(src, settings)
    plans = plan_shards(files, opts)
    if opts.kind == "synth":
        opts.scale = degrade.scale_of(opts.degrade)
    elif super_resolution(files, opts):
        opts.scale = opts.scale or pair_scale(plans, settings)
        if opts.size is not None and opts.size % opts.scale:
            raise Img2ImgError(f"--size {opts.size} is the HR crop: with {opts.scale}x pairs it must be a multiple "
                               f"of {opts.scale}")
        if opts.direction == "BtoA":
            raise Img2ImgError("--direction BtoA would make HR the input of LR/ + HR/ pairs; drop it")
    elif opts.kind == "aligned" and opts.scale not in (None, 1):
        raise Img2ImgError(f"--scale {opts.scale} needs LR/ + HR/ folders (super-resolution pairs); this "
                           "source has none")
    return IngestPlan(src, opts, files, plans, skipped + unmatched(files, opts), overwrite, replaces)


def run(plan: IngestPlan, settings: Settings, workers: int = 2,
        progress: Callable[[int, int], None] = lambda done, total: None) -> IngestResult:
    """Build the planned shards in `workers` processes (resuming an interrupted run of the
    same ingest), write the manifest, then delete what the manifest does not reference (with
    --overwrite: the old dataset). Until the manifest is written, an existing dataset of the
    same name stays complete and readable, whatever fails or is interrupted.
    Raises Img2ImgError when no source image could be used (nothing is then left behind), or when
    another ingest of the name committed a different dataset first (see `_commit`);
    KeyboardInterrupt (Ctrl-C) as soon as it comes, the finished shards kept for a resume."""
    src, opts, files, plans = plan.src, plan.opts, plan.files, plan.plans
    storage = Storage(settings)
    fingerprint = _fingerprint(files, opts)
    previous, etag, replaced = _replaced(storage, opts.name)
    if etag is not None and not plan.overwrite:  # written since `prepare` looked: another ingest won
        raise Img2ImgError(f"dataset {opts.name!r} already exists; pass --overwrite to replace it")
    version = _version(fingerprint, previous)
    for p in plans:
        p.version = version
    done = _resumable(storage, opts, fingerprint, plans)
    total = plan.total_rows
    finished = sum(len(p.rows) for p in plans if p.path in done)
    progress(finished, total)
    results = dict(done)
    todo = [p for p in plans if p.path not in done]

    def shard_done(p: ShardPlan, result: tuple) -> None:
        nonlocal finished
        results[p.path] = result
        finished += len(p.rows)
        progress(finished, total)

    if todo:
        _build(todo, settings, opts, fingerprint, workers, shard_done)
    splits: dict[str, list[Shard]] = {}
    skipped = list(plan.skipped)
    seen = {s["file"] for s in skipped}
    for p in plans:
        shard, skips = results[p.path]
        splits.setdefault(p.split, []).append(shard)
        for s in skips:
            if s["file"] not in seen:
                seen.add(s["file"])
                skipped.append(s)
    manifest = Manifest(
        name=opts.name, kind=PAIRED_KINDS[opts.kind], source_kind=opts.kind,
        created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        source=opts.source_label or src or "sample:scikit-image", image_size=opts.size,
        degradation=opts.degrade if opts.kind == "synth" else None, seed=opts.seed, scale=opts.scale or 1,
        options={k: v for k, v in asdict(opts).items() if k not in ("name", "source_label")},
        splits=splits, skipped=skipped)
    own = [k for p in plans for k in (p.path, p.marker)]
    if not any(manifest.counts.values()):
        prefix = dataset_prefix(opts.name)  # remove this run's (empty) shards and markers, nothing else
        storage.delete_keys([prefix + k for k in own], prefix)
        kept = f"; dataset {opts.name!r} was left as it was" if storage.exists(manifest_key(opts.name)) else ""
        more = f"; and {len(skipped) - 5} more" if len(skipped) > 5 else ""  # the first 5 keep it one line
        raise Img2ImgError(f"no image could be used from {src or 'the sample set'}{kept}; skipped {len(skipped)}: "
                           + "; ".join(f"{s['file']} ({s['reason']})" for s in skipped[:5]) + more)
    committed = _commit(storage, manifest, etag, own)
    _sweep(storage, committed, own + replaced)
    return IngestResult(committed, written=len(todo), reused=len(done), skipped=committed.skipped)


def ingest(src: str | None, opts: IngestOptions, settings: Settings, overwrite: bool = False,
           workers: int = 2, progress: Callable[[int, int], None] = lambda done, total: None) -> IngestResult:
    """`prepare` then `run`: images under `src` (a folder, s3://bucket/prefix, or None for the
    sample photos) -> dataset `opts.name` on the object store. Raises Img2ImgError on bad input."""
    return run(prepare(src, opts, settings, overwrite), settings, workers, progress)
