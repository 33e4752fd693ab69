"""What Ray Serve's HTTP ingress adds per request: the HAProxy ingress (the embedded stack's
default where `ray[serve]` bundles HAProxy) against Ray Serve's Python proxy, side by side in ONE
run (two throwaway stacks, requests interleaved round by round, so load from other jobs hits both
alike).

Each stack serves the same tiny random-weight autoencoder (1 replica, 1 CPU, torch), so the
replica's own work is small and the ingress shows: `GET /model`, a 10-byte POST answered 415
(never reaches the model) and a 256x256 PNG through the model. Reports p50/p95 per request kind
and ingress, and the HAProxy / proxy ratio of the p50s.

Usage: python benchmarks/ingress_overhead.py [--rounds 40]   (about 3 minutes on 2 cores)
"""

from __future__ import annotations

import argparse
import io
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.common import percentile, report  # noqa: E402

KINDS = ("GET /model", "10-byte POST (415)", "256x256 PNG POST")


def _stack(root: Path, ingress: str):
    """A throwaway embedded stack under `root` with the given Serve ingress, serving a tiny model."""
    from cluster.settings import get_settings
    from cluster.stack import Stack, free_port

    settings = get_settings(state_dir=root, s3_endpoint=f"127.0.0.1:{free_port()}",
                            mlflow_uri=f"http://127.0.0.1:{free_port()}",
                            ray_address=f"http://127.0.0.1:{free_port()}",
                            serve_url=f"http://127.0.0.1:{free_port()}", ray_num_cpus=2, serve_ingress=ingress)
    stack = Stack(settings)
    stack.up()
    return settings, stack


def _serve_tiny(settings) -> None:
    import mlflow
    import torch
    from mlflow.tracking import MlflowClient

    from registry.tracking import log_generator
    from serving.deploy import deploy
    from serving.options import ReplicaOptions, Scaling
    from translator.variants import get_variant

    torch.manual_seed(0)
    variant = get_variant("autoencoder").from_config({"nf": 4})
    mlflow.set_tracking_uri(settings.mlflow_uri)
    mlflow.set_experiment("ingress-benchmark")
    with mlflow.start_run():
        info = log_generator(variant.generator, variant.multiple, "autoencoder", {}, "ingress-tiny")
    version = str(info.registered_model_version)
    MlflowClient(settings.mlflow_uri).set_model_version_tag("ingress-tiny", version, "variant", "autoencoder")
    deploy(settings, f"ingress-tiny/{version}", ReplicaOptions(runtime="torch"),
           Scaling(min_replicas=1, max_replicas=1, num_cpus=1), wait_s=600)


def _png(size: int) -> bytes:
    from PIL import Image
    from skimage import data

    buf = io.BytesIO()
    Image.fromarray(data.astronaut()).resize((size, size), Image.LANCZOS).save(buf, "PNG")
    return buf.getvalue()


def main() -> None:
    import httpx

    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=40)
    args = parser.parse_args()
    png = _png(256)
    requests = {"GET /model": lambda c, url: c.get(url + "/model"),
                "10-byte POST (415)": lambda c, url: c.post(url + "/enhance", content=b"0123456789",
                                                            headers={"Content-Type": "text/plain"}),
                "256x256 PNG POST": lambda c, url: c.post(url + "/enhance", content=png,
                                                          headers={"Content-Type": "image/png"})}
    expected = {"GET /model": 200, "10-byte POST (415)": 415, "256x256 PNG POST": 200}
    stacks = {}
    with tempfile.TemporaryDirectory(prefix="i2i-ingress-", dir="/tmp") as tmp:
        try:
            for ingress in ("haproxy", "proxy"):
                print(f"starting a stack with the {ingress} ingress", flush=True)
                stacks[ingress] = _stack(Path(tmp) / ingress, ingress)
                _serve_tiny(stacks[ingress][0])
            lat = {(i, k): [] for i in stacks for k in KINDS}
            with httpx.Client(timeout=60) as client:
                for warm in (True, False):
                    for _ in range(3 if warm else args.rounds):
                        for kind in KINDS:
                            for ingress, (settings, _) in stacks.items():
                                t0 = time.perf_counter()
                                r = requests[kind](client, settings.serve_url)
                                seconds = time.perf_counter() - t0
                                if r.status_code != expected[kind]:
                                    raise SystemExit(f"{ingress} {kind}: HTTP {r.status_code} {r.text[:200]}")
                                if not warm:
                                    lat[(ingress, kind)].append(seconds)
        finally:
            for _, stack in stacks.values():
                stack.down()
    rows = []
    for kind in KINDS:
        p50 = {i: percentile(lat[(i, kind)], 50) * 1e3 for i in stacks}
        for ingress in stacks:
            rows.append([kind, ingress, p50[ingress], percentile(lat[(ingress, kind)], 95) * 1e3,
                         p50[ingress] / p50["proxy"]])
    report("ingress_overhead", f"Serve ingress overhead per request ({args.rounds} interleaved rounds, tiny "
           "autoencoder, 1 replica)", ["request", "ingress", "p50 ms", "p95 ms", "p50 / proxy p50"], rows,
           notes="haproxy: Ray Serve's HAProxy ingress, straight to the replica's own HTTP server; proxy: "
                 "Ray Serve's Python proxy actor, then a Ray call to the replica. Two stacks side by side, "
                 "requests interleaved.")


if __name__ == "__main__":
    main()
