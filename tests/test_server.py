"""The HTTP API (engine/server.py) through FastAPI's TestClient, with the fake colour encoder; the
search filters of SearchEngine; the `xmodal serve` command's host/token rules."""
from __future__ import annotations

import io
from concurrent.futures import ThreadPoolExecutor
from datetime import date
from pathlib import Path

import pytest
from click.testing import CliRunner
from PIL import Image

from conftest import COLOURS
from xmodal.engine.search.engine import SearchEngine, SearchError
from xmodal.indexer.storage.library import Library
from xmodal.indexer.ingest.pipeline import index_images, index_texts

fastapi = pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402

from xmodal.engine.web.server import create_app, is_loopback  # noqa: E402

TOKEN = "s3cret-s3cret-s3cret"


def make_app(library, **kw):
    """create_app answering TestClient's default Host header, "testserver"."""
    return create_app(library, allowed_hosts=("testserver",), **kw)


def draw_dated(path: Path, colour: str, when: str) -> Path:
    """A JPEG with an EXIF DateTime ("YYYY:MM:DD HH:MM:SS")."""
    path.parent.mkdir(parents=True, exist_ok=True)
    exif = Image.Exif()
    exif[0x0132] = when
    Image.new("RGB", (64, 48), COLOURS[colour]).save(path, exif=exif)
    return path


@pytest.fixture
def built(photos, library, tmp_path, fake_encoder):
    """The photos fixture plus two dated photos under photos/2021 and a text corpus, indexed."""
    draw_dated(photos / "2021" / "red-june.jpg", "red", "2021:06:15 10:00:00")
    draw_dated(photos / "2021" / "red-december.jpg", "red", "2021:12:24 18:30:00")
    corpus = tmp_path / "texts.txt"
    corpus.write_text("a red apple\na green meadow\na blue ocean\n")
    with Library(library, create=True) as lib:
        index_images(lib, [str(photos)], fake_encoder)
        index_texts(lib, str(corpus), fake_encoder)
    return library


@pytest.fixture
def client(built):
    with TestClient(make_app(built)) as c:
        yield c


def ids_by_name(client) -> dict[str, int]:
    hits = client.get("/api/search", params={"q": "red", "k": 100}).json()["hits"]
    return {Path(h["path"]).name: h["id"] for h in hits}


def png_bytes(colour: str, size=(40, 30)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, COLOURS[colour]).save(buf, format="PNG")
    return buf.getvalue()


# ------------------------------------------------------------------------------------------ search API
def test_text_search_returns_ranked_image_hits(client):
    r = client.get("/api/search", params={"q": "something blue", "k": 3})
    assert r.status_code == 200
    hits = r.json()["hits"]
    assert [h["rank"] for h in hits] == [1, 2, 3]
    assert Path(hits[0]["path"]).name == "blue.jpg"
    assert set(hits[0]) == {"rank", "score", "id", "path", "reranked", "matched"}  # blue.jpg: "blue" in its name
    assert not any(h["reranked"] for h in hits)  # the fake encoder has no reranker
    assert hits[0]["score"] >= hits[1]["score"]


def test_text_search_for_texts(client):
    hits = client.get("/api/search", params={"q": "green", "k": 1, "target": "texts"}).json()["hits"]
    assert hits == [{"rank": 1, "score": pytest.approx(1.0, abs=1e-4), "id": hits[0]["id"], "text": "a green meadow",
                     "reranked": False}]


@pytest.mark.parametrize("params, message", [
    ({"q": "  "}, "empty query"),
    ({"q": "red", "target": "videos"}, "unknown target"),
    ({"q": "red", "k": 0}, "k"),
    ({"q": "red", "taken_after": "yesterday"}, "taken_after"),
    ({}, "q"),
])
def test_bad_search_requests_are_400_with_a_message(client, params, message):
    r = client.get("/api/search", params=params)
    assert r.status_code == 400
    assert message in r.json()["detail"]


def test_image_upload_search(client):
    r = client.post("/api/search/image", params={"k": 2}, files={"file": ("q.png", png_bytes("green"), "image/png")})
    assert r.status_code == 200, r.text
    assert Path(r.json()["hits"][0]["path"]).name == "green.png"
    r = client.post("/api/search/image", params={"target": "texts", "k": 1},
                    files={"file": ("q.png", png_bytes("blue"), "image/png")})
    assert r.json()["hits"][0]["text"] == "a blue ocean"


def test_upload_that_is_not_an_image_is_400(client):
    r = client.post("/api/search/image", files={"file": ("cat.jpg", b"<html>not a photo</html>", "image/jpeg")})
    assert r.status_code == 400
    assert "cannot use cat.jpg as a query image: not a recognised image format" in r.json()["detail"]
    assert "Traceback" not in r.text


def test_empty_and_missing_uploads_are_400(client):
    r = client.post("/api/search/image", files={"file": ("e.jpg", b"", "image/jpeg")})
    assert r.status_code == 400 and "empty" in r.json()["detail"]
    r = client.post("/api/search/image")
    assert r.status_code == 400 and "file" in r.json()["detail"]


def test_oversized_upload_is_400(built):
    with TestClient(make_app(built, max_upload_bytes=1000)) as c:
        big = png_bytes("red", size=(400, 300)) + b"\0" * 2000
        r = c.post("/api/search/image", files={"file": ("big.png", big, "image/png")})
        assert r.status_code == 400
        assert "too large" in r.json()["detail"] and "limit" in r.json()["detail"]
        huge = b"\0" * 200_000  # over the limit by more than the multipart allowance: refused from Content-Length
        r = c.post("/api/search/image", files={"file": ("huge.png", huge, "image/png")})
        assert r.status_code == 400 and "too large" in r.json()["detail"]


def test_upload_over_the_pixel_limit_is_400(built):
    with TestClient(make_app(built, max_upload_pixels=1000)) as c:
        r = c.post("/api/search/image", files={"file": ("wide.png", png_bytes("red", size=(100, 100)), "image/png")})
        assert r.status_code == 400
        detail = r.json()["detail"]  # in the page's words, not the indexer's ("raise max_pixels")
        assert "wide.png is 100x100 (0.01 megapixels)" in detail and "at most 0.001 megapixels" in detail
        assert "smaller copy" in detail and "max_pixels" not in detail


def test_the_upload_size_limit_reads_as_the_docs_say(built):
    with TestClient(make_app(built)) as c:
        r = c.post("/api/search/image", files={"file": ("big.png", b"\0" * (21 * 2**20), "image/png")})
        assert r.status_code == 400 and "the limit is 20 MB" in r.json()["detail"]


# ------------------------------------------------------------------------------------------ filters
def test_filters_by_folder_and_date(client, photos):
    red = {"q": "red", "k": 10}
    names = lambda r: [Path(h["path"]).name for h in r.json()["hits"]]  # noqa: E731
    r = client.get("/api/search", params={**red, "folder": str(photos / "2021")})
    assert sorted(names(r)) == ["red-december.jpg", "red-june.jpg"]  # same colour: equal scores
    r = client.get("/api/search", params={**red, "taken_after": "2021-07-01"})
    assert names(r) == ["red-december.jpg"] and r.json()["hits"][0]["rank"] == 1
    r = client.get("/api/search", params={**red, "taken_before": "2021-06-15"})
    assert names(r) == ["red-june.jpg"]
    r = client.get("/api/search", params={**red, "folder": str(photos / "trip")})
    assert names(r) == ["yellow.webp"]
    r = client.get("/api/search", params={**red, "target": "texts", "folder": str(photos)})
    assert r.status_code == 400 and "images only" in r.json()["detail"]


def test_engine_filters_overfetch_and_stay_backwards_compatible(built, photos):
    with SearchEngine(built) as eng:
        assert len(eng.search_text("red", k=10)) == 6
        # k=1 without filters would be a red photo; the folder filter must look further down the ranking
        hit = eng.search_text("red", k=1, folder=str(photos / "trip"))
        assert [Path(h.path).name for h in hit] == ["yellow.webp"] and hit[0].rank == 1
        assert eng.search_text("red", k=5, taken_after=date(2022, 1, 1)) == []
        assert [Path(h.path).name for h in eng.similar(hit[0].id, k=5, folder=str(photos / "2021"))] != []
        with pytest.raises(SearchError, match="later than"):
            eng.search_text("red", taken_after=date(2022, 1, 1), taken_before=date(2021, 1, 1))
        # a folder is a path prefix on whole components: photos/20 is not photos/2021
        assert eng.search_text("red", k=5, folder=str(photos / "20")) == []


def test_folders_lists_folders_with_counts(client, photos):
    folders = {f["folder"]: f["images"] for f in client.get("/api/folders").json()["folders"]}
    assert folders == {str(photos): 3, str(photos / "2021"): 2, str(photos / "trip"): 1}


def test_folders_follow_photos_indexed_after_the_server_started(client, built, photos, fake_encoder):
    before = {f["folder"]: f["images"] for f in client.get("/api/folders").json()["folders"]}
    assert str(photos / "new") not in before
    from conftest import draw

    draw(photos / "new" / "one.jpg", "red")
    draw(photos / "new" / "two.jpg", "blue")
    draw(photos / "trip" / "three.jpg", "green")
    with Library(built) as lib:  # another process in real life: `xmodal index` while the server runs
        index_images(lib, [str(photos)], fake_encoder)
    after = {f["folder"]: f["images"] for f in client.get("/api/folders").json()["folders"]}
    assert after == {**before, str(photos / "new"): 2, str(photos / "trip"): before[str(photos / "trip")] + 1}


# ------------------------------------------------------------------------------------------ images
def test_similar_and_image_metadata(client):
    ids = ids_by_name(client)
    hits = client.get(f"/api/images/{ids['blue.jpg']}/similar", params={"k": 2}).json()["hits"]
    # "more like this" leaves the photo itself out (it is its own nearest neighbour) and still gives k others
    assert ids["blue.jpg"] not in [h["id"] for h in hits] and len(hits) == 2
    assert [h["rank"] for h in hits] == [1, 2]
    mine = client.get(f"/api/images/{ids['blue.jpg']}/similar", params={"k": 2, "exclude_self": "false"}).json()["hits"]
    assert mine[0]["id"] == ids["blue.jpg"] and mine[1]["id"] == hits[0]["id"]
    meta = client.get(f"/api/images/{ids['red-june.jpg']}").json()
    assert meta["width"] == 64 and meta["height"] == 48 and meta["taken_at"] == "2021-06-15T10:00:00"


def test_file_serves_the_library_photo(client, photos):
    ids = ids_by_name(client)
    r = client.get(f"/api/images/{ids['green.png']}/file")
    assert r.status_code == 200
    assert r.content == (photos / "green.png").read_bytes()
    assert r.headers["content-type"] == "image/png"


def test_thumbnail_is_made_once_and_cached_in_the_library(built, client):
    ids = ids_by_name(client)
    thumbs = client.app.state.thumbnails
    r1 = client.get(f"/api/images/{ids['red.jpg']}/thumbnail")
    assert r1.status_code == 200 and r1.headers["content-type"] == "image/jpeg"
    assert Image.open(io.BytesIO(r1.content)).format == "JPEG"
    files = list((Path(built) / "thumbnails").glob("*.jpg"))
    assert len(files) == 1 and thumbs.generated == 1
    mtime = files[0].stat().st_mtime_ns
    r2 = client.get(f"/api/images/{ids['red.jpg']}/thumbnail")
    assert r2.content == r1.content and thumbs.generated == 1 and files[0].stat().st_mtime_ns == mtime
    # a fresh app (server restart) reuses the file on disk
    with TestClient(make_app(built)) as again:
        assert again.get(f"/api/images/{ids['red.jpg']}/thumbnail").content == r1.content
        assert again.app.state.thumbnails.generated == 0


def test_photo_gone_from_disk_is_404(client, photos):
    ids = ids_by_name(client)
    (photos / "blue.jpg").unlink()
    for what in ("file", "thumbnail"):
        r = client.get(f"/api/images/{ids['blue.jpg']}/{what}")
        assert r.status_code == 404 and "detail" in r.json()


@pytest.mark.parametrize("url", [
    "/api/images/999999/file",
    "/api/images/999999/thumbnail",
    "/api/images/999999/similar",
    "/api/images/999999",
    "/api/images/..%2F..%2Fetc%2Fpasswd/file",
    "/api/images/%2Fetc%2Fpasswd/file",
    "/api/images/../../etc/passwd/file",
    "/api/images/-1/file",
    "/api/images/1%00/file",
    "/api/images/1.5/thumbnail",
    "/static/..%2F..%2Fsearch.py",
    "/static/../server.py",
])
def test_unknown_ids_and_traversal_attempts_are_404(client, url):
    r = client.get(url)
    assert r.status_code == 404, (url, r.status_code, r.text[:200])
    assert b"root:" not in r.content and b"import" not in r.content


# ------------------------------------------------------------------------------------------ misc
def test_info_health_page_and_docs(client):
    assert client.get("/api/health").json() == {"status": "ok"}
    info = client.get("/api/info").json()
    assert info["images"] == 6 and info["texts"] == 3 and info["model"] == "fake-colour"
    page = client.get("/")
    assert page.status_code == 200 and 'id="search-form"' in page.text and "/static/app.js" in page.text
    assert "fetch(" in client.get("/static/app.js").text
    assert client.get("/static/style.css").status_code == 200
    assert client.get("/docs").status_code == 404  # FastAPI's /docs and /redoc load scripts from a CDN
    assert client.get("/redoc").status_code == 404
    paths = client.get("/openapi.json").json()["paths"]
    for p in ("/api/search", "/api/search/image", "/api/images/{image_id}/similar", "/api/images/{image_id}/thumbnail",
              "/api/images/{image_id}/file", "/api/info", "/api/health"):
        assert p in paths


def test_concurrent_requests_from_the_threadpool(client):
    def one(i):
        colour = ["red", "green", "blue"][i % 3]
        return client.get("/api/search", params={"q": colour, "k": 1}).json()["hits"][0]["path"]

    with ThreadPoolExecutor(8) as pool:
        paths = list(pool.map(one, range(48)))
    assert all(Path(p).stem.startswith(["red", "green", "blue"][i % 3]) for i, p in enumerate(paths))


def test_two_searches_run_inside_the_engine_at_the_same_time(built, fake_encoder, monkeypatch):
    """No global lock around queries: two requests meet inside the encoder (a barrier that needs both
    there at once; with a lock around engine calls the first would wait for the second, which never came)."""
    import threading

    meet = threading.Barrier(2, timeout=20)
    real = fake_encoder.encode_texts

    def encode_texts(texts):
        meet.wait()  # raises BrokenBarrierError (a 500) if the other request cannot get in meanwhile
        return real(texts)

    with TestClient(make_app(built)) as client:
        monkeypatch.setattr(fake_encoder, "encode_texts", encode_texts)
        with ThreadPoolExecutor(2) as pool:
            answers = list(pool.map(lambda q: client.get("/api/search", params={"q": q, "k": 1}), ["red", "blue"]))
    assert [a.status_code for a in answers] == [200, 200]
    assert [Path(a.json()["hits"][0]["path"]).stem[:3] for a in answers] == ["red", "blu"]


def test_a_query_over_1000_characters_is_a_json_400(client):
    r = client.get("/api/search", params={"q": "a dog " * 200})
    assert r.status_code == 400 and "q" in r.json()["detail"]
    assert client.get("/api/search", params={"q": ("a dog " * 200)[:1000]}).status_code == 200


def test_missing_or_wrong_library_fails_at_creation(tmp_path, built):
    with pytest.raises(Exception, match="no xmodal library"):
        create_app(tmp_path / "nowhere")
    with pytest.raises(SearchError, match="built with model 'fake-colour'"):
        create_app(built, model="lite")


# ------------------------------------------------------------------------------------------ token
def test_token_is_required_on_every_api_call_when_configured(built):
    with TestClient(make_app(built, token=TOKEN)) as c:
        ids = ids_by_name_with(c, {"Authorization": f"Bearer {TOKEN}"})
        some = next(iter(ids.values()))
        urls = ["/api/health", "/api/info", "/api/folders", "/api/search?q=red", f"/api/images/{some}",
                f"/api/images/{some}/similar", f"/api/images/{some}/thumbnail", f"/api/images/{some}/file"]
        for url in urls:
            assert c.get(url).status_code == 401, url
            assert c.get(url, headers={"Authorization": "Bearer wrong"}).status_code == 401, url
            assert c.get(url, headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200, url
        assert "token" in c.get("/api/health").json()["detail"]
        assert c.get("/api/health", headers={"X-Token": TOKEN}).status_code == 200
        assert c.get(f"/api/health?token={TOKEN}").status_code == 401  # a token in a URL lands in logs
        up = {"file": ("q.png", png_bytes("red"), "image/png")}
        assert c.post("/api/search/image", files=up).status_code == 401
        assert c.post("/api/search/image", files=up, headers={"X-Token": TOKEN}).status_code == 200
        assert c.get("/").status_code == 200  # the page itself holds no data


def ids_by_name_with(c, headers) -> dict[str, int]:
    hits = c.get("/api/search", params={"q": "red", "k": 100}, headers=headers).json()["hits"]
    return {Path(h["path"]).name: h["id"] for h in hits}


# ------------------------------------------------------------------------------------------ CLI
@pytest.mark.parametrize("host, loopback", [("127.0.0.1", True), ("localhost", True), ("::1", True),
                                            ("127.0.0.2", True), ("0.0.0.0", False), ("192.168.1.5", False),
                                            ("example.com", False), ("::", False)])
def test_is_loopback(host, loopback):
    assert is_loopback(host) is loopback


def test_serve_command_binds_loopback_and_requires_a_token_elsewhere(built, monkeypatch):
    import uvicorn

    from xmodal.engine.cli.main import cli

    runs = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: runs.append((app, kw)))
    monkeypatch.delenv("XMODAL_TOKEN", raising=False)
    runner = CliRunner()
    r = runner.invoke(cli, ["serve", "--library", str(built)])
    assert r.exit_code == 0, r.output
    assert runs[-1][1]["host"] == "127.0.0.1" and runs[-1][1]["port"] == 8000
    r = runner.invoke(cli, ["serve", "--library", str(built), "--host", "0.0.0.0"])
    assert r.exit_code == 2 and "--token" in r.output and len(runs) == 1
    r = runner.invoke(cli, ["serve", "--library", str(built), "--host", "0.0.0.0", "--port", "9000"],
                      env={"XMODAL_TOKEN": TOKEN})
    assert r.exit_code == 0, r.output
    app, kw = runs[-1]
    assert kw["host"] == "0.0.0.0" and kw["port"] == 9000
    with TestClient(app, base_url="http://192.168.1.5:9000") as c:  # bound to every address: any IP is a host
        assert c.get("/api/health").status_code == 401
        assert c.get("/api/health", headers={"X-Token": TOKEN}).status_code == 200
    r = runner.invoke(cli, ["serve", "--library", str(built.parent / "missing")])
    assert r.exit_code == 1 and "no xmodal library" in r.output


def test_a_photo_whose_name_is_not_utf8_is_served_and_listed_losslessly(photos, library, fake_encoder):
    """os.fsdecode keeps such bytes as lone surrogates, which no JSON encoder takes: every route that shows
    the photo answers 200 with a display name (U+FFFD) and the exact bytes in `path_b64`."""
    import base64
    import os

    raw = os.path.join(os.fsencode(photos), b"bad\xff\xfename.jpg")
    with open(raw, "wb") as f:
        Image.new("RGB", (40, 30), COLOURS["purple"]).save(f, format="JPEG")
    with Library(library, create=True) as lib:
        index_images(lib, [str(photos)], fake_encoder)
    with TestClient(make_app(library)) as client:
        hits = client.get("/api/search", params={"q": "purple", "k": 5})
        assert hits.status_code == 200
        top = hits.json()["hits"][0]
        assert top["path"].endswith("bad\ufffd\ufffdname.jpg") and base64.b64decode(top["path_b64"]) == raw
        for route in ("", "/file", "/thumbnail", "/similar"):
            assert client.get(f"/api/images/{top['id']}{route}").status_code == 200, route
        meta = client.get(f"/api/images/{top['id']}").json()
        assert meta["name"] == "bad\ufffd\ufffdname.jpg" and base64.b64decode(meta["name_b64"]) == b"bad\xff\xfename.jpg"
        assert client.get("/api/folders").status_code == 200
    plain = next(h for h in hits.json()["hits"] if "path_b64" not in h)  # a UTF-8 name has no exact form
    assert "\ufffd" not in plain["path"]


@pytest.mark.parametrize("image_id", ["99999999999999999999999", "9223372036854775808", "-1"])
def test_an_id_past_sqlites_range_is_a_404_not_a_500(client, image_id):
    for route in ("", "/file", "/thumbnail", "/similar"):
        got = client.get(f"/api/images/{image_id}{route}")
        assert got.status_code == 404 and "detail" in got.json(), route


def test_an_over_long_query_is_a_json_400(client):
    got = client.get("/api/search", params={"q": "red " * 2_000})  # 8 KB; a live server takes up to 2 MiB
    assert got.status_code == 400 and "at most 1000 characters" in got.json()["detail"]


# ------------------------------------------------------------------------------------------ security
def test_the_page_trades_the_token_for_a_session_cookie(built):
    with TestClient(make_app(built, token=TOKEN)) as c:
        r = c.get(f"/?token={TOKEN}", follow_redirects=False)
        assert r.status_code == 303 and r.headers["location"] == "/"
        cookie = r.headers["set-cookie"]
        assert "HttpOnly" in cookie and "samesite=strict" in cookie.lower() and TOKEN not in cookie
        assert c.get("/api/search", params={"q": "red"}).status_code == 200  # the client keeps the cookie
        assert c.get(f"/api/images/{ids_by_name(c)['red.jpg']}/thumbnail").status_code == 200
        c.cookies.clear()
        assert c.get("/api/search", params={"q": "red"}).status_code == 401
        c.cookies.set("xmodal_session", TOKEN)  # the cookie holds a session value, not the token
        assert c.get("/api/search", params={"q": "red"}).status_code == 401
        c.cookies.clear()
        wrong = c.get("/?token=wrong-wrong-wrong-wrong", follow_redirects=False)
        assert wrong.status_code == 401 and "set-cookie" not in wrong.headers
    app_js = (Path(__file__).parents[1] / "engine/web/static/app.js").read_text()
    assert "token=" not in app_js.replace("/?token=...", "") and "sessionStorage.setItem" not in app_js


def test_no_log_line_holds_the_token_or_a_query(built, caplog):
    import logging

    with caplog.at_level(logging.INFO), TestClient(make_app(built, token=TOKEN)) as c:
        c.get(f"/?token={TOKEN}")
        c.get("/api/search", params={"q": "red secret words", "k": 2})
        c.get("/api/health", params={"token": TOKEN})
        c.get("/api/info", headers={"Authorization": f"Bearer {TOKEN}"})
    lines = [r.getMessage() for r in caplog.records if r.name.startswith(("xmodal", "uvicorn"))]
    assert any(line.startswith("GET /api/search 200") for line in lines), lines
    assert any(line.startswith("GET / 303") for line in lines), lines
    assert not any(TOKEN in line or "secret words" in line or "?" in line for line in lines), lines


def test_serve_logs_no_query_strings(built, monkeypatch):
    import uvicorn

    from xmodal.engine.cli.main import cli

    runs = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: runs.append(kw))
    r = CliRunner().invoke(cli, ["serve", "--library", str(built)], env={"XMODAL_TOKEN": TOKEN})
    assert r.exit_code == 0, r.output
    assert runs[-1]["access_log"] is False  # uvicorn's access line carries the query string
    assert runs[-1]["log_config"]["loggers"]["xmodal.web.access"]["level"] == "INFO"


@pytest.mark.parametrize("host", ["attacker.example", "attacker.example:8000", "127.0.0.1.attacker.example"])
def test_a_foreign_host_header_is_refused(built, host):
    with TestClient(make_app(built)) as c:
        for url in ("/", "/api/health", "/static/app.js", "/openapi.json"):
            r = c.get(url, headers={"Host": host})
            assert r.status_code == 400 and "--allow-host" in r.json()["detail"], url


@pytest.mark.parametrize("host", ["localhost:8000", "127.0.0.1", "[::1]:8000", "LOCALHOST"])
def test_loopback_host_headers_are_answered(built, host):
    with TestClient(create_app(built)) as c:
        assert c.get("/api/health", headers={"Host": host}).status_code == 200
        assert c.get("/api/health").status_code == 400  # "testserver" is not answered unless allowed


def test_serve_answers_its_host_and_allow_host_names(built, monkeypatch):
    import uvicorn

    from xmodal.engine.cli.main import cli

    runs = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: runs.append(app))
    r = CliRunner().invoke(cli, ["serve", "--library", str(built), "--host", "192.168.1.5",
                                 "--allow-host", "photos.lan", "--allow-host", "nas.local"], env={"XMODAL_TOKEN": TOKEN})
    assert r.exit_code == 0, r.output
    with TestClient(runs[-1]) as c:
        bearer = {"Authorization": f"Bearer {TOKEN}"}
        for host in ("192.168.1.5:8000", "photos.lan:8000", "nas.local", "localhost:8000"):
            assert c.get("/api/health", headers={**bearer, "Host": host}).status_code == 200, host
        for host in ("attacker.example", "192.168.1.6"):
            assert c.get("/api/health", headers={**bearer, "Host": host}).status_code == 400, host


def test_security_headers_on_every_response(built):
    with TestClient(make_app(built, token=TOKEN)) as c:
        bearer = {"Authorization": f"Bearer {TOKEN}"}
        some = next(iter(ids_by_name_with(c, bearer).values()))
        for r in (c.get("/"), c.get("/static/app.js"), c.get("/api/health", headers=bearer), c.get("/api/health"),
                  c.get(f"/api/images/{some}/thumbnail", headers=bearer), c.get("/api/images/0/file", headers=bearer),
                  c.get("/openapi.json"), c.get("/api/health", headers={"Host": "evil.example"})):
            assert r.headers["x-content-type-options"] == "nosniff", r.url
            assert r.headers["referrer-policy"] == "no-referrer", r.url
            csp = r.headers["content-security-policy"]
            assert "frame-ancestors 'none'" in csp and "http" not in csp and "unsafe-inline" not in csp, csp
        denied = c.get("/api/health")
        assert denied.status_code == 401 and denied.headers["www-authenticate"] == "Bearer"
    page = (Path(__file__).parents[1] / "engine/web/static/index.html").read_text()
    assert "<script>" not in page and "<style" not in page and " style=" not in page  # nothing inline for the CSP


@pytest.mark.parametrize("how", ["env", "option"])
def test_serve_refuses_a_short_token(built, monkeypatch, how):
    import uvicorn

    from xmodal.engine.cli.main import cli

    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: pytest.fail("served with a short token"))
    monkeypatch.delenv("XMODAL_TOKEN", raising=False)
    args, env = ["serve", "--library", str(built)], {}
    if how == "env":
        env["XMODAL_TOKEN"] = "short-token"
    else:
        args += ["--token", "short-token"]
    r = CliRunner().invoke(cli, args, env=env)
    assert r.exit_code == 2 and "at least 16" in r.output


def test_the_openapi_schema_is_served_without_cdn_pages(client):
    assert client.get("/openapi.json").json()["info"]["title"] == "xmodal"
    assert client.get("/docs").status_code == 404 and client.get("/redoc").status_code == 404


# ------------------------------------------------------------------------------------------ upload memory
def test_a_chunked_upload_is_cut_off_at_the_limit_not_read_whole(built):

    def body():  # multipart without Content-Length (chunked), far past the limit
        yield b'--XB\r\nContent-Disposition: form-data; name="file"; filename="big.png"\r\nContent-Type: image/png\r\n\r\n'
        for _ in range(200):
            yield b"\0" * 65536

    with TestClient(make_app(built, max_upload_bytes=100_000)) as c:
        r = c.post("/api/search/image", content=body(), headers={"Content-Type": "multipart/form-data; boundary=XB"})
        assert r.status_code == 400 and "too large" in r.json()["detail"]
        assert r.headers["x-content-type-options"] == "nosniff"
        assert c.get("/api/health").status_code == 200  # the server goes on
    # TestClient joins a generator body before the app sees it; a server streams it: read at most the limit
    import anyio

    app, read, answer = make_app(built, max_upload_bytes=100_000), [], []
    chunks = body()

    async def receive():
        chunk = next(chunks)
        read.append(len(chunk))
        return {"type": "http.request", "body": chunk, "more_body": True}

    async def send(message):
        answer.append(message)

    scope = {"type": "http", "method": "POST", "path": "/api/search/image", "raw_path": b"/api/search/image",
             "query_string": b"", "http_version": "1.1", "scheme": "http", "root_path": "",
             "server": ("testserver", 80), "client": ("127.0.0.1", 5000),
             "headers": [(b"host", b"testserver"), (b"content-type", b"multipart/form-data; boundary=XB"),
                         (b"transfer-encoding", b"chunked")]}
    anyio.run(app, scope, receive, send)
    assert answer[0]["status"] == 400 and b"too large" in answer[1]["body"]
    assert sum(read) < 100_000 + 64 * 1024 + 2 * 65536  # cut off past the limit, not 13 MB read


def test_uploads_are_decoded_two_at_a_time(client, monkeypatch):
    import threading
    import time

    from xmodal.engine.web import server, uploads

    running, most, guard = [0], [0], threading.Lock()
    real = uploads.read_image

    def slow(*args, **kwargs):
        with guard:
            running[0] += 1
            most[0] = max(most[0], running[0])
        time.sleep(0.05)
        try:
            return real(*args, **kwargs)
        finally:
            with guard:
                running[0] -= 1

    monkeypatch.setattr(uploads, "read_image", slow)

    def one(_):
        return client.post("/api/search/image", files={"file": ("q.png", png_bytes("red"), "image/png")}).status_code

    with ThreadPoolExecutor(8) as pool:
        assert set(pool.map(one, range(8))) == {200}
    assert most[0] == server.MAX_DECODES == 2


def test_the_server_loads_its_models_before_the_first_search(built):
    """`xmodal serve` warms up at start (the first search took 4 s with no feedback): the encoder is loaded
    before anyone searches."""
    app = make_app(built, warm_up=True)
    assert app.state.engine._encoder is None
    with TestClient(app) as c:
        assert app.state.warmed.wait(30)
        assert app.state.engine._encoder is not None
        assert c.get("/api/search", params={"q": "red"}).status_code == 200
