"""A pipeline file is checked before anything runs: every mistake is one line naming the file's
line and the field; step cache keys change exactly when a step's inputs do; a step that could
never be admitted beside the pipeline's own job is refused with the numbers."""

from __future__ import annotations

import pytest

from cluster.admission import Capacity
from cluster.errors import Img2ImgError
from pipelines.spec import STEPS, cache_key, load, parse

GOOD = """\
name: nightly
source: s3://photos/incoming/
dataset: photos
model: photos-nafnet
ingest:
  degrade: gaussian:1.5
  size: 64
train:
  variant: nafnet
  max_steps: 300
  set:
    width: 16
evaluate:
  split: val
"""


def _file(tmp_path, text: str):
    path = tmp_path / "pipeline.yaml"
    path.write_text(text)
    return path


def test_a_good_file_is_read_with_its_defaults(tmp_path):
    spec = load(_file(tmp_path, GOOD))
    assert spec.steps == list(STEPS)
    assert spec.model_name == "photos-nafnet" and spec.title == "nightly"
    assert spec.train.max_steps == 300 and spec.train.set == {"width": 16} and spec.train.workers == 2
    assert spec.evaluate.dataset is None and spec.gate.metric == "psnr"


def test_without_a_source_the_ingest_step_is_left_out(tmp_path):
    spec = load(_file(tmp_path, "dataset: blur\n"))
    assert spec.steps == ["train", "evaluate", "gate", "deploy", "promote"]
    assert spec.model_name == "blur"


def test_steps_run_in_pipeline_order_whatever_order_they_are_listed(tmp_path):
    spec = load(_file(tmp_path, "dataset: blur\nsteps: [promote, evaluate, gate]\n"))
    assert spec.steps == ["evaluate", "gate", "promote"]


BAD = [
    # (file, the one-line error)
    ("dataset: blur\nsteps: [train, evalute]\n",
     "pipeline.yaml line 2: steps.1: unknown step 'evalute'; steps are ingest, train, evaluate, gate, deploy, promote"),
    ("dataset: blur\ntrain:\n  variant: autoencoder\n  max_step: 5\n",
     "pipeline.yaml line 4: train.max_step: unknown field"),
    ("dataset: blur\ntrain:\n  max_steps: 0\n",
     "pipeline.yaml line 3: train.max_steps: Input should be greater than or equal to 1"),
    ("dataset: blur\ntrain:\n  workers: two\n",
     "pipeline.yaml line 3: train.workers: Input should be a valid integer, unable to parse string as an integer"),
    ("dataset: blur\nevaluate:\n  split: test\n",
     "pipeline.yaml line 3: evaluate.split: Input should be 'val', 'train' or 'all'"),
    ("dataset: blur\ngate:\n  metric: lpips\n",
     "pipeline.yaml line 3: gate.metric: Input should be 'psnr', 'ssim' or 'gain_db'"),
    ("source: ./photos\n", "pipeline.yaml line 1: dataset: Field required"),
    ("dataset: blur\ncolour: red\n", "pipeline.yaml line 2: colour: unknown field"),
    ("dataset: blur\nsteps: [ingest, train]\n",
     "pipeline.yaml line 1: the file: the ingest step needs a source: a folder or s3://bucket/prefix"),
    ("dataset: blur\ningest:\n  size: 64\n",
     "pipeline.yaml line 1: the file: the ingest step needs a source: a folder or s3://bucket/prefix"),
    ("dataset: blur\nsteps: [train, train]\n", "pipeline.yaml line 1: the file: a step is listed twice"),
    ("dataset: blur\ningest:\n  val_fraction: 1.5\n",
     "pipeline.yaml line 3: ingest.val_fraction: Input should be less than 1"),
    ("dataset: blur\ndeploy:\n  rollout: blue-green\n",
     "pipeline.yaml line 3: deploy.rollout: Input should be 'swap' or 'canary'"),
    ("dataset: blur\ndeploy:\n  rollout: canary\n  steps: 50,25\n",
     "pipeline.yaml line 4: deploy.steps: must increase, got '50,25'"),
    ("dataset: blur\ndeploy:\n  rollout: canary\n  interval: soon\n",
     "pipeline.yaml line 4: deploy.interval: must be a positive duration like 30s, 10m or 1h; got 'soon'"),
    ("dataset: blur\ndeploy:\n  timeout: 0m\n",
     "pipeline.yaml line 3: deploy.timeout: must be a positive duration like 30s, 10m or 1h; got '0m'"),
    ("dataset: blur\nnotify:\n  webhook: ftp://hooks.example.com/x\n",
     "pipeline.yaml line 3: notify.webhook: expected an http(s):// URL or env:NAME"),
    ("dataset: blur\nnotify:\n  webhook: env:1BAD\n",
     "pipeline.yaml line 3: notify.webhook: expected an http(s):// URL or env:NAME"),
    ("dataset: blur\nnotify:\n  url: https://hooks.example.com/x\n", "pipeline.yaml line 3: notify.url: unknown field"),
    ("dataset: blur\ntrain:\n  init_from: photos@\n",
     "pipeline.yaml line 3: train.init_from: expected a registered model as"),
    ("dataset: blur\ntrain:\n  finetune: true\n  init_from: photos@champion\n",
     "pipeline.yaml line 2: train: give finetune: true (start from the model's champion) or init_from: NAME@alias, "
     "not both"),
    ("- dataset: blur\n", "pipeline.yaml: expected a mapping of fields (dataset:, train:, ...), got list"),
    ("dataset: blur\ntrain: [\n", "pipeline.yaml line 3: not valid YAML"),
    ("dataset: blur\n\ttrain: 1\n", "pipeline.yaml line 2: not valid YAML"),
]


@pytest.mark.parametrize("text,message", BAD, ids=[m.split(": ", 1)[-1][:40] for _, m in BAD])
def test_a_bad_file_is_one_line_naming_its_line_and_field(tmp_path, text, message):
    with pytest.raises(Img2ImgError) as e:
        load(_file(tmp_path, text))
    assert str(e.value).startswith(message), str(e.value)
    assert "\n" not in str(e.value)


def test_a_missing_file_is_named(tmp_path):
    with pytest.raises(Img2ImgError, match="no pipeline file"):
        load(tmp_path / "nope.yaml")


def test_flags_are_checked_as_a_file_is():
    with pytest.raises(Img2ImgError, match=r"^flags: train.max_steps: Input should be greater than or equal to 1"):
        parse({"dataset": "blur", "train": {"max_steps": 0}}, "flags")


def test_where_names_the_line_a_field_is_set_on(tmp_path):
    spec = load(_file(tmp_path, GOOD))
    assert spec.where("train") == "pipeline.yaml line 8: train"
    assert spec.where("dataset") == "pipeline.yaml line 3: dataset"
    assert parse({"dataset": "blur"}, "flags").where("dataset") == "flags: dataset"


INPUTS = {"dataset_sha256": "ab" * 32, "train": {"max_steps": 300, "set": {"width": 16}}, "parent": "",
          "code": "0.1.0+abc1234"}


def test_cache_key_is_independent_of_dict_order_and_names_the_step():
    shuffled = {k: INPUTS[k] for k in reversed(INPUTS)}
    assert cache_key("train", INPUTS) == cache_key("train", shuffled)
    assert cache_key("train", INPUTS) != cache_key("evaluate", INPUTS)
    assert len(cache_key("train", INPUTS)) == 64


@pytest.mark.parametrize("change", [
    {"dataset_sha256": "cd" * 32},  # the data changed
    {"train": {"max_steps": 301, "set": {"width": 16}}},  # the config changed
    {"train": {"max_steps": 300, "set": {"width": 32}}},
    {"parent": "photos/3"},  # fine-tuned from another champion
    {"code": "0.1.0+def5678"},  # the code changed
])
def test_cache_key_changes_with_every_input(change):
    assert cache_key("train", {**INPUTS, **change}) != cache_key("train", INPUTS)


@pytest.mark.parametrize("workers,cpus,fits", [(2, 1.0, True), (2, 1.5, False), (3, 1.0, False), (1, 2.0, True)])
def test_a_step_that_cannot_fit_beside_the_pipeline_is_refused_with_the_numbers(workers, cpus, fits):
    from pipelines.client import check_nested

    spec = parse({"dataset": "blur", "train": {"workers": workers, "cpus_per_worker": cpus},
                  "evaluate": {"cpus_per_worker": 0.5}})
    cap = Capacity(((0.0, 4.0),))  # one node of 4 admission CPUs
    if fits:  # workers x cpus + 1 (data) + 0.5 (driver) + 0.25 (the pipeline) <= 4
        check_nested(spec, cap)
        return
    with pytest.raises(Img2ImgError) as e:
        check_nested(spec, cap)
    need = workers * cpus + 1.5
    assert str(e.value).startswith(f"the train step needs {need:g} CPUs"), str(e.value)
    # bigger than the node: it would split over nodes, and the whole cluster is too small
    assert f"{need + 0.25:g} CPUs, but the cluster has 4 CPUs and its largest node 4" in str(e.value)


def test_a_train_step_bigger_than_a_node_is_checked_against_the_whole_cluster():
    from pipelines.client import check_nested

    cap = Capacity(((0.0, 8.0), (0.0, 2.0)))  # 4 x 2 + 1.5 = 9.5 > 8: split over both nodes
    check_nested(parse({"dataset": "blur", "train": {"workers": 4, "cpus_per_worker": 2.0}}), cap)
    with pytest.raises(Img2ImgError, match="10.25 CPUs, but the cluster has 10 CPUs and its largest node 8"):
        check_nested(parse({"dataset": "blur", "train": {"workers": 4, "cpus_per_worker": 2.125}}), cap)


@pytest.mark.parametrize("args,message", [
    (["--dataset", "blur", "--max-steps", "0"], "Error: flags: train.max_steps: Input should be greater than or equal to 1"),
    (["--dataset", "blur", "--eval-split", "test"], "Error: flags: evaluate.split: Input should be 'val', 'train' or 'all'"),
    (["--dataset", "blur", "--set", "width"], "Error: expected key=value, got 'width'"),
    (["--dataset", "blur", "--init-from", "photos/v2"], "Error: flags: train.init_from: expected a registered model"),
    (["--dataset", "blur", "--force", "training"], "Error: --force must name a step: ingest, train, evaluate"),
    (["pipeline.yaml", "--max-steps", "3"], "Error: give either a pipeline file or the flags, not both"),
    ([], "Error: give a pipeline file, or --dataset (or --source and --model)"),
])
def test_pipeline_run_refuses_bad_flags_before_contacting_anything(cli, tmp_path, monkeypatch, args, message):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "pipeline.yaml").write_text("dataset: blur\n")
    monkeypatch.setenv("IMG2IMG_RAY_ADDRESS", "http://127.0.0.1:9")  # nothing listens: a contact would fail
    r = cli("pipeline", "run", *args)
    assert r.exit_code == 1 and r.output.startswith(message) and r.output.count("\n") == 1, r.output


def test_flags_build_the_same_spec_as_a_file(tmp_path):
    from img2img_cli.commands.pipeline import _flags_spec

    spec = _flags_spec("s3://photos/new/", None, "photos", "gaussian:2", 64, None, False, None, None,
                       ["width=16"], {"variant": "nafnet", "max_steps": 300, "workers": None})
    assert spec.dataset == "photos" and spec.source == "s3://photos/new/" and spec.steps[0] == "ingest"
    assert spec.ingest.degrade == "gaussian:2" and spec.ingest.size == 64
    assert spec.train.max_steps == 300 and spec.train.set == {"width": "16"} and spec.train.workers == 2


@pytest.mark.parametrize("text,seconds", [("30m", 1800), ("24h", 86400), ("7d", 604800), ("90", 90), ("1.5h", 5400)])
def test_every_takes_durations(text, seconds):
    from pipelines.schedule import parse_every

    assert parse_every(text) == seconds


@pytest.mark.parametrize("text,message", [("daily", "--every must be a duration like 30m, 24h or 7d, got 'daily'"),
                                          ("10s", "--every must be at least 1 minute, got '10s'"),
                                          ("-1h", "--every must be a duration like")])
def test_every_refuses_what_is_not_a_duration(text, message):
    from pipelines.schedule import parse_every

    with pytest.raises(Img2ImgError, match="^" + message):
        parse_every(text)
