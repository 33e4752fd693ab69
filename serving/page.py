"""The before/after web page's files (serving/web), served by name with a strict
Content-Security-Policy: the page talks only to its own origin."""

from __future__ import annotations

from pathlib import Path

from fastapi.responses import Response

from serving.responses import error

WEB_DIR = Path(__file__).with_name("web")
# The page's files, by name (no path from the URL ever reaches the file system).
WEB_FILES = {"index.html": "text/html; charset=utf-8", "style.css": "text/css; charset=utf-8",
             "app.js": "text/javascript; charset=utf-8", "icon.svg": "image/svg+xml"}
# The page talks only to this origin: no CDN, no third-party anything.
WEB_HEADERS = {"Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff",
               "Content-Security-Policy": "default-src 'self'; img-src 'self' blob:; connect-src 'self'; "
                                          "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"}


def web_response(name: str) -> Response:
    """The page file `name` (one of WEB_FILES) with WEB_HEADERS; JSON 404 for any other name,
    500 when the installed package lacks it."""
    if name not in WEB_FILES:
        return error(404, f"no page file {name!r}")
    try:
        body = (WEB_DIR / name).read_bytes()  # small files; read each time so an edit shows at once
    except OSError:  # a broken install; the API itself still works
        return error(500, f"the web page file {name} is missing from the installed package")
    return Response(body, media_type=WEB_FILES[name], headers=WEB_HEADERS)
