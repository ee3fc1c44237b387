"""Pick a FAISS index type for a collection, the way autofaiss does (``get_optimal_index_keys_v2``).

The rules, from exact to most compressed; the first that applies wins:

1. ``n < FLAT_THRESHOLD`` (20,000) -> ``"Flat"``. Brute force over 20k x 512 floats is a few milliseconds per
   query and exact; and below that size an IVF or PQ quantizer cannot be trained well anyway (k-means wants
   ~39 points per centroid), so the memory budget is ignored here.
2. ``n < HNSW_MAX_VECTORS`` (1,000,000) and ``n * (4*dim + 2*4*32 + id overhead)`` fits the budget ->
   ``"HNSW32"``: the best recall/speed trade-off when the raw vectors plus graph links fit in memory.
3. ``n < COMPRESS_THRESHOLD`` (5,000,000) and the raw vectors plus ``nlist`` centroids fit ->
   ``"IVF{nlist},Flat"`` with ``nlist`` = ``4*sqrt(n)`` rounded to a power of two (faiss wiki guidelines).
4. ``n < COMPRESS_THRESHOLD`` and one byte per dimension fits -> ``"IVF{nlist},SQ8"``: the same cells with
   8-bit scalar-quantised vectors, a quarter of the memory at a recall cost of about a point (at 1M x 512
   under a 1.5 GB budget the raw vectors alone would not fit, these do).
5. Otherwise -> ``"OPQ{m}_{d},IVF{nlist}[_HNSW32],PQ{m}x8"``: an OPQ rotation down to ``d = 4*m`` dims, then
   ``m`` one-byte sub-quantizer codes per vector. ``m`` is ``dim/4`` capped at 64, lowered (halving, down
   to 8) until the index fits the budget; if nothing fits, the smallest is returned and a warning logged.
   The coarse quantizer is itself an HNSW graph once ``nlist`` reaches 1,024 (as autofaiss does), so
   assigning vectors to tens of thousands of centroids stays fast.

With ``memory_budget_bytes=None`` there is no memory constraint and the choice depends on ``n`` only, moving
monotonically Flat -> HNSW -> IVF -> OPQ/PQ as ``n`` grows. Every returned string is valid for
``faiss.index_factory(dim, s, faiss.METRIC_INNER_PRODUCT)``.
"""
from __future__ import annotations

import logging
import math
import re

log = logging.getLogger(__name__)

FLAT_THRESHOLD = 20_000
HNSW_MAX_VECTORS = 1_000_000
COMPRESS_THRESHOLD = 5_000_000
HNSW_M = 32
MAX_PQ_M = 64
MIN_PQ_M = 8
MAX_NLIST = 65_536
HNSW_COARSE_MIN_NLIST = 1_024
#: Per-vector cost of the ``IndexIDMap2`` wrapper: 8 bytes in ``id_map`` plus a hash-map node in ``rev_map``.
#: A writer holds both; a read-only search process maps the file as an ``IndexIDMap`` without ``rev_map``
#: (indexer.vector_index), so the estimate is the writer's, the larger.
IDMAP_BYTES_PER_VECTOR = 48
IVF_ID_BYTES = 8  # every inverted-list entry stores its int64 id next to the code

_HNSW = re.compile(r"HNSW(\d+)")
_IVF_FLAT = re.compile(r"IVF(\d+),Flat")
_IVF_SQ8 = re.compile(r"IVF(\d+),SQ8")
_OPQ_PQ = re.compile(r"OPQ(\d+)_(\d+),IVF(\d+)(_HNSW(\d+))?,PQ(\d+)x(\d+)")


def ivf_nlist(n_vectors: int) -> int:
    """Number of IVF cells for ``n_vectors``: ``4*sqrt(n)`` rounded to the nearest power of two, in [1, 65536]."""
    if n_vectors <= 0:
        return 1
    nlist = 2 ** round(math.log2(4 * math.sqrt(n_vectors)))
    return int(min(max(nlist, 1), MAX_NLIST))


def pq_m(dim: int) -> int:
    """Default number of PQ sub-quantizers for ``dim``: ``dim/4`` rounded down to a power of two, capped at 64."""
    m = MIN_PQ_M
    while m * 2 <= min(dim // 4, MAX_PQ_M):
        m *= 2
    return m


def opq_factory(n_vectors: int, m: int) -> str:
    """The compressed factory string for ``m`` sub-quantizers (OPQ output dim ``4*m``)."""
    nlist = ivf_nlist(n_vectors)
    coarse = f"IVF{nlist}_HNSW{HNSW_M}" if nlist >= HNSW_COARSE_MIN_NLIST else f"IVF{nlist}"
    return f"OPQ{m}_{4 * m},{coarse},PQ{m}x8"


#: Training set of an IVF index: about this many vectors per list (FAISS's k-means wants at least 39) ...
TRAIN_PER_LIST = 50
#: ... and never fewer than this (PQ / OPQ codebooks), unless the collection is smaller.
MIN_TRAIN = 100_000


def train_size(factory: str, n_vectors: int) -> int:
    """How many of ``n_vectors`` to train ``factory`` on: a sample, so that a rebuild never needs the whole
    collection in memory (10M x 512 float32 would be 20 GB)."""
    nlist = re.search(r"IVF(\d+)", factory)
    want = max(MIN_TRAIN, TRAIN_PER_LIST * int(nlist.group(1))) if nlist else MIN_TRAIN
    return int(min(n_vectors, want))


def estimated_index_bytes(factory: str, n: int, dim: int) -> int:
    """Approximate memory (≈ file size) of an ``IndexIDMap2`` around ``factory`` holding ``n`` vectors of ``dim``.

    Understands the strings ``choose_index`` returns: Flat, HNSW{M}, IVF{nlist},Flat, IVF{nlist},SQ8 and
    OPQ{m}_{d},IVF{nlist}[_HNSW{M}],PQ{m}x{bits}. Raises ``ValueError`` for anything else.
    """
    if n < 0 or dim <= 0:
        raise ValueError(f"need n >= 0 and dim > 0, got n={n}, dim={dim}")
    per_vector_ids = IDMAP_BYTES_PER_VECTOR
    if factory == "Flat":
        return n * (4 * dim + per_vector_ids)
    if match := _HNSW.fullmatch(factory):
        links = int(match.group(1))
        return n * (4 * dim + 2 * 4 * links + per_vector_ids)
    if match := _IVF_FLAT.fullmatch(factory):
        nlist = int(match.group(1))
        return n * (4 * dim + IVF_ID_BYTES + per_vector_ids) + nlist * 4 * dim
    if match := _IVF_SQ8.fullmatch(factory):
        nlist = int(match.group(1))
        return n * (dim + IVF_ID_BYTES + per_vector_ids) + nlist * 4 * dim + 2 * 4 * dim
    if match := _OPQ_PQ.fullmatch(factory):
        d_out, nlist = int(match.group(2)), int(match.group(3))
        coarse_links = int(match.group(5)) if match.group(5) else 0
        m, bits = int(match.group(6)), int(match.group(7))
        codes = n * (math.ceil(m * bits / 8) + IVF_ID_BYTES + per_vector_ids)
        centroids = nlist * (4 * d_out + 2 * 4 * coarse_links)
        codebooks = (2**bits) * 4 * d_out
        rotation = 4 * dim * d_out
        return codes + centroids + codebooks + rotation
    raise ValueError(
        f"cannot estimate the size of FAISS index {factory!r}; "
        "expected Flat, HNSW<M>, IVF<nlist>,Flat, IVF<nlist>,SQ8 or OPQ<m>_<d>,IVF<nlist>[_HNSW<M>],PQ<m>x<bits>"
    )


def choose_index(n_vectors: int, dim: int, memory_budget_bytes: int | None = None) -> str:
    """The FAISS factory string to use for ``n_vectors`` vectors of ``dim`` (see the module docstring)."""
    if n_vectors < 0:
        raise ValueError(f"n_vectors must be >= 0, got {n_vectors}")
    if dim < 8:
        raise ValueError(f"dim must be >= 8 (an embedding size), got {dim}")
    budget = math.inf if memory_budget_bytes is None else memory_budget_bytes

    def fits(factory: str) -> bool:
        return estimated_index_bytes(factory, n_vectors, dim) <= budget

    if n_vectors < FLAT_THRESHOLD:
        return "Flat"
    if n_vectors < HNSW_MAX_VECTORS and fits(hnsw := f"HNSW{HNSW_M}"):
        return hnsw
    if n_vectors < COMPRESS_THRESHOLD and fits(ivf := f"IVF{ivf_nlist(n_vectors)},Flat"):
        return ivf
    if n_vectors < COMPRESS_THRESHOLD and fits(sq8 := f"IVF{ivf_nlist(n_vectors)},SQ8"):
        return sq8
    m = pq_m(dim)
    while m > MIN_PQ_M and not fits(opq_factory(n_vectors, m)):
        m //= 2
    factory = opq_factory(n_vectors, m)
    if not fits(factory):
        log.warning(
            "no index for %d x %d vectors fits in %d bytes; using the smallest, %s (~%d bytes)",
            n_vectors, dim, memory_budget_bytes, factory, estimated_index_bytes(factory, n_vectors, dim),
        )
    return factory
