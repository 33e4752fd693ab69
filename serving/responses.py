"""The endpoint's answers besides images: the JSON error shape (`{"error": ...}`, Retry-After on
a 503), the 400 for a query parameter of the wrong type, and the Server-Timing header."""

from __future__ import annotations

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

RETRY_AFTER_S = 5


def error(status: int, message: str, headers: dict | None = None) -> JSONResponse:
    """The endpoint's error answer: JSON `{"error": message}` with HTTP `status`, `Retry-After`
    (seconds) on a 503, plus any `headers` given."""
    headers = {**({"Retry-After": str(RETRY_AFTER_S)} if status == 503 else {}), **(headers or {})}
    return JSONResponse({"error": message}, status_code=status, headers=headers or None)


async def bad_parameters(request: Request, exc: RequestValidationError) -> JSONResponse:
    """A query parameter of the wrong type (`?tile=abc`): 400 with the endpoint's JSON error shape,
    not FastAPI's 422 `{"detail": [...]}` (registered as the app's RequestValidationError handler)."""
    problems = "; ".join(f"{'.'.join(str(p) for p in e.get('loc', ())[1:]) or 'request'}: {e.get('msg')}"
                         for e in exc.errors())
    return error(400, f"bad request parameters: {problems}")


def server_timing(stages: dict[str, float]) -> str:
    """{stage: seconds} -> an HTTP `Server-Timing` value in milliseconds (W3C Server Timing;
    browsers' developer tools chart it), e.g. `decode;dur=1.2, model;dur=44.0, encode;dur=2.1`."""
    return ", ".join(f"{name};dur={seconds * 1000:.1f}" for name, seconds in stages.items())
