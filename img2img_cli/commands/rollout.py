"""`img2img serve canary|shadow` and `img2img serve rollout status|promote|abort`: a challenger
beside the served champion (serving/rollouts.py; docs/rolling-out.md)."""

from __future__ import annotations

import typer

from cluster.cli_utils import console, json_option, print_json, print_table
from cluster.settings import get_settings
from registry.refs import parse_ref
from serving.rollout import Limits, check_share

rollout_app = typer.Typer(help="Show, promote or abort the running canary or shadow rollout.", no_args_is_help=True)
MODEL_HELP = "the challenger: NAME@alias or NAME/VERSION of the served model"
DEFAULT = Limits()


def _limits(max_error_rate: float, max_p95_ratio: float, min_requests: int, window: int,
            max_sharpness_change: float = DEFAULT.max_sharpness_change) -> Limits:
    from pydantic import ValidationError

    from cluster.errors import Img2ImgError

    try:
        return Limits(max_error_rate=max_error_rate, max_p95_ratio=max_p95_ratio, min_requests=min_requests,
                      window=window, max_sharpness_change=max_sharpness_change)
    except ValidationError as e:
        err = e.errors()[0]
        raise Img2ImgError(f"--{str(err['loc'][0]).replace('_', '-')}: {err['msg']}") from None


def canary(model: str = typer.Option(..., "--model", "-m", help=MODEL_HELP),
           percent: float = typer.Option(None, "--percent", help="share of /enhance requests the challenger "
                                         "answers, 0-100 [default: 10, or the first of --steps]"),
           steps: str = typer.Option(None, "--steps", help="move the share up step by step, e.g. 5,25,50,100 "
                                     "(percent, increasing), unattended, while the limits hold"),
           interval: str = typer.Option("10m", "--interval", help="time at each step before the next, e.g. 30s, 10m, 1h"),
           max_error_rate: float = typer.Option(DEFAULT.max_error_rate, help="abort above this challenger error rate (0-1)"),
           max_p95_ratio: float = typer.Option(DEFAULT.max_p95_ratio, help="abort when the challenger's p95 latency "
                                               "exceeds this many times the champion's (+0.25 s)"),
           min_requests: int = typer.Option(DEFAULT.min_requests, help="challenger requests needed before judging"),
           window: int = typer.Option(DEFAULT.window, help="judge over the challenger's last N requests"),
           max_sharpness_change: float = typer.Option(DEFAULT.max_sharpness_change, help="--steps pause while the "
                                                      "challenger's output sharpness is more than this many times "
                                                      "above or below the champion's")):
    """Send a share of live requests to a challenger (each answer says which version answered:
    X-Model-Version); aborts itself back to the champion when the challenger breaches the limits.
    With --steps the share moves up every --interval by itself.

    Example: `img2img serve canary --model photos/4 --steps 5,25,50,100 --interval 10m`
    """
    from cluster.errors import Img2ImgError
    from serving.rollout_steps import parse_interval, parse_steps
    from serving.rollouts import start

    parse_ref(model)
    stepped = parse_steps(steps) if steps is not None else []
    interval_s = parse_interval(interval)
    if stepped and percent is not None and percent != stepped[0]:
        raise Img2ImgError(f"--percent {percent:g} differs from the first of --steps ({stepped[0]:g}); give one")
    percent = stepped[0] if stepped else (10.0 if percent is None else percent)
    check_share(percent, None)
    limits = _limits(max_error_rate, max_p95_ratio, min_requests, window, max_sharpness_change)
    with console.status("starting the challenger beside the champion"):
        plan = start(get_settings(), "canary", model, percent=percent, limits=limits, steps=stepped,
                     interval_s=interval_s)
    more = (f", moving to {', '.join(f'{s:g}%' for s in stepped[1:])} every {interval_s:g} s while the limits hold"
            if len(stepped) > 1 else "")
    console.print(f"Canary: {plan['name']} v{plan['version']} answers {plan['percent']:g}% of requests, "
                  f"v{plan['champion_version']} the rest{more}. Watch: img2img serve rollout status")


def shadow(model: str = typer.Option(..., "--model", "-m", help=MODEL_HELP),
           sample: float = typer.Option(0.2, "--sample", help="share of requests also sent to the challenger, 0-1"),
           max_error_rate: float = typer.Option(DEFAULT.max_error_rate, help="stop mirroring above this error rate (0-1)"),
           min_requests: int = typer.Option(DEFAULT.min_requests, help="challenger requests needed before judging"),
           window: int = typer.Option(DEFAULT.window, help="judge over the challenger's last N requests")):
    """Mirror a sample of live requests to a challenger after the champion has answered (users
    never wait for it); compares latencies and outputs (PSNR) per request.

    Example: `img2img serve shadow --model photos@challenger --sample 0.2`
    """
    from serving.rollouts import start

    parse_ref(model)
    check_share(None, sample)
    limits = _limits(max_error_rate, DEFAULT.max_p95_ratio, min_requests, window)
    with console.status("starting the challenger beside the champion"):
        plan = start(get_settings(), "shadow", model, sample=sample, limits=limits)
    console.print(f"Shadow: {plan['sample']:.0%} of requests are mirrored to {plan['name']} v{plan['version']}. "
                  "Watch: img2img serve rollout status")


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:.0f} ms"


@rollout_app.command()
def status(as_json: bool = json_option()):
    """Show the running or last rollout: state, share, per-version requests, errors, p50/p95,
    the shadow comparison and why it ended.

    Example: `img2img serve rollout status --json`
    """
    from serving.rollouts import status as rollout_status

    st = rollout_status(get_settings())
    if as_json:
        print_json(st)
        return
    if st["state"] == "none":
        console.print("No rollout yet. Start one with: img2img serve canary --model NAME/VERSION --percent 10")
        return
    share = f"{st['percent']:g}% answered" if st["mode"] == "canary" else f"{st['sample']:.0%} mirrored"
    console.print(f"{st['mode']} of {st['model']} v{st['challenger_version']} against champion "
                  f"v{st['champion_version']}: {st['state']} ({share})", highlight=False)
    rows = [[role, f"v{st[role + '_version']}", s["requests"], s["errors"], f"{s['error_rate']:.1%}",
             _ms(s["p50_s"]), _ms(s["p95_s"])] for role, s in (("champion", st["champion"]),
                                                                 ("challenger", st["challenger"]))]
    print_table("rollout", ["role", "version", "requests", "errors", "error rate", "p50", "p95"], rows)
    c = st["comparison"]
    if st["mode"] == "shadow":
        mean = "-" if c["psnr_mean_db"] is None else f"{c['psnr_mean_db']:.1f} dB"
        skipped = f"; {st['skipped']} sampled requests skipped (the challenger was behind)" if st.get("skipped") else ""
        console.print(f"output agreement: {c['pairs']} pairs, {c['identical']} identical, PSNR mean {mean}{skipped}")
    if c.get("sharpness_ratio") is not None:
        console.print(f"output sharpness (Laplacian variance): champion {c['champion_sharpness']:.2e}, challenger "
                      f"{c['challenger_sharpness']:.2e} (ratio {c['sharpness_ratio']:.2f})", highlight=False)
    if st.get("steps"):
        s = st["steps"]
        console.print(f"step {s['step']} of {s['of']} ({', '.join(f'{p:g}%' for p in s['steps'])}); "
                      f"next: {s['next_move']}", highlight=False)
    if st["fallbacks"]:
        console.print(f"{st['fallbacks']} challenger failure(s) answered by the champion")
    if st["reason"]:
        console.print(f"ended ({st['decided_by']}): {st['reason']}", highlight=False)


@rollout_app.command()
def promote():
    """Make the challenger `champion` in the registry (the old one joins the rollback history)
    and move all traffic to it without dropping a request.

    Example: `img2img serve rollout promote`
    """
    from serving.rollouts import end

    with console.status("moving all traffic to the challenger"):
        st = end(get_settings(), "promote")
    console.print(f"{st['model']} v{st['challenger_version']} is now champion and serves every request "
                  f"(roll back with: img2img models rollback {st['model']})")


@rollout_app.command()
def abort():
    """End the rollout: every request goes to the champion, the challenger is removed.

    Example: `img2img serve rollout abort`
    """
    from serving.rollouts import end

    with console.status("moving all traffic back to the champion"):
        st = end(get_settings(), "abort")
    console.print(f"Aborted: v{st['champion_version']} serves every request ({st['reason']})", highlight=False)


def add_to(serve_app: typer.Typer) -> None:
    """Attach `canary`, `shadow` and the `rollout` group to `img2img serve`."""
    serve_app.command()(canary)
    serve_app.command()(shadow)
    serve_app.add_typer(rollout_app, name="rollout")
