"""`img2img batch`: folders and buckets of images enhanced on the cluster by a Ray Data job
(`spec` what is submitted, `plan` which output each input gets, `client` the user's side,
`driver` the job)."""
