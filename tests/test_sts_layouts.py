"""STS release layouts we do not hold, written here as small synthetic files in the published layouts.

STS12–16 as SentEval renames them (``STS.input.X.txt`` + ``STS.gs.X.txt`` in ``STS/STS13-en-test``)
and as the official zips unpack them (``test-gs/``, ``sts-en-test-gs-2014/``,
``test_evaluation_task2a/``, ``sts2016-english-with-gs-v1.0/`` with ``STS2016.*`` names, ``.ascii``
copies, readmes, scripts and sample outputs beside the data); STS-B as the official csv, GLUE's tsv
and Hugging Face / MTEB tables; SICK; the Chinese ``.data`` sets; gzip versions of them.
"""

import gzip
from pathlib import Path

import pytest

from conftest import write
from whiten_cli.errors import InputError, WhitenError
from whiten_cli.sts import ENV_VAR, load_dataset

# The subsets each year's test release holds (STS13's SMT input is not distributed).
SUBSETS = {
    13: ["FNWN", "headlines", "OnWN"],
    14: ["deft-forum", "deft-news", "headlines", "images", "OnWN", "tweet-news"],
    15: ["answers-forums", "answers-students", "belief", "headlines", "images"],
    16: ["answer-answer", "headlines", "plagiarism", "postediting", "question-question"],
}
# Where each official zip unpacks, and where SentEval's get_transfer_data.bash moves it.
OFFICIAL_FOLDER = {13: "test-gs", 14: "sts-en-test-gs-2014", 15: "test_evaluation_task2a",
                   16: "sts2016-english-with-gs-v1.0"}


def pair_lines(subset: str, n: int = 3, extra: str = "") -> str:
    return "".join(f"{subset} sentence {i}\t{subset} other {i}{extra}\n" for i in range(n))


def write_year(folder: Path, year: int, official: bool) -> None:
    """One year's release: 3 pairs a subset, the middle one unscored (empty gold line) in 2015–16."""
    prefix = "STS2016" if official and year == 16 else "STS"
    for subset in SUBSETS[year]:
        extra = "\tsource notes a\tsource notes b" if official and year == 16 else ""
        write(folder / f"{prefix}.input.{subset}.txt", pair_lines(subset, extra=extra))
        write(folder / f"{prefix}.gs.{subset}.txt", "4.2\n\n0.8\n" if year >= 15 else "4.2\n2.0\n0.8\n")
        if official and year == 16:
            write(folder / f"{prefix}.input.{subset}.ascii", pair_lines(subset, extra=extra))
    if official:
        write(folder / "00-readme.txt", "README\n")
        write(folder / "correlation-noconfidence.pl", "#!/usr/bin/perl\n")
        write(folder / f"STS.output.{SUBSETS[year][1]}.txt", "2.5\t100\n")
        if year == 13:
            write(folder / "STS.gs.SMT.txt", "3.0\n")  # the gold without its input


@pytest.mark.parametrize("year", [13, 14, 15, 16])
@pytest.mark.parametrize("layout", ["senteval", "official"])
def test_sts13_to_16_by_name_in_senteval_and_official_layouts(tmp_path, monkeypatch, year, layout):
    monkeypatch.setenv(ENV_VAR, str(tmp_path))
    if layout == "senteval":  # data/downstream/STS/STS13-en-test
        write_year(tmp_path / "STS" / f"STS{year}-en-test", year, official=False)
    else:  # the official zip unpacked into STS13/
        write_year(tmp_path / f"STS{year}" / OFFICIAL_FOLDER[year], year, official=True)
    dataset = load_dataset(f"sts{year}")
    assert sorted(subset.name for subset in dataset.subsets) == sorted(SUBSETS[year])
    scored = [0, 2] if year >= 15 else [0, 1, 2]
    for subset in dataset.subsets:
        assert subset.sentences1 == [f"{subset.name} sentence {i}" for i in scored]
        assert subset.sentences2 == [f"{subset.name} other {i}" for i in scored]
    assert dataset.pairs == len(scored) * len(SUBSETS[year])


@pytest.mark.parametrize("folder", ["sts14", "STS14-EN-TEST", "sts2014"])
def test_sts_folder_names_are_matched_without_case(tmp_path, monkeypatch, folder):
    monkeypatch.setenv(ENV_VAR, str(tmp_path))
    write_year(tmp_path / folder, 14, official=False)
    assert len(load_dataset("sts14").subsets) == 6


def test_official_zip_folder_given_as_a_path_or_its_parent(tmp_path):
    write_year(tmp_path / "STS2016-en-test" / OFFICIAL_FOLDER[16], 16, official=True)
    assert load_dataset(str(tmp_path / "STS2016-en-test")).pairs == 10
    assert load_dataset(str(tmp_path / "STS2016-en-test" / OFFICIAL_FOLDER[16])).pairs == 10


def test_gzipped_sts_input_and_gold(tmp_path):
    write(tmp_path / "STS.input.headlines.txt.gz", gzip.compress(pair_lines("headlines").encode()))
    write(tmp_path / "STS.gs.headlines.txt.gz", gzip.compress(b"1\n\n3\n"))
    dataset = load_dataset(str(tmp_path))
    assert [subset.name for subset in dataset.subsets] == ["headlines"]
    assert dataset.subsets[0].scores.tolist() == [1.0, 3.0]
    assert load_dataset(str(tmp_path / "STS.input.headlines.txt.gz")).pairs == 2


def test_gold_file_with_a_header_line(tmp_path):
    write(tmp_path / "STS.input.images.txt", pair_lines("images"))
    write(tmp_path / "STS.gs.images.txt", "score\n4\n\n1\n")
    assert load_dataset(str(tmp_path)).subsets[0].scores.tolist() == [4.0, 1.0]


def test_blank_lines_after_the_last_pair_are_not_pairs(tmp_path):
    write(tmp_path / "STS.input.images.txt", pair_lines("images") + "\n")
    write(tmp_path / "STS.gs.images.txt", "4\n\n1\n\n\n")
    assert load_dataset(str(tmp_path)).subsets[0].sentences1 == ["images sentence 0", "images sentence 2"]


@pytest.mark.parametrize(
    "name, where",
    [
        ("stsb", "stsbenchmark/sts-test.csv"),  # the official tarball's folder
        ("stsb", "STS/STSBenchmark/sts-test.csv"),  # SentEval's data/downstream
        ("stsb", "STSBenchmark/sts-test.csv.gz"),
        ("sick", "sick/SICK_test_annotated.txt"),
        ("stsb-zh", "STS-B/STS-B.test.data"),  # CoSENT's layout of the Chinese sets
        ("atec", "atec/ATEC.test.data"),
    ],
)
def test_other_names_resolve_to_common_layouts(tmp_path, monkeypatch, name, where):
    monkeypatch.setenv(ENV_VAR, str(tmp_path))
    rows = {
        ".csv": "main-news\theadlines\t2015\t0001\t3.4\tA \"quoted\" one.\tAnother one.\n"
                "main-news\theadlines\t2015\t0002\t1.0\tSecond.\tOther.\tsrc\tsrc\n",
        ".txt": "pair_ID\tsentence_A\tsentence_B\trelatedness_score\tentailment_judgment\r\n"
                "1\tA man\tA person\t4.5\tENTAILMENT\r\n2\tA dog\tA cat\t2.0\tNEUTRAL\r\n",
        ".data": "一个\t两个\t1\n三个\t四个\t0\n",
    }
    text = next(value for suffix, value in rows.items() if where.removesuffix(".gz").endswith(suffix))
    write(tmp_path / where, gzip.compress(text.encode()) if where.endswith(".gz") else text)
    assert load_dataset(name).pairs == 2


def test_glue_stsb_dev_and_train_by_name(tmp_path, monkeypatch):
    monkeypatch.setenv(ENV_VAR, str(tmp_path))
    header = "index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore\n"
    row = "0\tmain-captions\tMSRvid\t2012test\t0000\tnone\tnone\tA \"man\" plays.\tA man is playing.\t{}\n"
    write(tmp_path / "STS-B" / "dev.tsv", header + row.format("5.000") + row.format("1.250"))
    subset = load_dataset("stsb-dev").subsets[0]
    assert subset.sentences1 == ['A "man" plays.'] * 2 and subset.scores.tolist() == [5.0, 1.25]


def test_missing_name_says_where_it_looked_and_what_it_expected(tmp_path, monkeypatch):
    monkeypatch.setenv(ENV_VAR, str(tmp_path))
    with pytest.raises(WhitenError) as error:
        load_dataset("sts13")
    message = str(error.value)
    assert "\n" not in message
    assert str(tmp_path) in message and "STS13-en-test" in message and "STS.input" in message
    assert ENV_VAR in message


@pytest.mark.parametrize(
    "name, text, scores",
    [
        # stsb_multi_mt (Hugging Face): similarity_score
        ("stsb_multi_mt.csv", "sentence1,sentence2,similarity_score\na,b,4.5\nc,d,1\n", [4.5, 1.0]),
        # SICK on Hugging Face: label is the entailment class, relatedness_score the similarity
        ("sick.jsonl", '{"sentence_A": "a", "sentence_B": "b", "label": 0, "relatedness_score": 4.5}\n'
                       '{"sentence_A": "c", "sentence_B": "d", "label": 2, "relatedness_score": 1.5}\n', [4.5, 1.5]),
        # MTEB, normalised scores
        ("test.jsonl.gz", '{"split": "test", "sentence1": "a", "sentence2": "b", "score": 0.9}\n'
                          '{"split": "test", "sentence1": "c", "sentence2": "d", "score": 0.1}\n', [0.9, 0.1]),
    ],
)
def test_hugging_face_tables(tmp_path, name, text, scores):
    content = gzip.compress(text.encode()) if name.endswith(".gz") else text
    assert load_dataset(str(write(tmp_path / name, content))).subsets[0].scores.tolist() == scores


def test_an_unscored_split_is_named_as_such(tmp_path):
    header = "index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\n"
    path = write(tmp_path / "test.tsv", header + "0\tmain\tx\t2012\t0\tn\tn\ta\tb\n")
    with pytest.raises(InputError, match=r"test\.tsv:1: .*no score column"):
        load_dataset(str(path))


def test_stsb_named_csv_with_a_header_is_read_by_its_header(tmp_path):
    path = write(tmp_path / "sts-test.csv", 'sentence1,sentence2,score\n"Hello, world",Hi,4.5\na,b,1\n')
    assert load_dataset(str(path)).subsets[0].sentences1 == ["Hello, world", "a"]


@pytest.mark.parametrize(
    "files, message",
    [
        # a gold header in a gold file as long as the input: line 1 is a score that is not a number
        ({"STS.input.x.txt": "a\tb\nc\td\n", "STS.gs.x.txt": "score\n1\n"}, r"STS\.gs\.x\.txt:1: score 'score'"),
        # a scored line past the input's end is not a trailing blank
        ({"STS.input.x.txt": "a\tb\n\n", "STS.gs.x.txt": "1\n\n2\n"}, r"STS\.gs\.x\.txt:2: 3 gold lines for the 1 lines"),
        ({"STS.input.x.txt.gz": gzip.compress(b"a\tb\n")}, r"STS\.gs\.x\.txt\.gz: no such file"),
    ],
)
def test_malformed_sts_files_name_file_and_line(tmp_path, files, message):
    for name, content in files.items():
        write(tmp_path / name, content)
    with pytest.raises(InputError, match=message):
        load_dataset(str(tmp_path))



@pytest.mark.parametrize(
    "name, content",
    [
        ("pairs.tsv", "a cat\tthe cat\tnan\nx\ty\t1\n"),  # headerless pairs: NaN on the first line
        ("pairs.tsv", "a\tb\t1\nx\ty\tinf\n"),
        ("sts-dev.csv", "main-captions\tMSRvid\t2012test\t0001\tnan\tA man.\tA dog.\n"),  # STS-B layout
    ],
    ids=["headerless-nan-first", "headerless-inf", "stsb-nan"],
)
def test_non_finite_scores_are_named_by_line_in_every_layout(tmp_path, name, content):
    path = write(tmp_path / name, content)
    line = 1 + next(i for i, row in enumerate(content.splitlines()) if "nan" in row or "inf" in row)
    with pytest.raises(InputError, match=rf"{name}:{line}: score '(nan|inf)' is not a finite number"):
        load_dataset(str(path))

def test_two_release_folders_inside_one_are_refused(tmp_path):
    write_year(tmp_path / "STS16" / "a", 16, official=False)
    write_year(tmp_path / "STS16" / "b", 16, official=True)
    with pytest.raises(WhitenError, match=r"STS16: STS data in several folders \(a, b\); name one"):
        load_dataset(str(tmp_path / "STS16"))


def test_parquet_pairs_as_on_the_hugging_face_hub(tmp_path):
    pq = pytest.importorskip("pyarrow.parquet")
    import pyarrow

    path = tmp_path / "test-00000-of-00001.parquet"
    pq.write_table(pyarrow.table({"sentence1": ["a", "c"], "sentence2": ["b", "d"], "score": [0.84, 0.2]}), path)
    subset = load_dataset(str(path)).subsets[0]
    assert (subset.sentences1, subset.scores.tolist()) == (["a", "c"], [0.84, 0.2])
    pq.write_table(pyarrow.table({"sentence1": ["a", "c"], "sentence2": ["b", None], "score": [1, 2]}), path)
    with pytest.raises(InputError, match=r"parquet:2: sentence1 and sentence2 must be strings"):
        load_dataset(str(path))


def test_parquet_without_pyarrow_names_the_extra(tmp_path, monkeypatch):
    monkeypatch.setitem(__import__("sys").modules, "pyarrow.parquet", None)
    path = write(tmp_path / "test.parquet", b"PAR1")
    with pytest.raises(WhitenError, match=r"test\.parquet: parquet pair files need the ray extra .*whiten\[ray\]"):
        load_dataset(str(path))
