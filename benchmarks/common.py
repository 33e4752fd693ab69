"""Shared by the benchmark scripts: the stack to run against, and printing results as JSON plus
a markdown table (what `run_all.py` collects into RESULTS.md)."""

from __future__ import annotations

import json
import platform
import time
from pathlib import Path

OUT = Path(__file__).resolve().parent / "out"


def settings_with_stack():
    """The configured stack, started if it is the embedded one."""
    from cluster.settings import get_settings
    from cluster.stack import Stack

    settings = get_settings()
    Stack(settings).up()
    return settings


def machine() -> str:
    import os

    import torch

    return (f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
            f"{'CUDA ' + torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no GPU'}")


def markdown(title: str, columns: list[str], rows: list[list]) -> str:
    fmt = lambda v: ("-" if v != v else f"{v:.2f}") if isinstance(v, float) else str(v)  # noqa: E731  (NaN: not run)
    lines = [f"### {title}", "", "| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def report(name: str, title: str, columns: list[str], rows: list[list], notes: str = "") -> str:
    """Print and save one result table (JSON + markdown) under benchmarks/out/."""
    OUT.mkdir(exist_ok=True)
    data = {"name": name, "title": title, "columns": columns, "rows": rows, "notes": notes,
            "machine": machine(), "date": time.strftime("%Y-%m-%d %H:%M")}
    (OUT / f"{name}.json").write_text(json.dumps(data, indent=2))
    md = markdown(title, columns, rows) + (f"\n{notes}\n" if notes else "")
    (OUT / f"{name}.md").write_text(md)
    print(json.dumps(data))
    print(md)
    return md


def percentile(values: list[float], q: float) -> float:
    import numpy as np

    return float(np.percentile(values, q)) if values else float("nan")


def run_together(worker, concurrency: int, extra=None) -> None:
    """Run `worker()` in `concurrency` threads (and `extra()`, e.g. a fault injector, in one
    more) and wait for all of them."""
    import threading

    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    if extra is not None:
        threads.append(threading.Thread(target=extra))
    for t in threads:
        t.start()
    for t in threads:
        t.join()
