"""STS benchmark loaders: STS-B, SICK, STS12–16, Chinese ``.data`` sets and generic pair files.

The data is read where it lies (see :func:`sts_dir`), never copied. Formats follow the data
folder's README: STS-B is split on tabs with no CSV quoting (its sentences contain ``"``), SICK
has a ``pair_ID`` header, Chinese sets are ``s1 \\t s2 \\t label`` with no header. STS12–16 pair
``STS.input.X.txt`` with ``STS.gs.X.txt`` (SentEval, and the official 2012–2015 releases) or
``STS2016.input.X.txt`` with ``STS2016.gs.X.txt`` (the official 2016 release) line by line: the
input's first two tab-separated columns are the sentences (2016 adds two source columns, ignored),
and an empty gold line marks a pair that was not scored. Tables with a header (GLUE's STS-B tsv,
Hugging Face and MTEB csv/jsonl/parquet) are read by their column names. Any file may be gzip-compressed.
"""

from __future__ import annotations

import csv
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from whiten_cli.errors import InputError, ParameterError, WhitenError, one_line
from whiten_cli.readers import format_suffix, iter_json_objects, iter_lines

ENV_VAR = "WHITEN_STS_DIR"

Lines = list[tuple[int, str]]

# STS12–16 input files: "STS.input.X.txt", or "STS2016.input.X.txt" in the official 2016 release.
STS_INPUT = re.compile(r"(?P<prefix>STS(?:\d{4})?)\.input\.(?P<subset>.+)\.txt(?P<gz>\.gz)?")

# Column names of pair tables, in order of preference: the two sentences (STS-B, GLUE, MTEB; SICK),
# then the gold score (``label`` last: Hugging Face's SICK has an entailment label beside its score).
SENTENCE_COLUMNS = (("sentence1", "sentence2"), ("sentence_A", "sentence_B"))
SCORE_COLUMNS = ("score", "similarity_score", "relatedness_score", "label")


@dataclass(frozen=True)
class Named:
    """Where a named dataset may lie: one of ``folders`` (in :func:`sts_dir` or its ``STS/``, as
    SentEval's ``data/downstream`` has them; names in any case), holding one of ``files`` (or that
    file gzipped); no files for an STS12–16 folder (the folder itself, or one folder inside it)."""

    folders: tuple[str, ...]
    files: tuple[str, ...] = ()


def _sts_year(year: int) -> Named:
    # STS13/, SentEval's STS13-en-test/, and the names of the official zips (STS2013-en-test.zip).
    return Named((f"STS{year}", f"STS{year}-en-test", f"STS20{year}", f"STS20{year}-en-test"))


_STSB = ("STSBenchmark", "STS-B")  # the official tarball (stsbenchmark/), GLUE (STS-B/, tsv with a header)
_STSB_ZH = ("STS-B-zh", "STS-B")  # CoSENT's layout keeps the Chinese STS-B in STS-B/ beside ATEC/ ...

NAMED: dict[str, Named] = {
    "stsb": Named(_STSB, ("sts-test.csv",)),  # GLUE's test.tsv has no scores
    "stsb-dev": Named(_STSB, ("sts-dev.csv", "dev.tsv")),
    "stsb-train": Named(_STSB, ("sts-train.csv", "train.tsv")),
    "sick": Named(("SICK",), ("SICK_test_annotated.txt",)),
    "sick-train": Named(("SICK",), ("SICK_train.txt",)),
    "sick-trial": Named(("SICK",), ("SICK_trial.txt",)),
    **{f"sts{year}": _sts_year(year) for year in range(12, 17)},
    "stsb-zh": Named(_STSB_ZH, ("STS-B.test.data",)),
    "stsb-zh-train": Named(_STSB_ZH, ("STS-B.train.data",)),
    "stsb-zh-valid": Named(_STSB_ZH, ("STS-B.valid.data",)),
    **{name.lower(): Named((name,), (f"{name}.test.data",)) for name in ("ATEC", "BQ", "LCQMC", "PAWSX")},
}


# eq=False: the generated __eq__ would compare numpy arrays, which has no single truth value.
@dataclass(frozen=True, eq=False)
class PairSet:
    """Sentence pairs with their gold similarity scores."""

    name: str
    sentences1: list[str]
    sentences2: list[str]
    scores: np.ndarray
    path: Path | None = None  # the file the pairs were read from, for error messages

    def __len__(self) -> int:
        return len(self.scores)


@dataclass(frozen=True)
class Dataset:
    """A benchmark: one subset, or several (STS12–16) scored separately."""

    name: str
    subsets: list[PairSet]

    @property
    def sentences(self) -> list[str]:
        """Every sentence, subset by subset: a subset's sentences1, then its sentences2."""
        return [text for subset in self.subsets for text in (*subset.sentences1, *subset.sentences2)]

    @property
    def pairs(self) -> int:
        return sum(len(subset) for subset in self.subsets)

    def split(self, embeddings: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
        """The ``(u, v)`` rows of each subset, from embeddings of :attr:`sentences` in their order."""
        if len(embeddings) != 2 * self.pairs:
            raise WhitenError(f"{len(embeddings)} embeddings for the {2 * self.pairs} sentences of {self.name}")
        halves, start = [], 0
        for subset in self.subsets:
            n = len(subset)
            halves.append((embeddings[start : start + n], embeddings[start + n : start + 2 * n]))
            start += 2 * n
        return halves


class NotPairsError(InputError):
    """A file in no pairs layout at all (as against a pairs file with a bad line): callers that also
    take plain texts read it as texts instead."""


def corpus_sentences(spec: str, field: str | None = None) -> list[str]:
    """Texts to fit or compare on: the distinct sentences of a dataset name, folder or pairs file;
    any other file, or any file with a ``field`` named, read as ``fit`` reads it
    (:func:`~whiten_cli.readers.read_texts`, empty lines skipped)."""
    from whiten_cli.readers import read_texts

    path = Path(spec).expanduser()
    a_file = path.is_file() and spec.strip().lower() not in NAMED
    if a_file and field is not None:
        return read_texts(path, field=field, skip_empty=True)
    try:
        return list(dict.fromkeys(load_dataset(spec).sentences))
    except NotPairsError:
        if not a_file:  # a file inside a dataset folder
            raise
        return read_texts(path, skip_empty=True)


def sts_dir() -> Path:
    """The STS data folder: ``$WHITEN_STS_DIR``, else ``../shared/data/sts`` beside the working
    folder or beside the repository; the first candidate when none exists, so errors can name it."""
    if os.environ.get(ENV_VAR):
        return Path(os.environ[ENV_VAR]).expanduser()
    repo_root = Path(__file__).resolve().parent.parent
    candidates = [(base / "../shared/data/sts").resolve() for base in (Path.cwd(), repo_root)]
    return next((path for path in candidates if path.is_dir()), candidates[0])


def load_dataset(spec: str | os.PathLike[str]) -> Dataset:
    """Load a dataset by name (see :data:`NAMED`, case-insensitive) or by file or folder path.

    A bare known name wins over a same-named path in the working folder; write ``./stsb`` for the path.
    """
    if isinstance(spec, os.PathLike):
        spec = os.fspath(spec)
    if not isinstance(spec, str):
        raise ParameterError("spec", f"must be a dataset name or a path, got {spec!r}")
    key = spec.strip().lower()
    if key in NAMED and not any(sep in spec for sep in ("/", os.sep)):
        return _load_named(key)
    path = Path(spec).expanduser()
    if path.is_dir():
        return Dataset(path.name, _load_folder(path))
    if path.exists():
        return Dataset(_subset_name(path), [_load_file(path, _subset_name(path))])
    raise WhitenError(f"{spec}: no such file or folder, nor a dataset name ({', '.join(NAMED)})")


def _child(folder: Path, name: str) -> Path | None:
    """``folder/name`` if it exists, else the entry of ``folder`` whose name matches in another case."""
    exact = folder / name
    if exact.exists():
        return exact
    if not folder.is_dir():
        return None
    return next((entry for entry in sorted(folder.iterdir()) if entry.name.lower() == name.lower()), None)


def _file(folder: Path, name: str) -> Path | None:
    """``folder/name``, or ``folder/name.gz``, in any case."""
    return _child(folder, name) or _child(folder, name + ".gz")


def _load_named(key: str) -> Dataset:
    named = NAMED[key]
    root = sts_dir()
    bases = [root] + [base for base in [_child(root, "STS")] if base is not None and base.is_dir()]
    for base in bases:
        for folder in filter(None, (_child(base, name) for name in named.folders)):
            if not named.files and folder.is_dir():
                return Dataset(key, _load_senteval_folder(folder))
            target = next(filter(None, (_file(folder, name) for name in named.files)), None)
            if target is not None:
                return Dataset(key, [_load_file(target, key)])
    wanted = [f"{folder}/{name}" for folder in named.folders for name in named.files] or [
        f"{folder}/" for folder in named.folders]
    holding = "" if named.files else ", holding STS.input.*.txt with STS.gs.*.txt (or the official zip's folder)"
    raise WhitenError(
        f"{key}: not found in the STS data folder {root} (looked there and in its STS/ folder for "
        f"{' or '.join(wanted)}{holding}; names in any case, .gz too); set {ENV_VAR} to the folder that holds it"
    )


def _load_folder(folder: Path) -> list[PairSet]:
    for name in ("sts-test.csv", "SICK_test_annotated.txt"):
        target = _file(folder, name)
        if target is not None:
            return [_load_file(target, name.partition(".")[0])]
    return _load_senteval_folder(folder)


def _sts_inputs(folder: Path) -> list[Path]:
    return sorted(path for path in folder.glob("STS*.input.*") if STS_INPUT.fullmatch(path.name))


def _load_senteval_folder(folder: Path) -> list[PairSet]:
    """The subsets of an STS12–16 folder, or of the one folder inside it that holds them (an
    official zip unpacked into ``STS13/`` gives ``STS13/test-gs/``)."""
    inputs = _sts_inputs(folder)
    if not inputs:
        inner = [entry for entry in sorted(folder.iterdir()) if entry.is_dir() and _sts_inputs(entry)]
        if len(inner) > 1:
            raise WhitenError(f"{folder}: STS data in several folders ({', '.join(e.name for e in inner)}); name one")
        if not inner:
            raise WhitenError(
                f"{folder}: no STS data found (expected STS.input.*.txt, STS2016.input.*.txt, sts-test.csv "
                "or SICK_test_annotated.txt)"
            )
        inputs = _sts_inputs(inner[0])
    names = [_subset_name(path) for path in inputs]
    for name in names:
        if names.count(name) > 1:
            twins = ", ".join(path.name for path in inputs if _subset_name(path) == name)
            raise WhitenError(f"{folder}: subset {name} is there twice ({twins}); keep one")
    # SentEval's order (FNWN, headlines, OnWN): case does not sort first
    ordered = sorted(zip(names, inputs), key=lambda item: (item[0].lower(), item[0]))
    return [_load_senteval(path, name) for name, path in ordered]


def _subset_name(path: Path) -> str:
    """``MSRpar`` for ``STS.input.MSRpar.txt`` (or ``STS2016.input.MSRpar.txt``), else the file name
    without its suffix (and a ``.gz`` after it)."""
    match = STS_INPUT.fullmatch(path.name)
    if match:
        return match["subset"]
    return Path(path.name[:-3] if path.name.lower().endswith(".gz") else path.name).stem


def _load_file(path: Path, name: str) -> PairSet:
    """Parse ``path``, its format told by its name or, failing that, by its first line."""
    if STS_INPUT.fullmatch(path.name):
        return _load_senteval(path, name)
    if path.suffix.lower() == ".parquet":
        return _load_parquet(path, name)
    lines = list(iter_lines(path))
    if not lines:
        raise InputError(path, "empty file, no sentence pairs", 1)
    suffix = format_suffix(path)
    if suffix in (".jsonl", ".ndjson"):
        return _load_jsonl(path, name, lines)
    delimiter = "," if suffix == ".csv" else "\t"
    first = lines[0][1]
    header = next(csv.reader([first])) if delimiter == "," else first.split(delimiter)
    if _sentence_columns([column.strip() for column in header]) is not None:
        return _load_header_table(path, name, lines, delimiter)
    if suffix == ".data" or (delimiter == "\t" and len(header) == 3 and _is_float(header[2])):
        # sentence1 <tab> sentence2 <tab> score, no header: the Chinese sets' .data, and what users write
        rows = _split_rows(path, lines, 3)
        return _pair_set(path, name, lines, [(number, row[0], row[1], row[2]) for number, row in rows])
    if (path.name.lower().startswith("sts-") and suffix == ".csv") or _looks_like_stsb(first):
        rows = _split_rows(path, lines, 7)
        return _pair_set(path, name, lines, [(number, row[5], row[6], row[4]) for number, row in rows])
    return _load_header_table(path, name, lines, delimiter)


def _sentence_columns(names) -> tuple[str, str] | None:
    """The first pair of :data:`SENTENCE_COLUMNS` that ``names`` (a header, a JSON object) holds."""
    return next((pair for pair in SENTENCE_COLUMNS if pair[0] in names and pair[1] in names), None)


def _looks_like_stsb(line: str) -> bool:
    columns = line.split("\t")
    return 7 <= len(columns) <= 9 and _is_float(columns[4])


def _is_float(text: str) -> bool:
    """Parses as a float, NaN and infinity included (a layout is recognised by it; :func:`_score` then
    refuses the non-finite ones by line)."""
    try:
        float(text)
        return True
    except ValueError:
        return False


def _is_number(text: str) -> bool:
    return _is_float(text) and math.isfinite(float(text))


def _score(path: Path, value: object, line: int) -> float:
    if isinstance(value, (str, int, float)) and not isinstance(value, bool):
        if _is_number(str(value)):
            return float(value)
        if _is_float(str(value)):
            raise InputError(path, f"score {value!r} is not a finite number", line)
    raise InputError(path, f"score {value!r} is not a number", line)


def _split_rows(path: Path, lines: Lines, columns: int) -> list[tuple[int, list[str]]]:
    """Tab-split non-blank lines (no quoting), each with at least ``columns`` columns."""
    rows = []
    for number, line in lines:
        if not line.strip():
            continue
        row = line.split("\t")
        if len(row) < columns:
            raise InputError(path, f"expected at least {columns} tab-separated columns, found {len(row)}", number)
        rows.append((number, row))
    return rows


def _pair_set(path: Path, name: str, lines: Lines, rows: list[tuple[int, str, str, object]]) -> PairSet:
    """Build a PairSet from ``(line, sentence1, sentence2, raw score)`` rows, checking each score."""
    if not rows:
        raise InputError(path, "no sentence pairs", lines[-1][0] if lines else 1)
    scores = np.array([_score(path, raw, number) for number, _, _, raw in rows], dtype=np.float64)
    return PairSet(name, [row[1] for row in rows], [row[2] for row in rows], scores, path)


def _load_header_table(path: Path, name: str, lines: Lines, delimiter: str) -> PairSet:
    """A table with a header naming its columns; ``,`` uses CSV quoting, ``\\t`` none."""
    if delimiter == ",":
        reader = csv.reader((line for _, line in lines), strict=True)
        try:
            rows = [(reader.line_num, row) for row in reader]
        except csv.Error as exc:
            raise InputError(path, f"bad CSV ({exc})", reader.line_num) from None
    else:
        rows = [(number, line.split(delimiter)) for number, line in lines]
    header = [column.strip() for column in rows[0][1]]
    sentences = _sentence_columns(header)
    score_name = next((column for column in SCORE_COLUMNS if column in header), None)
    if sentences is None:
        raise NotPairsError(
            path,
            f"unknown format: expected STS-B, SICK, SentEval, .data, or a header with columns "
            f"{' and '.join(SENTENCE_COLUMNS[0])} (or {' and '.join(SENTENCE_COLUMNS[1])}) and a score "
            f"(found: {', '.join(header)})",
            rows[0][0],
        )
    if score_name is None:
        raise InputError(path, f"no score column ({', '.join(SCORE_COLUMNS)}): an unscored test split? "
                               f"(found: {', '.join(header)})", rows[0][0])
    wanted = [header.index(sentences[0]), header.index(sentences[1]), header.index(score_name)]
    pairs = []
    for number, row in rows[1:]:
        if not row or not "".join(row).strip():
            continue
        if len(row) <= max(wanted):
            raise InputError(path, f"expected at least {max(wanted) + 1} columns, found {len(row)}", number)
        pairs.append((number, *(row[index] for index in wanted)))
    return _pair_set(path, name, lines, pairs)


def _load_jsonl(path: Path, name: str, lines: Lines) -> PairSet:
    return _load_objects(path, name, iter_json_objects(path, lines), lines)


def _load_parquet(path: Path, name: str) -> PairSet:
    """A parquet table (Hugging Face's and MTEB's files on the hub); errors name the row."""
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise WhitenError(f"{path}: parquet pair files need the ray extra (pyarrow): pip install 'whiten[ray]'") from None
    try:
        rows = pq.read_table(path).to_pylist()
    except Exception as exc:  # pyarrow raises several types for a damaged file
        raise InputError(path, f"not a readable parquet file ({one_line(str(exc))})") from None
    if not rows:
        raise InputError(path, "no sentence pairs")
    return _load_objects(path, name, enumerate(rows, start=1), [])


def _load_objects(path: Path, name: str, rows, lines: Lines) -> PairSet:
    """Pairs from ``(line or row number, object)``: JSON lines, parquet rows."""
    pairs = []
    for number, row in rows:
        sentences = _sentence_columns(row)
        if sentences is None:
            error = NotPairsError if not pairs else InputError  # a later row without them: a broken pairs file
            raise error(path, "no fields 'sentence1' and 'sentence2' (nor 'sentence_A' and 'sentence_B')", number)
        score_key = next((key for key in SCORE_COLUMNS if key in row), None)
        if score_key is None:
            raise InputError(path, f"no score field ({', '.join(SCORE_COLUMNS)})", number)
        first, second = row[sentences[0]], row[sentences[1]]
        if not isinstance(first, str) or not isinstance(second, str):
            raise InputError(path, f"{sentences[0]} and {sentences[1]} must be strings", number)
        pairs.append((number, first, second, row[score_key]))
    return _pair_set(path, name, lines, pairs)


def _load_senteval(input_path: Path, name: str) -> PairSet:
    """Pair ``STS.input.X.txt`` with ``STS.gs.X.txt`` (``STS2016.*`` alike) line by line; an empty
    gold line means unscored, input columns after the two sentences are ignored.

    Tolerated beside that: a gold header line (a first line that is not a number, in a gold file
    one line longer than the input), and empty lines after the last pair in either file.
    """
    match = STS_INPUT.fullmatch(input_path.name)
    gold_names = [f"{match['prefix']}.gs.{match['subset']}.txt{gz}" for gz in dict.fromkeys((match["gz"] or "", "", ".gz"))]
    gold_path = next((path for path in map(input_path.with_name, gold_names) if path.exists()),
                     input_path.with_name(gold_names[0]))
    inputs = list(iter_lines(input_path))
    while inputs and not inputs[-1][1].strip():
        inputs.pop()
    if not inputs:
        raise InputError(input_path, "empty file, no sentence pairs", 1)
    golds = list(iter_lines(gold_path))
    if len(golds) > len(inputs) and golds[0][1].strip() and not _is_number(golds[0][1].strip()):
        golds = golds[1:]  # a header
    if len(golds) > len(inputs) and not any(gold.strip() for _, gold in golds[len(inputs):]):
        golds = golds[: len(inputs)]
    if len(golds) != len(inputs):
        raise InputError(
            gold_path,
            f"{len(golds)} gold lines for the {len(inputs)} lines of {input_path.name} "
            "(one per input line, left empty when the pair is not scored)",
            golds[len(inputs)][0] if len(golds) > len(inputs) else (golds[-1][0] + 1 if golds else 1),
        )
    pairs = []
    for (number, line), (gold_number, gold) in zip(inputs, golds):
        row = line.split("\t")
        if len(row) < 2:
            raise InputError(input_path, "expected 2 tab-separated sentences", number)
        if gold.strip():
            pairs.append((number, row[0], row[1], _score(gold_path, gold.strip(), gold_number)))
    if not pairs:
        raise InputError(gold_path, "no scored pairs (every gold line is empty)", golds[-1][0])
    return _pair_set(input_path, name, inputs, pairs)
