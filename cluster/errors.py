"""The one exception type for mistakes a user can cause; the CLI prints it as `Error: ...`."""

import difflib
from collections.abc import Iterable


class Img2ImgError(Exception):
    """A one-line, user-facing error (bad input, unreachable service, wrong credentials)."""


def did_you_mean(name: str, known: Iterable[str]) -> str:
    """`; did you mean 'a' or 'b'?` naming the `known` names closest to a mistyped `name`
    (difflib's ratio >= 0.6, at most 3), or "" when none is close. `name` itself is never
    suggested: a listing read as another client deleted it may still hold it."""
    close = difflib.get_close_matches(name, [k for k in known if k != name], n=3, cutoff=0.6)
    return f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""


def no_registered_model(name: str, known: Iterable[str] = ()) -> Img2ImgError:
    """The one wording for 'that model name is not in the registry' (models ls/promote/rollback,
    serve deploy/reload, enhance --local), suggesting the closest of the `known` names."""
    return Img2ImgError(f"no registered model {name!r}{did_you_mean(name, known)}; list them with: img2img models ls")
