"""End to end in headless Chromium (the browser fixture of test_web_e2e.py; skips, saying why, without it):
the search box shows how it read a query with operators, and the Duplicates view shows a group side by side
with the copy to keep marked."""
from __future__ import annotations

import shutil
import threading
import time

import pytest

from conftest import draw
from test_web_e2e import TOKEN, _free_port, _settled, browser  # noqa: F401 - browser is a fixture
from xmodal.indexer.ingest.pipeline import index_images
from xmodal.indexer.storage.library import Library


@pytest.fixture
def dup_server(tmp_path, fake_encoder):
    import uvicorn

    from xmodal.engine.web.server import create_app

    photos = tmp_path / "photos"
    for colour in ("red", "green", "blue"):
        draw(photos / f"{colour}.jpg", colour, size=(120, 90))
    (photos / "copies").mkdir()
    shutil.copyfile(photos / "red.jpg", photos / "copies" / "red.jpg")
    library = tmp_path / "library"
    with Library(library, create=True) as lib:
        index_images(lib, [str(photos)], fake_encoder)
    port = _free_port()
    srv = uvicorn.Server(uvicorn.Config(create_app(library, model="fake-colour", token=TOKEN), host="127.0.0.1",
                                        port=port, log_level="warning"))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not srv.started:
        assert time.monotonic() < deadline and thread.is_alive(), "uvicorn did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    srv.should_exit = True
    thread.join(10)


def test_parsed_query_and_duplicates_view_in_a_real_browser(browser, dup_server):  # noqa: F811
    page = browser.new_page(viewport={"width": 1100, "height": 700})
    page.set_default_timeout(10_000)
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on("console", lambda m: errors.append(m.text) if "Content Security Policy" in m.text else None)
    page.goto(dup_server + f"/?token={TOKEN}")
    page.fill("#q", "red -blue")
    page.press("#q", "Enter")
    _settled(page, "red, without blue")
    page.click("a[href='/duplicates']")
    page.wait_for_selector(".dup-group")
    group = page.locator(".dup-group")
    assert group.count() == 1 and group.get_attribute("data-kind") == "exact"
    assert page.locator(".dup-group .dup-member").count() == 2
    assert page.locator(".dup-group .dup-member.keep").count() == 1
    assert "120×90" in group.inner_text() and "keep" in group.inner_text()
    page.wait_for_function("() => [...document.querySelectorAll('.dup-member img')]"  # the thumbnails load
                           ".every(i => i.complete && i.naturalWidth > 0)")
    assert errors == []
