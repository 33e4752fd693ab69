"""Pipelines: ingest -> train -> evaluate -> gate -> deploy -> promote as one cluster job whose
driver runs each step as the job the CLI would have run. A composition package: it sees jobs,
serving, registry and cluster (jobs and serving never see each other)."""
