"""End to end: the real page in headless Chromium (Debian's /usr/bin/chromium driven by Playwright), against
uvicorn on a free loopback port serving a library built with the fake colour encoder.

Skips -- loudly, with the reason -- when Playwright or the browser is missing (`.ci/run` installs both).
Set XMODAL_SCREENSHOT=path.png to keep a screenshot of the results page, XMODAL_SCREENSHOT_DIR=folder to keep
the desktop and phone layouts (web-desktop.png, web-phone.png; benchmarks/screenshots/ holds the docs' copies).
"""
from __future__ import annotations

import io
import os
import shutil
import socket
import subprocess
import threading
import time
import warnings
from pathlib import Path

import pytest
from PIL import Image

from conftest import COLOURS, draw
from xmodal.indexer.storage.library import Library
from xmodal.indexer.ingest.pipeline import index_images

CHROMIUM = os.environ.get("XMODAL_CHROMIUM", "/usr/bin/chromium")
TOKEN = "e2e-token-0123456789abcdef"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]


def _skip_loudly(reason: str):
    message = f"BROWSER END-TO-END TEST SKIPPED: {reason}"
    warnings.warn(message)
    pytest.skip(message)


@pytest.fixture(scope="module")
def browser():
    try:
        from playwright.sync_api import sync_playwright
    except ImportError as e:
        _skip_loudly(f"the playwright package is not installed ({e}); run `pip install -e '.[test]'`")
    if not (os.path.isfile(CHROMIUM) and os.access(CHROMIUM, os.X_OK)):
        _skip_loudly(f"no Chromium at {CHROMIUM}; install Debian's package: apt-get install -y chromium")
    with sync_playwright() as p:
        try:
            b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        except Exception as e:  # noqa: BLE001 - any launch failure is an environment problem
            _skip_loudly(f"Chromium at {CHROMIUM} did not start: {str(e).splitlines()[0]}")
        yield b
        b.close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def server(tmp_path, fake_encoder):
    import uvicorn

    from xmodal.engine.web.server import create_app

    photos = tmp_path / "photos"
    for colour in ("red", "green", "blue", "yellow", "purple", "cyan"):
        draw(photos / f"{colour}.jpg", colour, size=(120, 90))
    draw(photos / "more" / "dark-red.png", "red", size=(90, 120))
    library = tmp_path / "library"
    with Library(library, create=True) as lib:
        index_images(lib, [str(photos)], fake_encoder)
    app = create_app(library, model="fake-colour", token=TOKEN)
    port = _free_port()
    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not srv.started:
        assert time.monotonic() < deadline and thread.is_alive(), "uvicorn did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    srv.should_exit = True
    thread.join(10)


def test_search_by_text_and_by_image_in_a_real_browser(browser, server, tmp_path):
    page = browser.new_page(viewport={"width": 1100, "height": 700})
    page.set_default_timeout(10_000)
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on("console", lambda m: errors.append(m.text) if "Content Security Policy" in m.text else None)
    urls: list[str] = []
    page.on("request", lambda r: urls.append(r.url))
    page.goto(server + f"/?token={TOKEN}")  # traded for a session cookie and a clean URL
    assert page.url == server + "/"
    page.wait_for_selector("#folder option:nth-child(2)", state="attached")  # folders loaded from the API

    # text -> images
    page.fill("#q", "red")
    page.press("#q", "Enter")
    page.wait_for_selector("#grid figure.hit")
    names = page.locator("#grid figure.hit .name").all_inner_texts()
    assert names[:2] == ["red.jpg", "dark-red.png"] or names[:2] == ["dark-red.png", "red.jpg"]
    assert len(names) == 7
    page.wait_for_function("() => [...document.querySelectorAll('#grid img')].every(i => i.complete && i.naturalWidth > 0)")
    assert "7 images" in page.inner_text("#status")
    shot = tmp_path / "serve.png"
    page.screenshot(path=str(shot))
    if os.environ.get("XMODAL_SCREENSHOT"):
        Path(os.environ["XMODAL_SCREENSHOT"]).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(shot, os.environ["XMODAL_SCREENSHOT"])
    assert Image.open(shot).size == (1100, 700)

    # the folder filter narrows the same query
    more = page.locator("#folder option").nth(2).get_attribute("value")
    assert more.endswith("more")
    page.select_option("#folder", more)
    page.wait_for_function("() => document.querySelector('#grid').dataset.count === '1'")
    assert page.locator("#grid figure.hit .name").all_inner_texts() == ["dark-red.png"]
    page.select_option("#folder", "")

    # image -> images: upload a blue photo through the file chooser
    buf = io.BytesIO()
    Image.new("RGB", (50, 40), COLOURS["blue"]).save(buf, format="PNG")
    page.set_input_files("#file-input", files=[{"name": "query.png", "mimeType": "image/png", "buffer": buf.getvalue()}])
    page.wait_for_function("() => document.querySelector('#status').textContent.includes('query.png')"
                           " && !document.querySelector('#status').textContent.startsWith('searching')")
    assert page.locator("#grid figure.hit .name").first.inner_text() == "blue.jpg"

    # open a photo, then "more like this"
    page.locator("#grid figure.hit").first.click()
    page.wait_for_selector("#viewer[open]")
    page.wait_for_function("() => document.querySelector('#viewer-img').complete && document.querySelector('#viewer-img').naturalWidth === 120")
    page.click("#more-like-this")
    page.wait_for_function("() => document.querySelector('#status').textContent.includes('more like blue.jpg')"
                           " && !document.querySelector('#status').textContent.startsWith('searching')")
    assert "blue.jpg" not in page.locator("#grid figure.hit .name").all_inner_texts()  # not the photo itself

    # the texts toggle re-runs the last search for texts (this library has none)
    page.check('input[name="target"][value="texts"]')
    page.wait_for_selector("#grid.texts", state="attached")
    assert page.inner_text("#status").startswith("0 texts")
    assert errors == []
    assert urls[0] == server + f"/?token={TOKEN}" and not any(TOKEN in u for u in urls[1:])
    assert TOKEN not in page.evaluate("document.cookie")  # HttpOnly, and a session value, not the token
    page.close()


def test_a_slow_older_search_never_replaces_a_newer_ones_results(browser, server):
    """Upload a photo whose search is slow, then search "red": the red results stay, with the box's words,
    even after the photo search's answer arrives (the page aborts it and drops late answers)."""
    page = browser.new_page(viewport={"width": 1100, "height": 700})
    page.set_default_timeout(10_000)
    page.goto(server + f"/?token={TOKEN}")
    page.wait_for_selector("#folder option:nth-child(2)", state="attached")
    held: list = []
    page.route("**/api/search/image*", lambda route: held.append(route))  # answered later, by hand

    buf = io.BytesIO()
    Image.new("RGB", (50, 40), COLOURS["blue"]).save(buf, format="PNG")
    page.set_input_files("#file-input", files=[{"name": "slow.png", "mimeType": "image/png", "buffer": buf.getvalue()}])
    page.wait_for_function("() => document.querySelector('#status').textContent.includes('slow.png')")
    page.click("#query-photo .remove")  # back to text search (words typed with the photo would be added to it)
    page.fill("#q", "red")
    page.press("#q", "Enter")
    page.wait_for_function("() => document.querySelector('#status').textContent.includes('red')"
                           " && !document.querySelector('#status').textContent.startsWith('searching')")
    assert held, "the photo search never reached the network"
    try:
        held[0].continue_()  # the old answer arrives now, after the newer one
    except Exception:  # noqa: BLE001 - already aborted by the page: that is the point
        pass
    # Wait for the old request to be settled either way: failed (the page aborts it) or answered in full.
    response = held[0].request.response()  # None once it failed
    if response is not None:
        response.finished()
    page.evaluate("() => new Promise((r) => setTimeout(r, 0))")  # a turn for a late answer to (wrongly) render
    assert "red" in page.inner_text("#status") and "slow.png" not in page.inner_text("#status")
    assert page.locator("#grid figure.hit .name").first.inner_text() in ("red.jpg", "dark-red.png")
    page.close()


def _open_page(browser, server, **context):
    """A fresh page (in its own context when options are given) holding a session, with the folders loaded."""
    if context:
        ctx = browser.new_context(**context)
        page = ctx.new_page()
    else:
        page = browser.new_page(viewport={"width": 1100, "height": 700})
    page.set_default_timeout(10_000)
    page.goto(server + f"/?token={TOKEN}")
    page.wait_for_selector("#folder option:nth-child(2)", state="attached")
    return page


def _settled(page, text: str) -> None:
    """Wait until the status shows the answer of the search whose label holds text."""
    page.wait_for_function("(t) => { const s = document.querySelector('#status').textContent;"
                           " return s.includes(t) && !s.startsWith('searching'); }", arg=text)


def _focused(page, selector: str) -> bool:
    return page.evaluate("(s) => document.activeElement && document.activeElement.matches(s)", selector)


def _tab_to(page, selector: str, limit: int = 40) -> None:
    for _ in range(limit):
        if _focused(page, selector):
            return
        page.keyboard.press("Tab")
    raise AssertionError(f"Tab never reached {selector}")


def test_a_keyboard_only_session(browser, server):
    """Search, open a photo, "More like this", close: with the keyboard alone, focus visible on each stop and
    back on a tile after the viewer closes; the drop zone opens the file chooser with Enter."""
    page = _open_page(browser, server)
    # A listener from the start turns file-chooser interception on well before Enter opens one (turned on by
    # expect_file_chooser itself, it can lose the race with the dialog and the event never comes).
    page.on("filechooser", lambda chooser: None)
    assert _focused(page, "#q")  # autofocus
    page.keyboard.type("red")
    page.keyboard.press("Enter")
    _settled(page, "red")

    _tab_to(page, "#grid figure.hit")
    tile = page.evaluate("document.activeElement.dataset.id")
    assert page.evaluate("getComputedStyle(document.activeElement).outlineStyle") != "none"  # visible focus
    page.keyboard.press("Enter")
    page.wait_for_selector("#viewer[open]")
    page.keyboard.press("Escape")
    page.wait_for_selector("#viewer:not([open])", state="attached")
    assert page.evaluate("document.activeElement.dataset.id") == tile  # back on the tile that opened it

    page.keyboard.press(" ")  # Space opens it too
    page.wait_for_selector("#viewer[open]")
    name = page.locator(f'#grid figure.hit[data-id="{tile}"] .name').inner_text()
    _tab_to(page, "#more-like-this", limit=4)
    page.keyboard.press("Enter")
    _settled(page, f"more like {name}")
    assert _focused(page, "#grid figure.hit")  # focus on the first new result
    first = page.evaluate("document.activeElement.dataset.id")
    page.keyboard.press("Enter")
    page.wait_for_selector("#viewer[open]")
    _tab_to(page, "#viewer .close", limit=4)
    page.keyboard.press("Enter")
    page.wait_for_selector("#viewer:not([open])", state="attached")
    assert _focused(page, f'#grid figure.hit[data-id="{first}"]')

    # the drop zone: reachable with Shift+Tab from the results, Enter opens the file chooser
    for _ in range(40):
        if _focused(page, "#drop-zone"):
            break
        page.keyboard.press("Shift+Tab")
    assert _focused(page, "#drop-zone")
    with page.expect_file_chooser() as chooser:
        page.keyboard.press("Enter")
    buf = io.BytesIO()
    Image.new("RGB", (50, 40), COLOURS["green"]).save(buf, format="PNG")
    chooser.value.set_files(files=[{"name": "kb.png", "mimeType": "image/png", "buffer": buf.getvalue()}])
    _settled(page, "kb.png")
    assert page.locator("#grid figure.hit .name").first.inner_text() == "green.jpg"
    page.close()


def test_a_click_on_the_backdrop_closes_the_viewer(browser, server):
    page = _open_page(browser, server)
    page.fill("#q", "blue")
    page.press("#q", "Enter")
    _settled(page, "blue")
    page.locator("#grid figure.hit").first.click()
    page.wait_for_selector("#viewer[open]")
    page.mouse.click(5, 5)  # outside the dialog's box
    page.wait_for_selector("#viewer:not([open])", state="attached")
    assert _focused(page, "#grid figure.hit")
    page.close()


def _shoot(page, name: str) -> None:
    """Keep a screenshot under $XMODAL_SCREENSHOT_DIR (benchmarks/screenshots/ for the docs) when it is set."""
    folder = os.environ.get("XMODAL_SCREENSHOT_DIR")
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(Path(folder) / name))


def _results_with_thumbnails(page, q: str) -> None:
    page.fill("#q", q)
    page.press("#q", "Enter")
    _settled(page, q)
    page.wait_for_function("() => [...document.querySelectorAll('#grid img')]"  # those in view (the others are lazy)
                           ".filter(i => i.getBoundingClientRect().top < innerHeight).every(i => i.complete && i.naturalWidth > 0)")


def test_desktop_layout(browser, server):
    page = _open_page(browser, server)
    _results_with_thumbnails(page, "red")
    assert page.evaluate("document.documentElement.scrollWidth") <= 1100
    tops = page.evaluate("[...document.querySelectorAll('#grid figure.hit')].map(f => f.getBoundingClientRect().top)")
    assert tops.count(tops[0]) >= 4  # several thumbnails a row
    _shoot(page, "web-desktop.png")
    page.close()


def test_phone_layout(browser, server):
    """390x844: no horizontal scroll, the sticky header takes at most a fifth of the height, two thumbnails
    a row at least."""
    page = _open_page(browser, server, viewport={"width": 390, "height": 844}, device_scale_factor=2,
                      is_mobile=True, has_touch=True)
    _results_with_thumbnails(page, "red")
    assert page.evaluate("document.documentElement.scrollWidth") <= 390
    header = page.evaluate("document.querySelector('header').getBoundingClientRect().height")
    assert header <= 0.2 * 844, f"the header is {header}px high"
    tops = page.evaluate("[...document.querySelectorAll('#grid figure.hit')].map(f => f.getBoundingClientRect().top)")
    assert tops.count(tops[0]) >= 2
    page.evaluate("window.scrollTo(0, 300)")  # the header stays on top while the results scroll
    assert page.evaluate("document.querySelector('header').getBoundingClientRect().top") == 0
    page.evaluate("window.scrollTo(0, 0)")
    _shoot(page, "web-phone.png")
    buf = io.BytesIO()  # with a query photo's chip beside the box: still no horizontal scroll, still a low header
    Image.new("RGB", (50, 40), COLOURS["blue"]).save(buf, format="PNG")
    page.set_input_files("#file-input", files=[{"name": "a-long-photo-name.png", "mimeType": "image/png",
                                                "buffer": buf.getvalue()}])
    _settled(page, "a-long-photo-name.png")
    assert page.is_visible("#query-photo .remove")
    assert page.evaluate("document.documentElement.scrollWidth") <= 390
    assert page.evaluate("document.querySelector('header').getBoundingClientRect().height") <= 0.2 * 844
    assert page.evaluate("document.querySelector('#q').getBoundingClientRect().width") >= 120  # room to type
    _shoot(page, "web-phone-photo.png")
    page.context.close()


def test_photo_searches_show_the_query_photo_and_more_like_this_leaves_the_photo_out(browser, server):
    page = _open_page(browser, server)
    errors: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if "Content Security Policy" in m.text else None)
    page.fill("#q", "words that are not the query")
    buf = io.BytesIO()
    Image.new("RGB", (50, 40), COLOURS["blue"]).save(buf, format="PNG")
    page.set_input_files("#file-input", files=[{"name": "query.png", "mimeType": "image/png", "buffer": buf.getvalue()}])
    _settled(page, "query.png")
    assert page.input_value("#q") == ""  # the box's words are not this search's query
    page.wait_for_function("() => { const i = document.querySelector('#status img.query-photo');"
                           " return i && i.complete && i.naturalWidth === 50; }")  # the chosen photo itself

    page.locator("#grid figure.hit").first.click()
    page.wait_for_selector("#viewer[open]")
    page.click("#more-like-this")
    _settled(page, "more like blue.jpg")
    names = page.locator("#grid figure.hit .name").all_inner_texts()
    assert "blue.jpg" not in names and len(names) == 6  # every other photo, the photo itself left out
    src = page.get_attribute("#status img.query-photo", "src")
    assert src.endswith("/thumbnail")
    page.wait_for_function("() => document.querySelector('#status img.query-photo').naturalWidth > 0")
    assert errors == []
    page.close()


def test_words_added_to_the_query_photo_and_to_more_like_this(browser, server):
    """A chosen photo becomes the query photo (a chip with a remove button): words typed then are sent with it
    and shown as the server read them; a bad query shows the API's message; "More like this" makes its photo
    the query photo; removing the chip (from the keyboard) goes back to text search."""
    page = _open_page(browser, server)
    urls: list[str] = []
    page.on("request", lambda r: urls.append(r.url))
    assert page.is_hidden("#query-photo")
    text_placeholder = page.get_attribute("#q", "placeholder")
    red = io.BytesIO()
    Image.new("RGB", (50, 40), COLOURS["red"]).save(red, format="PNG")
    page.set_input_files("#file-input", files=[{"name": "query.png", "mimeType": "image/png", "buffer": red.getvalue()}])
    _settled(page, "query.png")
    assert page.is_visible("#query-photo") and page.inner_text("#query-photo .name") == "query.png"
    assert page.get_attribute("#query-photo .remove", "aria-label") == "Remove the query photo query.png"
    assert page.get_attribute("#q", "placeholder") == "add words: in winter, -people"
    assert page.locator("#grid figure.hit .name").first.inner_text() == "red.jpg"

    page.fill("#q", "blue")  # red + blue: purple
    page.press("#q", "Enter")
    _settled(page, "photo query.png + “blue”")
    assert page.locator("#grid figure.hit .name").first.inner_text() == "purple.jpg"
    assert "/api/search/image?" in urls[-1] and "q=blue" in urls[-1]
    _shoot(page, "web-photo-words.png")

    page.fill("#q", "200:blue")  # a weight out of range: the API's 400, shown on the page
    page.press("#q", "Enter")
    page.wait_for_selector("#status.error")
    assert "must be above 0" in page.inner_text("#status") and page.locator("#grid figure.hit").count() == 0
    assert page.is_visible("#query-photo")  # still the query photo: the words can be fixed

    page.fill("#q", "")
    page.press("#q", "Enter")  # the photo alone again
    _settled(page, "photo query.png")
    page.locator("#grid figure.hit").first.click()
    page.wait_for_selector("#viewer[open]")
    page.click("#more-like-this")
    _settled(page, "more like red.jpg")
    assert page.inner_text("#query-photo .name") == "red.jpg"  # "More like this" replaced the uploaded photo
    assert page.input_value("#q") == ""
    assert page.locator("#grid figure.hit .name").first.inner_text() == "dark-red.png"
    page.fill("#q", "blue")
    page.press("#q", "Enter")
    _settled(page, "more like red.jpg + “blue”")
    assert "/similar?" in urls[-1] and "q=blue" in urls[-1]
    assert page.locator("#grid figure.hit .name").first.inner_text() == "purple.jpg"
    page.fill("#q", "-red")  # the photo of red without red: nothing left (the API's 400)
    page.press("#q", "Enter")
    page.wait_for_selector("#status.error")
    assert "cancel out" in page.inner_text("#status") and page.locator("#grid figure.hit").count() == 0

    green = io.BytesIO()  # another photo replaces it
    Image.new("RGB", (50, 40), COLOURS["green"]).save(green, format="PNG")
    page.set_input_files("#file-input", files=[{"name": "other.png", "mimeType": "image/png", "buffer": green.getvalue()}])
    _settled(page, "photo other.png")
    assert page.inner_text("#query-photo .name") == "other.png" and page.input_value("#q") == ""

    page.focus("#q")  # the remove button from the keyboard: Shift+Tab from the box, Enter
    page.keyboard.type("blue")
    page.keyboard.press("Shift+Tab")
    assert _focused(page, "#query-photo .remove")
    page.keyboard.press("Enter")
    assert page.is_hidden("#query-photo") and _focused(page, "#q")
    assert page.get_attribute("#q", "placeholder") == text_placeholder
    _settled(page, "“blue”")  # the box's words, searched as text
    assert "/api/search?" in urls[-1] and page.locator("#status img.query-photo").count() == 0
    assert page.locator("#grid figure.hit .name").first.inner_text() == "blue.jpg"
    page.close()


def test_filters_are_off_for_texts_and_a_network_failure_says_so(browser, server):
    page = _open_page(browser, server)
    assert page.get_attribute('link[rel="icon"]', "href") == "/static/favicon.svg"
    icon = page.request.get(server + "/static/favicon.svg")
    assert icon.ok and icon.headers["content-type"].startswith("image/svg+xml")

    assert not page.is_disabled("#folder")
    page.check('input[name="target"][value="texts"]')
    assert page.is_disabled("#folder") and page.is_disabled("#taken-after") and page.is_disabled("#taken-before")
    page.check('input[name="target"][value="images"]')
    assert not page.is_disabled("#folder")

    page.route("**/api/search?*", lambda route: route.abort("connectionrefused"))
    page.fill("#q", "red")
    page.press("#q", "Enter")
    page.wait_for_selector("#status.error")
    assert page.inner_text("#status") == "cannot reach the xmodal server"
    page.close()


AXE_DIR = Path(os.environ.get("XMODAL_AXE_DIR", Path.home() / ".cache" / "xmodal" / "axe-core"))


def _axe() -> Path:
    """axe-core's axe.min.js, installed once with npm into a cache folder outside the repository."""
    script = AXE_DIR / "node_modules" / "axe-core" / "axe.min.js"
    if not script.is_file():
        npm = shutil.which("npm")
        if not npm:
            _skip_loudly("no npm to install axe-core with (apt-get install -y npm), and no "
                         f"{script}")
        AXE_DIR.mkdir(parents=True, exist_ok=True)
        try:
            subprocess.run([npm, "install", "--prefix", str(AXE_DIR), "axe-core@4"], check=True,
                           capture_output=True, text=True, timeout=300)
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as e:
            _skip_loudly(f"`npm install --prefix {AXE_DIR} axe-core@4` failed: {getattr(e, 'stderr', '') or e}")
        if not script.is_file():
            _skip_loudly(f"npm installed axe-core, but there is no {script}")
    return script


def _axe_violations(page) -> list[str]:
    """Serious and critical axe-core violations on the page as it is, one line each."""
    found = page.evaluate("""async () => {
        const r = await axe.run(document, { resultTypes: ["violations"] });
        return r.violations.filter(v => v.impact === "serious" || v.impact === "critical")
            .map(v => `${v.impact} ${v.id}: ${v.help} -- ${v.nodes.map(n => n.target.join(" ")).join(", ")}`);
    }""")
    return found


def test_no_serious_accessibility_violations(browser, server):
    """axe-core on the start page, the results, the texts mode and the open viewer. The page's CSP forbids the
    injected script, so this context alone bypasses it."""
    script = _axe()
    page = _open_page(browser, server, viewport={"width": 1100, "height": 700}, bypass_csp=True)
    page.add_script_tag(path=str(script))
    problems = {"start": _axe_violations(page)}
    _results_with_thumbnails(page, "red")
    problems["results"] = _axe_violations(page)
    page.locator("#grid figure.hit").first.click()
    page.wait_for_selector("#viewer[open]")
    page.wait_for_function("() => document.querySelector('#viewer-meta').textContent.includes('×')")
    problems["viewer"] = _axe_violations(page)
    page.click("#more-like-this")  # the photo becomes the query photo: its chip and remove button
    _settled(page, "more like")
    problems["query photo"] = _axe_violations(page)
    page.check('input[name="target"][value="texts"]')
    page.wait_for_selector("#grid.texts", state="attached")
    problems["texts"] = _axe_violations(page)
    problems = {k: v for k, v in problems.items() if v}
    assert not problems, "\n".join(f"{k}: {line}" for k, v in problems.items() for line in v)
    page.context.close()
