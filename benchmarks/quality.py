"""Restoration quality on held-out photos: nafnet (trained through the platform) vs the blurred
input, unsharp masking, Wiener deconvolution and Richardson-Lucy with the TRUE kernel, and the
article's autoencoder; then a nafnet trained on a mix of blurs, scored per degradation.

Usage: python benchmarks/quality.py [--minutes 10,30] [--mix-minutes 10] [--set ema_decay=0 ...]
Training runs are real platform jobs (2 CPU workers); the 30-minute model resumes the 10-minute
run (`--resume`), so the budgets are cumulative.

Blind: python benchmarks/quality.py --blind [--minutes 10] [--set degrade=second_order ...]
one nafnet trained on the blind mix (`BLIND_DATASET`: MIX pairs of 96 px crops; by default
its inputs synthesised afresh every step, `--set degrade=stored` for the ingested ones), scored
per degradation against the input, unsharp masking, Richardson-Lucy and Wiener with the true
kernel (Wiener's K, and for the resize its Gaussian PSF too, picked on these very photos).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.common import report, settings_with_stack  # noqa: E402

SIGMA = 1.5
MIX = "mix(random_gaussian:0.5-3,resize:4)"
TEST_SIZE = 256
BLIND_DATASET = "quality-blind"
BLIND_TESTS = ("gaussian:1.5", "gaussian:2.5", "resize:4")
K_GRID = (1e-4, 3e-4, 1e-3, 3e-3, 1e-2)


# ---- classical baselines (know the true Gaussian kernel) -------------------------------------
def _psf(sigma: float) -> np.ndarray:
    from translator.degrade import gaussian_kernel

    k = gaussian_kernel(sigma)
    return np.outer(k, k)


def wiener(img: np.ndarray, sigma: float, k: float) -> np.ndarray:
    psf = _psf(sigma)
    pad = psf.shape[0] * 2
    p = np.pad(img, ((pad, pad), (pad, pad), (0, 0)), mode="symmetric")
    kernel = np.zeros(p.shape[:2])
    r = psf.shape[0] // 2
    kernel[: psf.shape[0], : psf.shape[1]] = psf
    kernel = np.roll(kernel, (-r, -r), axis=(0, 1))
    H = np.fft.fft2(kernel)[..., None]
    out = np.real(np.fft.ifft2(np.conj(H) / (np.abs(H) ** 2 + k) * np.fft.fft2(p, axes=(0, 1)), axes=(0, 1)))
    return np.clip(out[pad:-pad, pad:-pad], 0, 1).astype(np.float32)


def richardson_lucy(img: np.ndarray, sigma: float, iterations: int = 30) -> np.ndarray:
    from skimage.restoration import richardson_lucy as rl

    psf = _psf(sigma)
    pad = psf.shape[0]
    p = np.pad(img, ((pad, pad), (pad, pad), (0, 0)), mode="symmetric")
    out = np.stack([rl(p[..., c], psf, num_iter=iterations, clip=True) for c in range(3)], -1)
    return out[pad:-pad, pad:-pad].astype(np.float32)


def unsharp(img: np.ndarray, radius: float = 2.0, amount: float = 1.0) -> np.ndarray:
    """img + amount * (img - gaussian(img)). Written out because skimage 0.26's unsharp_mask
    returns NaN/garbage on float32 RGB input."""
    from translator import degrade

    return np.clip(img + amount * (img - degrade.apply(f"gaussian:{radius}", img, seed=0)), 0, 1).astype(np.float32)


def to_8bit(img: np.ndarray) -> np.ndarray:
    """Round to 8-bit levels, as the platform's PNG datasets and any real photo are: without it
    a tiny-K Wiener filter inverts a noise-free float blur almost exactly, which no user sees."""
    return (np.round(img * 255) / 255).astype(np.float32)


# ---- data and scoring -------------------------------------------------------------------------
def held_out_names(settings, dataset: str) -> list[str]:
    """The file names of `held_out_photos`, in its order."""
    from img2img_demo.run import _held_out_photos

    return [p.name for p in _held_out_photos(settings, dataset)]


def held_out_photos(settings, dataset: str) -> list[np.ndarray]:
    """256x256 centre crops, at native resolution, of the photos in the dataset's val split."""
    from img2img_demo.run import _held_out_photos

    out = []
    for path in _held_out_photos(settings, dataset):
        from PIL import Image

        from translator import images

        img = images.to_array(images.to_rgb(Image.open(path)))
        h, w = img.shape[:2]
        s = min(TEST_SIZE, h, w)
        out.append(img[(h - s) // 2:(h - s) // 2 + s, (w - s) // 2:(w - s) // 2 + s])
    return out


def score(outputs: list[np.ndarray], cleans: list[np.ndarray]) -> tuple[float, float]:
    """-> (PSNR dB of the pooled MSE over the photos, mean SSIM), as everywhere (docs/metrics.md)."""
    import torch

    from translator.metrics import SetTally

    t = lambda a: torch.from_numpy(np.ascontiguousarray(a)).permute(2, 0, 1)[None]  # noqa: E731
    tally = SetTally()
    for o, c in zip(outputs, cleans):
        tally.add(t(o).double(), t(c).double())
    m = tally.summary(paired=False)
    return m["psnr"], m["ssim"]


def model_fn(settings, name: str, version: str):
    import torch

    from registry.loading import load

    m = load(settings.mlflow_uri, name, version)

    def run(img: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(img).permute(2, 0, 1)[None] * 2 - 1
        return ((m.enhance(x)[0].permute(1, 2, 0).numpy() + 1) / 2).clip(0, 1)

    return run


def train(settings, dataset: str, variant: str, minutes: float, model_name: str, resume: str | None = None,
          config: dict | None = None):
    from mlflow.tracking import MlflowClient

    from jobs.manage import wait
    from jobs.training.client import job_client, submit
    from jobs.training.spec import TrainSpec

    spec = TrainSpec(dataset=dataset, variant=variant, workers=2, cpus_per_worker=1.0, epochs=100_000,
                     time_budget_s=minutes * 60, image_size=None if "image_size" in (config or {}) else 64,
                     model_name=model_name, experiment="quality",
                     resume=resume, config=dict(config or {}))
    out = submit(spec, settings)
    if wait(job_client(settings), out["job_id"], follow=False) != "SUCCEEDED":
        raise RuntimeError(f"training {variant} failed: img2img jobs logs {out['job_id']}")
    versions = MlflowClient(settings.mlflow_uri).search_model_versions(f"name='{model_name}'")
    version = next(v for v in versions if v.run_id == out["run_id"])
    return out["run_id"], str(version.version)


def ensure(settings, name: str, degrade: str, size: int = 64) -> None:
    from cluster.storage import Storage
    from jobs.data.ingest import IngestOptions, ingest
    from registry.manifest import manifest_key

    if not Storage(settings).exists(manifest_key(name)):
        ingest(None, IngestOptions(name=name, degrade=degrade, size=size, crops=32, val_fraction=0.25, seed=0),
               settings)


def classical_rows(spec: str, degraded: list[np.ndarray], cleans: list[np.ndarray]) -> list[list]:
    """[method, PSNR, SSIM] of the classical restorations of one degradation: unsharp masking (amount
    picked), and for a Gaussian blur Richardson-Lucy and Wiener with its true kernel, for the
    resize Wiener with the best Gaussian PSF; every free constant picked on these very photos."""
    best = lambda outs: max(outs, key=lambda o: o[1][0])  # noqa: E731  (label, (psnr, ssim)) by PSNR
    label, (p, q) = best([(f"unsharp mask (radius 2, amount {a:g}, best of 3)", score([unsharp(d, 2.0, a) for d in degraded], cleans))
                          for a in (0.5, 1.0, 1.5)])
    rows = [[label, p, q]]
    if spec.startswith("gaussian:"):
        sigma = float(spec.split(":")[1])
        label, (p, q) = best([(f"Wiener, true kernel (K={k:g}, best of {len(K_GRID)})",
                               score([wiener(d, sigma, k) for d in degraded], cleans)) for k in K_GRID])
        rows += [["Richardson-Lucy, true kernel, 30 it", *score([richardson_lucy(d, sigma) for d in degraded], cleans)],
                 [label, p, q]]
    else:
        label, (p, q) = best([(f"Wiener, Gaussian PSF sigma {s:g} (K={k:g}; best of 4 x {len(K_GRID)})",
                               score([wiener(d, s, k) for d in degraded], cleans))
                              for s in (1.0, 1.5, 2.0, 2.5) for k in K_GRID])
        rows.append([label, p, q])
    return rows


def blind(settings, args, config: dict, lever: str, suffix: str) -> None:
    """The blind table: one model trained `args.minutes` (its first budget) on BLIND_DATASET, per
    degradation of BLIND_TESTS against the classical rows."""
    from translator import degrade

    ensure(settings, BLIND_DATASET, MIX, size=96)
    cleans = held_out_photos(settings, BLIND_DATASET)
    minutes = float(args.minutes.split(",")[0])
    config = {"degrade": MIX, **config}
    _, version = train(settings, BLIND_DATASET, "nafnet", minutes, "quality-blind", config=config)
    run = model_fn(settings, "quality-blind", version)
    rows, per_photo = [], []
    names = held_out_names(settings, BLIND_DATASET)
    for spec in BLIND_TESTS:
        degraded = [to_8bit(degrade.apply(spec, c, seed=i)) for i, c in enumerate(cleans)]
        classical = classical_rows(spec, degraded, cleans)
        outputs = [run(d) for d in degraded]
        model = score(outputs, cleans)
        rows += [[spec, "input", *score(degraded, cleans), "-"], *[[spec, *r, "-"] for r in classical],
                 [spec, f"nafnet-tiny, blind{lever}", *model, f"{model[0] - max(r[1] for r in classical):+.2f}"]]
        per_photo += _per_photo(spec, names, degraded, outputs, cleans)
    report(f"quality_blind{suffix}", f"One blind nafnet ({minutes:g} min, 2 workers) vs classical methods that know "
           f"the degradation ({len(cleans)} held-out photos x {TEST_SIZE}px)",
           ["degradation", "method", "PSNR dB", "SSIM", "model - best classical dB"], rows,
           notes=f"Trained on {BLIND_DATASET} (the sample photos' training split, {MIX}, 96 px crops) with "
                 f"{', '.join(f'{k}={v}' for k, v in config.items())}; inputs rounded to 8 bits. The classical "
                 "methods are given the true kernel (the resize: the best Gaussian PSF) and their constants are "
                 "picked on these very photos; the model only ever saw training pairs.")
    report(f"quality_blind_per_photo{suffix}", f"The blind nafnet per held-out photo{lever}",
           ["degradation", "photo", "input dB", "Wiener dB", "model dB", "model detail / clean", "Wiener detail / clean"],
           per_photo, notes="PSNR per photo (the pooled table averages the squared errors). Detail: the mean squared "
                            "difference of neighbouring pixels, as a multiple of the clean photo's (above 1: "
                            "over-sharpened).")


def _hf_energy(img: np.ndarray) -> float:
    """Mean squared difference of horizontally neighbouring pixels: how much fine detail an image has."""
    return float(np.mean(np.diff(img, axis=1) ** 2))


def _per_photo(spec: str, names: list[str], degraded: list[np.ndarray], outputs: list[np.ndarray],
               cleans: list[np.ndarray]) -> list[list]:
    """[degradation, photo, input dB, Wiener dB (a Gaussian: true kernel, the pooled score's K), model dB,
    the model's and Wiener's fine detail as a multiple of the clean photo's] per held-out photo."""
    if spec.startswith("gaussian:"):
        sigma = float(spec.split(":")[1])
        k = max(K_GRID, key=lambda k: score([wiener(d, sigma, k) for d in degraded], cleans)[0])
        restored = [wiener(d, sigma, k) for d in degraded]
    else:
        restored = [None] * len(degraded)
    rows = []
    for name, d, o, w, c in zip(names, degraded, outputs, restored, cleans):
        detail = _hf_energy(c)
        rows.append([spec, name, score([d], [c])[0], score([w], [c])[0] if w is not None else "-", score([o], [c])[0],
                     _hf_energy(o) / detail, _hf_energy(w) / detail if w is not None else "-"])
    return rows


def _key_value(text: str) -> str:
    if "=" not in text or not text.split("=", 1)[0].strip():
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return text


def main() -> None:
    from translator import degrade

    parser = argparse.ArgumentParser()
    parser.add_argument("--minutes", default="10,30", help="cumulative nafnet budgets")
    parser.add_argument("--mix-minutes", type=float, default=10)
    parser.add_argument("--parts", default="autoencoder,nafnet,mix",
                        help="which trained rows to produce (the classical rows always run: seconds)")
    parser.add_argument("--tag", default="", help="suffix for the result tables' names, e.g. a re-run")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", type=_key_value,
                        help="nafnet hyper-parameter override for the trained rows (a lever), e.g. ema_decay=0")
    parser.add_argument("--blind", action="store_true",
                        help="only the blind table: one model on the mix, per degradation vs the classical methods")
    args = parser.parse_args()
    config = dict(kv.split("=", 1) for kv in args.set)
    lever = f" ({', '.join(args.set)})" if args.set else ""
    parts = set(args.parts.split(","))
    suffix = f"_{args.tag}" if args.tag else ""
    budgets = [float(m) for m in args.minutes.split(",")]
    settings = settings_with_stack()
    if args.blind:
        return blind(settings, args, config, lever, suffix)
    ensure(settings, "quality-g15", f"gaussian:{SIGMA}")
    ensure(settings, "quality-mix", MIX)
    cleans = held_out_photos(settings, "quality-g15")
    blurred = [to_8bit(degrade.apply(f"gaussian:{SIGMA}", c, seed=i)) for i, c in enumerate(cleans)]
    rows = [["blurred input", "-", *score(blurred, cleans)],
            ["unsharp mask (radius 2, amount 1)", "-", *score([unsharp(b) for b in blurred], cleans)]]
    best_k = max((1e-4, 3e-4, 1e-3, 3e-3, 1e-2), key=lambda k: score([wiener(b, SIGMA, k) for b in blurred], cleans)[0])
    rows.append([f"Wiener, true kernel (K={best_k:g}, best of 5)", "-",
                 *score([wiener(b, SIGMA, best_k) for b in blurred], cleans)])
    rows.append(["Richardson-Lucy, true kernel, 30 it", "-", *score([richardson_lucy(b, SIGMA) for b in blurred], cleans)])
    if "autoencoder" in parts:
        _, ae_version = train(settings, "quality-g15", "autoencoder", budgets[0], "quality-autoencoder")
        run = model_fn(settings, "quality-autoencoder", ae_version)
        rows.append(["autoencoder (article seed)", f"{budgets[0]:g} min", *score([run(b) for b in blurred], cleans)])
    run_id, done = None, 0.0
    for total in budgets if "nafnet" in parts else []:
        run_id, version = train(settings, "quality-g15", "nafnet", total - done, "quality-nafnet", resume=run_id,
                                config=config)
        done = total
        run = model_fn(settings, "quality-nafnet", version)
        rows.append([f"nafnet-tiny{lever}", f"{total:g} min", *score([run(b) for b in blurred], cleans)])
    report(f"quality_gaussian{suffix}", f"Deblurring held-out photos ({len(cleans)} x {TEST_SIZE}px), Gaussian sigma {SIGMA}",
           ["method", "CPU budget (2 workers)", "PSNR dB", "SSIM"], rows,
           notes="Inputs are rounded to 8 bits, like the platform's PNG datasets. Wiener and Richardson-Lucy are "
                 "given the TRUE kernel (and Wiener's K is picked on these very photos); the networks only see "
                 "example pairs. Each longer nafnet budget resumes the previous run.")
    if "mix" not in parts:
        return
    _, mix_version = train(settings, "quality-mix", "nafnet", args.mix_minutes, "quality-nafnet-mix",
                              config=config)
    run = model_fn(settings, "quality-nafnet-mix", mix_version)
    mix_rows = []
    for spec in ("gaussian:1.5", "gaussian:2.5", "resize:4"):
        degraded = [to_8bit(degrade.apply(spec, c, seed=i)) for i, c in enumerate(cleans)]
        sigma = float(spec.split(":")[1]) if spec.startswith("gaussian") else None
        wien = score([wiener(d, sigma, best_k) for d in degraded], cleans)[0] if sigma else float("nan")
        mix_rows.append([spec, *score(degraded, cleans), *score([run(d) for d in degraded], cleans), wien])
    report(f"quality_mix{suffix}", f"nafnet{lever} trained {args.mix_minutes:g} min on {MIX}, scored per degradation",
           ["degradation", "input PSNR", "input SSIM", "nafnet PSNR", "nafnet SSIM", "Wiener (true kernel) PSNR"],
           mix_rows)


if __name__ == "__main__":
    main()
