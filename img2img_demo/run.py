"""The demo, step by step. Every step reuses what an earlier run left, and writes atomically,
so re-running is cheap and Ctrl-C leaves nothing half-written."""

from __future__ import annotations

import io
import shlex
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import torch
from mlflow.exceptions import MlflowException
from PIL import Image

from cluster.errors import Img2ImgError
from cluster.files import write_atomic
from cluster.settings import Settings
from cluster.stack import Stack
from cluster.storage import Storage
from img2img_demo.tasks import DEFAULT_TASK, DemoTask, demo_task
from jobs.data.ingest import IngestOptions, ingest
from jobs.data.sources import list_sample
from jobs.evaluation.client import evaluate
from jobs.manage import follow_progress, outcome_error
from jobs.training.client import job_client, submit
from jobs.training.spec import TrainSpec
from registry.manifest import manifest_key, read_manifest
from registry.models import client, promote, versions
from registry.tracking import logged_config
from serving.client import client_timeout, enhance_bytes
from serving.deploy import deploy
from serving.options import Scaling
from translator import degrade, images
from translator.config import make_config
from translator.metrics import SetTally, baseline, psnr, squared_error, ssim
from translator.variants import get_variant

# pix2pix's 256-deep U-Net is made for 256 px; 64 px crops need unet_64 (and fewer filters for a CPU).
PIX2PIX_CPU = {"netG": "unet_64", "ngf": 32, "ndf": 32}


@dataclass
class DemoResult:
    """What a demo run made. rows: one dict per held-out photo with `photo` and the PSNR (dB) and
    SSIM of the degraded input and of the model's output against the original (`input_psnr`,
    `output_psnr`, `input_ssim`, `output_ssim`), its pixel values and squared errors (`values`,
    `input_sse`, `output_sse`); photos the degradation leaves unchanged are in `skipped`;
    `train_flags`: the `img2img train` options (after `--dataset`) the model was trained with."""

    dataset: str
    model: str
    version: str
    rows: list[dict] = field(default_factory=list)
    out_dir: Path = Path("demo-output")
    task: DemoTask = field(default_factory=lambda: demo_task(DEFAULT_TASK))
    skipped: list[str] = field(default_factory=list)
    train_flags: str = ""

    @property
    def mean(self) -> dict[str, float]:
        """The held-out set's metrics: `input_psnr`/`output_psnr` of the pooled MSE (dB,
        `translator.metrics.SetTally`), SSIM means, `improved` (photos whose output MSE is below
        their input's)."""
        tally = SetTally()
        for r in self.rows:
            tally.add_image(r["values"], r["output_sse"], r["output_ssim"], r["input_sse"], r["input_ssim"])
        m = tally.summary()
        return {"input_psnr": m["input_psnr"], "output_psnr": m["psnr"], "input_ssim": m["input_ssim"],
                "output_ssim": m["ssim"], "improved": tally.improved, "photos": tally.images}


def _is_grey(path: Path) -> bool:
    a = np.asarray(images.to_rgb(Image.open(path)))
    return bool((a[..., 0] == a[..., 1]).all() and (a[..., 1] == a[..., 2]).all())


def _ensure_dataset(settings: Settings, name: str, task: DemoTask, quick: bool, say, crops: int | None = None) -> None:
    """Ingest the task's dataset, or reuse one made with exactly these ingest options; one from an
    older demo (another spec, crop count or size) is replaced, so the held-out photos are degraded
    as the model's training pairs were."""
    spec = task.quick_spec if quick else task.spec
    # Random 96 px crops at the photos' own resolution: the scale the held-out photos are enhanced at.
    # scale as ingest settles it (the spec's), so that the options compare equal to a manifest's
    opts = IngestOptions(name=name, degrade=spec, size=96, crops=crops or (32 if quick else 64), val_fraction=0.2,
                         seed=0, source_label="sample:scikit-image (colour photos)" if task.colour_only else None,
                         scale=degrade.scale_of(spec))
    storage = Storage(settings)
    overwrite = False
    if storage.exists(manifest_key(name)):
        made = read_manifest(storage, name)
        if all(made.options.get(k) == v for k, v in asdict(opts).items() if k not in ("name", "source_label")):
            say(f"dataset {name} exists: reusing it")
            return
        why = (f"was made with {made.degradation}; this demo uses {spec}" if made.degradation != spec
               else "was made with other ingest options")
        say(f"dataset {name} {why}: ingesting it again")
        overwrite = True
    if not task.colour_only:
        say(f"ingesting the sample photos as {name} ({spec})")
        ingest(None, opts, settings, overwrite=overwrite)
        return
    # Grey sample photos (camera, moon, ...) would pair a grey input with the same grey target:
    # nothing to colourise, and an infinite PSNR on the held-out ones. Ingest the colour ones only.
    photos = [f for f in list_sample() if not _is_grey(Path(f.location))]
    say(f"ingesting the {len(photos)} colour sample photos as {name} ({spec})")
    with tempfile.TemporaryDirectory(prefix="img2img-demo-") as tmp:
        for f in photos:
            shutil.copy(f.location, Path(tmp) / f.key)
        ingest(tmp, opts, settings, overwrite=overwrite)


def trained_config(variant: str, params: dict[str, str]) -> dict | None:
    """The whole config a run trained `variant` with, rebuilt from its logged `cfg.KEY` params as
    `--init-from` rebuilds a parent's (every field, defaults included); None when they no longer
    make a valid config (a setting since renamed or refused)."""
    try:
        return make_config(get_variant(variant).Config, logged_config(params)).__dict__
    except (ValueError, TypeError):  # ConfigError is a ValueError
        return None


def trained_on(existing: list, sha256: str, wanted: dict | None = None,
               config_of: Callable[[object], dict | None] = lambda version: None) -> list[str]:
    """The versions (numbers, as strings) of `existing` (registry.models.VersionInfo) trained on the
    dataset whose manifest sha256 is `sha256` (their `dataset_sha256` tag) and, when `wanted` (a
    resolved variant config's fields) is given, with exactly that config (`config_of(version)`:
    the config its run trained with, or None when unknown): the only ones a re-run may reuse and
    promote; versions of an earlier spec of the same dataset name, or trained with other
    settings, are left alone."""
    return [v.version for v in existing if v.tags.get("dataset_sha256") == sha256
            and (wanted is None or config_of(v) == wanted)]


def demo_train_flags(spec: TrainSpec) -> str:
    """The `img2img train` options (after `--dataset`) that train as `spec` does: its variant,
    crop size, batch size when set, and `--set` pairs, each shell-quoted."""
    flags = ["--variant", spec.variant, "--image-size", str(spec.image_size)]
    if spec.batch_size:
        flags += ["--batch-size", str(spec.batch_size)]
    for key, value in spec.config.items():
        flags += ["--set", f"{key}={value}"]
    return " ".join(shlex.quote(f) for f in flags)


def demo_train_spec(dataset: str, variant: str, budget_s: float, scale: int,
                    recipe: dict[str, str] | None = None) -> TrainSpec:
    """The training the demo submits: `variant` on `dataset` for `budget_s` seconds, 2 CPU workers,
    64 px crops (96/N px for an N-times super-resolution dataset, `scale` N), with the CPU settings
    of its kind (pix2pix's small networks, the super-resolution scale) and then `recipe` (the task's
    `--set` pairs, `DemoTask.train_config`) in its config."""
    spec = TrainSpec(dataset=dataset, variant=variant, workers=2, cpus_per_worker=1.0, epochs=None,
                     time_budget_s=budget_s, model_name=f"{dataset}-{variant}", experiment="demo",
                     image_size=min(64, 96 // scale), checkpoint_every="30s")  # a few validations in 2-5 minutes
    if scale > 1 and "scale" in {f.name for f in fields(get_variant(variant).Config)}:
        spec.config = {"scale": str(scale)}  # a same-size --variant is refused by the scale check instead
    if variant == "pix2pix":
        spec.config = dict(PIX2PIX_CPU)
        spec.batch_size = 8
    spec.config = {**spec.config, **(recipe or {})}
    return spec


def _ensure_model(settings: Settings, dataset: str, variant: str, budget_s: float, say,
                  recipe: dict[str, str] | None = None) -> tuple[str, str | None, list[str], str]:
    """(registered model name, the version trained now or None, the versions trained on this very
    dataset (same manifest sha256) with the same whole config: when there are some, they are
    reused and nothing is trained, the `img2img train` options they were trained with
    (`demo_train_flags`)). `recipe`: the task's `--set` pairs (`demo_train_spec`)."""
    scale = degrade.scale_of(dataset_degradation(settings, dataset))  # super-resolution: 96 px crops hold 96/N
    spec = demo_train_spec(dataset, variant, budget_s, scale, recipe)
    model = spec.model_name
    try:
        existing = versions(settings, model)
    except Img2ImgError:  # not registered yet
        existing = []
    def config_of(version) -> dict | None:
        try:
            return trained_config(variant, client(settings).get_run(version.run_id).data.params)
        except MlflowException:  # its run deleted: what it was trained with is unknown
            return None

    same = trained_on(existing, read_manifest(Storage(settings), dataset).sha256, spec.variant_config().__dict__,
                      config_of)
    if same:
        say(f"model {model} already has {len(same)} version(s) trained on this dataset with these settings: "
            "reusing them (delete the model to retrain)")
        return model, None, same, demo_train_flags(spec)
    if existing:
        say(f"model {model}'s {len(existing)} version(s) were trained on an older {dataset} or with other "
            "settings: training a new one")
    out = submit(spec, settings)
    say(f"training {variant} for ~{budget_s:.0f}s: job {out['job_id']}, MLflow run {out['run_url']}")
    snap = follow_progress(job_client(settings), settings, out["job_id"], out["run_id"], say=say)
    error = outcome_error(out["job_id"], snap.status, snap.error or snap.message)
    if error:
        raise error
    trained = [v for v in versions(settings, model) if v.run_id == out["run_id"]]
    if not trained:
        raise Img2ImgError(f"training job {out['job_id']} registered no version of {model}; "
                           f"see `img2img jobs logs {out['job_id']}`")
    return model, trained[0].version, [trained[0].version], demo_train_flags(spec)


def _held_out_photos(settings: Settings, dataset: str) -> list[Path]:
    """The sample photos whose crops went to the validation split (never trained on)."""
    m = read_manifest(Storage(settings), dataset)
    keys = set()
    for shard in m.splits.get("val", []):
        data = Storage(settings).get_bytes(f"datasets/{dataset}/{shard.path}")
        keys |= {k.split("#")[0] for k in pq.read_table(io.BytesIO(data), columns=["key"]).column("key").to_pylist()}
    return [Path(f.location) for f in list_sample() if f.key in keys]


def _photo(path: Path, max_side: int | None = None) -> np.ndarray:
    """A photo at its own resolution (the scale training crops were cut at), optionally shrunk."""
    img = images.to_rgb(Image.open(path))
    if max_side and max(img.size) > max_side:
        img.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    return images.to_array(img)


def _score(a: np.ndarray, ref: np.ndarray) -> tuple[float, float, float]:
    """-> (PSNR dB, SSIM, sum of squared errors) of HxWx3 [0, 1] `a` against `ref`."""
    t = lambda x: torch.from_numpy(x).permute(2, 0, 1)[None]  # noqa: E731
    return float(psnr(t(a), t(ref))), float(ssim(t(a), t(ref))), float(squared_error(t(a), t(ref)))


def _bicubic(img: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """HxWx3 [0, 1] -> its bicubic upscale to `size` (`translator.metrics.baseline`); itself when the
    sizes agree."""
    t = torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1)[None] * 2 - 1
    return ((baseline(t, size)[0].permute(1, 2, 0).numpy() + 1) / 2).clip(0, 1).astype(np.float32)


def dataset_degradation(settings: Settings, dataset: str) -> str:
    return read_manifest(Storage(settings), dataset).degradation


def enhance_held_out(settings: Settings, dataset: str, result: DemoResult, say) -> None:
    """Degrade each held-out photo as the dataset was, enhance it through `POST /enhance`, score
    input and output against the original, and write an input | output | original grid per photo.
    A super-resolution input (`down:N`) is scored and shown as its bicubic upscale."""
    result.out_dir.mkdir(parents=True, exist_ok=True)
    timeout = client_timeout(settings.serve_url)  # asked once, not once a photo
    spec = dataset_degradation(settings, dataset)
    inp, outp = result.task.input_label, result.task.output_label
    for i, path in enumerate(_held_out_photos(settings, dataset)):
        clean = _photo(path)
        n = degrade.scale_of(spec)  # super-resolution: the original cut to a multiple of n, its input n times smaller
        clean = clean[:clean.shape[0] - clean.shape[0] % n, :clean.shape[1] - clean.shape[1] % n]
        degraded = degrade.apply(spec, clean, seed=1000 + i)
        # e.g. a grey photo made grey: nothing to undo, PSNR infinite
        if degraded.shape == clean.shape and np.abs(degraded - clean).max() < 0.5 / 255:
            result.skipped.append(path.name)
            say(f"{path.name}: `{spec}` leaves it unchanged; skipped")
            continue
        data, _ = enhance_bytes(settings.serve_url, images.encode(images.from_array(degraded), "PNG"), "image/png",
                                timeout=timeout)
        enhanced = images.to_array(Image.open(io.BytesIO(data)))
        if enhanced.shape != clean.shape:
            raise Img2ImgError(f"the endpoint returned {enhanced.shape[:2]} for a {clean.shape[:2]} image")
        degraded = _bicubic(degraded, clean.shape[:2])  # super-resolution: scored and shown as bicubic
        ip, iss, ise = _score(degraded, clean)
        op, os_, ose = _score(enhanced, clean)
        result.rows.append({"photo": path.name, "input_psnr": ip, "output_psnr": op, "input_ssim": iss,
                            "output_ssim": os_, "values": clean.size, "input_sse": ise, "output_sse": ose})
        grid = images.grid([[images.from_array(degraded), images.from_array(enhanced), images.from_array(clean)]],
                           labels=[f"{inp} (input)", f"{outp} (output)", "original (target)"])
        write_atomic(result.out_dir / f"{path.stem}.png", lambda tmp, g=grid: g.save(tmp, "PNG"))
        say(f"{path.name}: {inp} {ip:.2f} dB -> {outp} {op:.2f} dB")
    if not result.rows:
        raise Img2ImgError(f"no held-out photo of {dataset} is changed by `{spec}`: nothing to score")


def verdict(task: DemoTask, variant: str, mean: dict[str, float], budget_s: float | None) -> str:
    """One honest paragraph: what the model gained (PSNR dB of the pooled MSE and mean SSIM,
    output vs input, both against the original: `DemoResult.mean`) in its training budget
    (seconds; None when an earlier run's model was reused)."""
    gain, sgain = mean["output_psnr"] - mean["input_psnr"], mean["output_ssim"] - mean["input_ssim"]
    within = ""
    if budget_s:  # None: an earlier run's model was reused, nothing trained now
        minutes = budget_s / 60
        within = f" after {minutes:g} minute{'' if minutes == 1 else 's'} of CPU training"
    if gain > 0:
        text = (f"The model improves the degraded photos by {gain:.2f} dB (PSNR of the pooled MSE){within} "
                f"(SSIM {sgain:+.4f})" + (f"; {mean['improved']:.0f} of {mean['photos']:.0f} photos are closer to "
                                          "the original" if "photos" in mean else "") + ".")
        if sgain < 0:
            text += " SSIM got worse though: the output is closer in colour/tone but its structure is off."
    elif task.name == "deblur" and variant == "autoencoder":
        text = (f"Honestly: this model makes the photos worse ({gain:.2f} dB, SSIM {sgain:+.4f}). The article's "
                "autoencoder loses detail through its bottleneck; try the default `nafnet`, or train longer.")
    else:
        text = (f"Honestly: this model makes the photos worse ({gain:.2f} dB, SSIM {sgain:+.4f}){within}; "
                "train longer (`--budget`) or with more data.")
    if task.name == "upscale":
        text += " The input column is its bicubic upscale: the gain is the model's over bicubic."
    if task.name == "sketch":
        text += (" A line drawing keeps almost nothing of the photo's colour, so the input's PSNR is very low and "
                 "a gain in PSNR mostly means plausible average colours; judge the grids.")
    return text


def write_report(result: DemoResult, variant: str, settings: Settings, budget_s: float | None = None) -> Path:
    """report.md in the result's folder: the held-out table, the `img2img train` options the model
    was trained with (`result.train_flags`), and `verdict`'s paragraph. -> its path."""
    m = result.mean
    spec = dataset_degradation(settings, result.dataset)
    inp, outp = result.task.input_label, result.task.output_label
    lines = [f"# img2img demo: {result.task.name} with {variant} on `{result.dataset}`", "",
             f"Model `{result.model}` v{result.version}, served at {settings.serve_url}. Held-out sample photos "
             f"(never seen in training), degraded with `{spec}`, enhanced through `POST /enhance`.", "",
             *([f"Trained with `img2img train --dataset {result.dataset} {result.train_flags}`.", ""]
               if result.train_flags else []),
             f"Each PNG here is {inp} | {outp} | original. PSNR (dB) and SSIM are against the original; "
             "the set's PSNR is that of the pooled MSE over all photos (docs/metrics.md).", "",
             f"| photo | {inp} PSNR | {outp} PSNR | {inp} SSIM | {outp} SSIM |", "|---|---|---|---|---|"]
    for r in result.rows:
        lines.append(f"| {r['photo']} | {r['input_psnr']:.2f} | {r['output_psnr']:.2f} | "
                     f"{r['input_ssim']:.4f} | {r['output_ssim']:.4f} |")
    lines.append(f"| **set** | **{m['input_psnr']:.2f}** | **{m['output_psnr']:.2f}** | "
                 f"**{m['input_ssim']:.4f}** | **{m['output_ssim']:.4f}** |")
    if result.skipped:
        lines += ["", f"Skipped (`{spec}` leaves them unchanged): {', '.join(result.skipped)}."]
    lines += ["", verdict(result.task, variant, m, budget_s), ""]
    path = result.out_dir / "report.md"
    return write_atomic(path, "\n".join(lines))


def run_demo(settings: Settings, variant: str | None = None, quick: bool = False, out_dir: Path = Path("demo-output"),
             budget_s: float | None = None, say: Callable[[str], None] = print, task: str = DEFAULT_TASK,
             crops: int | None = None) -> DemoResult:
    """The whole path for `task` (deblur | colorize | sketch | restore | upscale): ingest the sample photos
    degraded with the task's spec, train `variant` (default: the task's) for `budget_s` seconds
    (default 300, quick 120), promote, deploy, enhance the held-out photos, write grids and
    report.md to `out_dir`. `crops` per photo overrides the ingest size (default 64, quick 32).
    Raises Img2ImgError for an unknown task and for any failed step."""
    t0 = time.time()
    the_task = demo_task(task)
    variant = variant or the_task.variant
    budget_s = budget_s or (120 if quick else 300)
    say("starting the embedded stack (S3 store, MLflow, Ray head)")
    Stack(settings).up(progress=say)
    dataset = the_task.dataset(quick)
    _ensure_dataset(settings, dataset, the_task, quick, say, crops)
    model, trained, same_data, flags = _ensure_model(settings, dataset, variant, budget_s, say,
                                                     the_task.train_config(variant))
    # The demo shows whatever it trained (even a model worse than its input): forced, with the reason
    # said; reusing earlier versions, it shows the best of those trained on this very data with
    # these very settings.
    decision = promote(settings, model, version=trained, best=trained is None, force=True, among=same_data,
                       evaluate=lambda ref, ds, split: evaluate(settings, ref, ds, split))
    version = decision.new
    for warning in decision.warnings:
        say(f"WARNING: {warning}")
    say(f"promoted {model} v{version} to champion")
    say("deploying the Serve endpoint `enhancer`")
    deploy(settings, f"{model}@champion", scaling=Scaling(min_replicas=1, max_replicas=2))
    result = DemoResult(dataset, model, version, out_dir=out_dir, task=the_task, train_flags=flags)
    enhance_held_out(settings, dataset, result, say)
    write_report(result, variant, settings, budget_s if trained is not None else None)
    say(f"done in {time.time() - t0:.0f}s")
    return result
