"""Pure-PyTorch image-to-image translators: variants, networks, losses, degradations, metrics,
image conversion and tiled inference. Nothing here knows about Ray, MLflow or object storage."""

__version__ = "0.1.0"
