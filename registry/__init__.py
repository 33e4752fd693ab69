"""The model registry (MLflow): the one model-reference grammar and resolver (`refs`), versions,
aliases, the promotion gate and rollback (`models`), tracking tags and model cards (`tracking`),
export (`export`), and the dataset manifests the gate's evaluation sets are checked against
(`manifest`). Below `jobs/` and `serving/`: imports only `translator` and `cluster`."""
