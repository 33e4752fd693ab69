"""The root `img2img` command (img2img_cli.app:app), the one package that imports every other:
cluster/ stays a base layer that nothing above it has to be loaded for."""
