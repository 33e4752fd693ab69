"""`img2img models ls|promote|export|set-eval|rollback`: the MLflow model registry (rollback also
reloads the endpoint: this composition root is where the registry and serving meet)."""

from __future__ import annotations

from pathlib import Path

import typer

from cluster.cli_utils import (
    console,
    err_console,
    json_option,
    print_json,
    print_table,
)
from cluster.errors import Img2ImgError
from cluster.settings import Settings, get_settings
from img2img_cli.commands.eval import progress_bar
from registry.gate import Refused, check_metric
from registry.refs import parse_name, parse_ref
from serving.deploy import RELOAD_CLAIM_S, RELOAD_WAIT_S, redeploy_model, status

models_app = typer.Typer(help="List registered models, promote a version to champion, roll back, "
                              "choose the evaluation set.", no_args_is_help=True)


def _num(x, key="psnr"):
    return "-" if x is None else f"{x:.4f}" if "ssim" in key else f"{x:+.2f}" if "gain" in key else f"{x:.2f}"


LS_COLUMNS = ["version", "variant", "dataset", "val PSNR", "val SSIM", "gain dB", "cycle PSNR",
              "eval PSNR", "parent", "aliases", "note", "run", "created"]
LS_IDS = ["version", "variant", "dataset", "parent", "aliases", "run"]
# An 80-column terminal holds the rest; `--wide` adds these (`--json` has every field).
LS_WIDE_ONLY = ("val SSIM", "parent", "run", "created")


def applicable(columns: list[str], rows: list[list], keep: tuple[str, ...] = ()) -> tuple[list[str], list[list]]:
    """Leave out the columns no row has a value in ("-" or empty), except `keep`: e.g. `cycle PSNR`
    when every version is paired."""
    used = [i for i, c in enumerate(columns) if c in keep or any(str(r[i]) not in ("-", "") for r in rows)]
    return [columns[i] for i in used], [[r[i] for i in used] for r in rows]


def _row(v, where):
    """One `models ls` row. Unpaired variants' val numbers are cycle metrics: their own column.
    Val numbers of a version validated with an older set-PSNR definition (per-image mean) are
    marked `*` and decide nothing (`VersionInfo.worse_than_input`)."""
    paired = v.paired
    val = lambda k: v.metric(f"val_{k}") if paired else None  # noqa: E731
    cycle = v.metric("val_cycle_psnr") if v.metric("val_cycle_psnr") is not None else (
        None if paired else v.metric("val_psnr"))
    ev = v.eval_result(*where) if where else None
    score = None if ev is None else ev.get("psnr", ev.get("cycle_psnr"))
    note = "WORSE THAN INPUT" if v.worse_than_input else ""
    old = "" if v.current_metric or not paired else "*"
    return [f"{v.name}/{v.version}", v.tags.get("variant", "-"), v.tags.get("dataset", "-"), _num(val("psnr")) + old,
            _num(val("ssim"), "ssim"), _num(val("gain_db"), "gain") + old, _num(cycle), _num(score),
            v.tags.get("parent", "-"), ",".join(v.aliases), note, v.run_id, v.created]


def ls_table(found, where: dict, wide: bool) -> tuple[list[str], list[list]]:
    """`models ls`'s columns and rows for `found` versions: the 80-column set, or every column
    with `wide`; columns no row has a value in are left out."""
    rows = [_row(v, where.get(v.name)) for v in found]
    shown = [i for i, c in enumerate(LS_COLUMNS) if wide or c not in LS_WIDE_ONLY]
    return applicable([LS_COLUMNS[i] for i in shown], [[r[i] for i in shown] for r in rows], keep=("version",))


@models_app.command("ls")
def ls(name: str = typer.Argument(None, help="one registered model (default: all)"),
       wide: bool = typer.Option(False, "--wide", "-w", help="Also show val SSIM, the parent, the MLflow "
                                 "run id and the creation time."),
       as_json: bool = json_option()):
    """Registered models and versions (as NAME/VERSION, the reference other commands take):
    variant, training dataset, own-val PSNR/gain (paired), cycle PSNR (unpaired), PSNR on the
    model's evaluation set, aliases; `--wide` adds val SSIM, parent (fine-tuned from), run id and
    creation time (`--json` has every field).

    Example: `img2img models ls photos --wide`
    """
    # deferred: imports mlflow, torch (seconds of every CLI start)
    from registry.models import eval_set, versions

    name = name and parse_name(name, "img2img models ls")
    settings = get_settings()
    found = versions(settings, name)
    where = {n: eval_set(settings, n) for n in {v.name for v in found}}
    if as_json:
        print_json([{"model": v.name, "version": v.version, "variant": v.tags.get("variant"),
                     "dataset": v.tags.get("dataset"), "val_psnr": v.metric("val_psnr") if v.paired else None,
                     "val_ssim": v.metric("val_ssim") if v.paired else None, "val_gain_db": v.metric("val_gain_db"),
                     "val_cycle_psnr": v.metric("val_cycle_psnr"), "parent": v.tags.get("parent"),
                     "psnr_def": v.tags.get("psnr_def", "per-image-mean"),
                     "worse_than_input": v.worse_than_input, "eval_set": where[v.name],
                     "eval": v.eval_result(*where[v.name]) if where[v.name] else None,
                     "aliases": v.aliases, "run_id": v.run_id, "created": v.created} for v in found])
        return
    columns, rows = ls_table(found, where, wide)
    print_table("registered models", columns, rows, ids=[c for c in LS_IDS if c in columns])
    if any(r[columns.index("val PSNR")].endswith("*") for r in rows if "val PSNR" in columns):
        console.print("* validated as a mean of per-image PSNR (an older definition, not comparable); "
                      "the gate scores such versions again (docs/metrics.md)")
    for n, w in sorted(where.items()):
        if w:
            console.print(f"{n}: eval PSNR is on {w[0]}/{w[1]} (`img2img models set-eval {n} --dataset D` changes it)")


def _evaluator(settings):
    """Runs the evaluation jobs the gate needs, with a progress bar each."""
    # deferred: imports mlflow, ray (seconds of every CLI start)
    from jobs.evaluation.client import evaluate

    def run(ref, dataset, split):
        err_console.print(f"{ref} has no result on {dataset}/{split} yet: evaluating it on the cluster")
        with progress_bar(f"evaluating {ref} on {dataset}/{split}") as progress:
            return evaluate(settings, ref, dataset, split, progress=progress)

    return run


@models_app.command()
def promote(
    name: str,
    version: str = typer.Argument(None, help="version to promote (or use --best)"),
    best: bool = typer.Option(False, "--best", help="promote the best version on the evaluation set"),
    metric: str = typer.Option("psnr", help="psnr | ssim | gain_db on the evaluation set (higher is better)"),
    force: bool = typer.Option(False, "--force", help="promote even if worse than the champion or the input"),
):
    """Set the alias `champion` on a version, after scoring it and the champion on the model's
    evaluation set (stored results are reused; missing ones are computed on the cluster; the
    table says, per version, how many images and who computed it: eval job or training val).
    Refuses a candidate worse than the champion, or worse than its input, unless --force.

    Example: `img2img models promote photos 3`  or  `img2img models promote photos --best`
    """
    name = parse_name(name, "img2img models promote")
    check_metric(metric)
    # deferred: imports mlflow, torch (seconds of every CLI start)
    from registry.models import promote as do_promote

    settings = get_settings()
    try:
        d = do_promote(settings, name, version, best=best, metric=metric, force=force,
                       evaluate=_evaluator(settings))
    except Refused as e:
        _print_scores(e.decision)  # both numbers, side by side, then the one-line reason
        raise
    _print_scores(d)
    for w in d.warnings:
        err_console.print(f"[bold yellow]Warning:[/] {w}", highlight=False)
    if not d.changed:
        console.print(f"{name}: v{d.new} already is the champion")
        return
    console.print(f"{name}: champion is now v{d.new}" + (f" (previous: v{d.previous})" if d.previous else ""))
    console.print(f"Swap it into the running endpoint with: img2img serve reload --model {name}@champion")


def _print_scores(d) -> None:
    """The scores the gate compared, side by side, each with who computed it: an evaluation job
    or training's validation (fp32, every val image: the same numbers)."""
    rows = []
    for v, m in sorted(d.scores.items(), key=lambda kv: int(kv[0])):
        role = "candidate" if v == d.new else "champion" if v == d.previous else ""
        images = "-" if m.get("images") is None else f"{m['images']:.0f}"
        if "cycle_psnr" in m:
            rows.append([f"v{v}", role, f"{m['cycle_psnr']:.2f} (cycle)", _num(m.get("cycle_ssim"), "ssim"), "-",
                         images, d.sources.get(v, "-")])
        else:
            rows.append([f"v{v}", role, _num(m.get("psnr")), _num(m.get("ssim"), "ssim"),
                         _num(m.get("gain_db"), "gain"), images, d.sources.get(v, "-")])
    if rows:
        print_table(f"{d.name} on {d.dataset}/{d.split} (PSNR of the pooled MSE)",
                    ["version", "role", "PSNR dB", "SSIM", "gain dB", "images", "scored by"], rows)


@models_app.command()
def export(
    model: str = typer.Argument(..., help="NAME@champion, NAME@alias, NAME/VERSION or NAME"),
    fmt: str = typer.Option("onnx", "--format", "-f", help="onnx | torchscript"),
    out: Path = typer.Option(None, "-o", "--out", help="output file (default: ./NAME-vVERSION.onnx or .pt)"),
    tolerance: float = typer.Option(1e-3, help="refuse the export above this max abs difference "
                                               "from PyTorch ([-1, 1] scale)"),
    no_log: bool = typer.Option(False, "--no-log", help="do not log the file to the registry"),
):
    """Export a registered generator to ONNX or TorchScript (dynamic batch, height and width),
    checked against PyTorch on three input sizes, and log the file to the model version.

    Example: `img2img models export photos@champion --format onnx -o photos.onnx`
    """
    parse_ref(model)
    # deferred: imports mlflow, torch (seconds of every CLI start)
    from registry.export import export_model

    with console.status(f"exporting {model} to {fmt} and checking it against PyTorch"):
        r = export_model(get_settings(), model, fmt, out, tolerance, log_to_registry=not no_log)
    sizes = ", ".join(f"{k}: {v:.1e}" for k, v in r["per_size"].items())
    console.print(f"Exported {r['name']} v{r['version']} to {r['path']} ({r['format']}, dynamic batch/height/width)",
                  markup=False)
    console.print(f"Max abs difference from PyTorch: {r['max_abs_diff']:.1e} (tolerance {r['tolerance']:.0e}; "
                  f"per NxHxW input: {sizes})", markup=False)
    if r["artifact"]:
        console.print(f"Logged as artifact {r['artifact']} of run {r['run_id'][:12]} "
                      f"(tag export_{r['format']} on v{r['version']})", markup=False)


@models_app.command("set-eval")
def set_eval(
    name: str,
    dataset: str = typer.Option(..., "--dataset", "-d", help="dataset to evaluate every version on"),
    split: str = typer.Option("val", help="val | train | all"),
):
    """Choose the evaluation set the promotion gate scores the model's versions on.

    Example: `img2img models set-eval photos --dataset my-photos --split val`
    """
    name = parse_name(name, "img2img models set-eval")
    # deferred: imports mlflow, torch (seconds of every CLI start)
    from registry.models import set_eval_set

    set_eval_set(get_settings(), name, dataset, split)
    console.print(f"{name}: versions are now compared on {dataset}/{split}")


def reload_serving(settings: Settings, name: str, version: str) -> str:
    """Swap the endpoint to `name` v`version` when it serves another version of `name` (the
    `serve reload` path: new replicas' model loaded beside the old, no request dropped) -> one line
    saying what the endpoint serves now, or why it was left as it was. Raises Img2ImgError when
    the reload itself fails."""
    try:
        st = status(settings)
    except Img2ImgError as e:
        return f"The endpoint was not reloaded: could not reach it ({e})."
    if st is None:
        return "No endpoint is deployed; nothing to reload."
    if st["model"] != name:
        return f"The endpoint serves {st['model']} v{st['version']}, not {name}: left as it is."
    if str(st["version"]) == version:
        return f"The endpoint already serves {name} v{version}."
    try:
        redeploy_model(settings, f"{name}/{version}", wait_s=RELOAD_WAIT_S)
    except Img2ImgError as e:
        raise Img2ImgError(f"reloading the endpoint (it served {name} v{st['version']}) to v{version} failed ({e}); "
                           f"see what it serves with `img2img serve status`; retry with: "
                           f"img2img serve reload --model {name}@champion") from None
    return f"The endpoint now serves {name} v{version} (was v{st['version']}; swapped with no request dropped)."


@models_app.command()
def rollback(name: str,
             no_reload: bool = typer.Option(False, "--no-reload", help="move the alias only; leave the endpoint "
                                                                        "serving what it serves")):
    """Move `champion` back to the previous champion (repeated rollbacks go further back); when the
    endpoint serves this model, it is reloaded to the restored champion without dropping a request.

    Example: `img2img models rollback photos`
    """
    name = parse_name(name, "img2img models rollback")
    # deferred: imports mlflow, torch (seconds of every CLI start)
    from registry.claims import champion_claim
    from registry.models import rollback as do_rollback

    settings = get_settings()
    # the claim spans the reload too: a second rollback's reload can never land before this one's
    what, ttl_s = ("rolling back", 60) if no_reload else ("rolling back and reloading the endpoint", RELOAD_CLAIM_S)
    with champion_claim(settings, name, what, ttl_s=ttl_s):
        new, old, left = do_rollback(settings, name)
        console.print(f"{name}: champion rolled back to v{new}" + (f" (from v{old})" if old else ""))
        console.print("Former champions left to roll back to: " + (", ".join(f"v{v}" for v in reversed(left))
                                                                   if left else "none"))
        if no_reload:
            err_console.print(f"The endpoint was not reloaded (--no-reload); swap it in with: "
                              f"img2img serve reload --model {name}@champion", highlight=False)
            return
        with console.status(f"reloading the endpoint to {name} v{new}"):
            line = reload_serving(settings, name, new)
    console.print(line, highlight=False)
