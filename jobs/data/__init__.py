"""Datasets on the object store: ingest (`plan` -> `worker` processes -> `ingest` commits the
manifest), `sources` (what an ingest reads), `stream` (Ray Data reading shards), `browse`
(show, verify, preview, delete)."""
