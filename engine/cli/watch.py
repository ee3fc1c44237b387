"""`xmodal watch`: keep the library current while it runs (xmodal.indexer.ingest.watch)."""
from __future__ import annotations

import click

from xmodal.engine.cli.common import edge, emit, json_option, library_dir, library_option


@click.command()
@click.argument("paths", nargs=-1, required=False, type=click.Path(exists=True, file_okay=False, path_type=str))
@library_option
@click.option("--model", default=None, help="Dual encoder to embed with [default: the library's, else lite].")
@click.option("--debounce", default=1.0, show_default=True, type=click.FloatRange(0.0, 3600.0),
              help="Seconds a folder must be quiet before its changes are indexed.")
@click.option("--poll", "poll", is_flag=True, help="Rescan periodically instead of using OS file events.")
@click.option("--poll-seconds", default=5.0, show_default=True, type=click.FloatRange(0.1, 86400.0),
              help="Rescan period when polling (no events, or the inotify limit ran out).")
@click.option("--rescan-seconds", default=300.0, show_default=True, type=click.FloatRange(1.0, 86400.0),
              help="With events, rescan every root this often anyway (a safety net for lost events).")
@json_option
def watch(paths, library, model, debounce, poll, poll_seconds, rescan_seconds, as_json):
    """Keep the library current while running: index new photos, re-embed edited ones, keep the row of moved
    ones, drop deleted ones, within seconds. Watches PATHS (added as roots), or every root of the library.
    Ctrl-C or SIGTERM finishes the current batch and exits 0."""
    import signal
    import threading

    from xmodal.indexer.ingest.watch import Watcher

    stop = threading.Event()

    def on_signal(signum, frame):
        stop.set()

    main = threading.current_thread() is threading.main_thread()
    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)} if main else {}
    watcher = Watcher(library_dir(library), paths, model, debounce=debounce, poll_seconds=poll_seconds,
                      rescan_seconds=rescan_seconds, events=not poll)

    def ready():
        r = watcher.report
        click.echo(f"watching {len(r.roots)} folder(s) with {'file events' if r.mode == 'events' else 'rescans'}"
                   f" (indexed {r.added + r.reembedded}, moved {r.moved}, removed {r.removed} since the last run);"
                   " Ctrl-C to stop", err=True)

    try:
        with edge():
            report = watcher.run(stop.is_set, ready=ready)
    finally:
        for s, handler in previous.items():  # once stopped the command only reports and exits: a late
            signal.signal(s, signal.SIG_IGN if stop.is_set() else handler)  # signal must not kill that
    if as_json:
        emit(report.to_json())
    else:
        click.echo(f"stopped after {report.cycles} rescans: added {report.added}, re-embedded {report.reembedded}, "
                   f"moved {report.moved}, removed {report.removed}, skipped {report.skipped}")
