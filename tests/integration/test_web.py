"""The before/after web page (GET /), driven in headless Chromium against the real endpoint
that the quick demo deployed. Uses Debian's `chromium` through Playwright (`make test` installs
it); Playwright's own browser downloads are never used."""

from __future__ import annotations

import os
import re
import shutil
from urllib.parse import urlparse

import httpx
import pytest
from PIL import Image

pytestmark = pytest.mark.integration
WAIT_MS = 180_000  # an enhance on a busy 2-core machine; a real failure shows up as an error box sooner


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    exe = os.environ.get("IMG2IMG_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    assert exe, "the browser test needs Chromium: `apt-get install -y chromium` (make test does it as root)"
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=exe)
        yield b
        b.close()


@pytest.fixture
def open_page(browser, stack, demo_run):
    """-> open(width, height): a fresh tab (own sessionStorage) on the endpoint's page. Records
    every request's origin and every script error, and checks them at the end."""
    contexts, requests, errors = [], [], []

    def open_(width=1100, height=800):
        ctx = browser.new_context(viewport={"width": width, "height": height}, accept_downloads=True)
        contexts.append(ctx)
        page = ctx.new_page()
        page.set_default_timeout(WAIT_MS)
        page.on("request", lambda r: requests.append(r.url))
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(stack.serve_url + "/")
        page.wait_for_selector(f"#model-summary:has-text('{demo_run.model} v')")
        return page

    yield open_
    for ctx in contexts:
        ctx.close()
    origin = urlparse(stack.serve_url).netloc
    assert {urlparse(u).netloc for u in requests if not u.startswith("blob:")} <= {origin}, requests
    assert not errors, errors


def photo(tmp_path, demo_run, name="photo.png", size=(481, 359)):
    """A held-out sample photo cropped to an odd size (the page must not round it) and degraded
    like the demo's data -> (path, (width, height))."""
    from cluster.settings import get_settings
    from img2img_demo.run import _held_out_photos, _photo, dataset_degradation
    from translator import degrade, images

    settings = get_settings()
    clean = _photo(_held_out_photos(settings, demo_run.dataset)[0])[:size[1], :size[0]]
    path = tmp_path / name
    images.from_array(degrade.apply(dataset_degradation(settings, demo_run.dataset), clean, seed=7)).save(path)
    return path, (clean.shape[1], clean.shape[0])


def keep_screenshot(src, name):
    """With IMG2IMG_SCREENSHOTS=DIR (e.g. docs), also keep a small 256-colour copy there (the README's)."""
    if dest := os.environ.get("IMG2IMG_SCREENSHOTS"):
        Image.open(src).convert("RGB").quantize(256).save(os.path.join(dest, name), optimize=True)


def natural_size(page, selector):
    return tuple(page.eval_on_selector(selector, "img => [img.naturalWidth, img.naturalHeight]"))


def test_page_enhances_a_photo_and_compares_before_after(open_page, demo_run, stack, cli, tmp_path):
    page = open_page()
    champion = httpx.get(stack.serve_url + "/model", timeout=30).json()
    metrics = " ".join(page.inner_text("#model-metrics").split())
    assert f"PSNR {champion['metrics']['val_psnr']:.2f} dB" in metrics, metrics
    assert page.is_hidden("#key-form")  # no key configured on this deployment
    src, (w, h) = photo(tmp_path, demo_run)
    page.evaluate("""() => { window.seen = []; const text = (id) => document.getElementById(id).textContent;
        new MutationObserver(() => window.seen.push(text('status') + ' | ' + text('elapsed')))
            .observe(document.querySelector('main'), {subtree: true, childList: true, characterData: true}); }""")
    page.set_input_files("#file", src)
    page.wait_for_selector("#result:not([hidden])")
    seen = page.evaluate("window.seen")  # progress: uploading, then enhancing, with the time running
    assert any(re.search(r"Uploading.*\| Uploading: \d+\.\d s", t) for t in seen), seen
    assert any(re.search(r"Enhancing.*\| Enhancing: \d+\.\d s", t) for t in seen), seen
    assert page.is_hidden("#error")
    assert natural_size(page, "#after-img") == natural_size(page, "#before-img") == (w, h)
    assert f"by {demo_run.model} v{demo_run.version}" in page.inner_text("#sizes")

    # The divider: a focusable slider the keyboard moves, and the enhanced side follows it.
    divider = page.locator("#divider")
    assert divider.get_attribute("role") == "slider" and divider.get_attribute("aria-valuenow") == "50"
    divider.focus()
    for _ in range(5):
        page.keyboard.press("ArrowLeft")
    assert divider.get_attribute("aria-valuenow") == "45"
    page.keyboard.press("Shift+ArrowRight")
    assert divider.get_attribute("aria-valuenow") == "55"
    assert "55%" in page.eval_on_selector("#after-img", "img => getComputedStyle(img).clipPath")
    page.keyboard.press("End")
    assert divider.get_attribute("aria-valuenow") == "100"
    page.keyboard.press("Home")
    assert divider.get_attribute("aria-valuenow") == "0"
    page.keyboard.press("PageUp")
    assert divider.get_attribute("aria-valuenow") == "10"
    box = page.locator("#compare").bounding_box()  # and with the mouse
    page.mouse.move(box["x"] + 5, box["y"] + box["height"] / 2)
    page.mouse.down()
    page.mouse.move(box["x"] + box["width"] * 0.75, box["y"] + box["height"] / 2, steps=5)
    page.mouse.up()
    assert 70 <= int(divider.get_attribute("aria-valuenow")) <= 80

    # Real pixels and zoom: 100% shows one image pixel per CSS pixel, + doubles it.
    page.click("#zoom-1")
    assert page.eval_on_selector("#compare", "e => e.getBoundingClientRect().width") == w
    page.click("#zoom-in")
    assert page.eval_on_selector("#compare", "e => e.getBoundingClientRect().height") == 2 * h
    page.screenshot(path=tmp_path / "desktop-zoom-200.png")
    page.click("#zoom-fit")
    divider.focus()
    page.keyboard.press("Home")
    for _ in range(5):
        page.keyboard.press("PageUp")  # back to the middle for the screenshot

    page.click("#mode")
    assert page.get_attribute("#mode", "aria-pressed") == "true"
    assert page.is_visible("#after-side") and page.is_hidden("#compare")
    page.click("#mode")

    # The download is the enhanced image, named after the original.
    with page.expect_download() as dl:
        page.click("#download")
    assert dl.value.suggested_filename == "photo-enhanced.png"
    saved = tmp_path / "downloaded.png"
    dl.value.save_as(saved)
    assert Image.open(saved).size == (w, h)
    page.screenshot(path=tmp_path / "desktop.png", full_page=True)
    keep_screenshot(tmp_path / "desktop.png", "web-page.png")

    # Phone width: nothing wider than the screen, the result still fits.
    phone = open_page(390, 844)
    src, size = photo(tmp_path, demo_run, "phone.png")
    phone.set_input_files("#file", src)
    phone.wait_for_selector("#result:not([hidden])")
    assert phone.evaluate("document.documentElement.scrollWidth") <= 390
    assert phone.eval_on_selector("#compare", "e => e.getBoundingClientRect().right") <= 390
    assert natural_size(phone, "#after-img") == size
    phone.screenshot(path=tmp_path / "phone.png", full_page=True)
    keep_screenshot(tmp_path / "phone.png", "web-page-phone.png")
    print(f"screenshots: {tmp_path}")

    r = cli("serve", "status")
    assert r.exit_code == 0 and f"{stack.serve_url}/" in r.output


@pytest.mark.parametrize("name, make, status, words", [
    ("notes.png", lambda p: p.write_text("not a photo"), "415", "not an image"),  # named like one: sent
    ("huge.bmp", lambda p: Image.new("1", (80000, 1000)).save(p), "413", "80.0 mp"),  # 80 MP > 72 MP
])
def test_page_shows_the_api_error(open_page, tmp_path, name, make, status, words):
    page = open_page()
    path = tmp_path / name
    make(path)
    page.set_input_files("#file", path)
    page.wait_for_selector("#error:not([hidden])")
    text = page.inner_text("#error")
    assert status in text and words in text.lower(), text
    assert f"Failed ({status})" in page.inner_text("#status")
    assert page.is_hidden("#result")


def test_page_asks_for_the_api_key_when_one_is_set(open_page, stack, demo_run, monkeypatch, tmp_path):
    from cluster.settings import get_settings
    from serving.deploy import deploy

    monkeypatch.setenv("IMG2IMG_SERVE_API_KEY", "page-test-key")
    try:
        deploy(get_settings(), f"{demo_run.model}@champion", wait_s=120)
        page = open_page()
        page.wait_for_selector("#key-form:not([hidden])")  # asked up front: GET /model says a key is needed
        assert page.evaluate("document.activeElement.id") == "api-key"
        assert page.get_attribute("#api-key", "type") == "password"
        src, size = photo(tmp_path, demo_run, size=(64, 48))
        page.set_input_files("#file", src)
        page.wait_for_selector("#error:not([hidden])")
        assert "401" in page.inner_text("#error")
        page.fill("#api-key", "page-test-key")
        page.click("#key-form button[type=submit]")  # resends the photo with the key
        page.wait_for_selector("#result:not([hidden])")
        assert natural_size(page, "#after-img") == size
        assert page.evaluate("sessionStorage.getItem('img2img-api-key')") == "page-test-key"
        assert page.evaluate("localStorage.length") == 0
        page.screenshot(path=tmp_path / "api-key.png", full_page=True)
    finally:
        monkeypatch.delenv("IMG2IMG_SERVE_API_KEY")
        deploy(get_settings(), f"{demo_run.model}@champion", wait_s=120)


def test_page_takes_a_dropped_or_pasted_photo(open_page, demo_run, tmp_path):
    import base64

    page = open_page()
    src, size = photo(tmp_path, demo_run, "dropped.png", (97, 65))
    b64 = base64.b64encode(src.read_bytes()).decode()
    make = """([b64, name]) => { const dt = new DataTransfer();
        const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
        dt.items.add(new File([bytes], name, {type: 'image/png'})); return dt; }"""
    page.dispatch_event("#drop", "drop", {"dataTransfer": page.evaluate_handle(make, [b64, "dropped.png"])})
    page.wait_for_selector("#result:not([hidden])")
    assert natural_size(page, "#after-img") == size
    assert page.get_attribute("#download", "download") == "dropped-enhanced.png"
    page.evaluate("""([b64]) => { const dt = new DataTransfer();
        const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
        dt.items.add(new File([bytes], 'image.png', {type: 'image/png'}));
        document.dispatchEvent(new ClipboardEvent('paste', {clipboardData: dt})); }""", [b64])
    page.wait_for_selector("#download[download='pasted-enhanced.png']")
    assert natural_size(page, "#after-img") == size


DROP = """([files, entries]) => {
    // A drop as the browser delivers it: DataTransfer items, each with its file and its entry.
    // Chromium gives real drops a FileSystemEntry; one built here has none, so a folder's entry
    // is described as the browser's is (isDirectory, name).
    const items = files.map(([b64, name, type], i) => {
        const file = new File([Uint8Array.from(atob(b64), (c) => c.charCodeAt(0))], name, {type});
        return {kind: 'file', getAsFile: () => file,
                webkitGetAsEntry: () => entries[i] ? {isDirectory: true, isFile: false, name} : null};
    });
    const ev = new Event('drop', {bubbles: true, cancelable: true});
    Object.defineProperty(ev, 'dataTransfer', {value: {items, files: items.map((i) => i.getAsFile())}});
    document.getElementById('drop').dispatchEvent(ev);
}"""


def test_page_explains_dropped_folders_and_non_images_and_sends_nothing(open_page):
    import base64

    page = open_page()
    requests = []
    page.on("request", lambda r: requests.append(r.url))
    text = base64.b64encode(b"shopping list").decode()
    cases = [
        ([["", "Holiday 2024", ""]], [True], "“Holiday 2024” is a folder. Open it and drop the photos themselves"),
        ([["", "Holiday 2024", ""]], [False], "“Holiday 2024” is empty or is a folder"),  # Firefox, Safari
        ([[text, "notes.txt", "text/plain"]], [False], "“notes.txt” is not a photo"),
        ([["", "a", ""], [text, "b.txt", "text/plain"]], [True, False], "None of the 2 dropped items is a photo"),
    ]
    for files, entries, words in cases:
        page.evaluate(DROP, [files, entries])
        page.wait_for_selector("#error:not([hidden])")
        assert words in page.inner_text("#error"), page.inner_text("#error")
        assert "Nothing to enhance" in page.inner_text("#error") and page.inner_text("#status") == "Nothing was sent."
    assert not [u for u in requests if "/enhance" in u]


def test_page_enhances_several_dropped_photos_one_after_another(open_page, demo_run, tmp_path):
    import base64

    page = open_page()
    srcs = [photo(tmp_path, demo_run, f"p{i}.png", (40 + 8 * i, 32)) for i in range(3)]
    files = [[base64.b64encode(p.read_bytes()).decode(), p.name, "image/png"] for p, _ in srcs]
    files.insert(1, [base64.b64encode(b"x").decode(), "readme.txt", "text/plain"])
    seen = []
    page.on("request", lambda r: seen.append(r.url) if "/enhance" in r.url else None)
    page.evaluate(DROP, [files, [False] * 4])
    page.wait_for_selector("#status:has-text('3 of 3 photo(s) enhanced')")
    assert len(seen) == 3  # one request a photo; the text file never sent
    batch = page.inner_text("#batch")
    assert "“readme.txt” is not a photo" in batch, batch
    assert batch.count("enhanced in") == 3 and batch.count("download") == 3, batch
    assert "1 item(s) not photos, not sent" in page.inner_text("#status")
    assert natural_size(page, "#after-img") == srcs[-1][1]  # the last one is shown
    hrefs = page.eval_on_selector_all("#batch a", "as => as.map((a) => [a.href, a.download])")
    assert [d for _, d in hrefs] == ["p0-enhanced.png", "p1-enhanced.png", "p2-enhanced.png"]
    sizes = page.evaluate("""(urls) => Promise.all(urls.map((u) => new Promise((ok) => {
        const img = new Image(); img.onload = () => ok([img.naturalWidth, img.naturalHeight]); img.src = u; })))""",
                          [h for h, _ in hrefs])
    assert [tuple(s) for s in sizes] == [size for _, size in srcs]
