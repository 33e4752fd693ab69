"""From a trained model to a better one, on the real stack: `img2img eval`, the promotion gate on
one shared evaluation set, the history of champions, `--init-from` fine-tuning and lineage."""

from __future__ import annotations

import json

import mlflow
import pytest
from mlflow.tracking import MlflowClient

from cluster.storage import Storage
from registry import models as registry
from registry.manifest import read_manifest
from tests.integration.conftest import TINY, untrained_val_psnr

pytestmark = pytest.mark.integration
MODEL = "gate-test"


@pytest.fixture(scope="module")
def light_dataset(stack):
    """Barely degraded pairs (noise of 1/255, inputs ~48 dB): any near-identity model scores far above
    the demo's blurred pairs (~38 dB since the demo deblurs blind), whatever the demo's training."""
    from jobs.data.ingest import IngestOptions, ingest

    ingest(None, IngestOptions(name="light-noise", degrade="noise:1", size=64, crops=2, val_fraction=0.2,
                               shard_rows=32), stack)
    return "light-noise"


def _train(stack, **kw):
    from jobs.training.client import job_client, submit
    from jobs.training.spec import TrainSpec
    from tests.integration.conftest import wait_job

    spec = TrainSpec(workers=2, cpus_per_worker=0.5, model_name=MODEL, experiment="integration", **kw)
    sub = submit(spec, stack)
    status = wait_job(job_client(stack), sub["job_id"], timeout=600)
    logs = job_client(stack).get_job_logs(sub["job_id"])
    assert status == "SUCCEEDED", logs[-3000:]
    return sub, logs


@pytest.fixture(scope="module")
def gate_model(stack, demo_run, light_dataset):
    """gate-test v1: the demo's nafnet (trained on Gaussian blur); v2: a nafnet trained briefly on
    the light-noise pairs. v2 wins on its own val split (~48 dB inputs), v1 on blurred images."""
    mlflow.set_tracking_uri(stack.mlflow_uri)
    client = MlflowClient(stack.mlflow_uri)
    demo = client.get_model_version(demo_run.model, demo_run.version)
    v1 = mlflow.register_model(f"runs:/{demo.run_id}/model", MODEL)
    for k, v in demo.tags.items():
        client.set_model_version_tag(MODEL, v1.version, k, v)
    _train(stack, dataset=light_dataset, epochs=1, batch_size=8, image_size=64)  # registers v2
    return demo_run.dataset


def test_gate_ranks_versions_on_the_shared_eval_set(stack, cli, gate_model, light_dataset):
    # The first version registered by training gave the model its evaluation set.
    assert registry.eval_set(stack, MODEL) == (light_dataset, "val")
    r = cli("models", "set-eval", MODEL, "--dataset", gate_model)
    assert r.exit_code == 0 and registry.eval_set(stack, MODEL) == (gate_model, "val")
    v1, v2 = registry.versions(stack, MODEL)
    # The trap: on their own val splits, v2 looks far better.
    assert v2.metric("val_psnr") > v1.metric("val_psnr") + 3
    r = cli("models", "promote", MODEL, "--best")
    assert r.exit_code == 0, r.output
    assert registry.alias_version(stack, MODEL, "champion") == "1"
    v1, v2 = registry.versions(stack, MODEL)
    sha = read_manifest(Storage(stack), gate_model).sha256
    e1, e2 = v1.eval_result(gate_model, "val", sha), v2.eval_result(gate_model, "val", sha)
    assert e1["psnr"] > e2["psnr"]
    print(f"gate on {gate_model}/val: v1 {e1['psnr']:.2f} dB, v2 {e2['psnr']:.2f} dB "
          f"(own val: v1 {v1.metric('val_psnr'):.2f}, v2 {v2.metric('val_psnr'):.2f})")
    assert f"{e1['psnr']:.2f}" in r.output and f"{e2['psnr']:.2f}" in r.output
    # v2 was scored by an evaluation job: an MLflow run linked to the version, with its artifacts.
    run_id = v2.tags[f"eval.{gate_model}.run_id"]
    client = MlflowClient(stack.mlflow_uri)
    run = client.get_run(run_id)
    assert run.data.tags["model_name"] == MODEL and run.data.tags["model_version"] == "2"
    assert run.data.metrics["psnr"] == pytest.approx(e2["psnr"], abs=1e-3)
    assert {a.path for a in client.list_artifacts(run_id, "eval")} == {"eval/per_image.csv", "eval/best_worst.png"}
    assert f"eval on {gate_model}/val" in client.get_model_version(MODEL, "2").description
    # The explicit candidate is refused on the same yardstick, with both numbers; --force says why.
    r = cli("models", "promote", MODEL, "2")
    assert r.exit_code == 1 and "pass --force" in r.output and f"{e2['psnr']:.3f}" in r.output
    r = cli("models", "promote", MODEL, "2", "--force")
    assert r.exit_code == 0 and "Warning" in r.output and registry.alias_version(stack, MODEL, "champion") == "2"


def test_eval_cli_reports_and_refuses(stack, cli, gate_model):
    r = cli("eval", f"{MODEL}/1", "--dataset", gate_model, "--limit", "3", "--json")
    assert r.exit_code == 0, r.output
    out, _ = json.JSONDecoder().raw_decode(r.output[r.output.index("{"):])
    assert out["images"] == 3 and out["metrics"]["gain_db"] == pytest.approx(
        out["metrics"]["psnr"] - out["metrics"]["input_psnr"], abs=1e-6)
    for args, message in [
        (["eval", f"{MODEL}/9", "--dataset", gate_model], "has no version '9'"),
        (["eval", f"{MODEL}@", "--dataset", gate_model], "NAME@alias or NAME/VERSION"),
        (["eval", f"{MODEL}/1", "--dataset", "no-such-data"], "not found"),
        (["eval", f"{MODEL}/1", "--dataset", gate_model, "--split", "test"], "--split must be"),
        (["eval", f"{MODEL}/1", "--dataset", gate_model, "--limit", "0"], "--limit must be"),
    ]:
        r = cli(*args)
        assert r.exit_code == 1 and message in r.output and "Traceback" not in r.output, (args, r.output)


def test_training_validation_gives_the_eval_jobs_numbers(stack, cli, gate_model):
    """The gate compares numbers training recorded (`source` training-fp32) with numbers evaluation
    jobs computed: they must be the same on the same version and set. v1 is the demo's nafnet,
    trained by 2 workers, in bf16 where the CPU has it; its validation scores in fp32, every row."""
    before = registry.resolve(stack, f"{MODEL}/1")
    prefix = f"eval.{gate_model}."
    assert before.tags[prefix + "source"] == "training-fp32"
    val_rows = read_manifest(Storage(stack), gate_model).counts["val"]
    assert int(before.tags[prefix + "images"]) == val_rows  # no row dropped by the split over 2 workers
    r = cli("eval", f"{MODEL}/1", "--dataset", gate_model, "--json")
    assert r.exit_code == 0, r.output
    out, _ = json.JSONDecoder().raw_decode(r.output[r.output.index("{"):])
    assert out["images"] == val_rows
    for key in ("psnr", "input_psnr", "gain_db"):
        print(f"{key}: training {before.metric(prefix + key):.4f}, eval job {out['metrics'][key]:.4f}")
        assert out["metrics"][key] == pytest.approx(before.metric(prefix + key), abs=1e-3), key
        assert out["metrics"][key] == pytest.approx(before.metric("val_" + key), abs=1e-3), key
    assert out["metrics"]["ssim"] == pytest.approx(before.metric("val_ssim"), abs=1e-4)
    assert registry.resolve(stack, f"{MODEL}/1").tags[prefix + "source"] == "eval"


def test_gate_rescores_older_definition_numbers_and_the_csv_reproduces_them(stack, cli, gate_model):
    """The set's PSNR is that of the pooled MSE (docs/metrics.md): the eval job's per-image CSV
    reproduces it; an evaluation stored with the older per-image-mean definition is never compared
    (here a -12 dB gain, as flat crops gave): the gate scores that version again."""
    import csv
    import math

    from translator.metrics import PSNR_DEFINITION

    prefix = f"eval.{gate_model}."
    client = MlflowClient(stack.mlflow_uri)
    v1 = registry.resolve(stack, f"{MODEL}/1")
    run_id = v1.tags[prefix + "run_id"]
    assert v1.tags[prefix + "psnr_def"] == PSNR_DEFINITION == client.get_run(run_id).data.tags["psnr_def"]
    path = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="eval/per_image.csv")
    with open(path) as f:
        rows = list(csv.DictReader(f))
    values = sum(int(r["values"]) for r in rows)
    pooled = {k: 10 * math.log10(values / sum(float(r[k]) * int(r["values"]) for r in rows))
              for k in ("mse", "input_mse")}
    print(f"pooled from the CSV: {pooled}, stored: {v1.metric(prefix + 'psnr')}, {v1.metric(prefix + 'input_psnr')}")
    assert pooled["mse"] == pytest.approx(v1.metric(prefix + "psnr"), abs=1e-3)
    assert pooled["input_mse"] == pytest.approx(v1.metric(prefix + "input_psnr"), abs=1e-3)
    assert registry.alias_version(stack, MODEL, "champion") == "2"
    client.delete_model_version_tag(MODEL, "1", prefix + "psnr_def")  # as stored before the definition
    client.set_model_version_tag(MODEL, "1", prefix + "gain_db", "-12.0")
    assert registry.resolve(stack, f"{MODEL}/1").eval_result(gate_model, "val") is None
    r = cli("models", "promote", MODEL, "1")
    assert r.exit_code == 0, r.output  # on current numbers v1 beats v2 and improves its input
    assert "re-scored" in r.output and "worse than its input" not in r.output
    v1 = registry.resolve(stack, f"{MODEL}/1")
    assert v1.tags[prefix + "psnr_def"] == PSNR_DEFINITION and v1.metric(prefix + "gain_db") > 0
    assert registry.alias_version(stack, MODEL, "champion") == "1"


def test_init_from_starts_at_the_parent_and_records_lineage(stack, cli, gate_model):
    from jobs.training.client import job_client

    before = len(job_client(stack).list_jobs())
    for args, message in [(["--set", "width=8"], "different architecture"),
                          (["--variant", "pix2pix"], "trained nafnet; it cannot be used as pix2pix"),
                          (["--init-from", f"{MODEL}/7"], "has no version '7'")]:
        argv = ["train", "--dataset", gate_model, *(["--init-from", f"{MODEL}/1"] if "--init-from" not in args
                                                     else []), *args]
        r = cli(*argv)
        assert r.exit_code == 1 and message in r.output and "Traceback" not in r.output, r.output
    assert len(job_client(stack).list_jobs()) == before  # refused before anything was submitted
    sub, logs = _train(stack, dataset=gate_model, variant="", init_from=f"{MODEL}/1", max_steps=1)
    parent = registry.resolve(stack, f"{MODEL}/1").eval_result(gate_model, "val")["psnr"]
    history = MlflowClient(stack.mlflow_uri).get_metric_history(sub["run_id"], "val_psnr")
    first = min(history, key=lambda m: m.step)
    print(f"init-from: first validation {first.value:.3f} dB at step {first.step}, parent {parent:.3f} dB")
    assert first.step == 0 and abs(first.value - parent) < 0.1
    child = registry.versions(stack, MODEL)[-1]
    assert child.tags["parent"] == f"{MODEL}/1" and "fine-tuned from: gate-test/1" in child.description
    assert f"{MODEL}/1" in cli("models", "ls", MODEL).output


def test_rollback_walks_back_through_former_champions(stack, cli, gate_model):
    versions = [v.version for v in registry.versions(stack, MODEL)]
    for v in versions:  # a chain of champions, each replacing the last
        cli("models", "promote", MODEL, v, "--force")
    assert registry.alias_version(stack, MODEL, "champion") == versions[-1]
    for expected in reversed(versions[:-1]):
        r = cli("models", "rollback", MODEL)
        assert r.exit_code == 0 and registry.alias_version(stack, MODEL, "champion") == expected, r.output
    r = cli("models", "rollback", MODEL)
    assert r.exit_code == 1 and "no former champion" in r.output


def test_unpaired_models_are_scored_by_cycle_metrics_and_flags_are_shown(stack, cli, trained, unpaired_dataset):
    trained_val = registry.resolve(stack, "test-cyclegan/1")
    r = cli("eval", "test-cyclegan/1", "--dataset", unpaired_dataset, "--json")
    assert r.exit_code == 0, r.output
    out, _ = json.JSONDecoder().raw_decode(r.output[r.output.index("{"):])
    assert set(out["metrics"]) == {"cycle_psnr", "cycle_ssim"}
    # the same numbers as the training job's (2 workers) validation, which the gate may reuse
    assert trained_val.tags[f"eval.{unpaired_dataset}.source"] == "training-fp32"
    assert int(trained_val.tags[f"eval.{unpaired_dataset}.images"]) == out["images"]
    assert out["metrics"]["cycle_psnr"] == pytest.approx(trained_val.metric("val_cycle_psnr"), abs=1e-3)
    assert out["metrics"]["cycle_ssim"] == pytest.approx(trained_val.metric("val_cycle_ssim"), abs=1e-4)
    assert out["metrics"]["cycle_psnr"] > untrained_val_psnr(stack, unpaired_dataset, "cyclegan", **TINY["cyclegan"])
    r = cli("eval", "test-pix2pix/1", "--dataset", unpaired_dataset)
    assert r.exit_code == 1 and "reverse generator" in r.output
    # A version worse than its input is flagged in the registry and in the listing.
    auto = registry.resolve(stack, "test-autoencoder/1")
    worse = float(auto.tags["val_gain_db"]) < 0
    assert (auto.tags.get("worse_than_input") == "true") == worse
    assert ("WORSE THAN INPUT" in cli("models", "ls", "test-autoencoder").output) == worse
    assert ("WARNING" in trained["autoencoder"]["logs"] and "WORSE than its input" in trained["autoencoder"]["logs"]) \
        == worse
