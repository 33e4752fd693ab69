"""Hyper-parameter search with Ray Tune: `space` (the `--search` grammar and its checks), `spec`
(the request), `client` (submission through admission), `driver` (the Ray job running the Tuner,
each trial a training run of `jobs.training`), `trials` (the live table of trials)."""
