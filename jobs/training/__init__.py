"""Training on the cluster: `spec` (the request), `plan` (the arithmetic), `crops`, `finetune`
(--init-from), `client` (preflight and submission through the Ray Jobs API), `driver` (the Ray
job: `python -m jobs.training.driver`), `worker` (the loop each Ray Train worker runs),
`progress` (live progress read from the run)."""
