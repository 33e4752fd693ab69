"""Mistyped names get the closest known ones; ingest's notes on rows that teach little."""

from __future__ import annotations

import json

import pytest

from cluster.errors import did_you_mean, no_registered_model
from registry.manifest import Manifest, Shard


@pytest.mark.parametrize("typed, known, suggestion", [
    ("myphoto", ["myphotos", "blur", "faces"], "; did you mean 'myphotos'?"),
    ("blurr", ["blur", "blurry", "x"], "; did you mean 'blurry' or 'blur'?"),
    ("zzz", ["myphotos", "blur"], ""),  # nothing close: no guess
    ("photos", [], ""),
    ("ds1", ["ds1", "ds2"], "; did you mean 'ds2'?"),  # listed as another client deleted it: not itself
])
def test_did_you_mean_names_the_closest_known_names(typed, known, suggestion):
    assert did_you_mean(typed, known) == suggestion


def test_the_unknown_model_wording_keeps_its_hint_with_or_without_a_suggestion():
    assert str(no_registered_model("nope")) == "no registered model 'nope'; list them with: img2img models ls"
    assert str(no_registered_model("blur-demo-nafnt", ["blur-demo-nafnet"])) == (
        "no registered model 'blur-demo-nafnt'; did you mean 'blur-demo-nafnet'?; list them with: img2img models ls")


def manifest(*shards: Shard) -> Manifest:
    return Manifest("mine", "paired", "synth", "now", "mine/", 96, "gaussian:1.5", 0,
                    splits={"train": list(shards[:-1]), "val": [shards[-1]]})


def test_notes_count_small_sources_once_and_flat_pairs_over_all_splits():
    m = manifest(Shard("train/0", 10, "a", 1, upscaled=["icons/a.png", "b.png"], identical=3),
                 Shard("train/1", 6, "b", 1, upscaled=["b.png"]),
                 Shard("val/0", 4, "c", 1, identical=1))
    small, flat = m.notes()
    assert small.startswith("2 source image(s) were smaller than the 96 px crop and were upscaled to it")
    assert small.endswith(": b.png, icons/a.png")
    assert flat.startswith("4 of 20 pairs are flat: the input equals the target")
    assert manifest(Shard("train/0", 4, "a", 1), Shard("val/0", 1, "b", 1)).notes() == []


def test_manifests_written_before_the_notes_still_read():
    data = json.loads(manifest(Shard("train/0", 4, "a", 1), Shard("val/0", 1, "b", 1)).to_json())
    for shards in data["splits"].values():
        for shard in shards:
            del shard["upscaled"], shard["identical"]
    assert Manifest.from_json(json.dumps(data)).notes() == []
