"""`xmodal serve`: the web page and JSON API (xmodal.engine.web)."""
from __future__ import annotations


import click


from xmodal.engine.cli.common import library_dir, edge, library_option


@click.command()
@library_option
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to bind; anything but loopback requires --token.")
@click.option("--port", default=8000, show_default=True, type=click.IntRange(0, 65535))
@click.option("--token", envvar="XMODAL_TOKEN", default=None,
              help="Access token every API call must carry (env XMODAL_TOKEN); required off loopback.")
@click.option("--model", default=None, help="Refuse to run unless the library was built with this model.")
def serve(library, host, port, token, model):
    """Web UI and JSON API (docs at /docs) for searching the library in a browser."""
    from xmodal.engine.web.server import create_app, is_loopback

    if not is_loopback(host) and not token:
        raise click.UsageError(f"binding to {host} exposes your photos to the network: give --token "
                               "(or env XMODAL_TOKEN), or keep the default --host 127.0.0.1")
    with edge():
        app = create_app(library_dir(library), token=token, model=model)
    import uvicorn

    shown = f"[{host}]" if ":" in host else host
    click.echo(f"xmodal: serving {library_dir(library)} on http://{shown}:{port}/"
               + (" (open it as /?token=YOUR_TOKEN)" if token else ""), err=True)
    # h11 would answer a request line over 64 KB with a plain-text 400 before the app sees it; let the app
    # refuse over-long queries with its JSON 400 instead (up to 2 MiB of request line and headers)
    uvicorn.run(app, host=host, port=port, log_level="info", h11_max_incomplete_event_size=2 * 1024 * 1024)
