"""`python -m img2img_cli ARGS` = `img2img ARGS` (for subprocesses that must use this interpreter)."""

import sys

from img2img_cli.app import app

sys.exit(app(prog_name="img2img"))
