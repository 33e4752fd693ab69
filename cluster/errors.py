"""The one exception type for mistakes a user can cause; the CLI prints it as `Error: ...`."""


class Img2ImgError(Exception):
    """A one-line, user-facing error (bad input, unreachable service, wrong credentials)."""


def no_registered_model(name: str) -> Img2ImgError:
    """The one wording for 'that model name is not in the registry' (models ls/promote/rollback,
    serve deploy/reload, enhance --local)."""
    return Img2ImgError(f"no registered model {name!r}; list them with: img2img models ls")
