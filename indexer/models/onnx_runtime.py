"""ONNX Runtime sessions for the exported graphs, without torch: what a search process runs.

The graphs are exported from the torch modules once per checkpoint into the cache folder
($XDG_CACHE_HOME/xmodal/onnx; `onnx_image.py`, `onnx_text.py`) and read from there afterwards, so that a
query process imports onnxruntime and numpy only (`lite_query.py`).
"""
from __future__ import annotations

import hashlib
import os
import threading
from contextlib import contextmanager
from pathlib import Path

import numpy as np


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "xmodal" / "onnx"


def query_runtime() -> str:
    """How searches run the models: "onnx" (default) or "torch" (XMODAL_QUERY_RUNTIME=torch, or onnxruntime
    not installed)."""
    wanted = os.environ.get("XMODAL_QUERY_RUNTIME", "onnx").strip().lower() or "onnx"
    if wanted == "torch":
        return "torch"
    try:
        from importlib.metadata import version

        version("onnxruntime")
    except Exception:  # noqa: BLE001 - not installed
        return "torch"
    return "onnx"


def file_stamp(path: str | os.PathLike, *extra) -> str:
    """A cheap cache key for a checkpoint file: its real path, size and modification time (no hashing of tens
    of MB at every start-up), the onnxruntime version and `extra`."""
    from importlib.metadata import version

    p = Path(path).resolve()
    st = p.stat()
    raw = f"{p}|{st.st_size}|{st.st_mtime_ns}|{version('onnxruntime')}|{'|'.join(map(str, extra))}"
    return hashlib.sha256(raw.encode()).hexdigest()[:16]


_QUERY_THREADS: int | None = None  # threads of each query-time session; None: every core (set_query_threads)


def set_query_threads(n: int | None) -> None:
    """How many threads each query-time session (text, image, reranker) runs on, for sessions made after this
    call: None (default) every core, the fastest for one query at a time (a CLI search); 1 for a server, whose
    concurrent requests then fill the cores instead of contending for them (benchmarks/load_test.py)."""
    global _QUERY_THREADS
    _QUERY_THREADS = None if n is None else max(1, int(n))


def query_threads() -> int:
    return _QUERY_THREADS or cpu_threads()


_ONE_SHOT = False  # sessions skip prepacking their weights (one_shot)


@contextmanager
def one_shot():
    """Within this block sessions are made for a process that runs one query and exits (`xmodal search QUERY`).
    ONNX Runtime then skips prepacking (copying every weight matrix into its blocked layout at load): base's
    440 MB text graph opens and answers its first query in 0.19 s instead of 0.66 s, that query itself taking
    0.06 s longer (benchmarks/cold_start.json). A server or a batch of queries keeps the default, prepacked sessions."""
    global _ONE_SHOT
    before, _ONE_SHOT = _ONE_SHOT, True
    try:
        yield
    finally:
        _ONE_SHOT = before


def cpu_threads() -> int:
    """Cores this process may run on (its affinity mask), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def session(path: str | os.PathLike, threads: int, optimize: bool = True, spin: bool = True):
    """An ONNX Runtime CPU session on `threads` intra-op threads. optimize=False skips graph optimisation at
    load (for a graph that was saved already optimised: start-up time). spin=False: its threads sleep after a
    run instead of spinning for the next one; a query's numpy and FAISS work that follows a run then gets the
    cores (on 2 cores a warm reranked text query took 1.9-2.7x as long with spinning threads, lite's photo query
    0.8x: benchmarks/query_spinning.py)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    if not spin:
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if _ONE_SHOT:
        opts.add_session_config_entry("session.disable_prepacking", "1")
    opts.graph_optimization_level = (ort.GraphOptimizationLevel.ORT_ENABLE_ALL if optimize
                                     else ort.GraphOptimizationLevel.ORT_DISABLE_ALL)
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def _write_beside(dst: Path, write) -> Path:
    """Write graph `dst` and its weights file (`dst.name` + ".data", beside it) through `write(tmp_graph_path)`,
    which must name that weights file; both are written in a temporary folder and renamed, the data first: a
    graph that exists is whole."""
    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp_dir = dst.parent / f".{dst.name}.{os.getpid()}.tmp"
    tmp_dir.mkdir(exist_ok=True)
    try:
        write(tmp_dir / dst.name)
        os.replace(tmp_dir / (dst.name + ".data"), dst.with_name(dst.name + ".data"))
        os.replace(tmp_dir / dst.name, dst)
    finally:
        for leftover in tmp_dir.iterdir():
            leftover.unlink()
        tmp_dir.rmdir()
    return dst


def save_optimized(model_path: str | os.PathLike, dst: Path) -> Path:
    """Write `model_path` as ONNX Runtime optimises it at its extended level (operator fusions: attention,
    layer norm, GELU; no layout changes, so the result suits any CPU) to `dst`, weights beside it as
    save_external writes them. A session then loads it with optimize=False: no graph optimisation at each
    start-up (base's text graph: 0.66 s to open and answer instead of 0.69 with nothing else running, more on a busy
    one; benchmarks/cold_start.json), the same outputs."""
    import onnxruntime as ort

    def write(tmp: Path) -> None:
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
        opts.optimized_model_filepath = str(tmp)
        opts.add_session_config_entry("session.optimized_model_external_initializers_file_name", tmp.name + ".data")
        opts.add_session_config_entry("session.optimized_model_external_initializers_min_size_in_bytes", "1024")
        ort.InferenceSession(str(model_path), opts, providers=["CPUExecutionProvider"])

    return _write_beside(dst, write)


def save_external(model_path: str | os.PathLike, dst: Path) -> Path:
    """Copy an ONNX graph to `dst` with its weights in a separate file beside it (`dst.name` + ".data"). ONNX
    Runtime memory-maps such a file instead of reading the weights into memory and copying them into tensors:
    a query process loads the 94 MB text graph at a peak of about 110 MB resident instead of 195, and faster."""
    import onnx

    model = onnx.load(str(model_path))
    return _write_beside(dst, lambda tmp: onnx.save_model(model, str(tmp), save_as_external_data=True,
                                                          all_tensors_to_one_file=True, location=tmp.name + ".data",
                                                          size_threshold=1024))


class OnnxImagePath:
    """Runs an exported image path: one session on every core for single batches (latency), and one
    single-threaded session per core ("lanes") for callers that run batches concurrently (throughput)."""

    def __init__(self, path: Path, kind: str = "float32", threads: int | None = None):
        self.path = Path(path)
        self.kind = kind
        self.threads = threads or query_threads()
        self.session = session(self.path, self.threads, spin=False)  # one batch at a time on every core: the latency path
        self._lanes: list = []
        self._lock = threading.Lock()

    @property
    def lanes(self) -> int:
        """How many batches to run at once for throughput: one single-threaded session per core. On this
        project's 2-core CPU two such lanes measured 1.1x the images/s of one 2-thread session (no
        barrier after every operator), and they keep their pace when decoding threads share the cores."""
        return self.threads

    def lane(self, i: int):
        """The single-threaded session of lane `i` (made on first use)."""
        with self._lock:
            while len(self._lanes) <= i:
                self._lanes.append(session(self.path, 1))
            return self._lanes[i]

    def __call__(self, pixels: np.ndarray, lane: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(B, H, W, 3) uint8, as photos are decoded -> ((B, D) float32 embeddings, (B, 1280, 7, 7) float32 maps).
        With `lane`, on that lane's single-threaded session (callers run lanes concurrently)."""
        s = self.session if lane is None else self.lane(lane)
        emb, maps = s.run(None, {"pixels": np.ascontiguousarray(pixels.transpose(0, 3, 1, 2), np.uint8)})
        return emb, maps


class OnnxTextPath:
    """Runs an exported text path: (B, T) int64 token ids and mask -> ((B, D) unit embeddings, (B, T, C) token
    states). ONNX Runtime sessions may run concurrently from several threads (the web server's requests)."""

    def __init__(self, path: Path, threads: int | None = None, optimized: bool = False):
        """`optimized`: the graph was saved optimised (onnx_text.export, save_optimized): load it as it is."""
        self.path = Path(path)
        self.session = session(self.path, threads or query_threads(), optimize=not optimized,
                               spin=False)  # a query's other work follows

    def __call__(self, ids: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        emb, states = self.session.run(None, {"ids": np.ascontiguousarray(ids, np.int64),
                                              "mask": np.ascontiguousarray(mask, np.int64)})
        return emb, states
