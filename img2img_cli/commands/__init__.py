"""One module per command group of the root `img2img` CLI, each a few lines over library calls."""
