"""The pipeline's webhook (pipelines.notify): delivered as JSON to a real HTTP server, retried on
429/5xx and refused connections, final on other 4xx, and never raising or showing more of the URL
than its host (a webhook's path often is its token)."""

from __future__ import annotations

import json
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from pipelines import notify


class _Hook:
    """A real HTTP server on 127.0.0.1 answering POSTs with the given status codes in turn."""

    def __init__(self, codes):
        self.codes, self.bodies = list(codes), []
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                hook.bodies.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
                code = hook.codes.pop(0) if len(hook.codes) > 1 else hook.codes[0]
                self.send_response(code)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/hooks/SECRET-TOKEN"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def hook(request):
    h = _Hook(request.param)
    yield h
    h.close()


@pytest.mark.parametrize("hook, tries, delivered", [
    ([200], 1, True),
    ([503, 429, 204], 3, True),  # retried until it answers
    ([500], notify.TRIES, False),  # gives up after TRIES
    ([404], 1, False),  # a client error is final
], indirect=["hook"])
def test_a_summary_is_posted_and_retried_only_when_worth_it(hook, tries, delivered, caplog):
    payload = {"pipeline": "p", "status": "FINISHED", "decision": "keep"}
    caplog.set_level("INFO")
    line = notify.send(hook.url, payload, wait_s=0.01)
    assert hook.bodies == [payload] * tries
    assert line.startswith("delivered to 127.0.0.1:" if delivered else "not delivered to 127.0.0.1:"), line
    assert "SECRET-TOKEN" not in line and "SECRET-TOKEN" not in caplog.text


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_an_unreachable_webhook_is_a_line_not_an_error():
    line = notify.send(f"http://127.0.0.1:{_closed_port()}/x", {}, timeout_s=1, wait_s=0.01)
    assert line.startswith("not delivered to 127.0.0.1:") and "ConnectError" in line, line


@pytest.mark.parametrize("env, expect", [
    ({"HOOK": "https://hooks.example.com/T0K3N"}, "https://hooks.example.com/T0K3N"),
    ({}, "environment variable HOOK is not set where the pipeline runs"),
    ({"HOOK": "not a url"}, "environment variable HOOK does not hold an http(s) URL"),
    ({"HOOK": "env:OTHER"}, "environment variable HOOK does not hold an http(s) URL"),
])
def test_env_names_a_variable_holding_the_url(env, expect):
    if expect.startswith("http"):
        assert notify.resolve("env:HOOK", env) == expect
    else:
        with pytest.raises(LookupError, match=expect.replace("(", r"\(").replace(")", r"\)")):
            notify.resolve("env:HOOK", env)


def test_summary_carries_the_decision_and_each_steps_outputs():
    outputs = {"train": {"version": "3", "key": "k"}, "gate": {"decision": "keep", "candidate": "3", "champion": "2"}}
    s = notify.summary("nightly", "raysubmit_1", "r1", "FINISHED", "kept champion v2: ...", "", "photos", outputs)
    assert (s["decision"], s["candidate"], s["champion"], s["model"]) == ("keep", "3", "2", "photos")
    assert s["steps"]["train"] == {"version": "3"}  # the cache key is bookkeeping, left out
