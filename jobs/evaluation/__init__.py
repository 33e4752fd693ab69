"""Scoring a registered model on a dataset: `spec` (the request), `client` (checks and submits) and `driver` (the Ray
job: `python -m jobs.evaluation.driver`)."""
