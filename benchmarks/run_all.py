"""`make bench`: run every benchmark script and collect their tables into RESULTS.md."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
SCRIPTS = ["data_stream.py", "decode_formats.py", "train_throughput.py", "serve_latency.py", "ingress_overhead.py", "quality.py", "search.py", "tasks.py", "reliability.py", "large_photos.py",
           "multinode.py", "photos_to_served.py", "upscale.py"]


def main() -> int:
    failed = []
    for script in [] if "--collect-only" in sys.argv else SCRIPTS:
        print(f"== {script}", flush=True)
        if subprocess.run([sys.executable, str(HERE / script)]).returncode:
            failed.append(script)
    tables = sorted((HERE / "out").glob("*.md"))
    machine = ""
    for j in sorted((HERE / "out").glob("*.json")):
        data = json.loads(j.read_text())
        machine = data.get("machine", machine) if isinstance(data, dict) else machine
    text = ["# Benchmark results\n", f"Machine: {machine}. Written {time.strftime('%Y-%m-%d %H:%M')} by "
            "`make bench` (each table also in `benchmarks/out/` as JSON).\n"]
    text += [t.read_text() for t in tables]
    (HERE / "RESULTS.md").write_text("\n".join(text))
    print(f"wrote {HERE / 'RESULTS.md'}" + (f"; FAILED: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
