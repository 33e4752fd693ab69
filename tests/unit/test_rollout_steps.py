"""A stepped canary, the output comparison and the start/end claim (serving/rollout_steps.py,
serving/rollout_compare.py, serving.rollout.Ledger): when the share steps up, when it holds,
when it aborts, and one client at a time."""

import io

import numpy as np
import pytest
from PIL import Image, ImageFilter

from cluster.errors import Img2ImgError
from serving.rollout import Ledger, Limits, Plan
from serving.rollout_compare import Comparison, compare_outputs, output_sharpness, sharpness
from serving.rollout_steps import parse_interval, parse_steps


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def stepped(**kw) -> Plan:
    base = {"id": "r1", "mode": "canary", "state": "canary", "name": "photos", "version": "2",
            "champion_version": "1", "app": "enhancer-challenger", "percent": 5.0, "steps": [5, 25, 50, 100],
            "interval_s": 600, "limits": Limits(min_requests=3)}
    return Plan(**{**base, **kw})


@pytest.mark.parametrize("text, steps", [("5,25,50,100", [5, 25, 50, 100]), ("100", [100]), (" 1 , 2.5", [1, 2.5])])
def test_steps_parse(text, steps):
    assert parse_steps(text) == steps


@pytest.mark.parametrize("text, message", [
    ("", "separated by commas"), ("5,,10", "separated by commas"), ("a,b", "separated by commas"),
    ("0,50", "above 0"), ("5,101", "at most 100"), ("nan", "above 0"), ("50,25", "increase"), ("10,10", "increase"),
])
def test_bad_steps_are_one_line_errors(text, message):
    with pytest.raises(Img2ImgError, match=message):
        parse_steps(text)


@pytest.mark.parametrize("text, seconds", [("10m", 600), ("30s", 30), ("1h", 3600), ("90", 90), ("0.5m", 30)])
def test_interval_parse(text, seconds):
    assert parse_interval(text) == seconds


@pytest.mark.parametrize("text", ["", "0", "0m", "-5m", "10d", "m", "ten"])
def test_bad_intervals_are_one_line_errors(text):
    with pytest.raises(Img2ImgError, match="--interval must be"):
        parse_interval(text)


def feed(ledger: Ledger, n: int, sharp_champion=0.01, sharp_challenger=0.01, ok=True):
    for _ in range(n):
        ledger.record("champion", 0.1, True, sharpness=sharp_champion)
        ledger.record("challenger", 0.1, ok, sharpness=sharp_challenger)


def test_a_stepped_canary_steps_up_after_each_interval_and_holds_the_last_step():
    clock = Clock()
    ledger = Ledger(clock)
    ledger.begin(stepped())
    feed(ledger, 5)
    assert ledger.view() == {"state": "canary", "percent": 5}  # not due yet
    for expected in (25, 50, 100):
        clock.now += 601
        feed(ledger, 3)
        assert ledger.view() == {"state": "canary", "percent": expected}
    clock.now += 601
    feed(ledger, 3)
    s = ledger.summary()["steps"]
    assert ledger.percent == 100 and s["step"] == 4 and s["next_percent"] is None and "promote or abort" in s["next_move"]
    assert [t["percent"] for t in s["taken"]] == [5, 25, 50, 100]


def test_a_step_waits_for_enough_challenger_requests():
    clock = Clock()
    ledger = Ledger(clock)
    ledger.begin(stepped())
    clock.now += 601
    feed(ledger, 2)
    s = ledger.summary()["steps"]
    assert ledger.percent == 5 and "1 more challenger request" in s["held"]
    feed(ledger, 1)
    assert ledger.percent == 25


@pytest.mark.parametrize("champion, challenger, holds", [
    (0.01, 0.01, False), (0.01, 0.006, False), (0.01, 0.004, True), (0.01, 0.03, True), (0.0, 0.01, False),
])
def test_a_step_pauses_while_the_outputs_differ_too_much_in_sharpness(champion, challenger, holds):
    clock = Clock()
    ledger = Ledger(clock)
    ledger.begin(stepped())
    feed(ledger, 3, champion, challenger)
    clock.now += 601
    feed(ledger, 1, champion, challenger)
    s = ledger.summary()["steps"]
    assert (ledger.percent == 5) == holds and s["held"].startswith("paused: challenger output sharpness") == holds


def test_a_failing_challenger_aborts_a_stepped_canary_instead_of_stepping():
    clock = Clock()
    ledger = Ledger(clock)
    ledger.begin(stepped())
    clock.now += 601
    feed(ledger, 3, ok=False)
    assert ledger.view() == {"state": "aborted", "percent": 5}
    assert "error rate" in ledger.summary()["reason"] and "rollout is aborted" in ledger.summary()["steps"]["next_move"]


def test_a_canary_without_steps_keeps_its_percent():
    clock = Clock()
    ledger = Ledger(clock)
    ledger.begin(stepped(steps=[], percent=30))
    clock.now += 10_000
    feed(ledger, 10)
    assert ledger.percent == 30 and ledger.summary()["steps"] is None


def test_one_client_at_a_time_holds_the_claim_until_it_releases_or_it_expires():
    clock = Clock()
    ledger = Ledger(clock)
    assert ledger.claim("a", "starting a canary of photos/2", 60) is None
    assert ledger.claim("a", "starting a canary of photos/2", 60) is None  # its own again
    held = ledger.claim("b", "aborting the rollout", 60)
    assert "another client is starting a canary of photos/2" in held
    ledger.release("b")  # not b's to release
    assert ledger.claim("c", "x", 60) is not None
    ledger.release("a")
    assert ledger.claim("b", "aborting the rollout", 60) is None
    clock.now += 61
    assert ledger.claim("c", "x", 60) is None  # b's expired
    ledger.begin(stepped())  # a rollout starting keeps the claim of the client starting it
    assert ledger.claim("d", "y", 60) is not None


def png(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format="PNG")
    return buf.getvalue()


def test_sharpness_is_lower_for_a_blurred_photo_and_zero_for_a_flat_one():
    rng = np.random.default_rng(0)
    photo = Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).resize((128, 128))
    sharp = np.asarray(photo)
    blurred = np.asarray(photo.filter(ImageFilter.GaussianBlur(2)))
    assert sharpness(blurred) < sharpness(sharp) / 4
    assert sharpness(np.full((8, 8, 3), 128, np.uint8)) == 0
    assert sharpness(np.zeros((2, 8), np.uint8)) is None
    assert sharpness(sharp.astype(np.uint16) * 257) == pytest.approx(sharpness(sharp), rel=1e-6)  # 16-bit: same scale
    assert output_sharpness(png(sharp)) == pytest.approx(sharpness(sharp)) and output_sharpness(b"junk") is None
    assert sharpness(np.dstack([sharp[..., 0], sharp[..., 0]])) == pytest.approx(sharpness(sharp[..., 0]))  # LA


def test_compare_outputs_gives_psnr_and_both_sharpnesses():
    a = np.random.default_rng(1).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    psnr, sa, sb = compare_outputs(png(a), png(a))
    assert psnr == float("inf") and sa == sb > 0
    assert compare_outputs(png(a), b"junk")[0] is None and compare_outputs(png(a), b"junk")[2] is None


def test_comparison_summary_reports_the_sharpness_ratio():
    c = Comparison(window=3)
    for v in (0.01, 0.01, 0.01, 0.01):
        c.add_sharpness("champion", v)
    for v in (0.02, float("nan"), None):
        c.add_sharpness("challenger", v)
    s = c.summary()
    assert s["sharpness_ratio"] == pytest.approx(2.0) and s["sharpness_samples"] == {"champion": 3, "challenger": 1}
    assert c.hold(2.0, 1) is None and "2.00 x the champion's" in c.hold(1.5, 1) and c.hold(1.5, 2) is None


def test_a_slow_shadow_challenger_is_not_aborted_for_latency_a_slow_canary_one_is():
    for mode, aborted in (("shadow", False), ("canary", True)):
        ledger = Ledger(Clock())
        ledger.begin(stepped(mode=mode, state=mode, steps=[], sample=1.0 if mode == "shadow" else 0.0))
        for _ in range(5):
            ledger.record("champion", 0.1, True)
            ledger.record_pair(0.1, 5.0, True, 30.0) if mode == "shadow" else ledger.record("challenger", 5.0, True)
        assert (ledger.state == "aborted") == aborted, ledger.summary()["reason"]


def test_a_pipeline_promotes_a_canary_only_once_its_last_step_held_judged_and_aborts_with_it():
    """pipelines.steps.canary_verdict on the ledger's own status: wait through the steps, wait
    at the last step for its interval AND min_requests challenger answers there, then promote;
    a breached guard at any step -> abort."""
    from pipelines.steps import canary_verdict

    clock = Clock()
    ledger = Ledger(clock)
    ledger.begin(stepped(steps=[50, 100], percent=50.0))
    feed(ledger, 3)
    assert canary_verdict(ledger.summary(), 600, clock.now) is None  # first step
    clock.now += 601
    feed(ledger, 1)  # moves to the last step (100%); 1 challenger answer there
    assert ledger.percent == 100 and canary_verdict(ledger.summary(), 600, clock.now) is None  # just reached
    clock.now += 601
    assert canary_verdict(ledger.summary(), 600, clock.now) is None  # held long enough, judged on too little
    feed(ledger, 2)
    assert canary_verdict(ledger.summary(), 600, clock.now) == "promote"

    failing = Ledger(clock)
    failing.begin(stepped(steps=[50, 100], percent=50.0))
    feed(failing, 3, ok=False)
    assert failing.summary()["state"] == "aborted" and canary_verdict(failing.summary(), 600, clock.now) == "abort"
    assert canary_verdict({"state": "none"}, 600, clock.now) is None


def _png(array: np.ndarray, mode: str | None = None) -> bytes:
    out = io.BytesIO()
    Image.fromarray(array, mode).save(out, "PNG") if mode else Image.fromarray(array).save(out, "PNG")
    return out.getvalue()


@pytest.mark.parametrize("before, answer", [
    (np.full((40, 60, 3), 90, np.uint8), np.full((40, 60, 3), 200, np.uint8)),  # 8-bit RGB, same size
    (np.full((20, 30, 3), 90, np.uint8), np.full((40, 60, 3), 200, np.uint8)),  # super-resolution: 2x answers
    (np.full((40, 60, 4), 90, np.uint8), np.full((40, 60, 4), 200, np.uint8)),  # RGBA
    (np.full((40, 60), 30000, np.uint16), np.full((40, 60), 60000, np.uint16)),  # 16-bit grey
])
def test_a_shadow_triplet_shows_input_and_both_answers_side_by_side_at_one_height(before, answer):
    """serving.rollout_compare.triplet: before | champion | challenger, each scaled to the same
    height with its aspect kept, whatever the format and bit depth; captions above."""
    from serving.rollout_compare import triplet

    image = triplet(_png(before), _png(answer), _png(answer), ["before", "champion v1", "challenger v2"], height=64)
    assert image.mode == "RGB" and image.height > 64  # the images and a caption row
    pixels = np.asarray(image)
    row = pixels[-4 - 32]  # a line through the middle of the three images
    widths = [(row == v).all(axis=-1).sum() for v in (np.unique(row.reshape(-1, 3), axis=0))]
    assert max(widths) >= 2 * 96  # two answers of 96 px (60 x 64/40) in the answer's colour
    assert image.width >= 3 * 96


def test_a_triplet_with_an_undecodable_part_is_none():
    from serving.rollout_compare import triplet

    good = _png(np.zeros((8, 8, 3), np.uint8))
    assert triplet(b"not an image", good, good, ["a", "b", "c"]) is None
    assert triplet(good, good, b"", ["a", "b", "c"]) is None


def test_a_batch_of_answers_counts_as_the_same_answers_one_by_one():
    """Ledger.record_many (what an ingress replica sends every 0.1 s): the same numbers, the
    same automatic abort and the same stepped canary as recording each answer on its own."""
    events = []
    for i in range(12):
        events.append(("one", "champion", 0.1, True, False, 0.01))
        events.append(("one", "challenger", 0.1, i < 6, i >= 6, 0.01))  # the challenger starts failing
    one_by_one, batched = Ledger(Clock()), Ledger(Clock())
    for ledger in (one_by_one, batched):
        ledger.begin(stepped(steps=[50, 100], percent=50.0, interval_s=0))
    for _kind, *args in events:
        one_by_one.record(*args)
    assert batched.record_many(events[:10]) == "canary"
    assert batched.record_many(events[10:]) == "aborted"
    a, b = one_by_one.summary(), batched.summary()
    for s in (a, b):
        s.pop("ended_at")
        s["steps"].pop("taken")
        s["steps"].pop("next_at")
    assert a == b and "error rate" in b["reason"]
    shadow = Ledger(Clock())
    shadow.begin(stepped(mode="shadow", state="shadow", steps=[], percent=0.0, sample=1.0))
    assert shadow.record_many([("pair", 0.1, 0.2, True, 30.0, 0.01, 0.02)] * 3) == "shadow"
    assert shadow.summary()["comparison"]["pairs"] == 3 and shadow.summary()["skipped"] == 0
    # sampled requests the ingress did not mirror (the challenger was behind) are counted, nothing else changes
    assert shadow.record_many([("skip",), ("one", "champion", 0.1, True, False, None), ("skip",)]) == "shadow"
    s = shadow.summary()
    assert (s["skipped"], s["comparison"]["pairs"], s["challenger"]["requests"], s["champion"]["requests"]) == (2, 3, 3, 1)
