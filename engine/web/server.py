"""The web UI and JSON API: a FastAPI app, thin over `engine.search.SearchEngine` (the CLI's engine).

    app = create_app("~/.local/share/xmodal/library")            # `xmodal serve` runs it under uvicorn

Routes (the OpenAPI schema at /openapi.json): the page at `/` (+ `/static/...`) and, under `/api`, search by text or by
an uploaded image, "more like this", thumbnails, the photo files, folders, info and health.

Rules:
* Photos are addressed by their library id only; a client never sends a path. Anything that is not a
  known id -- including path-traversal attempts -- is a 404.
* With a token, every `/api` call needs it: `Authorization: Bearer TOKEN` or header `X-Token`, or the
  session cookie the page gets by opening `/?token=TOKEN` once (303 to a clean `/`; engine/web/security.py).
  No `/api` route reads a token from the query string. The page carries no library data.
* Only the Host names in `allowed_hosts` (plus loopback names) are answered; every response carries
  security headers (CSP, nosniff, no-referrer); the access log has method and path only.
* Uploads: a size limit and a pixel limit (checked from the header, before decoding); a bad upload is a
  400 with a message, never a 500.
* Domain errors become JSON `{"detail": message}` with 400 (bad request) or 404 (no such thing).
* One engine per app, shared by FastAPI's request threads without a global lock: the engine loads its
  models and indexes once under its own lock, and the work of a query (ONNX Runtime, FAISS, SQLite
  reads, numpy) runs concurrently on every core, those libraries releasing the GIL.
"""
from __future__ import annotations

import io
import ipaddress
import logging
import os
import secrets
import threading
from concurrent.futures import ThreadPoolExecutor
import time
from collections import Counter
from contextlib import asynccontextmanager
from datetime import date
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Depends, FastAPI, File, Query, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles

from xmodal.indexer.ingest.decode import DecodeError
from xmodal.indexer.records import path_json

from xmodal.engine.search.engine import SearchEngine, SearchError
from xmodal.engine.web.security import (SECURITY_HEADERS, SESSION_COOKIE, AllowedHosts, GuardMiddleware,
                                        Sessions, UploadLimitMiddleware)
from xmodal.engine.web.errors import HTTPProblem
from xmodal.engine.web.thumbnails import ThumbnailCache
from xmodal.engine.web.uploads import decode_upload, too_big

logger = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).resolve().parent / "static"
MAX_UPLOAD_BYTES = 20 * 1024 * 1024
MAX_UPLOAD_PIXELS = 50_000_000
MAX_K = 1000
MAX_QUERY_CHARS = 1000  # longer queries are a JSON 400 (the text tower reads 64 tokens anyway)
MAX_DECODES = 2  # uploads decoded at once (each may hold up to MAX_UPLOAD_PIXELS of pixels); others wait
MAX_ID = (1 << 63) - 1  # SQLite's integer range: a larger id cannot exist


def is_loopback(host: str) -> bool:
    """True for addresses only this machine can reach (127.0.0.0/8, ::1, localhost)."""
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def create_app(library_dir: str | os.PathLike, token: str | None = None, *, model: str | None = None,
               max_upload_bytes: int = MAX_UPLOAD_BYTES, max_upload_pixels: int = MAX_UPLOAD_PIXELS,
               thumbnail_size: int | None = None, allowed_hosts=(), warm_up: bool = False,
               reranker: str | None = "auto") -> FastAPI:
    """The app for one library. Opens the engine now (raising `SearchError` for a missing or empty library,
    a `model` that is not the library's, or a `reranker` it cannot use), so `xmodal serve` fails fast with a
    one-line reason. `reranker`: as `SearchEngine`'s ("auto": the library's model's own, when it has one).
    allowed_hosts: Host names answered besides localhost, 127.0.0.1 and [::1] (the bound address, names
    from --allow-host); any other Host header is a 400."""
    from threadpoolctl import threadpool_limits

    from xmodal.indexer.models.onnx_runtime import set_query_threads

    # One thread per request for its model sessions and numpy's BLAS: concurrent requests then fill the cores
    # instead of contending for them (each BLAS call's threads spin; measured: 4 clients got 0.8x the
    # requests/s of one with every core per request, 1.8x with one; benchmarks/load_test.py --suite).
    # XMODAL_QUERY_THREADS overrides.
    per_request = int(os.environ.get("XMODAL_QUERY_THREADS") or 1)
    set_query_threads(per_request)
    threadpool_limits(limits=per_request, user_api="blas")
    engine = SearchEngine(library_dir, model=model, reranker=reranker)
    folders_lock = threading.Lock()
    thumbs = ThumbnailCache(engine.library.root, **({"size": thumbnail_size} if thumbnail_size else {}))
    folders_cache: dict[str, Any] = {}
    sessions = Sessions()
    decoding = threading.BoundedSemaphore(MAX_DECODES)
    # Uploads decode on these few long-lived threads, not on the request threads: the allocator keeps the
    # memory a decode freed in the arena of the thread that used it, so decoding on many pool threads would
    # leave hundreds of MB behind in each.
    decoder = ThreadPoolExecutor(MAX_DECODES, thread_name_prefix="xmodal-upload")

    @asynccontextmanager
    async def lifespan(_app: FastAPI):
        warming = threading.Thread(target=warm, name="xmodal-warm-up", daemon=True) if warm_up else None
        if warming is not None:
            warming.start()
        yield
        decoder.shutdown(wait=False, cancel_futures=True)
        if warming is not None:
            warming.join(timeout=60)
        engine.close()

    def warm() -> None:
        """Load the encoder, the reranker and the index before the first visitor asks (seconds, once), so
        the first search answers as fast as the next; a failure here is the first search's to report."""
        try:
            engine.search_text("a photo", k=1)
        except Exception as e:  # noqa: BLE001 - the first real search reports the same problem properly
            logger.debug("warm-up failed: %s", e)
        finally:
            app.state.warmed.set()

    # no /docs or /redoc: FastAPI's pages load Swagger UI / ReDoc from a CDN (blank offline); the schema stays
    app = FastAPI(title="xmodal", version="0.1.0", lifespan=lifespan, docs_url=None, redoc_url=None,
                  description="Cross-modal photo search: by text, by image, more like this.")
    app.state.engine = engine
    app.state.warmed = threading.Event()  # set once the warm-up (warm_up=True) has loaded the models
    app.state.thumbnails = thumbs

    # ------------------------------------------------------------------ errors
    @app.exception_handler(HTTPProblem)
    async def _problem(_request: Request, exc: HTTPProblem):
        auth = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else {}
        return JSONResponse({"detail": exc.message}, status_code=exc.status, headers=auth)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_request: Request, exc: RequestValidationError):
        errors = exc.errors()
        if any(e.get("loc", ("",))[0] == "path" for e in errors):  # /api/images/<not an id>/...
            return JSONResponse({"detail": "no such image"}, status_code=404)
        parts = []
        for e in errors:
            where = ".".join(str(p) for p in e.get("loc", ())[1:]) or "request"
            parts.append(f"{where}: {e.get('msg', 'invalid')}")
        return JSONResponse({"detail": "bad request: " + "; ".join(parts)}, status_code=400)

    @app.exception_handler(Exception)
    async def _unexpected(_request: Request, exc: Exception):
        logger.exception("unexpected error")
        return JSONResponse({"detail": "internal error; see the server log"}, status_code=500,
                            headers=SECURITY_HEADERS)  # answered outside GuardMiddleware

    # uploads over the limit (plus the multipart framing) are refused before or while they arrive, not spooled
    app.add_middleware(UploadLimitMiddleware, path="/api/search/image", limit=max_upload_bytes + 64 * 1024,
                       message=lambda length: too_big(length, max_upload_bytes))
    app.add_middleware(GuardMiddleware, hosts=AllowedHosts(allowed_hosts))  # added last: the outermost

    # ------------------------------------------------------------------ auth
    def is_token(given: str | None) -> bool:
        return bool(given) and secrets.compare_digest(given.encode(), token.encode())

    def check_token(request: Request) -> None:
        if token is None or sessions.valid(request.cookies.get(SESSION_COOKIE)):
            return
        given = request.headers.get("x-token")
        auth = request.headers.get("authorization", "")
        if auth.lower().startswith("bearer "):
            given = auth[7:].strip()
        if not is_token(given):
            raise HTTPProblem(401, "a valid token is required: send `Authorization: Bearer TOKEN` "
                                   "(or open the page as /?token=TOKEN)")

    api = APIRouter(prefix="/api", dependencies=[Depends(check_token)])

    # ------------------------------------------------------------------ helpers
    def call(fn, *args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except SearchError as e:
            raise HTTPProblem(404 if str(e).startswith("no image with id") else 400, str(e)) from e

    def record_or_404(image_id: int):
        if not 0 <= image_id <= MAX_ID:
            raise HTTPProblem(404, f"no image with id {image_id} in this library")
        record = call(engine.image_record, image_id)
        if record is None:
            raise HTTPProblem(404, f"no image with id {image_id} in this library")
        return record

    def answer(hits, started: float, target: str, notice: str | None = None) -> dict:
        """`reranked` marks the head the reranker scored (fused scores); the tail after it keeps its dual-encoder
        order and cosine, which is on another scale: the two kinds of score do not compare. `notice`: a
        warning about the query to show beside the hits (None: nothing to say)."""
        return {"target": target, "took_ms": round((time.perf_counter() - started) * 1000, 2), "notice": notice,
                "hits": [{**h.to_json(), "reranked": h.match is not None} for h in hits]}

    def filters(folder: str | None = Query(None, description="Only photos under this folder (recursive)."),
                taken_after: date | None = Query(None, description="Date taken on or after (YYYY-MM-DD)."),
                taken_before: date | None = Query(None, description="Date taken on or before (YYYY-MM-DD).")):
        return {"folder": folder or None, "taken_after": taken_after, "taken_before": taken_before}

    K = Query(20, ge=1, le=MAX_K, description="How many results.")
    TARGET = Query("images", description="`images` or `texts`.")
    RERANK_K = Query(None, ge=0, le=MAX_K, description="Rerank this many candidates (text -> images, "
                     "image -> texts); 0: off; default: the engine's.")

    # ------------------------------------------------------------------ API
    @api.get("/health", summary="Liveness")
    def health():
        return {"status": "ok"}

    @api.get("/info", summary="What the library holds")
    def info():
        return call(engine.info)

    @api.get("/search", summary="Search by text")
    def search(q: str = Query(..., max_length=MAX_QUERY_CHARS, description="What to look for."), k: int = K,
               target: str = TARGET,
               rerank_k: int | None = RERANK_K,
               exemplar: bool = Query(True, description="Text -> image: include the reranker's exemplar term."),
               cutoff: bool = Query(False, description="Text -> images: good matches only (the default threshold)."),
               min_prob: float | None = Query(None, ge=0, le=1, description="Text -> images: hits with at least "
                                              "this calibrated probability of a match only."),
               sort: str = Query("score", description="`score`, or `date` (taken, else file time; newest first)."),
               mode: str | None = Query(None, description="Text -> images: `semantic`, `keyword` (names, "
                                        "descriptions, OCR text) or `hybrid` (default); hits say what `matched`."),
               f: dict = Depends(filters)):
        started = time.perf_counter()
        hits = call(engine.search_text, q, k, target, rerank_k=rerank_k, exemplar=exemplar, mode=mode, **_active(f))
        threshold = min_prob if min_prob is not None else (call(lambda: engine.default_cutoff) if cutoff else None)
        cut = call(engine.refine, hits, threshold, sort)
        return {**answer(cut.hits, started, target, call(engine.notice, q)),
                "parsed": call(engine.parse_query, q).to_json(),
                "cutoff": {"min_prob": threshold, "dropped": cut.dropped, "best_prob": cut.best_prob}}

    @api.post("/search/image", summary="Search by an uploaded image (multipart field `file`)")
    def search_image(file: UploadFile = File(..., description="A photo (JPEG, PNG, WebP, HEIC...)."),
                     k: int = K, target: str = TARGET, rerank_k: int | None = RERANK_K,
                     q: str | None = Query(None, max_length=MAX_QUERY_CHARS,
                                           description="Words to add to the photo (`in winter`, `-people`)."),
                     f: dict = Depends(filters)):
        started = time.perf_counter()
        q = q if q and q.strip() else None
        parsed = call(engine.parse_query, q, with_photo=True).to_json() if q else None  # a bad query is a 400 before the upload is read
        with decoding:  # bounds the memory that uploads being read and decoded hold at once
            data = file.file.read(max_upload_bytes + 1)
            if len(data) > max_upload_bytes:
                raise HTTPProblem(400, too_big(None, max_upload_bytes))
            if not data:
                raise HTTPProblem(400, "the uploaded file is empty; choose a photo")
            image = decoder.submit(decode_upload, data, file.filename or "upload", max_upload_pixels).result()
            del data
        hits = call(engine.search_image, image, k, target, rerank_k=rerank_k, text=q, **_active(f))
        return {**answer(hits, started, target), "parsed": parsed}

    @api.get("/images/{image_id}", summary="One photo's metadata")
    def image(image_id: int):
        r = record_or_404(image_id)
        return {"id": r.id, **path_json(r.path), **path_json(os.path.basename(r.path), "name"),
                **path_json(os.path.dirname(r.path), "folder"), "width": r.width, "height": r.height, "bytes": r.size,
                "taken_at": r.taken_at.isoformat() if r.taken_at else None}

    @api.get("/images/{image_id}/similar", summary="More like this")
    def similar(image_id: int, k: int = K, target: str = TARGET, rerank_k: int | None = RERANK_K,
                exclude_self: bool = Query(True, description="Leave the photo itself out of the image hits."),
                q: str | None = Query(None, max_length=MAX_QUERY_CHARS,
                                      description="Words to add to the photo (`in winter`, `-people`)."),
                f: dict = Depends(filters)):
        started = time.perf_counter()
        record_or_404(image_id)
        q = q if q and q.strip() else None
        parsed = call(engine.parse_query, q, with_photo=True).to_json() if q else None
        hits = call(engine.similar, image_id, k, target, rerank_k=rerank_k, exclude_self=exclude_self, text=q,
                    **_active(f))
        return {**answer(hits, started, target), "parsed": parsed}

    @api.get("/images/{image_id}/explain",
             summary="Where the photo matched each word of a query (7x7 grids for lite, 9x9 for base)")
    def explain(image_id: int, q: str = Query(..., max_length=MAX_QUERY_CHARS, description="The query to explain.")):
        record_or_404(image_id)
        exp, _ = call(engine.explain, q, image_id)
        return exp.to_json()

    @api.get("/images/{image_id}/explain.png", summary="The photo with a heatmap of where a query matched",
             response_class=Response)
    def explain_png(image_id: int, q: str = Query(..., max_length=MAX_QUERY_CHARS, description="The query to explain."),
                    word: int | None = Query(None, ge=0, description="Only this word of the query (0-based).")):
        from xmodal.engine.rerank.explain import overlay

        record_or_404(image_id)
        exp, photo = call(engine.explain, q, image_id)
        if word is not None and word >= len(exp.words):
            raise HTTPProblem(400, f"the query has {len(exp.words)} words; word must be below that")
        photo.thumbnail((1024, 1024))
        buf = io.BytesIO()
        overlay(photo, exp.overall if word is None else exp.word_maps[word]).save(buf, format="PNG")
        return Response(buf.getvalue(), media_type="image/png")

    @api.get("/images/{image_id}/thumbnail", summary="A JPEG thumbnail (cached in the library)",
             response_class=FileResponse)
    def thumbnail(image_id: int):
        record = record_or_404(image_id)
        try:
            path = thumbs.get(record)
        except DecodeError as e:
            raise HTTPProblem(404, f"image {image_id} cannot be read any more: {e.reason}") from e
        return FileResponse(path, media_type="image/jpeg", headers={"Cache-Control": "private, max-age=86400"})

    @api.get("/images/{image_id}/file", summary="The photo file itself", response_class=FileResponse)
    def photo_file(image_id: int):
        record = record_or_404(image_id)
        if not os.path.isfile(record.path):
            raise HTTPProblem(404, f"image {image_id} is no longer on disk; re-run `xmodal index`")
        name = path_json(os.path.basename(record.path), "name")["name"]  # a header carries no undecodable bytes
        return FileResponse(record.path, filename=name, content_disposition_type="inline")

    @api.get("/duplicates", summary="Groups of exact and near duplicate photos, with the copy to keep")
    def duplicates(threshold: float | None = Query(None, ge=0.0, le=1.0, description="Pixel confirmation a "
                                                   "near copy needs (lower: also bursts); default: the engine's."),
                   k: int | None = Query(None, ge=1, le=MAX_K, description="Neighbours searched per photo.")):
        started = time.perf_counter()
        report = call(engine.find_duplicates, threshold, k)
        return {**report.to_json(), "took_ms": round((time.perf_counter() - started) * 1000, 2)}

    @api.get("/folders", summary="Folders that hold photos, with counts")
    def folders():
        with folders_lock:  # recounted when an indexer has committed since (the images generation moved on)
            generation = engine.library.store.generation("images")
            if folders_cache.get("generation") != generation:
                counts = Counter(os.path.dirname(path) for path, *_ in engine.library.store.image_states())
                folders_cache["list"] = [{**path_json(d, "folder"), "images": n} for d, n in sorted(counts.items())]
                folders_cache["generation"] = generation
            return {"folders": folders_cache["list"]}

    app.include_router(api)

    # ------------------------------------------------------------------ page
    @app.get("/", include_in_schema=False)
    def page(request: Request):
        given = request.query_params.get("token")
        if given is None:
            return FileResponse(STATIC_DIR / "index.html", media_type="text/html")
        # the one place a token travels in a URL: traded for a session cookie, then a clean URL
        clean = RedirectResponse("/", status_code=303, headers={"Cache-Control": "no-store"})
        if token is not None:
            if not is_token(given):
                raise HTTPProblem(401, "wrong token: open the page as /?token=TOKEN with the server's token")
            clean.set_cookie(SESSION_COOKIE, sessions.issue(), httponly=True, samesite="strict", path="/")
        return clean

    @app.get("/duplicates", include_in_schema=False)
    def duplicates_page():  # the page carries no library data: it asks /api/duplicates
        return FileResponse(STATIC_DIR / "duplicates.html", media_type="text/html")

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")

    return app


def _active(f: dict) -> dict:
    return {k: v for k, v in f.items() if v is not None}
