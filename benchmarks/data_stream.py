"""Pairs/s decoded and delivered by the dataset stream: from the object store vs the same shards
on local disk, consumed by 1 and 2 workers (as Ray Train's streaming split does)."""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.common import report, settings_with_stack  # noqa: E402

NAME = "bench-stream"


def _consume_rate(ds, workers: int) -> float:
    import ray

    @ray.remote(num_cpus=0.5)
    def consume(split):
        n = 0
        for batch in split.iter_batches(batch_size=16, batch_format="numpy"):
            n += len(batch["key"])
        return n

    t0 = time.time()
    total = sum(ray.get([consume.remote(s) for s in ds.streaming_split(workers, equal=False)]))
    return total / (time.time() - t0)


def main() -> None:
    import ray

    from cluster.stack import Stack
    from cluster.storage import Storage
    from jobs.data.decode import DecodeBatch
    from jobs.data.ingest import IngestOptions, ingest
    from jobs.data.stream import load_dataset, read_parquet_v1, task_rows
    from registry.manifest import dataset_prefix, manifest_key, read_manifest

    settings = settings_with_stack()
    storage = Storage(settings)
    if not storage.exists(manifest_key(NAME)):
        ingest(None, IngestOptions(name=NAME, size=128, crops=32, val_fraction=0.0), settings)
    m = read_manifest(storage, NAME)
    local = Path(tempfile.mkdtemp(prefix="bench-stream-"))
    for shard in m.splits["train"]:
        (local / shard.path.replace("/", "-")).write_bytes(storage.get_bytes(dataset_prefix(NAME) + shard.path))

    settings.apply_ray_env()
    ray.init(address=Stack(settings).gcs_address(), log_to_driver=False)
    rows = []
    for workers in (1, 2):
        s3_rates, disk_rates = [], []
        for _ in range(2):  # the first pass warms caches and worker processes
            s3 = load_dataset(NAME, "train", settings, image_size=96, augment=True)
            disk = read_parquet_v1([str(local)], None).select_columns(["key", "input", "target"])  # same reader
            disk = disk.map_batches(DecodeBatch(["input", "target"], 96, True), batch_format="numpy",
                                    batch_size=task_rows(96))  # the rows a task that load_dataset makes
            s3_rates.append(_consume_rate(s3, workers))
            disk_rates.append(_consume_rate(disk, workers))
        rows.append([workers, max(s3_rates), max(disk_rates), max(s3_rates) / max(disk_rates)])
    ray.shutdown()
    report("data_stream", f"Dataset stream: pairs/s ({m.counts['train']} pairs of 128 px PNGs, 96 px crops)",
           ["workers", "object store pairs/s", "local disk pairs/s", "store / disk"], rows)


if __name__ == "__main__":
    main()
