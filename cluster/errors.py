"""The one exception type for mistakes a user can cause; the CLI prints it as `Error: ...`."""


class Img2ImgError(Exception):
    """A one-line, user-facing error (bad input, unreachable service, wrong credentials)."""
