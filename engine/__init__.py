"""xmodal's read path: search, rerank, web, eval, training and the `xmodal` command.

The names below are the Python API; they load lazily, so importing a submodule stays cheap:

    from xmodal.engine import SearchEngine

    with SearchEngine("my-library") as engine:
        engine.search_text("a dog jumping into a lake", k=10)   # text -> photos, reranked
        engine.search_image("holiday.jpg", k=10)                # photos like a photo
        engine.search_image("holiday.jpg", target="texts")      # texts that describe a photo, reranked
"""
from importlib import import_module

_API = {
    "SearchEngine": "xmodal.engine.search.engine",
    "SearchError": "xmodal.engine.search.errors",
    "library_info": "xmodal.engine.search.engine",
}
__all__ = sorted(_API)


def __getattr__(name: str):
    if name in _API:
        return getattr(import_module(_API[name]), name)
    raise AttributeError(f"module 'xmodal.engine' has no attribute {name!r}")
