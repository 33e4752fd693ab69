"""The web page's files: all shipped in the package, all served, nothing loaded from elsewhere.
(The page itself is exercised in a real browser by tests/integration/test_web.py.)"""

import ast
import fnmatch
import re
from pathlib import Path

from serving.page import WEB_DIR, WEB_FILES, web_response

ROOT = Path(__file__).resolve().parents[2]


def test_every_page_file_is_served_and_shipped_as_package_data():
    on_disk = {p.name for p in WEB_DIR.iterdir() if p.is_file()}
    assert on_disk == set(WEB_FILES)
    # (tomllib is 3.11+, the project supports 3.10: read the one line)
    line = re.search(r"^serving = (\[.*\])$", (ROOT / "pyproject.toml").read_text(), re.M)
    patterns = ast.literal_eval(line.group(1))
    for name in on_disk:
        assert any(fnmatch.fnmatch(f"web/{name}", p) for p in patterns), f"web/{name} is not package data"


def test_the_page_references_only_its_own_files():
    html = (WEB_DIR / "index.html").read_text()
    refs = re.findall(r'(?:href|src)="([^"#]+)"', html)
    assert refs and all(r.startswith("web/") and r[4:] in WEB_FILES for r in refs), refs
    for name in WEB_FILES:
        text = re.sub(r'xmlns="[^"]*"', "", (WEB_DIR / name).read_text())  # a namespace name, not a fetch
        assert not re.search(r"https?://|//cdn|@import", text), f"{name} reaches outside the endpoint"


def test_only_known_files_are_served_with_a_same_origin_policy():
    page = web_response("index.html")
    assert page.status_code == 200 and page.media_type.startswith("text/html")
    assert "default-src 'self'" in page.headers["content-security-policy"]
    assert web_response("app.js").media_type.startswith("text/javascript")
    for name in ("../app.py", "app.py", "", "index.html/"):
        assert web_response(name).status_code == 404
