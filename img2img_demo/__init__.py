"""`img2img demo`: the whole path on the embedded stack. It composes every package, so it
lives beside them (like tests/ and benchmarks/), not inside one."""
