"""STS benchmark loaders: STS-B, SICK, STS12–16, Chinese ``.data`` sets and generic pair files.

The data is read where it lies (see :func:`sts_dir`), never copied. Formats follow the data
folder's README: STS-B is split on tabs with no CSV quoting (its sentences contain ``"``), SICK
has a ``pair_ID`` header, Chinese sets are ``s1 \\t s2 \\t label`` with no header. STS12–16 pair
``STS.input.X.txt`` with ``STS.gs.X.txt`` (SentEval, and the official 2012–2015 releases) or
``STS2016.input.X.txt`` with ``STS2016.gs.X.txt`` (the official 2016 release) line by line: the
input's first two tab-separated columns are the sentences (2016 adds two source columns, ignored),
and an empty gold line marks a pair that was not scored.
"""

from __future__ import annotations

import csv
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from whiten_cli.errors import InputError, WhitenError
from whiten_cli.readers import format_suffix, iter_json_objects, iter_lines

ENV_VAR = "WHITEN_STS_DIR"

Lines = list[tuple[int, str]]

# STS12–16 input files: "STS.input.X.txt", or "STS2016.input.X.txt" in the official 2016 release.
STS_INPUT = re.compile(r"(?P<prefix>STS(?:\d{4})?)\.input\.(?P<subset>.+)\.txt")

# name -> (folder under sts_dir(), file in it; None for a SentEval folder with one subset per file)
NAMED: dict[str, tuple[str, str | None]] = {
    "stsb": ("STSBenchmark", "sts-test.csv"),
    "stsb-dev": ("STSBenchmark", "sts-dev.csv"),
    "stsb-train": ("STSBenchmark", "sts-train.csv"),
    "sick": ("SICK", "SICK_test_annotated.txt"),
    "sick-train": ("SICK", "SICK_train.txt"),
    "sick-trial": ("SICK", "SICK_trial.txt"),
    **{f"sts{year}": (f"STS{year}", None) for year in range(12, 17)},
    "stsb-zh": ("STS-B-zh", "STS-B.test.data"),
    "stsb-zh-train": ("STS-B-zh", "STS-B.train.data"),
    "stsb-zh-valid": ("STS-B-zh", "STS-B.valid.data"),
    **{name.lower(): (name, f"{name}.test.data") for name in ("ATEC", "BQ", "LCQMC", "PAWSX")},
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


def sts_dir() -> Path:
    """The STS data folder: ``$WHITEN_STS_DIR``, else ``../shared/data/sts`` beside the working
    folder or beside the repository; the first candidate when none exists, so errors can name it."""
    if os.environ.get(ENV_VAR):
        return Path(os.environ[ENV_VAR]).expanduser()
    repo_root = Path(__file__).resolve().parent.parent
    candidates = [(base / "../shared/data/sts").resolve() for base in (Path.cwd(), repo_root)]
    return next((path for path in candidates if path.is_dir()), candidates[0])


def load_dataset(spec: str) -> Dataset:
    """Load a dataset by name (see :data:`NAMED`, case-insensitive) or by file or folder path.

    A bare known name wins over a same-named path in the working folder; write ``./stsb`` for the path.
    """
    key = spec.strip().lower()
    if key in NAMED and not any(sep in spec for sep in ("/", os.sep)):
        return _load_named(key)
    path = Path(spec).expanduser()
    if path.is_dir():
        return Dataset(path.name, _load_folder(path))
    if path.exists():
        return Dataset(_subset_name(path), [_load_file(path, _subset_name(path))])
    raise WhitenError(f"{spec}: no such file or folder, nor a dataset name ({', '.join(NAMED)})")


def _load_named(key: str) -> Dataset:
    folder_name, file_name = NAMED[key]
    root = sts_dir()
    target = root / folder_name / file_name if file_name else root / folder_name
    if not target.exists():
        raise WhitenError(
            f"{target}: not found (STS data folder {root}; set {ENV_VAR} to the folder holding {folder_name}/)"
        )
    if file_name is None:
        return Dataset(key, _load_senteval_folder(target))
    return Dataset(key, [_load_file(target, key)])


def _load_folder(folder: Path) -> list[PairSet]:
    if (folder / "sts-test.csv").is_file():
        return [_load_file(folder / "sts-test.csv", "sts-test")]
    if (folder / "SICK_test_annotated.txt").is_file():
        return [_load_file(folder / "SICK_test_annotated.txt", "SICK_test_annotated")]
    return _load_senteval_folder(folder)


def _load_senteval_folder(folder: Path) -> list[PairSet]:
    inputs = sorted(path for path in folder.glob("STS*.input.*.txt") if STS_INPUT.fullmatch(path.name))
    if not inputs:
        raise WhitenError(
            f"{folder}: no STS data found (expected STS.input.*.txt, STS2016.input.*.txt, sts-test.csv "
            "or SICK_test_annotated.txt)"
        )
    names = [_subset_name(path) for path in inputs]
    for name in names:
        if names.count(name) > 1:
            twins = ", ".join(path.name for path in inputs if _subset_name(path) == name)
            raise WhitenError(f"{folder}: subset {name} is there twice ({twins}); keep one")
    return [_load_senteval(path, name) for path, name in zip(inputs, names)]


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
    lines = list(iter_lines(path))
    if not lines:
        raise InputError(path, "empty file, no sentence pairs", 1)
    first = lines[0][1]
    suffix = format_suffix(path)
    if (path.name.startswith("sts-") and suffix == ".csv") or _looks_like_stsb(first):
        rows = _split_rows(path, lines, 7)
        return _pair_set(path, name, lines, [(number, row[5], row[6], row[4]) for number, row in rows])
    if first.startswith("pair_ID"):
        return _load_header_table(path, name, lines, "\t", "sentence_A", "sentence_B", ("relatedness_score",))
    if suffix == ".data":
        rows = _split_rows(path, lines, 3)
        return _pair_set(path, name, lines, [(number, row[0], row[1], row[2]) for number, row in rows])
    if suffix in (".jsonl", ".ndjson"):
        return _load_jsonl(path, name, lines)
    delimiter = "," if suffix == ".csv" else "\t"
    return _load_header_table(path, name, lines, delimiter, "sentence1", "sentence2", ("score", "label"))


def _looks_like_stsb(line: str) -> bool:
    columns = line.split("\t")
    return 7 <= len(columns) <= 9 and _is_number(columns[4])


def _is_number(text: str) -> bool:
    try:
        return math.isfinite(float(text))
    except ValueError:
        return False


def _score(path: Path, value: object, line: int) -> float:
    if isinstance(value, (str, int, float)) and not isinstance(value, bool) and _is_number(str(value)):
        return float(value)
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


def _load_header_table(
    path: Path, name: str, lines: Lines, delimiter: str, first: str, second: str, score_names: tuple[str, ...]
) -> PairSet:
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
    score_name = next((column for column in score_names if column in header), None)
    if first not in header or second not in header or score_name is None:
        raise InputError(
            path,
            f"unknown format: expected STS-B, SICK, SentEval, .data, or a header with columns "
            f"{first}, {second}, {' or '.join(score_names)} (found: {', '.join(header)})",
            rows[0][0],
        )
    wanted = [header.index(first), header.index(second), header.index(score_name)]
    pairs = []
    for number, row in rows[1:]:
        if not row or not "".join(row).strip():
            continue
        if len(row) <= max(wanted):
            raise InputError(path, f"expected at least {max(wanted) + 1} columns, found {len(row)}", number)
        pairs.append((number, *(row[index] for index in wanted)))
    return _pair_set(path, name, lines, pairs)


def _load_jsonl(path: Path, name: str, lines: Lines) -> PairSet:
    pairs = []
    for number, row in iter_json_objects(path, lines):
        for key in ("sentence1", "sentence2"):
            if key not in row:
                raise InputError(path, f"no field {key!r}", number)
        score_key = next((key for key in ("score", "label") if key in row), None)
        if score_key is None:
            raise InputError(path, "no field 'score' (nor 'label')", number)
        if not isinstance(row["sentence1"], str) or not isinstance(row["sentence2"], str):
            raise InputError(path, "sentence1 and sentence2 must be strings", number)
        pairs.append((number, row["sentence1"], row["sentence2"], row[score_key]))
    return _pair_set(path, name, lines, pairs)


def _load_senteval(input_path: Path, name: str) -> PairSet:
    """Pair ``STS.input.X.txt`` with ``STS.gs.X.txt`` (``STS2016.*`` alike) line by line; an empty
    gold line means unscored, input columns after the two sentences are ignored."""
    match = STS_INPUT.fullmatch(input_path.name)
    gold_path = input_path.with_name(f"{match['prefix']}.gs.{match['subset']}.txt")
    inputs = list(iter_lines(input_path))
    if not inputs:
        raise InputError(input_path, "empty file, no sentence pairs", 1)
    golds = list(iter_lines(gold_path))
    if len(golds) != len(inputs):
        raise InputError(
            gold_path,
            f"{len(golds)} gold lines for the {len(inputs)} lines of {input_path.name} "
            "(one per input line, left empty when the pair is not scored)",
            min(len(golds), len(inputs)) + 1,
        )
    pairs = []
    for (number, line), (_, gold) in zip(inputs, golds):
        row = line.split("\t")
        if len(row) < 2:
            raise InputError(input_path, "expected 2 tab-separated sentences", number)
        if gold.strip():
            pairs.append((number, row[0], row[1], _score(gold_path, gold.strip(), number)))
    if not pairs:
        raise InputError(gold_path, "no scored pairs (every gold line is empty)", max(len(golds), 1))
    return _pair_set(input_path, name, inputs, pairs)
