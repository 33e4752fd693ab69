"""The search's plot of trials, logged to its parent run as `trials.png`: each trial's val PSNR
(dB) against the search's wall-clock time (s), finished trials solid, trials stopped early by the
scheduler dashed and ending in a cross, failed ones dotted."""

from __future__ import annotations

import io
import math

STYLES = {"finished": ("-", "o"), "stopped early": ("--", "x"), "failed": (":", "v")}


def series(grid, rows: list[dict]) -> list[dict]:
    """One curve per trial from Tune's ResultGrid (each Result's `metrics_dataframe`: its
    reports' `timestamp` in s and `val_psnr` in dB) and the summarised `rows` (their
    "trial", "status"): [{"trial", "status", "t": seconds since the search's first report,
    "psnr": dB}], reports without a finite val PSNR left out."""
    status = {r["trial"]: r["status"] for r in rows}
    curves = []
    for result in grid:
        df = result.metrics_dataframe
        if df is None or "val_psnr" not in df or "timestamp" not in df:
            continue
        df = df[df["val_psnr"].notna()]
        trial = str(df["trial_id"].iloc[-1]) if "trial_id" in df and len(df) else str(result.path)
        points = [(float(t), float(p)) for t, p in zip(df["timestamp"], df["val_psnr"]) if math.isfinite(p)]
        if points:
            curves.append({"trial": trial, "status": status.get(trial, "finished"),
                           "t": [t for t, _ in points], "psnr": [p for _, p in points]})
    start = min((c["t"][0] for c in curves), default=0.0)
    for c in curves:
        c["t"] = [t - start for t in c["t"]]
    return curves


def trials_png(curves: list[dict], title: str = "") -> bytes:
    """PNG bytes of `curves` (`series`): val PSNR (dB) against time (s), one line per trial,
    its style by status (`STYLES`), labelled with trial id and status."""
    import matplotlib

    matplotlib.use("Agg")  # no display on a cluster node
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8, 4.5), dpi=100)
    ax = fig.add_subplot()
    for c in curves:
        line, marker = STYLES.get(c["status"], ("-", "o"))
        (drawn,) = ax.plot(c["t"], c["psnr"], linestyle=line, label=f"{c['trial']} ({c['status']})")
        ax.plot(c["t"][-1:], c["psnr"][-1:], marker=marker, markersize=8, color=drawn.get_color())
    ax.set_xlabel("time since the search's first report (s)")
    ax.set_ylabel("val PSNR (dB)")
    ax.set_title(title or "trials")
    ax.grid(alpha=0.3)
    if curves:
        ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()
