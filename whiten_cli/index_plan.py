"""Choosing a FAISS index: the kind, factory string and training sizes for a corpus and a budget."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, replace

from whiten_cli import checks
from whiten_cli.errors import ParameterError, WhitenError

KINDS = ("auto", "flat", "hnsw", "ivf", "ivfpq")
FLAT_LIMIT = 100_000  # auto: exact search below this many vectors
HNSW_M = 32  # links per vector (FAISS: 4 ≤ M ≤ 64)
DEFAULT_EF = 128  # efSearch when not tuned
TRAIN_PER_LIST = 64  # k-means training points per IVF list (FAISS: 30 to 256; at least 39)
MIN_PER_CENTROID = 39  # FAISS warns below this many training points per centroid
ID_BYTES = 8  # an IVF list stores a 64-bit id per vector


@dataclass(frozen=True)
class IndexPlan:
    """A FAISS index to build: its kind, factory string, the reason, and its training details."""

    kind: str
    factory: str
    reason: str
    nlist: int | None = None  # IVF lists
    pq_m: int | None = None  # ivfpq: bytes per vector (PQ sub-quantizers; the dimension for SQ8)
    pq_bits: int | None = None
    hnsw_m: int | None = None
    train_size: int | None = None  # vectors sampled for training (IVF kinds)

    @property
    def scalar(self) -> bool:
        """ivfpq codes are 8-bit scalar quantization (SQ8), not PQ."""
        return self.factory.endswith(",SQ8")

    @property
    def default_nprobe(self) -> int | None:
        """Lists visited per query when not tuned: nlist/8 (at least 1)."""
        return None if self.nlist is None else max(1, self.nlist // 8)

    @property
    def default_ef(self) -> int | None:
        return DEFAULT_EF if self.kind == "hnsw" else None


def ivf_lists(n: int) -> int:
    """Lists for an IVF index of ``n`` vectors: FAISS advises 4·√N to 16·√N, each trained on ≥ 39 points.

    The smallest power of two ≥ 4·√N (so at most 8·√N), cut to n/39 for small corpora.
    """
    target = 1 << max(0, math.ceil(math.log2(max(4 * math.sqrt(n), 1))))
    cap = max(1, n // MIN_PER_CENTROID)
    while target > cap:
        target //= 2
    return max(1, target)


def _train_size(n: int, nlist: int, pq_bits: int | None = None) -> int:
    wanted = TRAIN_PER_LIST * nlist
    if pq_bits is not None:
        wanted = max(wanted, MIN_PER_CENTROID * (1 << pq_bits))
    return min(n, wanted)


def _pq_bits(train_size: int) -> int:
    """8-bit codes when there are enough points to train 256 centroids, else fewer bits."""
    return max(1, min(8, int(math.log2(max(train_size, 1) / MIN_PER_CENTROID)))) if train_size >= 2 * MIN_PER_CENTROID else 0


def _divisors(d: int) -> list[int]:
    return [m for m in range(1, d + 1) if d % m == 0]


def default_pq_m(dim: int) -> int:
    """Bytes per vector for ``ivfpq`` without a budget: one per dimension (SQ8, 4× smaller than flat).

    On the STS-B vectors this keeps recall@10 ≥ 0.95 against flat; dim/2 (8× smaller, PQ) tops out
    near 0.93 on whitened vectors (README). ``--pq-m`` or ``--max-memory`` trade more recall for size.
    """
    return dim


def estimate_bytes(plan: IndexPlan, n: int, dim: int) -> int:
    """Approximate memory (and file size) of the index for ``n`` vectors of ``dim`` floats."""
    if plan.kind == "flat":
        return 4 * n * dim
    if plan.kind == "hnsw":
        return n * (4 * dim + 2 * 4 * (plan.hnsw_m or HNSW_M)) + n * 8  # + upper levels, roughly
    centroids = 4 * (plan.nlist or 1) * dim
    if plan.kind == "ivf":
        return n * (4 * dim + ID_BYTES) + centroids
    codebooks = 2 * 4 * dim if plan.scalar else 4 * (1 << (plan.pq_bits or 8)) * dim  # SQ8: min and range
    code = math.ceil((plan.pq_m or 1) * (plan.pq_bits or 8) / 8)
    return n * (code + ID_BYTES) + centroids + codebooks


def _human(size: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(size) < 1024 or unit == "TiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError


def parse_size(text: str) -> int:
    """Bytes from ``"500M"``, ``"2GiB"``, ``"1.5g"``, ``"1000000"`` (K, M, G, T count in 1024s)."""
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:e[0-9]+)?)\s*([kmgt]?)(i?b)?\s*", text, re.IGNORECASE)
    if not match:
        raise ParameterError("max_memory", f"{{name}} {text!r}: expected a size such as 500M, 2G or a number of bytes")
    value = float(match.group(1)) * 1024 ** " kmgt".index(match.group(2).lower() or " ")
    if value < 1:
        raise ParameterError("max_memory", f"{{name}} {text!r}: must be positive")
    return int(value)


def choose_index(n: int, dim: int, max_memory: int | None = None) -> tuple[str, str]:
    """The FAISS factory string ``auto`` picks for ``n`` vectors of ``dim``, and why.

    Follows FAISS's guidelines: exact ``Flat`` when the corpus is small (< 100,000 vectors);
    above that IVF with about 4·√N lists (``IVF<nlist>,Flat``); compressed codes when uncompressed
    vectors would not fit ``max_memory`` bytes: ``IVF<nlist>,SQ8`` (a byte per dimension) if that
    fits, else product quantization (``IVF<nlist>,PQ<m>``).
    """
    plan = plan_index("auto", n, dim, max_memory=max_memory)
    return plan.factory, plan.reason


def plan_index(
    kind: str,
    n: int,
    dim: int,
    *,
    max_memory: int | None = None,
    nlist: int | None = None,
    pq_m: int | None = None,
    hnsw_m: int | None = None,
) -> IndexPlan:
    """The index to build for ``kind`` (one of :data:`KINDS`), ``n`` vectors and ``dim``."""
    if kind not in KINDS:
        raise WhitenError(f"unknown index kind {kind!r} (choose from {', '.join(KINDS)})")
    if n < 1:
        raise WhitenError("empty corpus: nothing to index")
    for name, value in (("max_memory", max_memory), ("nlist", nlist), ("pq_m", pq_m), ("hnsw_m", hnsw_m)):
        if value is not None:
            checks.integer(value, name)  # nlist=2.5 was "too few vectors to train 2.5 lists"
    if nlist is not None and nlist < 1:
        raise ParameterError("nlist", f"must be positive, got {nlist}")
    if pq_m is not None and (pq_m < 1 or dim % pq_m):
        raise ParameterError("pq_m", f"must divide the vector dimension {dim}, got {pq_m}")
    if hnsw_m is not None and not 2 <= hnsw_m <= 256:
        raise ParameterError("hnsw_m", f"must be between 2 and 256, got {hnsw_m}")
    if kind == "auto":
        return _auto(n, dim, max_memory)
    if kind == "flat":
        return IndexPlan("flat", "Flat", "flat: exact search, as asked")
    if kind == "hnsw":
        m = hnsw_m or HNSW_M
        return IndexPlan("hnsw", f"HNSW{m}", f"hnsw: graph with {m} links per vector, as asked", hnsw_m=m)
    lists = nlist or ivf_lists(n)
    if lists * MIN_PER_CENTROID > n:
        raise ParameterError("nlist", f"{kind}: {n} vectors are too few to train {lists} lists (FAISS wants ≥ "
                             f"{MIN_PER_CENTROID} per list; lower {{name}}, or use the flat kind)")
    if kind == "ivf":
        return IndexPlan("ivf", f"IVF{lists},Flat", f"ivf: {lists} lists, as asked", nlist=lists,
                         train_size=_train_size(n, lists))
    m = pq_m or default_pq_m(dim)
    codes = f"8-bit scalar quantization ({m} bytes per vector)" if m == dim else f"PQ with {m} sub-quantizers"
    return _ivfpq(n, dim, lists, m, f"ivfpq: {lists} lists, {codes}, as asked")


def _ivfpq(n: int, dim: int, lists: int, m: int, reason: str) -> IndexPlan:
    if m == dim:  # one byte per dimension: scalar quantization, no codebooks to train
        return IndexPlan("ivfpq", f"IVF{lists},SQ8", reason, nlist=lists, pq_m=m, pq_bits=8,
                         train_size=_train_size(n, lists))
    bits = _pq_bits(_train_size(n, lists, 8))
    if bits < 4:
        raise WhitenError(f"ivfpq: {n} vectors are too few to train product quantization (need at least "
                          f"{MIN_PER_CENTROID * 16}); use the flat or ivf kind")
    suffix = "" if bits == 8 else f"x{bits}"
    return IndexPlan("ivfpq", f"IVF{lists},PQ{m}{suffix}", reason, nlist=lists, pq_m=m, pq_bits=bits,
                     train_size=_train_size(n, lists, bits))


def _auto(n: int, dim: int, max_memory: int | None) -> IndexPlan:
    size = f"{n:,} vectors of {dim} dimensions"
    flat = IndexPlan("flat", "Flat", "")
    budget = f", within the {_human(max_memory)} memory budget" if max_memory is not None else ""
    fits = max_memory is None or estimate_bytes(flat, n, dim) <= max_memory
    if n < FLAT_LIMIT and fits:
        why = (f"flat: {size} is fewer than {FLAT_LIMIT:,}, so exact search is fast enough "
               f"({_human(estimate_bytes(flat, n, dim))}{budget})")
        return IndexPlan("flat", "Flat", why)
    lists = ivf_lists(n)
    cells = (f"{lists} lists (FAISS: 4·√N to 16·√N = {4 * math.sqrt(n):,.0f} to {16 * math.sqrt(n):,.0f}, "
             f"cut to N/{MIN_PER_CENTROID} for training)" if lists < 4 * math.sqrt(n) else
             f"{lists} lists (FAISS: 4·√N to 16·√N = {4 * math.sqrt(n):,.0f} to {16 * math.sqrt(n):,.0f})")
    ivf = IndexPlan("ivf", f"IVF{lists},Flat", "", nlist=lists, train_size=_train_size(n, lists))
    ivf_bytes = estimate_bytes(ivf, n, dim)
    if max_memory is None or ivf_bytes <= max_memory:
        why = (f"ivf: {size} is at least {FLAT_LIMIT:,}, so inverted lists beat exact search; {cells}, "
               f"trained on {ivf.train_size:,} sampled vectors ({_human(ivf_bytes)}{budget})")
        return replace(ivf, reason=why)
    if n < MIN_PER_CENTROID * 16:
        raise ParameterError("max_memory", f"{{name}} {_human(max_memory)} is less than the {_human(ivf_bytes)} that "
                             f"{n:,} uncompressed vectors need, and too few vectors to train product quantization")
    for m in sorted(_divisors(dim), reverse=True):
        plan = _ivfpq(n, dim, lists, m, "")
        need = estimate_bytes(plan, n, dim)
        if need <= max_memory:
            why = (f"ivfpq: uncompressed vectors need {_human(ivf_bytes)}, more than the "
                   f"{_human(max_memory)} memory budget; {cells} with {m}-byte {'SQ8' if plan.scalar else 'PQ'} codes instead of {4 * dim} bytes "
                   f"({_human(need)})")
            return replace(plan, reason=why)
    smallest = estimate_bytes(_ivfpq(n, dim, lists, 1, ""), n, dim)
    raise ParameterError("max_memory", f"{{name}} {_human(max_memory)} is too small for {n:,} vectors: the "
                         f"smallest index (IVF{lists},PQ1) needs {_human(smallest)}")
