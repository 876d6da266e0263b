import os
import warnings

import pytest

from conftest import write
from whiten_cli.errors import InputError, WhitenError
from whiten_cli.readers import Record, file_format, iter_lines, read_records, read_texts


# --- formats -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, kind",
    [("a.txt", "text"), ("a", "text"), ("a.JSONL", "jsonl"), ("a.ndjson", "jsonl"), ("a.csv", "csv"),
     ("a.tsv", "tsv"), ("a.tab", "tsv"), ("a.md", "text")],
)
def test_file_format_by_suffix(name, kind):
    assert file_format(name) == kind


def test_text_one_per_line_ids_are_line_numbers(tmp_path):
    path = write(tmp_path / "c.txt", "First line.\nSecond, with a comma.\n  indented \n")
    records = read_records(path)
    assert records == [
        Record("First line.", 1, "1"),
        Record("Second, with a comma.", 2, "2"),
        Record("  indented ", 3, "3"),  # texts are not stripped
    ]
    assert read_texts(path) == ["First line.", "Second, with a comma.", "  indented "]


def test_text_without_final_newline(tmp_path):
    assert read_texts(write(tmp_path / "c.txt", "one\ntwo")) == ["one", "two"]


def test_jsonl_with_field_and_ids(tmp_path):
    path = write(
        tmp_path / "c.jsonl",
        '{"id": "d1", "body": "Hello, world", "text": "not this"}\n'
        "\n"  # blank lines between JSON objects are skipped
        '{"id": 7, "body": "Caf\\u00e9 \\"quoted\\""}\n',
    )
    records = read_records(path, field="body")
    assert [r.text for r in records] == ["Hello, world", 'Café "quoted"']
    assert [r.id for r in records] == ["d1", "7"]
    assert [r.line for r in records] == [1, 3]


def test_jsonl_default_field_and_line_ids(tmp_path):
    path = write(tmp_path / "c.jsonl", '{"sentence": "a b"}\n{"sentence": "c d"}\n')
    records = read_records(path)
    assert [(r.text, r.id) for r in records] == [("a b", "1"), ("c d", "2")]


def test_jsonl_explicit_id_field(tmp_path):
    path = write(tmp_path / "c.jsonl", '{"key": "k1", "text": "x"}\n{"key": "k2", "text": "y"}\n')
    assert [r.id for r in read_records(path, id_field="key")] == ["k1", "k2"]


def test_csv_quoted_commas_quotes_and_ids(tmp_path):
    path = write(
        tmp_path / "c.csv",
        'id,text,label\n'
        'a1,"Hello, world",1\n'
        'a2,"She said ""hi"", then left",0\n'
        'a3,plain,1\n',
    )
    records = read_records(path)
    assert [r.text for r in records] == ["Hello, world", 'She said "hi", then left', "plain"]
    assert [r.id for r in records] == ["a1", "a2", "a3"]
    assert [r.line for r in records] == [2, 3, 4]


def test_csv_field_choice_and_single_column(tmp_path):
    path = write(tmp_path / "c.csv", "title,body\nT1,B1\nT2,B2\n")
    assert read_texts(path, field="body") == ["B1", "B2"]
    assert read_texts(path, field="title") == ["T1", "T2"]
    single = write(tmp_path / "single.csv", "whatever\nx\ny\n")
    assert read_texts(single) == ["x", "y"]


def test_tsv_has_no_quoting(tmp_path):
    path = write(
        tmp_path / "c.tsv",
        'sentence1\tsentence2\tscore\n'
        '"Quoted" at the start\tb, with comma\t1.0\n'
        'He said "no".\tunbalanced " quote\t2\n',
    )
    assert read_texts(path, field="sentence1") == ['"Quoted" at the start', 'He said "no".']
    assert read_texts(path, field="sentence2") == ["b, with comma", 'unbalanced " quote']


def test_bom_and_crlf(tmp_path):
    text = write(tmp_path / "c.txt", b"\xef\xbb\xbffirst\r\nsecond\r\n")
    assert read_texts(text) == ["first", "second"]
    table = write(tmp_path / "c.csv", b"\xef\xbb\xbfid,text\r\n1,\"a, b\"\r\n2,c\r\n")
    records = read_records(table)
    assert [(r.id, r.text) for r in records] == [("1", "a, b"), ("2", "c")]  # the BOM is not part of "id"
    jsonl = write(tmp_path / "c.jsonl", b'\xef\xbb\xbf{"text": "x"}\r\n{"text": "y"}\r\n')
    assert read_texts(jsonl) == ["x", "y"]
    tsv = write(tmp_path / "c.tsv", b"\xef\xbb\xbftext\tscore\r\nx\t1\r\n")
    assert read_texts(tsv) == ["x"]


def test_bom_only_on_first_line(tmp_path):
    lines = list(iter_lines(write(tmp_path / "c.txt", b"\xef\xbb\xbfa\n\xef\xbb\xbfb\n")))
    assert lines == [(1, "a"), (2, "\ufeffb")]


def test_unicode_text(tmp_path):
    assert read_texts(write(tmp_path / "c.txt", "今天天气很好。\nnaïve café ☕\n")) == ["今天天气很好。", "naïve café ☕"]


# --- bad input -----------------------------------------------------------------------------------


def test_missing_file(tmp_path):
    path = tmp_path / "nope.txt"
    with pytest.raises(InputError) as info:
        read_texts(path)
    assert str(path) in str(info.value) and "no such file" in str(info.value)
    assert isinstance(info.value, WhitenError)


def test_folder_instead_of_file(tmp_path):
    with pytest.raises(InputError, match="folder"):
        read_texts(tmp_path)


@pytest.mark.parametrize("name", ["e.txt", "e.jsonl", "e.csv", "e.tsv"])
def test_empty_file(tmp_path, name):
    path = write(tmp_path / name, "")
    with pytest.raises(InputError) as info:
        read_texts(path)
    assert str(path) in str(info.value) and "no text" in str(info.value)


def test_header_only_table_is_empty(tmp_path):
    with pytest.raises(InputError, match="no text"):
        read_texts(write(tmp_path / "h.csv", "id,text\n"))


@pytest.mark.parametrize("name", ["bad.txt", "bad.jsonl", "bad.csv", "bad.tsv"])
def test_non_utf8_names_file_and_line(tmp_path, name):
    header = {"bad.txt": b"", "bad.jsonl": b"", "bad.csv": b"text\n", "bad.tsv": b"text\n"}[name]
    good = b'{"text": "ok"}\n' if name.endswith("jsonl") else b"ok\n"
    bad = b'{"text": "caf\xe9"}\n' if name.endswith("jsonl") else b"caf\xe9\n"
    path = write(tmp_path / name, header + good + bad)
    line = 3 if header else 2
    with pytest.raises(InputError) as info:
        read_texts(path)
    assert f"{path}:{line}:" in str(info.value)
    assert "UTF-8" in str(info.value)
    assert info.value.line == line and info.value.path == str(path)


def test_csv_row_with_too_few_columns(tmp_path):
    path = write(tmp_path / "c.csv", "id,text\n1,fine\n2\n")
    with pytest.raises(InputError) as info:
        read_texts(path)
    assert f"{path}:3:" in str(info.value) and "columns" in str(info.value)


@pytest.mark.parametrize("body, line", [('text\nfine\n"never closed\nnext\n', 3), ('text\n"a"b\nok\n', 2)])
def test_csv_broken_quoting_is_named_not_swallowed(tmp_path, body, line):
    """An unterminated quote would otherwise swallow the rest of the file into one text."""
    path = write(tmp_path / "c.csv", body)
    with pytest.raises(InputError, match=rf"c.csv:{line}: bad CSV"):
        read_texts(path)


def test_tsv_row_with_too_few_columns(tmp_path):
    path = write(tmp_path / "c.tsv", "id\ttext\n1\tfine\n2\n")
    with pytest.raises(InputError, match=r":3: .*columns"):
        read_texts(path)


def test_table_unknown_column_and_ambiguous_columns(tmp_path):
    path = write(tmp_path / "c.csv", "title,body\nT,B\n")
    with pytest.raises(InputError) as info:
        read_texts(path, field="text")
    assert f"{path}:1:" in str(info.value) and "'text'" in str(info.value)
    with pytest.raises(InputError, match="--field"):
        read_texts(path)  # two columns, neither a known text name


def test_jsonl_missing_field_names_line(tmp_path):
    path = write(tmp_path / "c.jsonl", '{"text": "a"}\n{"body": "b"}\n')
    with pytest.raises(InputError) as info:
        read_texts(path)
    assert f"{path}:2:" in str(info.value)
    with pytest.raises(InputError, match=r":1: no field 'body'"):
        read_texts(path, field="body")


@pytest.mark.parametrize(
    "line, message",
    [("not json", "invalid JSON"), ('["a list"]', "JSON object"), ('{"text": 3}', "not a string")],
)
def test_jsonl_bad_lines(tmp_path, line, message):
    path = write(tmp_path / "c.jsonl", '{"text": "a"}\n' + line + "\n")
    with pytest.raises(InputError, match=f":2: .*{message}"):
        read_texts(path)


def test_jsonl_missing_id_field(tmp_path):
    path = write(tmp_path / "c.jsonl", '{"text": "a", "key": 1}\n{"text": "b"}\n')
    with pytest.raises(InputError, match=r":2: no id field 'key'"):
        read_records(path, id_field="key")


@pytest.mark.parametrize(
    "name, content, line",
    [
        ("c.txt", "a\n\nb\n", 2),
        ("c.txt", "a\n   \nb\n", 2),
        ("c.jsonl", '{"text": "a"}\n{"text": ""}\n{"text": "b"}\n', 2),
        ("c.csv", 'id,text\n1,a\n2,""\n3,b\n', 3),
        ("c.tsv", "id\ttext\n1\ta\n2\t \n3\tb\n", 3),
    ],
)
def test_empty_text_names_line_unless_skipped(tmp_path, name, content, line):
    path = write(tmp_path / name, content)
    with pytest.raises(InputError) as info:
        read_texts(path)
    assert f"{path}:{line}:" in str(info.value) and "empty" in str(info.value)
    assert read_texts(path, skip_empty=True) == ["a", "b"]


def test_skip_empty_keeps_line_ids(tmp_path):
    records = read_records(write(tmp_path / "c.txt", "a\n\nb\n"), skip_empty=True)
    assert [(r.id, r.line) for r in records] == [("1", 1), ("3", 3)]


def test_only_empty_lines_with_skip_empty_holds_no_text(tmp_path):
    with pytest.raises(InputError, match="no text"):
        read_texts(write(tmp_path / "c.txt", "\n\n  \n"), skip_empty=True)


def test_csv_quoted_field_spanning_lines_keeps_its_newline(tmp_path):
    path = write(tmp_path / "c.csv", 'id,text\r\n1,"line one\r\nline two"\r\n2,x\r\n')
    records = read_records(path)
    assert [r.text for r in records] == ["line one\nline two", "x"]
    assert [r.id for r in records] == ["1", "2"]


@pytest.mark.parametrize("name, body", [("c.txt.gz", "one\ntwo\n"), ("c.jsonl.gz", '{"text": "one"}\n{"text": "two"}\n'),
                                        ("c.csv.gz", 'text\n"one"\ntwo\n')])
def test_gzip_inputs_are_read_through(tmp_path, name, body):
    import gzip

    path = tmp_path / name
    path.write_bytes(gzip.compress(body.encode()))
    assert read_texts(path) == ["one", "two"]


def test_gzip_cut_short_or_fake_is_named(tmp_path):
    import gzip

    cut = tmp_path / "cut.txt.gz"
    whole = gzip.compress("".join(f"sentence {i * 7919 % 100003}\n" for i in range(5000)).encode())
    cut.write_bytes(whole[: len(whole) // 2])
    with pytest.raises(InputError, match=r"cut.txt.gz:\d+: not a readable gzip file"):
        read_texts(cut)
    fake = write(tmp_path / "fake.txt.gz", "plain text\n")
    with pytest.raises(InputError, match=r"fake.txt.gz:1: not a readable gzip file"):
        read_texts(fake)


@pytest.mark.parametrize("name, header", [("n.txt", b""), ("n.jsonl", b""), ("n.csv", b"text\n"), ("n.tsv", b"text\n")])
def test_nul_byte_names_file_line_and_column(tmp_path, name, header):
    good = b'{"text": "ok"}\n' if name.endswith("jsonl") else b"ok\n"
    bad = b'{"text": "a\x00b"}\n' if name.endswith("jsonl") else b"a\x00b\n"
    path = write(tmp_path / name, header + good + bad)
    line = 3 if header else 2
    with pytest.raises(InputError, match=rf"{path.name}:{line}: a NUL byte at column {bad.index(0) + 1}"):
        read_texts(path)


@pytest.mark.parametrize("encoding", ["utf-16", "utf-16-be"])
def test_utf16_with_byte_order_mark_is_named(tmp_path, encoding):
    path = tmp_path / "u.txt"
    path.write_bytes(("\ufeff" if encoding.endswith("be") else "").encode(encoding) + "one\ntwo\n".encode(encoding))
    with pytest.raises(InputError, match=r"u.txt:1: UTF-16 text .* save it as UTF-8"):
        read_texts(path)


def test_jsonl_nested_too_deeply_is_bad_input_not_a_crash(tmp_path):
    path = write(tmp_path / "deep.jsonl", '{"text": "a"}\n' + "[" * 100_000 + "]" * 100_000 + "\n")
    with pytest.raises(InputError, match=r"deep.jsonl:2: invalid JSON \(nested too deeply\)"):
        read_texts(path)


@pytest.mark.skipif(not os.path.exists("/proc/self/mem"), reason="needs Linux /proc")
def test_a_read_that_fails_midway_names_the_file():
    """/proc/self/mem opens but every read fails (EIO): a file that cannot be read, named."""
    with pytest.raises(InputError, match=r"/proc/self/mem:1: cannot be read \(Input/output error\)"):
        read_texts("/proc/self/mem")


def test_a_field_given_for_plain_text_is_said_not_used(tmp_path):
    """JSON lines in a .txt with --field: each line is encoded whole, braces and all; say so."""
    path = tmp_path / "corpus.txt"
    path.write_text('{"text": "hello"}\n{"text": "world"}\n')
    with pytest.warns(UserWarning, match=r"corpus\.txt: read as plain text.*text field 'text' and the id field 'id'"):
        records = read_records(path, field="text", id_field="id")
    assert [record.text for record in records] == ['{"text": "hello"}', '{"text": "world"}']
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        read_records(path)  # nothing to say without them
