"""Getting a machine ready for searches without torch: after `xmodal index` (which has torch loaded anyway)
the query graphs of the encoder and of the reranker are exported into the cache, so the first search that
follows starts in well under a second instead of exporting them itself (indexer/models/lite_query.py,
engine/rerank/session.py)."""
from __future__ import annotations

import logging

from xmodal.indexer.models.onnx_runtime import query_runtime
from xmodal.indexer.models.towers import bundled_reranker

logger = logging.getLogger(__name__)


def prepare_query_runtime(encoder) -> bool:
    """Export the query graphs of `encoder` (when it has any: the bundled models) and of its model's own bundled
    reranker (towers.bundled_reranker), where they are not in the cache yet. -> whether the search path is ready to run without torch. Never raises: a
    search can always export them itself, or run on torch."""
    if query_runtime() == "torch" or not hasattr(encoder, "export_query_graphs"):
        return False
    from xmodal.indexer.models.lite_query import read_manifest

    try:
        if read_manifest(encoder.checkpoint) is None:
            encoder.export_query_graphs()
        checkpoint = bundled_reranker(encoder.name)
        if checkpoint is not None:
            from xmodal.engine.rerank.session import CachedReranker

            files = CachedReranker.of(checkpoint)
            if not files.complete():
                from xmodal.engine.rerank.lite import Reranker
                from xmodal.engine.rerank.onnx_export import export_reranker

                export_reranker(Reranker(checkpoint), files)
    except Exception as e:  # noqa: BLE001 - the index run succeeded; the first search will try again
        logger.warning("could not prepare the query graphs (%s); the first search will", str(e).splitlines()[0])
        return False
    return True
