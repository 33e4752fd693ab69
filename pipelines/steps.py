"""The steps of a pipeline, each the library call its CLI command makes (`data ingest`,
`train`, `eval`, the gate of `models promote`, `serve reload`, `models promote`): training and
evaluation are cluster jobs submitted through the admission, so each queues like any job.

Each step is (inputs -> cache key, run -> outputs); `Context.outputs` ({step: outputs}) carries
what earlier steps produced (dataset sha256, version, scores) to the later ones.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

from cluster.errors import Img2ImgError
from cluster.services import poll_until
from cluster.settings import Settings
from cluster.storage import Storage
from jobs.data.ingest import IngestOptions, ingest
from jobs.data.sources import scan_source
from jobs.evaluation.client import evaluate
from jobs.manage import outcome_error, wait
from jobs.training.client import job_client, submit
from jobs.training.spec import TrainSpec
from pipelines.spec import PipelineSpec
from registry.gate import metric_value, promotion_objections
from registry.manifest import manifest_key, read_manifest
from registry.models import CHAMPION, alias_version, eval_set, promote, resolve, scores, versions
from serving.deploy import redeploy_model
from serving.deploy import status as serve_status

log = logging.getLogger(__name__)


class Kept(Exception):
    """The gate kept the champion: the pipeline ends here, successfully, with this line."""


@dataclass
class Context:
    settings: Settings
    spec: PipelineSpec
    outputs: dict = field(default_factory=dict)
    on_job: object = None  # called with a step's Ray job id as soon as it is submitted

    def evaluator(self):
        def run(ref: str, dataset: str, split: str) -> dict:
            return evaluate(self.settings, ref, dataset, split, workers=self.spec.evaluate.workers,
                            cpus_per_worker=self.spec.evaluate.cpus_per_worker)
        return run


def dataset_sha(settings: Settings, name: str) -> str:
    return read_manifest(Storage(settings), name).sha256


def ingest_options(spec: PipelineSpec) -> IngestOptions:
    i = spec.ingest
    return IngestOptions(name=spec.dataset, degrade=i.degrade, size=i.size, crops=i.crops,
                         val_fraction=i.val_fraction, seed=i.seed, shard_rows=i.shard_rows)


# ---- inputs (cache keys) ------------------------------------------------------------------------
def source_listing(source: str, settings: Settings) -> list[list]:
    """[key, size (bytes), modified] of every image `data ingest` would read from `source` (a
    folder or s3://bucket/prefix): a new, removed or rewritten photo changes it."""
    files, _ = scan_source(source, settings)
    if not files or files[0].bucket is None:
        return [[f.key, (st := Path(f.location).stat()).st_size, st.st_mtime_ns] for f in files]
    bucket = files[0].bucket
    prefix = source[5:].partition("/")[2]
    objects = {o.key: o for o in Storage(settings, bucket=bucket).list(prefix)}
    return [[f.key, objects[f.location].size if f.location in objects else -1,
             str(objects[f.location].modified) if f.location in objects else ""] for f in files]


def ingest_inputs(ctx: Context) -> dict:
    return {"source": ctx.spec.source, "files": source_listing(ctx.spec.source, ctx.settings),
            "options": ctx.spec.ingest.model_dump(), "dataset": ctx.spec.dataset}


def _data_sha(ctx: Context) -> str:
    return ctx.outputs.get("ingest", {}).get("dataset_sha256") or dataset_sha(ctx.settings, ctx.spec.dataset)


def _parent(ctx: Context) -> str:
    """NAME/VERSION the train step starts from ("": from scratch): `init_from` resolved now (an
    alias moves, the cache key must not), or the model's champion for `finetune: true`."""
    if ctx.spec.train.init_from:
        v = resolve(ctx.settings, ctx.spec.train.init_from)
        return f"{v.name}/{v.version}"
    if not ctx.spec.train.finetune:
        return ""
    v = alias_version(ctx.settings, ctx.spec.model_name, CHAMPION)
    return f"{ctx.spec.model_name}/{v}" if v else ""


def train_inputs(ctx: Context) -> dict:
    return {"dataset_sha256": _data_sha(ctx), "train": ctx.spec.train.model_dump(), "model": ctx.spec.model_name,
            "parent": _parent(ctx), "code": ctx.spec.code_version}


def _candidate(ctx: Context) -> str:
    if ctx.outputs.get("train", {}).get("version"):
        return ctx.outputs["train"]["version"]
    found = versions(ctx.settings, ctx.spec.model_name)  # no train step: the latest version
    if not found:
        raise Img2ImgError(f"model {ctx.spec.model_name!r} has no version to evaluate; add the train step")
    return found[-1].version


def yardstick(ctx: Context) -> tuple[str, str]:
    """(dataset, split) the candidate is scored on: the file's evaluate.dataset, else the model's
    evaluation set, else the training dataset's val split."""
    if ctx.spec.evaluate.dataset:
        return ctx.spec.evaluate.dataset, ctx.spec.evaluate.split
    try:
        where = eval_set(ctx.settings, ctx.spec.model_name)
    except Img2ImgError:
        where = None
    return where or (ctx.spec.dataset, ctx.spec.evaluate.split)


def evaluate_inputs(ctx: Context) -> dict:
    dataset, split = yardstick(ctx)
    sha = dataset_sha(ctx.settings, dataset) if Storage(ctx.settings).exists(manifest_key(dataset)) else "missing"
    return {"model": ctx.spec.model_name, "version": _candidate(ctx), "dataset": dataset, "split": split,
            "dataset_sha256": sha, "code": ctx.spec.code_version}


def gate_inputs(ctx: Context) -> dict:
    return {"model": ctx.spec.model_name, "version": _candidate(ctx), **ctx.spec.gate.model_dump(),
            "evaluate": ctx.outputs.get("evaluate", {}).get("key", ""), "code": ctx.spec.code_version}


def rollout_inputs(ctx: Context) -> dict:
    """deploy and promote: the candidate (their cached result is checked against the live state
    by `still_true`)."""
    return {"model": ctx.spec.model_name, "version": _candidate(ctx)}


# ---- is a cached result still true? -------------------------------------------------------------
def still_true(ctx: Context, step: str, out: dict) -> bool:
    """Whether a cached step's outputs still describe the world: the dataset it made is unchanged,
    the version it trained exists, the champion and the served model are what it left."""
    s = ctx.settings
    name = ctx.spec.model_name
    if step == "ingest":
        exists = Storage(s).exists(manifest_key(ctx.spec.dataset))
        return exists and dataset_sha(s, ctx.spec.dataset) == out.get("dataset_sha256")
    if step == "train":
        return any(v.version == out.get("version") for v in versions(s, name))
    if step == "gate":  # the champion it compared with, or the candidate since promoted
        return alias_version(s, name, CHAMPION) in (out.get("champion") or None, out.get("candidate"))
    if step == "deploy":
        st = serve_status(s) or {}
        if out.get("deployed") == "yes":
            return st.get("model") == name and str(st.get("version")) == out.get("version")
        return st.get("model") != name
    if step == "promote":
        return alias_version(s, name, CHAMPION) == out.get("champion")
    return True


# ---- runs -------------------------------------------------------------------------------------
def run_ingest(ctx: Context) -> dict:
    overwrite = Storage(ctx.settings).exists(manifest_key(ctx.spec.dataset))
    result = ingest(ctx.spec.source, ingest_options(ctx.spec), ctx.settings, overwrite=overwrite, workers=1)
    return {"dataset": ctx.spec.dataset, "dataset_sha256": result.manifest.sha256,
            "rows": sum(result.manifest.counts.values())}


def train_spec(spec: PipelineSpec, parent: str = "") -> TrainSpec:
    """The `train` request of the file's train options; `parent` (NAME/VERSION): fine-tune from it."""
    t = spec.train
    return TrainSpec(dataset=spec.dataset, variant="" if parent else t.variant, config=dict(t.set),
                     workers=t.workers, cpus_per_worker=t.cpus_per_worker, epochs=t.epochs, max_steps=t.max_steps,
                     time_budget_s=t.time_budget_s, batch_size=t.batch_size, image_size=t.image_size, lr=t.lr,
                     experiment=t.experiment, model_name=spec.model_name, checkpoint_every=t.checkpoint_every,
                     precision=t.precision, init_from=parent or None)


def run_train(ctx: Context) -> dict:
    spec = train_spec(ctx.spec, _parent(ctx))
    out = submit(spec, ctx.settings)
    if ctx.on_job:
        ctx.on_job(out["job_id"])
    client = job_client(ctx.settings)
    status = wait(client, out["job_id"], follow=False)
    error = outcome_error(out["job_id"], status, client.get_job_info(out["job_id"]).message or "")
    if error:
        raise error
    made = [v for v in versions(ctx.settings, ctx.spec.model_name) if v.run_id == out["run_id"]]
    if not made:
        raise Img2ImgError(f"training job {out['job_id']} registered no version of {ctx.spec.model_name}")
    return {"job_id": out["job_id"], "run_id": out["run_id"], "version": made[0].version,
            "parent": spec.parent or ""}


def run_evaluate(ctx: Context) -> dict:
    dataset, split = yardstick(ctx)
    summary = ctx.evaluator()(f"{ctx.spec.model_name}/{_candidate(ctx)}", dataset, split)
    return {"job_id": summary.get("job_id", ""), "eval_set": f"{dataset}/{split}",
            **{k: f"{v:.4f}" for k, v in summary["metrics"].items() if isinstance(v, float | int)}}


def run_gate(ctx: Context) -> dict:
    """The promotion rule (`registry.gate.promotion_objections`) on the model's evaluation set:
    the candidate against the champion, and against its own input. A refusal raises Kept with
    `kept champion vN: candidate vM scored X dB vs Y dB on SET` (`gate.force`: promoted anyway,
    the objections kept as `warnings`)."""
    name, candidate = ctx.spec.model_name, _candidate(ctx)
    champion = alias_version(ctx.settings, name, CHAMPION)
    if champion == candidate:
        return {"decision": "promote", "candidate": candidate, "champion": champion}
    pool = [v for v in versions(ctx.settings, name) if v.version in (candidate, champion)]
    dataset, split, score, _ = scores(ctx.settings, name, pool, ctx.evaluator())
    metric, where = ctx.spec.gate.metric, f"{dataset}/{split}"
    reasons = promotion_objections(candidate, champion, score, metric, where)
    new = metric_value(score[candidate], metric)
    old = metric_value(score[champion], metric) if champion else None
    out = {"candidate": candidate, "champion": champion or "", "eval_set": where, "metric": metric,
           "candidate_score": _num(new), "champion_score": _num(old)}
    if not reasons:
        return {**out, "decision": "promote"}
    if ctx.spec.gate.force:
        return {**out, "decision": "promote", "warnings": "; ".join(reasons)}
    unit = "" if metric == "ssim" else " dB"
    if champion:
        line = f"kept champion v{champion}: candidate v{candidate} scored {new:.2f}{unit} vs {old:.2f}{unit} on {where}"
        if new is not None and old is not None and new >= old:  # refused for another reason than the score
            line += f" ({'; '.join(reasons)})"
    else:
        line = f"no champion: candidate v{candidate} scored {_num(new)}{unit} on {where} ({'; '.join(reasons)})"
    raise Kept(line, {**out, "decision": "keep", "reason": "; ".join(reasons), "outcome": line})


def _num(value: float | None) -> str:
    return f"{value:.3f}" if value is not None else ""


def run_deploy(ctx: Context) -> dict:
    st = serve_status(ctx.settings)
    if not st or st.get("model") != ctx.spec.model_name:
        served = f"{st.get('model')}" if st else "nothing"
        return {"deployed": "no", "reason": f"the endpoint serves {served}, not {ctx.spec.model_name}: left alone"}
    candidate = _candidate(ctx)
    if ctx.spec.deploy.rollout == "canary" and str(st.get("version")) != candidate:
        return run_canary(ctx, candidate)
    out = redeploy_model(ctx.settings, f"{ctx.spec.model_name}/{candidate}")
    return {"deployed": "yes", "version": out["version"]}


CANARY_POLL_S = 5.0  # how often the deploy step reads a canary's status (GET /rollout)


def canary_verdict(st: dict, interval_s: float, now: float) -> str | None:
    """What a stepped canary's status (`serving.rollouts.status`) means for the pipeline:
    "abort" once it aborted itself (a guard breached), "promote" once its last step has held
    for `interval_s` seconds (`now`: epoch seconds) and the challenger answered at least the
    rollout's `min_requests` there with the guards intact (as every earlier step), else None."""
    if st.get("state") == "aborted":
        return "abort"
    steps = st.get("steps") or {}
    if st.get("state") != "canary" or not steps or steps.get("step") != steps.get("of"):
        return None
    reached = (steps.get("taken") or [{}])[-1].get("at")
    judged = (st.get("challenger") or {}).get("requests", 0) - steps.get("base_requests", 0)
    needed = (st.get("limits") or {}).get("min_requests", 10)
    return "promote" if reached is not None and now - reached >= interval_s and judged >= needed else None


def run_canary(ctx: Context, candidate: str) -> dict:
    """deploy with `rollout: canary`: a stepped canary of `candidate` beside the served champion
    (`serving.rollouts.start`), read every CANARY_POLL_S seconds. Its last step held for the
    interval -> promoted (the challenger becomes champion and serves every request); a breached
    guard, or no promotion within the timeout -> aborted, and the pipeline ends keeping the
    champion (Kept, with the reason). A pipeline stopped meanwhile aborts the canary first."""
    from serving import rollouts  # deferred like serving.deploy's own imports of the registry

    d, name = ctx.spec.deploy, ctx.spec.model_name
    champion = alias_version(ctx.settings, name, CHAMPION) or ""
    plan = rollouts.start(ctx.settings, "canary", f"{name}/{candidate}", limits=d.limits, steps=d.shares,
                          interval_s=d.interval_s)
    log.info("canary of %s v%s started: %s%% of requests, steps %s every %s", name, candidate, plan["percent"],
             d.steps, d.interval)
    seen: dict = {}

    def decided() -> bool:
        seen["status"] = rollouts.status(ctx.settings)
        seen["verdict"] = canary_verdict(seen["status"], d.interval_s, time.time())
        return seen["verdict"] is not None

    try:
        poll_until(decided, d.timeout_s, interval_s=CANARY_POLL_S)
    except BaseException:  # stopped or failed while it ran: the champion alone serves again
        try:
            rollouts.end(ctx.settings, "abort")
        except Exception as e:  # the original failure is the one to report
            log.warning("could not abort the canary (%s); end it with: img2img serve rollout abort", e)
        raise
    st = seen.get("status") or {}
    out = {"candidate": candidate, "champion": champion, "rollout_id": st.get("id", ""),
           "challenger_requests": str((st.get("challenger") or {}).get("requests", 0))}
    if seen.get("verdict") == "promote":
        try:
            rollouts.end(ctx.settings, "promote")
        except Img2ImgError as e:  # e.g. a rollback holds the champion claim: the canary must not run on
            try:
                rollouts.end(ctx.settings, "abort")
                then = f"it was aborted: v{champion} serves alone"
            except Img2ImgError as e2:
                then = f"aborting it failed too ({e2}); see img2img serve rollout status"
            raise Img2ImgError(f"the canary of v{candidate} held, but promoting it failed ({e}); {then}") from None
        return {**out, "deployed": "yes", "version": candidate, "rollout": "promoted"}
    why = (st.get("reason") or "a guard was breached") if seen.get("verdict") == "abort" else (
        f"not promoted within {d.timeout} ({(st.get('steps') or {}).get('next_move', 'no status')})")
    rollouts.end(ctx.settings, "abort")
    line = f"kept champion v{champion}: the canary of v{candidate} aborted: {why}"
    raise Kept(line, {**out, "deployed": "no", "rollout": "aborted", "reason": why, "decision": "keep",
                      "outcome": line})


def deploy_inputs(ctx: Context) -> dict:
    """deploy: the candidate and how it rolls out."""
    return {**rollout_inputs(ctx), "rollout": ctx.spec.deploy.model_dump()}


def run_promote(ctx: Context) -> dict:
    deploy = ctx.outputs.get("deploy") or {}
    if deploy.get("rollout") == "promoted":  # the canary made it champion already
        return {"champion": deploy["version"], "previous": deploy.get("champion", ""), "changed": "true"}
    decision = promote(ctx.settings, ctx.spec.model_name, version=_candidate(ctx), metric=ctx.spec.gate.metric,
                       force=ctx.spec.gate.force, evaluate=ctx.evaluator())
    return {"champion": decision.new, "previous": decision.previous or "", "changed": str(decision.changed).lower()}


STEP_FUNCS = {
    "ingest": (ingest_inputs, run_ingest),
    "train": (train_inputs, run_train),
    "evaluate": (evaluate_inputs, run_evaluate),
    "gate": (gate_inputs, run_gate),
    "deploy": (deploy_inputs, run_deploy),
    "promote": (rollout_inputs, run_promote),
}
