"""The registry's pure parts: references, stored evaluations, lineage checks, model cards."""

from __future__ import annotations

import pytest

from cluster.errors import Img2ImgError
from jobs.training.finetune import _difference, architecture
from registry.models import VersionInfo
from registry.refs import parse_ref
from registry.tracking import eval_tags, model_card
from translator.metrics import PSNR_DEFINITION


def test_model_references():
    assert parse_ref("photos@champion") == ("photos", None, "champion")
    assert parse_ref("my/photos/3") == ("my/photos", "3", None)
    assert parse_ref("photos") == ("photos", None, "champion")  # NAME = NAME@champion
    for bad in ("photos@", "@champion", "photos/x", "photos/"):
        with pytest.raises(Img2ImgError, match="NAME@alias or NAME/VERSION"):
            parse_ref(bad)


def _version(tags):
    return VersionInfo("m", "1", tags, [], "r" * 32, "2026-01-01 00:00")


def test_stored_evaluation_is_reused_only_for_the_same_split_and_checksum():
    summary = {"dataset": "blur", "split": "val", "dataset_sha256": "abc", "images": 16, "run_id": "r",
               "metrics": {"psnr": 30.5, "ssim": 0.9, "input_psnr": 29.0, "input_ssim": 0.85, "gain_db": 1.5}}
    v = _version(eval_tags(summary))
    assert v.eval_result("blur", "val", "abc")["psnr"] == pytest.approx(30.5)
    assert v.eval_result("blur", "val", "other") is None  # the dataset was rebuilt
    assert v.eval_result("blur", "train", "abc") is None
    assert v.eval_result("noise", "val", "abc") is None


def test_worse_than_input_and_cycle_metrics_are_told_apart():
    now = {"psnr_def": PSNR_DEFINITION}
    assert _version({**now, "val_gain_db": "-8.77"}).worse_than_input
    assert not _version({**now, "val_gain_db": "0.5"}).worse_than_input
    assert not _version({"variant": "cyclegan"}).paired and _version({"variant": "nafnet"}).paired


def test_model_card_says_what_the_version_is():
    tags = {"variant": "nafnet", "dataset": "blur", "dataset_sha256": "0123456789abcdef", "degradation":
            "gaussian:1.5", "step": "40", "train_seconds": "55", "val_psnr": "27.1", "val_gain_db": "-0.4",
            "worse_than_input": "true", "parent": "photos/2", "promoted_by_rollout": "ab12cd",
            **eval_tags({"dataset": "noise", "split": "val", "dataset_sha256": "fe", "images": 8,
                         "metrics": {"psnr": 31.0, "gain_db": 0.7}})}
    card = model_card("m", "3", tags, {"cfg.width": "8", "device": "cpu", "workers": "2"})
    for part in ("nafnet", '"width": "8"', "blur", "0123456789ab", "gaussian:1.5", "photos/2", "steps: 40",
                 "55 s", "cpu x 2", "psnr 27.10 dB", "eval on noise/val (8 images", "gain_db +0.70 dB", "WORSE",
                 "promoted after a live rollout: MLflow run ab12cd"):
        assert part.lower() in card.lower(), part


def test_architecture_difference_is_named():
    small = architecture("nafnet", {"width": 8})
    assert _difference(small, architecture("nafnet", {"width": 8, "lr": 5e-4})) is None  # training-only change
    diff = _difference(small, architecture("nafnet", {"width": 16}))
    assert diff and "shape" in diff and "parent" in diff
    with pytest.raises(Img2ImgError, match="unknown setting"):
        architecture("nafnet", {"no_such_key": 1})


def test_a_run_from_a_parent_takes_its_network_settings_but_not_those_of_its_training_data():
    """A parent trained on inputs drawn afresh (the demo's recipe) fine-tuned on a dataset of real
    pairs trains on those pairs: `degrade` and the other data settings stay the new run's; on the
    parent's own dataset they are the parent's."""
    from jobs.training.finetune import adopt, inherited_config
    from jobs.training.spec import TrainSpec

    parent = {"width": "8", "loss": "l1_fft", "lr": "0.002", "degrade": "auto", "color_jitter": "0.3",
              "dead_leaves": "0.2", "multiscale": "0.3"}
    params = {"dataset": "demo-photos", "variant": "nafnet", **{f"cfg.{k}": v for k, v in parent.items()}}
    spec = TrainSpec(dataset="real-pairs", variant="", config={"lr": "0.0005"})
    adopt(spec, "nafnet", inherited_config(params, "real-pairs"), "--init-from m/1", "the parent")
    cfg = spec.variant_config()
    assert (cfg.width, cfg.loss, cfg.lr) == (8, "l1_fft", 0.0005)  # the network and loss kept, --set wins
    assert (cfg.degrade, cfg.color_jitter, cfg.dead_leaves, cfg.multiscale) == ("stored", 0.0, 0.0, 0.0)
    # on the parent's own dataset (a pipeline's scheduled fine-tune) the data settings are kept
    assert inherited_config(params, "demo-photos") == parent


def _png(seed, size=24):
    import numpy as np
    from PIL import Image

    from translator import images

    return images.encode(Image.fromarray(np.random.default_rng(seed).integers(0, 255, (size, size + 8, 3),
                                                                              dtype=np.uint8)))


@pytest.mark.parametrize("kind", ["paired", "unpaired"])
def test_scorer_rows(kind):
    """The evaluation actor's scoring of one batch (model built here instead of loaded)."""
    import json

    import numpy as np

    from jobs.evaluation.driver import CYCLE_KEYS, PAIRED_KEYS, EvalSpec, Scorer
    from translator.variants import build_variant

    variant = build_variant("cyclegan", {"ngf": 4, "ndf": 4, "n_blocks": 1})
    variant.eval()
    scorer = Scorer.__new__(Scorer)
    scorer.spec = EvalSpec(model="m", version="1", dataset="d", kind=kind, multiple=variant.multiple)
    scorer.forward = lambda x: variant.translate(x)
    scorer.reverse = lambda x: variant.translate(x, reverse=True)
    if kind == "paired":
        batch = {"key": np.array(["a", "b"]), "input": np.array([_png(1), _png(2)], dtype=object),
                 "target": np.array([_png(1), _png(3)], dtype=object)}
    else:
        batch = {"key": np.array(["a", "b"]), "domain": np.array(["a", "b"]),
                 "image": np.array([_png(1), _png(2)], dtype=object)}
    rows = scorer(batch)
    assert list(rows["key"]) == ["a", "b"] and list(rows["height"]) == [24, 24] and list(rows["width"]) == [32, 32]
    for k in PAIRED_KEYS if kind == "paired" else CYCLE_KEYS:
        assert np.isfinite(rows[k]).all()
    if kind == "paired":
        assert rows["input_psnr"][0] > 90  # input == target: no error
        assert rows["gain_db"][1] == pytest.approx(rows["psnr"][1] - rows["input_psnr"][1])
    assert len(json.loads(rows["thumbs"][0])) == 3


def _result(source):
    summary = {"dataset": "blur", "split": "val", "dataset_sha256": "abc", "images": 7, "run_id": "0123456789abcdef",
               "metrics": {"psnr": 30.5, "gain_db": 1.5}, **({"source": source} if source else {})}
    return _version(eval_tags(summary))


def test_only_results_computed_as_the_eval_job_computes_them_stand_for_an_evaluation():
    from registry.tracking import SOURCE_EVAL, SOURCE_TRAINING

    for source in (None, SOURCE_EVAL, SOURCE_TRAINING):
        assert _result(source).eval_result("blur", "val", "abc") == {"psnr": 30.5, "gain_db": 1.5, "images": 7}
    # tagged by training before validation was exact (bf16, rows dropped): the gate scores it again
    assert _result("training").eval_result("blur", "val", "abc") is None
    assert _result(SOURCE_TRAINING).eval_source("blur") == "training val, fp32 (run 01234567)"
    assert _result(SOURCE_EVAL).eval_source("blur") == "eval job (run 01234567)"
    card = model_card("m", "1", _result(SOURCE_TRAINING).tags, {})
    assert "eval on blur/val (7 images" in card and "training val, fp32" in card


def test_promote_output_says_who_computed_each_number(monkeypatch):
    import io

    from rich.console import Console

    from cluster import cli_utils
    from img2img_cli.commands import models as models_cli
    from registry.models import Decision

    buf = io.StringIO()  # a pipe 80 columns wide: each version stays on one line
    monkeypatch.setattr(cli_utils, "console", Console(file=buf, width=80, color_system=None))
    d = Decision("photos", "3", "1", "blur", "val", "psnr",
                 scores={"1": {"psnr": 30.5, "ssim": 0.9, "gain_db": 1.5, "images": 7},
                         "3": {"psnr": 31.25, "ssim": 0.91, "gain_db": 2.25, "images": 7}},
                 sources={"1": "training val, fp32 (run 01234567)",
                          "3": "eval job now (run 89abcdef)"})
    models_cli._print_scores(d)
    rows = {line.split()[1]: line for line in buf.getvalue().splitlines() if line.startswith("│ v")}
    assert "scored by" in buf.getvalue()
    assert "30.50" in rows["v1"] and "training val, fp32 (run 01234567)" in rows["v1"]
    assert "31.25" in rows["v3"] and "eval job now (run 89abcdef)" in rows["v3"]


def test_a_demo_rerun_reuses_only_versions_trained_on_the_current_data():
    from img2img_demo.run import trained_on

    existing = [_version({"dataset_sha256": sha}) for sha in ("old", "new", "new", "")]
    for i, v in enumerate(existing):
        v.version = str(i + 1)
    assert trained_on(existing, "new") == ["2", "3"]
    assert trained_on(existing, "newer") == []


def test_a_demo_rerun_reuses_only_versions_trained_with_the_same_whole_config():
    """A version is reused only if the config its run logged (`cfg.*`, every field, rebuilt as
    `--init-from` rebuilds it) is the one the demo would train with now: not one trained before
    the task had its recipe, nor one with a setting the recipe no longer sets, nor one whose
    params no longer make a config; logged numbers and lists compare by value."""
    from img2img_demo.run import trained_config, trained_on
    from jobs.training.spec import TrainSpec

    now = TrainSpec(dataset="d", variant="nafnet", image_size=64,
                    config={"loss": "l1_fft", "color_jitter": "0.3", "degrade": "auto"}).variant_config().__dict__
    logged = {k: str(v) for k, v in now.items()}  # as MLflow keeps params: text, lists as "[1, 1, 1, 1]"
    params = {"same": {f"cfg.{k}": v for k, v in logged.items()},
              "before the recipe": {f"cfg.{k}": v for k, v in {**logged, "loss": "l1", "color_jitter": "0.0",
                                                                  "degrade": "stored"}.items()},
              "extra setting": {f"cfg.{k}": v for k, v in {**logged, "multiscale": "0.3"}.items()},
              "2e-3 as 0.0020": {f"cfg.{k}": v for k, v in {**logged, "lr": "0.0020"}.items()},
              "renamed setting": {**{f"cfg.{k}": v for k, v in logged.items()}, "cfg.no_such": "1"},
              "no params": {}}
    assert trained_config("nafnet", params["same"]) == now
    assert trained_config("nafnet", params["renamed setting"]) is None
    existing = [_version({"dataset_sha256": "new"}) for _ in params]
    for i, (v, run) in enumerate(zip(existing, params)):
        v.version, v.run_id = str(i + 1), run
    config_of = lambda v: trained_config("nafnet", params[v.run_id])  # noqa: E731
    assert trained_on(existing, "new", now, config_of) == ["1", "4"]
    assert trained_on(existing, "old", now, config_of) == []
    assert trained_on(existing, "new") == [str(i + 1) for i in range(len(params))]  # data only


def test_numbers_of_the_older_psnr_definition_are_never_compared():
    """Versions validated or evaluated as a mean of per-image PSNR (no `psnr_def` tag): their
    stored evaluation is not reused (the gate scores them again) and their own validation's
    negative gain (a few flat crops could cause it) labels nothing WORSE THAN INPUT."""
    summary = {"dataset": "blur", "split": "val", "dataset_sha256": "abc", "images": 16, "run_id": "r",
               "metrics": {"psnr": 30.5, "gain_db": -2.53}}
    current = eval_tags(summary)
    assert current["eval.blur.psnr_def"] == PSNR_DEFINITION
    old = {k: v for k, v in current.items() if not k.endswith(".psnr_def")}
    assert _version(current).eval_result("blur", "val", "abc")["gain_db"] == pytest.approx(-2.53)
    assert not _version(current).old_eval("blur", "val")
    assert _version(old).eval_result("blur", "val", "abc") is None and _version(old).old_eval("blur", "val")
    # worse than input: decided by current numbers only (an evaluation first, then own validation)
    assert not _version({"val_gain_db": "-0.45", "worse_than_input": "true"}).worse_than_input
    assert _version({"val_gain_db": "-0.45", **current}).worse_than_input  # the current eval says so
    fine = eval_tags({**summary, "metrics": {"psnr": 30.5, "gain_db": 4.3}})
    assert not _version({"psnr_def": PSNR_DEFINITION, "val_gain_db": "-0.45", **fine}).worse_than_input
    assert not _version({"val_gain_db": "-0.45"}).current_metric
