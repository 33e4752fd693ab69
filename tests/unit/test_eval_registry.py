"""The registry's pure parts: references, stored evaluations, lineage checks, model cards."""

from __future__ import annotations

import pytest

from cluster.errors import Img2ImgError
from jobs.finetune import _difference, architecture
from jobs.registry import VersionInfo, parse_ref
from jobs.tracking import eval_tags, model_card


def test_model_references():
    assert parse_ref("photos@champion") == ("photos", None, "champion")
    assert parse_ref("my/photos/3") == ("my/photos", "3", None)
    for bad in ("photos", "photos@", "@champion", "photos/x", "photos/"):
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
    assert _version({"val_gain_db": "-8.77"}).worse_than_input
    assert not _version({"val_gain_db": "0.5"}).worse_than_input
    assert not _version({"variant": "cyclegan"}).paired and _version({"variant": "nafnet"}).paired


def test_model_card_says_what_the_version_is():
    tags = {"variant": "nafnet", "dataset": "blur", "dataset_sha256": "0123456789abcdef", "degradation":
            "gaussian:1.5", "step": "40", "train_seconds": "55", "val_psnr": "27.1", "val_gain_db": "-0.4",
            "worse_than_input": "true", "parent": "photos/2",
            **eval_tags({"dataset": "noise", "split": "val", "dataset_sha256": "fe", "images": 8,
                         "metrics": {"psnr": 31.0, "gain_db": 0.7}})}
    card = model_card("m", "3", tags, {"cfg.width": "8", "device": "cpu", "workers": "2"})
    for part in ("nafnet", '"width": "8"', "blur", "0123456789ab", "gaussian:1.5", "photos/2", "steps: 40",
                 "55 s", "cpu x 2", "psnr 27.10 dB", "eval on noise/val (8 images", "gain_db +0.70 dB", "WORSE"):
        assert part.lower() in card.lower(), part


def test_architecture_difference_is_named():
    small = architecture("nafnet", {"width": 8})
    assert _difference(small, architecture("nafnet", {"width": 8, "lr": 5e-4})) is None  # training-only change
    diff = _difference(small, architecture("nafnet", {"width": 16}))
    assert diff and "shape" in diff and "parent" in diff
    with pytest.raises(Img2ImgError, match="unknown setting"):
        architecture("nafnet", {"no_such_key": 1})


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

    from jobs.evaluate import CYCLE_KEYS, PAIRED_KEYS, EvalSpec, Scorer
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
