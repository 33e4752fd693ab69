"""`img2img demo --quick`: the whole path, end to end, on the session's stack."""

import pytest
from PIL import Image

pytestmark = pytest.mark.integration


def test_quick_demo_enhances_held_out_photos(demo_run):
    out = demo_run.out_dir
    report = (out / "report.md").read_text()
    assert demo_run.rows, "no held-out photo was enhanced"
    for row in demo_run.rows:
        grid = Image.open(out / (row["photo"].rsplit(".", 1)[0] + ".png"))
        assert grid.width > 3 * 200  # blurred | enhanced | original
        assert row["photo"] in report
    m = demo_run.mean
    print(f"demo: blurred {m['input_psnr']:.2f} dB -> enhanced {m['output_psnr']:.2f} dB")
    assert m["output_psnr"] > m["input_psnr"] + 0.1
    assert "improves the degraded photos" in report
    # trained with the task's recipe, its inputs drawn afresh with the dataset's own spec
    assert "Trained with `img2img train --dataset demo-photos-quick --variant nafnet --image-size 64 --set loss=l1_fft --set color_jitter=0.3 --set degrade=auto`." in report


def test_demo_reuses_what_exists(demo_run, stack, tmp_path):
    import time

    import mlflow
    from mlflow.tracking import MlflowClient

    from img2img_demo.run import run_demo

    # A version trained on an earlier spec of the same dataset name, with a (stored, trusted) score on
    # the evaluation set far above the demo's: a re-run must neither reuse nor promote it.
    client = MlflowClient(stack.mlflow_uri)
    demo = client.get_model_version(demo_run.model, demo_run.version)
    mlflow.set_tracking_uri(stack.mlflow_uri)
    old = mlflow.register_model(f"runs:/{demo.run_id}/model", demo_run.model).version
    try:
        for k, v in {**demo.tags, "dataset_sha256": "0" * 64, f"eval.{demo_run.dataset}.psnr": "99.0",
                     f"eval.{demo_run.dataset}.source": "eval"}.items():
            client.set_model_version_tag(demo_run.model, old, k, v)
        t0 = time.time()
        again = run_demo(stack, quick=True, out_dir=tmp_path / "again", say=lambda m: None)
        assert again.version == demo_run.version  # no retraining, same champion, the old-data version left alone
        assert time.time() - t0 < 120
        report = (tmp_path / "again" / "report.md").read_text()  # reused: trained with these very settings
        assert "Trained with `img2img train --dataset demo-photos-quick --variant nafnet --image-size 64 --set loss=l1_fft --set color_jitter=0.3 --set degrade=auto`." in report
        assert "minutes of CPU training" not in report  # nothing trained now
    finally:
        client.delete_model_version(demo_run.model, old)


def test_colorize_demo_runs_the_whole_path_and_says_its_task(stack, tmp_path):
    """`img2img demo --task colorize` at the tiniest size: grey -> colour with pix2pix, through
    ingest, a real training job, promotion, deployment and POST /enhance; GET /model says colorize."""
    import httpx
    import numpy as np
    from mlflow.tracking import MlflowClient

    from img2img_demo.run import run_demo
    from serving.deploy import redeploy_model, status

    before = status(stack)  # the endpoint the serving tests share: put its model back afterwards
    try:
        result = run_demo(stack, task="colorize", quick=True, budget_s=15, crops=4, out_dir=tmp_path / "colorize",
                          say=lambda m: None)
        assert result.dataset == "demo-colorize-quick" and result.model == "demo-colorize-quick-pix2pix"
        assert result.rows and not result.skipped  # colour photos only: a grey one has nothing to colourise
        report = (tmp_path / "colorize" / "report.md").read_text()
        assert "colorize with pix2pix" in report and "| grey PSNR | colourised PSNR |" in report
        for row in result.rows:
            assert np.isfinite(row["input_psnr"]) and row["input_psnr"] < 60  # grey really differs from colour
            assert row["output_psnr"] != row["input_psnr"]  # the network changed something
            grid = Image.open(tmp_path / "colorize" / (row["photo"].rsplit(".", 1)[0] + ".png"))
            assert grid.width > 3 * 200 and row["photo"] in report
        assert ("improves the degraded photos" in report) != ("makes the photos worse" in report)
        assert "after 0.25 minutes of CPU training" in report

        info = httpx.get(stack.serve_url + "/model", timeout=30).json()
        assert (info["name"], info["version"]) == (result.model, result.version)
        assert info["task"] == "colorize" and info["degradation"] == "gray"
        tags = MlflowClient(stack.mlflow_uri).get_model_version(result.model, result.version).tags
        assert tags["task"] == "colorize" and tags["degradation"] == "gray"
    finally:
        if before and before.get("model"):
            redeploy_model(stack, f"{before['model']}/{before['version']}")
