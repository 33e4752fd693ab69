"""A rollout's routing and numbers (serving/rollout.py): who answers, what is mirrored, the
per-version statistics, when the limits abort it, and the output agreement."""

import io
import math

import numpy as np
import pytest
from PIL import Image

from cluster.errors import Img2ImgError
from serving.rollout import (
    Comparison,
    Ledger,
    Limits,
    Plan,
    Tally,
    breach,
    check_share,
    mirrored,
    output_psnr,
    parse_plan,
    route,
)


def plan(**kw) -> Plan:
    base = {"id": "r1", "mode": "canary", "state": "canary", "name": "photos", "version": "2",
            "champion_version": "1", "app": "enhancer-challenger", "percent": 30.0}
    return Plan(**{**base, **kw})


@pytest.mark.parametrize("state, percent, draw, expected", [
    ("canary", 30, 0.0, "challenger"),
    ("canary", 30, 0.299, "challenger"),
    ("canary", 30, 0.3, "champion"),
    ("canary", 0, 0.0, "champion"),
    ("canary", 100, 0.9999, "challenger"),
    ("aborted", 100, 0.0, "champion"),
    ("promoted", 100, 0.0, "champion"),
])
def test_route_gives_a_live_canary_its_percent(state, percent, draw, expected):
    assert route(plan(state=state, percent=percent), draw) == expected


def test_route_without_a_rollout_is_the_champion():
    assert route(None, 0.0) == "champion"


def test_route_share_over_many_draws():
    draws = np.random.default_rng(0).random(10000)
    assert abs(np.mean([route(plan(percent=30), d) == "challenger" for d in draws]) - 0.3) < 0.02


@pytest.mark.parametrize("mode, state, sample, draw, expected", [
    ("shadow", "shadow", 0.2, 0.1, True),
    ("shadow", "shadow", 0.2, 0.2, False),
    ("shadow", "shadow", 1.0, 0.999, True),
    ("shadow", "shadow", 0.0, 0.0, False),
    ("shadow", "aborted", 1.0, 0.0, False),
    ("canary", "canary", 1.0, 0.0, False),
])
def test_mirrored_only_a_live_shadows_sample(mode, state, sample, draw, expected):
    assert mirrored(plan(mode=mode, state=state, sample=sample, percent=0), draw) is expected


@pytest.mark.parametrize("percent, sample, bad", [
    (0, None, None), (100, None, None), (None, 0.5, None), (None, None, None),
    (-1, None, "--percent"), (100.5, None, "--percent"), (math.nan, None, "--percent"),
    (None, 1.01, "--sample"), (None, -0.1, "--sample"), (None, math.inf, "--sample"),
])
def test_check_share(percent, sample, bad):
    if bad is None:
        check_share(percent, sample)
    else:
        with pytest.raises(Img2ImgError, match=bad):
            check_share(percent, sample)


@pytest.mark.parametrize("value", [{"id": "x"}, {**plan().model_dump(), "state": "paused"},
                                   {**plan().model_dump(), "percent": 120}, {**plan().model_dump(), "extra": 1}])
def test_a_malformed_plan_is_one_line_error(value):
    with pytest.raises(Img2ImgError, match="user_config rollout"):
        parse_plan(value)


def test_parse_plan_none_and_round_trip():
    assert parse_plan(None) is None and parse_plan({}) is None
    assert parse_plan(plan().model_dump()) == plan()


def tally(outcomes, window=50) -> Tally:
    t = Tally(window)
    for seconds, ok in outcomes:
        t.add(seconds, ok)
    return t


FAST = [(0.1, True)] * 20
LIMITS = Limits()


@pytest.mark.parametrize("challenger, reason", [
    ([(0.1, False)] * 9, None),  # under min_requests: not judged yet
    ([(0.1, False)] * 10, "error rate 100%"),
    ([(0.1, True)] * 19 + [(0.1, False)], None),  # 5% is the limit, not over it
    ([(0.1, True)] * 18 + [(0.1, False)] * 2, "error rate 10%"),
    ([(0.5, True)] * 20, None),  # 0.5 s < 3 x 0.1 + 0.25
    ([(0.6, True)] * 20, "p95 latency 0.600 s"),
])
def test_breach_table(challenger, reason):
    got = breach(tally(FAST), tally(challenger), LIMITS)
    assert (got is None) if reason is None else (reason in got)


def test_breach_looks_at_the_window_only():
    recovered = tally([(0.1, False)] * 5 + [(0.1, True)] * 50, window=50)
    assert recovered.errors == 5 and breach(tally(FAST), recovered, LIMITS) is None


def test_tally_summary():
    s = tally([(0.1, True), (0.3, True), (9.0, False)]).summary()
    assert (s["requests"], s["errors"]) == (3, 1) and s["error_rate"] == pytest.approx(1 / 3)
    assert s["p50_s"] == pytest.approx(0.2) and s["p95_s"] == pytest.approx(0.29)  # failures carry no latency
    assert Tally(5).summary()["p50_s"] is None


def test_ledger_aborts_itself_once_and_a_user_decision_does_not_undo_it():
    ledger = Ledger()
    assert ledger.begin(plan(limits=Limits(min_requests=3))) == "canary"
    for _ in range(5):
        ledger.record("champion", 0.1, True)
    assert ledger.record("challenger", 0.1, False) == "canary"
    ledger.record("challenger", 0.1, False)
    assert ledger.record("challenger", 0.1, False) == "aborted"
    s = ledger.summary()
    assert s["decided_by"] == "automatic" and "error rate" in s["reason"] and s["challenger"]["errors"] == 3
    assert ledger.begin(plan(limits=Limits(min_requests=3), state="promoted")) == "aborted"
    assert ledger.begin(plan(id="r2")) == "canary" and ledger.summary()["challenger"]["requests"] == 0


def test_ledger_follows_a_user_decision_and_counts_fallbacks():
    ledger = Ledger()
    ledger.begin(plan())
    ledger.record("champion", 0.2, True, fallback=True)
    assert ledger.begin(plan(state="promoted", reason="promoted by a user", decided_by="user")) == "promoted"
    s = ledger.summary()
    assert s["fallbacks"] == 1 and s["state"] == "promoted" and s["ended_at"] is not None
    assert Ledger().summary() == {"state": "none"}


def png(array) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, "PNG")
    return buf.getvalue()


def test_output_psnr():
    a = np.full((8, 8, 3), 100, np.uint8)
    b = a.copy()
    b[0, 0, 0] = 110  # MSE = 100 / 192
    assert output_psnr(png(a), png(a)) == math.inf
    assert output_psnr(png(a), png(b)) == pytest.approx(10 * math.log10(255 ** 2 / (100 / 192)))
    deep = np.full((4, 4), 1000, np.uint16)
    assert output_psnr(png(deep), png(deep + 1)) == pytest.approx(10 * math.log10(65535 ** 2))
    assert output_psnr(png(a), png(a[:4])) is None
    assert output_psnr(png(a), b"not an image") is None


def test_comparison_separates_identical_pairs():
    c = Comparison()
    for value in (math.inf, 30.0, 40.0, None):
        c.add(value)
    assert {k: v for k, v in c.summary().items() if "sharpness" not in k} == {
        "pairs": 4, "identical": 1, "psnr_mean_db": 35.0, "psnr_min_db": 30.0}


@pytest.mark.parametrize("reply,keep,expected", [
    ((200, "b"), False, (200, "measured", b"")),
    ((200, "b"), True, (200, "measured", "b")),
    ((500, b'{"error": "internal error"}'), True, (500, (None, None, None), b"")),
    ((413, b'{"error": "too large"}'), False, (413, (None, None, None), b"")),
])
def test_a_shadow_request_is_measured_on_the_challenger_and_returns_its_image_only_when_kept(reply, keep, expected):
    """The challenger answers a mirrored request and compares its answer with the champion's
    itself (the ingress only forwards), sending its image back only for a triplet."""
    import asyncio

    from serving.rollout_compare import compare_outputs
    from serving.rollout_replica import RolloutReplica

    images = {"a": png(np.full((8, 8, 3), 100, np.uint8)), "b": png(np.full((8, 8, 3), 90, np.uint8))}
    status, body = reply[0], images.get(reply[1], reply[1])

    class Challenger(RolloutReplica):
        async def answer(self, *args):
            return status, body, "image/png", {}

    *out, compare_s = asyncio.run(Challenger().shadow_answer(b"input", "png", 0, 0, "ab", images["a"], keep))
    want_status, measures, image = expected
    measures = compare_outputs(images["a"], images["b"]) if measures == "measured" else measures
    assert tuple(out) == (want_status, *measures, images.get(image, image)) and 0 <= compare_s < 10
    assert status != 200 or out[1] == pytest.approx(10 * math.log10(255 ** 2 / 100))


@pytest.mark.parametrize("apps", [{}, {"other": {"deployments": []}}, {"enhancer": {"deployments": [{"name": "X"}]}}])
def test_a_rollout_without_a_deployed_champion_is_refused(apps):
    from serving.rollouts import _enhancer

    with pytest.raises(Img2ImgError, match="no enhancer app is deployed"):
        _enhancer(apps)
