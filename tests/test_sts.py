from pathlib import Path

import numpy as np
import pytest

from whiten_cli.errors import InputError, WhitenError
from whiten_cli.sts import ENV_VAR, Dataset, PairSet, load_dataset, sts_dir

STSB_ROWS = (
    'main-captions\tMSRvid\t2012test\t0024\t2.500\tA girl is styling her hair.\tA girl is brushing her hair.\n'
    'main-forums\tanswers\t2015\t0001\t0.8\tHe said "no".\tShe said "yes" to it.\tsrc1\tsrc2\n'
)
SICK_ROWS = (
    b"pair_ID\tsentence_A\tsentence_B\trelatedness_score\tentailment_judgment\r\n"
    b"6\tThere is no boy playing\tA group of kids is playing\t3.3\tNEUTRAL\r\n"
    b"7\tA man is cooking\tA person cooks\t4.9\tENTAILMENT\r\n"
)


def write(path: Path, text: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


def only_subset(dataset: Dataset) -> PairSet:
    assert len(dataset.subsets) == 1
    return dataset.subsets[0]


def test_stsb_splits_on_tabs_without_quoting(tmp_path):
    subset = only_subset(load_dataset(str(write(tmp_path / "sts-test.csv", STSB_ROWS))))
    assert subset.name == "sts-test"
    assert subset.sentences1 == ["A girl is styling her hair.", 'He said "no".']
    assert subset.sentences2 == ["A girl is brushing her hair.", 'She said "yes" to it.']
    assert subset.scores.dtype == np.float64
    assert subset.scores.tolist() == [2.5, 0.8]


def test_stsb_is_recognised_by_content_under_any_name(tmp_path):
    assert load_dataset(str(write(tmp_path / "renamed.tsv", STSB_ROWS))).pairs == 2


def test_sick_with_crlf(tmp_path):
    subset = only_subset(load_dataset(str(write(tmp_path / "SICK_test_annotated.txt", SICK_ROWS))))
    assert subset.sentences1 == ["There is no boy playing", "A man is cooking"]
    assert subset.sentences2 == ["A group of kids is playing", "A person cooks"]
    assert subset.scores.tolist() == [3.3, 4.9]


def test_chinese_data(tmp_path):
    text = "一个女孩在给她的头发做发型。\t一个女孩在梳头。\t2\n一群男人在踢足球。\t一群男孩在踢足球。\t3\n"
    path = write(tmp_path / "STS-B.test.data", text)
    subset = only_subset(load_dataset(str(path)))
    assert subset.sentences1 == ["一个女孩在给她的头发做发型。", "一群男人在踢足球。"]
    assert subset.sentences2 == ["一个女孩在梳头。", "一群男孩在踢足球。"]
    assert subset.scores.tolist() == [2.0, 3.0]


@pytest.mark.parametrize(
    "name, text",
    [
        ("pairs.csv", 'id,sentence1,sentence2,score\n1,"Hello, world",Hi,4.5\n2,a,b,1\n'),
        ("pairs.tsv", 'sentence2\tlabel\tsentence1\nHi\t4.5\tHello, world\nb\t1\ta\n'),
        ("pairs.tsv", 'Hello, world\tHi\t4.5\na\tb\t1\n'),  # no header: sentence1, sentence2, score
        ("pairs.txt", 'Hello, world\tHi\t4.5\n\na\tb\t1\n'),
        ("pairs.jsonl", '{"sentence1": "Hello, world", "sentence2": "Hi", "score": 4.5}\n\n'
                        '{"sentence1": "a", "sentence2": "b", "label": "1"}\n'),
    ],
)
def test_generic_tables_and_jsonl(tmp_path, name, text):
    subset = only_subset(load_dataset(str(write(tmp_path / name, text))))
    assert subset.sentences1 == ["Hello, world", "a"]
    assert subset.sentences2 == ["Hi", "b"]
    assert subset.scores.tolist() == [4.5, 1.0]


def write_senteval(folder: Path) -> None:
    write(folder / "STS.input.b-set.txt", "one\tuno\ntwo\tdos\nthree\ttres\n")
    write(folder / "STS.gs.b-set.txt", "5.0\n\n1.5\n")
    write(folder / "STS.input.A.txt", "x\ty\n")
    write(folder / "STS.gs.A.txt", "2\n")


def test_senteval_folder_skips_unscored_pairs_and_orders_sentences(tmp_path):
    write_senteval(tmp_path / "STS99")
    dataset = load_dataset(str(tmp_path / "STS99"))
    assert dataset.name == "STS99"
    assert [subset.name for subset in dataset.subsets] == ["A", "b-set"]
    b_set = dataset.subsets[1]
    assert (b_set.sentences1, b_set.sentences2) == (["one", "three"], ["uno", "tres"])
    assert b_set.scores.tolist() == [5.0, 1.5]
    assert dataset.pairs == 3
    # each subset's sentences1, then its sentences2; split() inverts that order
    assert dataset.sentences == ["x", "y", "one", "three", "uno", "tres"]
    embeddings = np.arange(6)[:, None]
    halves = [(u.ravel().tolist(), v.ravel().tolist()) for u, v in dataset.split(embeddings)]
    assert halves == [([0], [1]), ([2, 3], [4, 5])]
    with pytest.raises(WhitenError):
        dataset.split(embeddings[:5])


def test_senteval_single_file(tmp_path):
    write_senteval(tmp_path)
    subset = only_subset(load_dataset(str(tmp_path / "STS.input.b-set.txt")))
    assert subset.name == "b-set"
    assert len(subset) == 2


def write_sts2016(folder: Path) -> None:
    """The official 2016 release's layout: four input columns (the sentences, then their sources)."""
    write(folder / "STS2016.input.question-question.txt",
          "How do I cook rice?\tWhat is the way to cook rice?\tstackexchange\tstackexchange\n"
          "Is it raining?\tWho won?\tstackexchange\tstackexchange\n"
          "Why is the sky blue?\tWhat makes the sky blue?\tstackexchange\tstackexchange\textra\n")
    write(folder / "STS2016.gs.question-question.txt", "4.6\n\n4\n")
    write(folder / "STS2016.input.headlines.txt", "Markets fall\tStocks drop\tsrc-a\tsrc-b\n")
    write(folder / "STS2016.gs.headlines.txt", "3.8\n")
    write(folder / "README.txt", "not data\n")


def test_official_sts2016_release_by_folder_and_by_file(tmp_path):
    folder = tmp_path / "sts2016-english-with-gs-v1.0"
    write_sts2016(folder)
    dataset = load_dataset(str(folder))
    assert [subset.name for subset in dataset.subsets] == ["headlines", "question-question"]
    questions = dataset.subsets[1]
    # the unscored pair (empty gold line) is skipped; source columns and extra columns are ignored
    assert questions.sentences1 == ["How do I cook rice?", "Why is the sky blue?"]
    assert questions.sentences2 == ["What is the way to cook rice?", "What makes the sky blue?"]
    assert questions.scores.tolist() == [4.6, 4.0]
    single = only_subset(load_dataset(str(folder / "STS2016.input.question-question.txt")))
    assert single.name == "question-question" and single.sentences1 == questions.sentences1


def test_sts16_by_name_finds_the_official_layout(tmp_path, monkeypatch):
    monkeypatch.setenv(ENV_VAR, str(tmp_path))
    write_sts2016(tmp_path / "STS16")
    dataset = load_dataset("sts16")
    assert [subset.name for subset in dataset.subsets] == ["headlines", "question-question"]
    assert dataset.pairs == 3


def test_one_subset_in_both_layouts_is_refused(tmp_path):
    write_sts2016(tmp_path)
    write(tmp_path / "STS.input.headlines.txt", "Markets fall\tStocks drop\n")
    write(tmp_path / "STS.gs.headlines.txt", "3.8\n")
    with pytest.raises(WhitenError, match="subset headlines is there twice"):
        load_dataset(str(tmp_path))


def test_folders_holding_stsb_or_sick(tmp_path):
    write(tmp_path / "stsb" / "sts-test.csv", STSB_ROWS)
    write(tmp_path / "stsb" / "sts-dev.csv", STSB_ROWS.splitlines()[0])
    write(tmp_path / "sick" / "SICK_test_annotated.txt", SICK_ROWS)
    assert load_dataset(str(tmp_path / "stsb")).pairs == 2
    assert load_dataset(str(tmp_path / "sick")).pairs == 2


def test_names_resolve_under_the_sts_dir(tmp_path, monkeypatch):
    monkeypatch.setenv(ENV_VAR, str(tmp_path))
    assert sts_dir() == tmp_path
    write(tmp_path / "STSBenchmark" / "sts-dev.csv", STSB_ROWS)
    write(tmp_path / "SICK" / "SICK_trial.txt", SICK_ROWS)
    write(tmp_path / "ATEC" / "ATEC.test.data", "你好\t您好\t1\n")
    write_senteval(tmp_path / "STS15")
    assert load_dataset("STSB-Dev").name == "stsb-dev"
    assert only_subset(load_dataset("stsb-dev")).name == "stsb-dev"
    assert load_dataset("sick-trial").pairs == 2
    assert load_dataset("atec").pairs == 1
    assert [subset.name for subset in load_dataset("sts15").subsets] == ["A", "b-set"]


@pytest.mark.parametrize(
    "name, missing", [("stsb", "STSBenchmark/sts-test.csv"), ("sts13", "STS13"), ("pawsx", "PAWSX")]
)
def test_missing_named_data_names_path_and_env_var(tmp_path, monkeypatch, name, missing):
    monkeypatch.setenv(ENV_VAR, str(tmp_path))
    with pytest.raises(WhitenError, match=ENV_VAR) as error:
        load_dataset(name)
    assert str(tmp_path) in str(error.value) and missing in str(error.value)


def test_unknown_spec_and_unknown_format(tmp_path):
    with pytest.raises(WhitenError, match="nor a dataset name"):
        load_dataset(str(tmp_path / "nothing-here"))
    with pytest.raises(WhitenError, match="no STS data"):
        load_dataset(str(tmp_path))
    with pytest.raises(InputError, match=r"notes\.txt:1: unknown format"):
        load_dataset(str(write(tmp_path / "notes.txt", "just some text\n")))
    with pytest.raises(InputError, match=r"pairs\.tsv:2: .*3"):  # headerless rows: each needs its 3 columns
        load_dataset(str(write(tmp_path / "pairs.tsv", "a\tb\t1\nc\td\n")))


def test_sts_dir_looks_beside_the_working_folder(tmp_path, monkeypatch):
    monkeypatch.delenv(ENV_VAR, raising=False)
    (tmp_path / "shared" / "data" / "sts").mkdir(parents=True)
    (tmp_path / "repo").mkdir()
    monkeypatch.chdir(tmp_path / "repo")
    assert sts_dir() == (tmp_path / "shared" / "data" / "sts").resolve()


BAD_INPUTS = [
    # (file name, content, line the error names)
    ("sts-test.csv", STSB_ROWS + "genre\tfile\t2012\t0001\t3.0\tonly one sentence\n", 3),
    ("sts-test.csv", STSB_ROWS.replace("2.500", "n/a"), 1),
    ("sts-test.csv", "", 1),
    ("SICK_train.txt", SICK_ROWS + b"8\tA\tB\n", 4),
    ("SICK_train.txt", SICK_ROWS.replace(b"4.9", b"high"), 3),
    ("SICK_train.txt", SICK_ROWS.split(b"\r\n")[0] + b"\r\n", 1),
    ("STS-B.test.data", "一个\t两个\t2\n一个\t两个\n", 2),
    ("STS-B.test.data", "一个\t两个\t高\n", 1),
    ("STS-B.test.data", "一个\t两个\t2\n".encode() + b"\xff\xfe\t\xe4\t1\n", 2),
    ("pairs.csv", "sentence1,sentence2,score\na,b,1\nc,d\n", 3),
    ("pairs.csv", "sentence1,sentence2,score\na,b,NaN\n", 2),
    ("pairs.tsv", "sentence1\tsentence2\tscore\n", 1),
    ("pairs.jsonl", '{"sentence1": "a", "sentence2": "b", "score": 1}\n{"sentence1": "c", "sentence2": "d", "score": []}', 2),
    ("pairs.jsonl", '{"sentence1": "a", "sentence2": "b"}\n', 1),
]


@pytest.mark.parametrize("name, content, line", BAD_INPUTS)
def test_bad_input_names_file_and_line(tmp_path, name, content, line):
    path = write(tmp_path / name, content)
    with pytest.raises(InputError) as error:
        load_dataset(str(path))
    assert f"{name}:{line}:" in str(error.value)


@pytest.mark.parametrize("prefix", ["STS", "STS2016"])
@pytest.mark.parametrize(
    "inputs, golds, bad_file, line",
    [
        ("a\tb\nc\td\n", "1\n", "gs", 2),  # gold shorter than input
        ("a\tb\n", "1\n2\n", "gs", 2),  # gold longer than input
        ("a\tb\nc\td\n", "1\nhigh\n", "gs", 2),
        ("a\tb\nonly one\n", "1\n2\n", "input", 2),
        ("a\tb\n", "\n", "gs", 1),  # nothing scored
        ("", "", "input", 1),
        ("a\tb\n", b"\xff\n", "gs", 1),
    ],
)
def test_bad_senteval_input_names_file_and_line(tmp_path, prefix, inputs, golds, bad_file, line):
    write(tmp_path / f"{prefix}.input.X.txt", inputs)
    write(tmp_path / f"{prefix}.gs.X.txt", golds)
    with pytest.raises(InputError) as error:
        load_dataset(str(tmp_path))
    assert f"{prefix}.{bad_file}.X.txt:{line}:" in str(error.value)


REAL_COUNTS = {
    "stsb": 1379,
    "stsb-dev": 1500,
    "stsb-train": 5749,
    "sick": 4927,
    "sick-train": 4500,
    "sick-trial": 500,
    "sts12": 3108,
    "stsb-zh": 1361,
    "stsb-zh-train": 5231,
    "stsb-zh-valid": 1458,
}


@pytest.mark.slow
@pytest.mark.parametrize("name, pairs", REAL_COUNTS.items())
def test_shared_data_counts(name, pairs):
    if not sts_dir().is_dir():
        pytest.skip(f"shared STS data not found at {sts_dir()} (set {ENV_VAR})")
    dataset = load_dataset(name)
    assert dataset.pairs == pairs
    assert len(dataset.sentences) == 2 * pairs
    if name == "sts12":
        assert [subset.name for subset in dataset.subsets] == [
            "MSRpar", "MSRvid", "SMTeuroparl", "surprise.OnWN", "surprise.SMTnews"
        ]


def test_pairs_csv_with_an_unterminated_quote_is_named(tmp_path):
    path = tmp_path / "pairs.csv"
    path.write_text('sentence1,sentence2,score\na,b,1\n"c,d,2\ne,f,3\n', encoding="utf-8")
    with pytest.raises(InputError, match=r"pairs.csv:\d+: bad CSV"):
        load_dataset(str(path))


def test_gzipped_stsb_file_loads_by_its_inner_format(tmp_path):
    import gzip

    rows = "".join(f"main-captions\tMSRvid\t2012test\t{i:04d}\t{i % 5}.0\tsentence {i}\tother {i}\n" for i in range(4))
    path = tmp_path / "sts-dev.csv.gz"
    path.write_bytes(gzip.compress(rows.encode()))
    dataset = load_dataset(str(path))
    assert [subset.name for subset in dataset.subsets] == ["sts-dev"]
    assert list(dataset.subsets[0].scores) == [0.0, 1.0, 2.0, 3.0]
