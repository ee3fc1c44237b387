"""`xmodal serve`: the web page and JSON API (xmodal.engine.web)."""
from __future__ import annotations

import copy

import click


from xmodal.engine.cli.common import library_dir, edge, library_option

MIN_TOKEN_CHARS = 16


@click.command()
@library_option
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to bind; anything but loopback requires a token.")
@click.option("--port", default=8000, show_default=True, type=click.IntRange(0, 65535))
@click.option("--token", envvar="XMODAL_TOKEN", default=None,
              help="Access token (at least 16 characters) every API call must carry; required off loopback. "
                   "Prefer env XMODAL_TOKEN: a command line shows in `ps`.")
@click.option("--allow-host", "allow_hosts", multiple=True, metavar="NAME",
              help="Also answer requests for this host name (repeatable); besides the --host address, "
                   "localhost, 127.0.0.1 and [::1] every other Host header is refused (DNS rebinding).")
@click.option("--model", default=None, help="Refuse to run unless the library was built with this model.")
@click.option("--reranker", default="auto", show_default=True,
              help="'auto' (the library's model's own bundled reranker when it has one, else none), 'bundled' (that "
                   "reranker, an error when the model has none), 'lite' (the same, for lite libraries), or a BLIP "
                   "ITM checkpoint (name or folder).")
@click.option("--no-rerank", is_flag=True, help="Rank by dual-encoder similarity only.")
def serve(library, host, port, token, allow_hosts, model, reranker, no_rerank):
    """Web UI and JSON API (OpenAPI schema at /openapi.json) for searching the library in a browser."""
    from xmodal.engine.web.server import create_app, is_loopback

    if not is_loopback(host) and not token:
        raise click.UsageError(f"binding to {host} exposes your photos to the network: set env XMODAL_TOKEN "
                               "(or give --token), or keep the default --host 127.0.0.1")
    if token and len(token) < MIN_TOKEN_CHARS:
        raise click.UsageError(f"the token has {len(token)} characters; use at least {MIN_TOKEN_CHARS}, e.g. "
                               "export XMODAL_TOKEN=$(python3 -c 'import secrets; print(secrets.token_urlsafe(24))')")
    with edge():
        app = create_app(library_dir(library), token=token, model=model, allowed_hosts=(host, *allow_hosts),
                         warm_up=True, reranker=None if no_rerank else reranker)
    import uvicorn

    shown = f"[{host}]" if ":" in host else host
    click.echo(f"xmodal: serving {library_dir(library)} on http://{shown}:{port}/"
               + (" (open it once as /?token=YOUR_TOKEN)" if token else ""), err=True)
    # h11 would answer a request line over 64 KB with a plain-text 400 before the app sees it; let the app
    # refuse over-long queries with its JSON 400 instead (up to 2 MiB of request line and headers).
    # uvicorn's access log would show query strings (a token, searches): the app logs method and path instead.
    uvicorn.run(app, host=host, port=port, log_level="info", h11_max_incomplete_event_size=2 * 1024 * 1024,
                access_log=False, log_config=log_config())


def log_config() -> dict:
    """uvicorn's logging, plus the app's loggers on its stderr handler: the access log, warnings and errors."""
    from uvicorn.config import LOGGING_CONFIG

    config = copy.deepcopy(LOGGING_CONFIG)
    config["loggers"]["xmodal"] = {"handlers": ["default"], "level": "WARNING", "propagate": False}
    config["loggers"]["xmodal.web.access"] = {"level": "INFO"}  # one line a request, on the handler above
    return config
