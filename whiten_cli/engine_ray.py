"""The Ray engine: encode, fit and index on a Ray cluster, with the results of one process.

A Ray Data pipeline, as embedding pipelines run batch inference: a dataset of shard paths →
``flat_map`` reads each shard into blocks of :data:`whiten_cli.shards.BLOCK_ROWS` rows (the same
parsing, ids and errors as the local engine) → ``map_batches`` on an actor pool of encoders (one
model per actor, the driver's resolved dtype, batch size and max_length, one torch thread per
actor CPU) → the driver iterates the results in order (``preserve_order``) and writes them as they
come, holding one part of vectors at a time. ``fit`` returns each block's :class:`GaussianStats`
instead of its vectors and the driver merges them in order (exact: Chan's pairwise formula).
``index`` trains IVF on the driver's sample, adds shards of vectors in parallel tasks and merges
them with FAISS ``merge_from``.

Ray Data restarts an actor whose worker process dies and retries its call (``max_restarts`` and
``max_task_retries`` unlimited for process deaths; an exception in whiten's code is not retried),
so a killed worker costs time, not the run; index tasks are retried RESTARTS times. The embedding cache is not used
on workers (one SQLite file per machine would not be shared by a cluster).

Ray is optional (``pip install 'whiten[ray]'``): it is imported only here, inside functions.
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from whiten_cli.errors import WhitenError, one_line
from whiten_cli.shards import Block, shard_blocks

RESTARTS = 3  # retries of an index task whose worker died
CONNECT_TIMEOUT_S = 5.0


def require_ray(command: str):
    """The ray module, or one line naming the extra."""
    try:
        import ray
    except ImportError:
        raise WhitenError(f"whiten {command} --engine ray needs the ray extra: pip install 'whiten[ray]'") from None
    return ray


def check_address(address: str) -> None:
    """Fail in one line, at once, when a ``HOST:PORT`` cluster address does not answer
    (ray.init itself would retry for a minute). ``auto`` and other forms are left to Ray."""
    target = address.removeprefix("ray://")
    host, sep, port = target.rpartition(":")
    if not sep or not port.isdigit():
        return
    try:
        socket.create_connection((host, int(port)), timeout=CONNECT_TIMEOUT_S).close()
    except OSError as exc:
        raise WhitenError(f"--ray-address {address}: no Ray cluster answers there ({exc.strerror or exc})") from None


@contextlib.contextmanager
def session(command: str, address: str | None = None, workers: int | None = None) -> Iterator[int]:
    """Connect to the cluster at ``address``, else start a local Ray with ``workers`` CPUs (default:
    all); yield how many encoder actors to run. A Ray already initialised in this process is used
    as it is (and left running)."""
    import logging

    ray = require_ray(command)
    logging.getLogger("ray.data").setLevel(logging.WARNING)  # not a line per dataset run on stderr
    if workers is not None and workers < 1:
        raise WhitenError(f"--workers must be positive, got {workers}")
    started = False
    if not ray.is_initialized():
        if address:
            check_address(address)
        try:
            ray.init(address=address, num_cpus=None if address else workers, include_dashboard=False,
                     log_to_driver=False, logging_level="ERROR")
        except Exception as exc:  # ConnectionError, RuntimeError, ValueError: all mean no cluster
            where = f"--ray-address {address}" if address else "ray"
            raise WhitenError(f"{where}: cannot start or reach Ray ({one_line(exc)})") from None
        started = True
    try:
        cpus = int(ray.cluster_resources().get("CPU", 1))
        yield max(1, min(workers or cpus, cpus))
    finally:
        if started:
            ray.shutdown()


def whiten_error(exc: BaseException) -> WhitenError | None:
    """The WhitenError a worker raised, found in the exceptions Ray wraps it in."""
    seen = set()
    stack = [exc]
    while stack:
        current = stack.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, WhitenError):
            return WhitenError(str(current.args[0]) if current.args else str(current))
        stack += [getattr(current, "cause", None), current.__cause__, current.__context__]
    return None


@contextlib.contextmanager
def _worker_errors() -> Iterator[None]:
    """A worker's WhitenError (a bad shard) surfaces as that one line, not Ray's traceback."""
    try:
        yield
    except WhitenError:
        raise
    except Exception as exc:
        found = whiten_error(exc)
        if found is None:
            raise
        raise found from None


# --------------------------------------------------------------------------- the workers


@dataclass(frozen=True)
class EncoderSpec:
    """Everything an actor needs to build the driver's encoder again: the resolved settings."""

    model_path: str
    pooling: str
    max_length: int
    batch_size: int
    dtype: str
    device: str = "cpu"
    threads: int = 1

    @classmethod
    def of(cls, encoder, threads: int | None = None) -> EncoderSpec:
        return cls(str(encoder.source.path), encoder.pooling, encoder.max_length, encoder.batch_size, encoder.dtype,
                   encoder.device, threads or 1)

    def encoder(self):
        from whiten_cli.encoder import Encoder

        return Encoder(self.model_path, pooling=self.pooling, max_length=self.max_length, batch_size=self.batch_size,
                       device=self.device, dtype=self.dtype, threads=self.threads)


def _plain(error: WhitenError) -> WhitenError:
    """InputError does not survive pickling (its constructor takes three arguments); its message does."""
    return WhitenError(str(error))


class ShardReader:
    """flat_map: a shard's path → its blocks (rows with the block's texts and ids). A shard that does
    not parse becomes one row carrying the error, which the driver raises when it gets there: a
    failed task would be reported by Ray in a traceback, and its exception does not travel whole."""

    def __init__(self, options: dict):
        self.options = options

    def __call__(self, row: dict) -> list[dict]:
        try:
            blocks = shard_blocks(int(row["shard"]), row["path"], **self.options)
        except WhitenError as exc:
            return [{"shard": int(row["shard"]), "source": row["path"], "index": 0, "texts": [], "ids": [],
                     "error": str(exc)}]
        return [{"shard": b.shard, "source": b.source, "index": b.index, "texts": b.texts, "ids": b.ids, "error": ""}
                for b in blocks]


class EncodeActor:
    """map_batches, one block a call: the block's pooled vectors (``stats``: its GaussianStats instead)."""

    def __init__(self, spec: EncoderSpec, stats: bool = False):
        self.encoder = spec.encoder()
        self.stats = stats

    def vectors(self, texts: list[str]) -> np.ndarray:
        try:
            return self.encoder.encode(texts)
        except WhitenError as exc:
            raise _plain(exc) from None

    def __call__(self, batch: dict) -> dict:
        from whiten_cli.stats import GaussianStats

        texts = [str(text) for text in batch["texts"][0]]
        error = str(batch["error"][0])
        vectors = self.vectors(texts) if not error else np.zeros((0, self.encoder.dim), dtype=np.float32)
        out = {"shard": batch["shard"], "source": batch["source"], "index": batch["index"], "error": batch["error"],
               "rows": np.array([len(texts)]), "truncated": np.array([self.encoder.truncated])}
        self.encoder.truncated = 0
        if self.stats:
            dim = vectors.shape[1]
            block = GaussianStats.of(vectors) if len(vectors) else GaussianStats.empty(dim, np.zeros(dim))
            out.update(shift=[block.shift.tobytes()], sum=[block.shifted_sum.tobytes()],
                       outer=[block.shifted_outer.tobytes()])
        else:
            out.update(ids=[[str(ident) for ident in batch["ids"][0]]], vectors=[vectors.tobytes()],
                       dim=np.array([vectors.shape[1]]))
        return out


def _pipeline(ray_workers: int, paths: list[Path], spec: EncoderSpec, options: dict, stats: bool):
    """The Ray dataset of encoded blocks, in input order."""
    import ray.data

    context = ray.data.DataContext.get_current()
    context.execution_options.preserve_order = True
    context.enable_progress_bars = False
    context.print_on_execution_start = False
    items = [{"shard": number, "path": str(path)} for number, path in enumerate(paths)]
    dataset = ray.data.from_items(items, override_num_blocks=max(1, len(items)))
    # Reading is light next to the model and must not wait for a CPU the encoders hold.
    dataset = dataset.flat_map(ShardReader(options), num_cpus=0)
    return dataset.map_batches(
        _actor_class(), batch_size=1, batch_format="numpy", fn_constructor_args=(spec, stats),
        compute=ray.data.ActorPoolStrategy(size=ray_workers), num_cpus=1,
    )  # Ray Data restarts a dead actor and retries its call (max_restarts = max_task_retries = -1)


def _actor_class():
    return EncodeActor  # looked up at call time, so a test can put a worker that kills itself in its place


def _raise_error(row: dict) -> None:
    if row["error"]:
        raise WhitenError(str(row["error"]))


def encode_blocks(paths: list[Path], spec: EncoderSpec, options: dict, workers: int,
                  progress: Callable[[int, int], None] | None = None,
                  truncated: Callable[[int], None] | None = None) -> Iterator[tuple[Block, np.ndarray]]:
    """``(block, pooled vectors)`` for every block of ``paths``, in order, encoded on the actor pool;
    ``truncated(n)`` hears of the texts a block had cut at max_length."""
    done = 0
    with _worker_errors():
        dataset = _pipeline(workers, paths, spec, options, stats=False)
        for row in dataset.iter_rows():
            _raise_error(row)
            vectors = np.frombuffer(row["vectors"], dtype=np.float32).reshape(int(row["rows"]), int(row["dim"]))
            ids = [str(ident) for ident in row["ids"]]
            block = Block(int(row["shard"]), str(row["source"]), int(row["index"]), [], ids)
            done += len(ids)
            if truncated and int(row["truncated"]):
                truncated(int(row["truncated"]))
            if progress:
                progress(done, done)
            yield block, vectors


def block_stats(paths: list[Path], spec: EncoderSpec, options: dict, workers: int, dim: int,
                progress: Callable[[int, int], None] | None = None):
    """The corpus's GaussianStats: each block's, computed on a worker, merged in input order."""
    from whiten_cli.stats import GaussianStats

    total = GaussianStats.empty(dim)
    truncated = 0
    with _worker_errors():
        for row in _pipeline(workers, paths, spec, options, stats=True).iter_rows():
            _raise_error(row)
            block = GaussianStats(int(row["rows"]), np.frombuffer(row["shift"], dtype=np.float64).copy(),
                                  np.frombuffer(row["sum"], dtype=np.float64).copy(),
                                  np.frombuffer(row["outer"], dtype=np.float64).reshape(dim, dim).copy())
            total = total.merge(block)
            truncated += int(row["truncated"])
            if progress:
                progress(total.count, total.count)
    return total, truncated


# --------------------------------------------------------------------------- index


def _add_to(serialized: np.ndarray, vectors: np.ndarray) -> np.ndarray:
    import faiss

    index = faiss.deserialize_index(serialized)
    index.add(vectors)
    return faiss.serialize_index(index)


def faiss_builder(workers: int, shard_rows: int = 65536):
    """A ``build_faiss`` for :meth:`VectorIndex.build` that trains on the driver (the same sample and
    seed as the local build), adds shards of ``shard_rows`` vectors in parallel Ray tasks and merges
    them in order with ``merge_from``: the same inverted lists as one ``add``. HNSW graphs do not
    merge: they are built on the driver."""
    import ray

    from whiten_cli.index_faiss import build_faiss

    def build(vectors: np.ndarray, plan, *, seed: int = 0):
        import faiss

        if plan.kind == "hnsw":
            return build_faiss(vectors, plan, seed=seed)
        serialized = faiss.serialize_index(build_faiss(vectors, plan, seed=seed, add=False))
        index = faiss.deserialize_index(serialized)  # the type the parts come back as: merge_from wants the same
        trained = ray.put(serialized)
        add = ray.remote(num_cpus=1, max_retries=RESTARTS)(_add_to)
        step = max(1, min(shard_rows, -(-len(vectors) // workers)))
        parts = [add.remote(trained, vectors[start:start + step]) for start in range(0, len(vectors), step)]
        for part in parts:
            shard = faiss.deserialize_index(ray.get(part))
            index.merge_from(shard, 0 if plan.nlist is None else index.ntotal)  # flat rows are numbered by place
        return index

    return build
