"""Network building blocks, one module per family (BasicSR/junyanz style)."""
