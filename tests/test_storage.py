"""Crash-safe folder swap: a process killed at any step leaves a complete folder at the path.

Each case runs a writer in a subprocess that SIGKILLs itself at one step of
``storage.atomic_directory``; the folder it replaces holds two files that must always agree.
"""

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from whiten_cli import storage

ROOT = Path(__file__).resolve().parents[1]

WRITER = textwrap.dedent("""
    import os, signal, sys
    from pathlib import Path
    from whiten_cli import storage

    target, version, step, exchange = Path(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4] == "exchange"

    def die():
        os.kill(os.getpid(), signal.SIGKILL)

    if not exchange:  # a file system without rename-exchange: two renames
        def no_exchange(a, b):
            raise storage._NoExchange
        storage._exchange = no_exchange
    else:
        real_exchange = storage._exchange
        def exchange_then(a, b):
            real_exchange(a, b)
            if step == "after-exchange":
                die()
        storage._exchange = exchange_then

    renames = {"count": 0}
    for name in ("rename", "replace"):
        real = getattr(os, name)
        def counted(a, b, real=real, **kwargs):
            real(a, b, **kwargs)
            renames["count"] += 1
            if step == f"after-rename-{renames['count']}":
                die()
        setattr(os, name, counted)

    with storage.atomic_directory(target) as tmp:
        (tmp / "a").write_text(version)
        if step == "writing":
            die()
        (tmp / "b").write_text(version)
    """)


def write(target: Path, version: str, step: str = "none", mode: str = "exchange") -> int:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-c", WRITER, str(target), version, step, mode], env=env,
                          timeout=60).returncode


def version_at(target: Path) -> str:
    """The version of the folder at ``target``, read as a reader does; both files must agree."""
    with storage.reading(target):
        a, b = (target / "a").read_text(), (target / "b").read_text()
    assert a == b, (a, b)
    return a


def leftovers(target: Path) -> list[str]:
    return sorted(p.name for p in target.parent.iterdir() if p.name.startswith(f".{target.name}."))


CRASHES = [("exchange", "writing"), ("exchange", "after-exchange"),
           ("two-renames", "writing"), ("two-renames", "after-rename-1"), ("two-renames", "after-rename-2")]


@pytest.mark.parametrize("mode, step", CRASHES)
def test_a_killed_swap_leaves_a_complete_folder_and_the_next_run_cleans_up(tmp_path, mode, step):
    target = tmp_path / "artifact"
    assert write(target, "1") == 0
    assert write(target, "2", step, mode) == -signal.SIGKILL
    assert version_at(target) in ("1", "2")  # a reader finds a complete folder, old or new
    assert write(target, "3", mode=mode) == 0  # the next run on the path
    assert version_at(target) == "3"
    assert leftovers(target) == []


@pytest.mark.parametrize("mode", ["exchange", "two-renames"])
def test_a_killed_first_write_leaves_nothing_and_the_next_run_cleans_up(tmp_path, mode):
    target = tmp_path / "artifact"
    assert write(target, "1", "writing", mode) == -signal.SIGKILL
    assert not target.exists()
    assert write(target, "2", mode=mode) == 0
    assert version_at(target) == "2" and leftovers(target) == []


def test_a_live_writers_temporary_folder_is_left_alone(tmp_path):
    target = tmp_path / "artifact"
    with storage.atomic_directory(target) as tmp:
        (tmp / "a").write_text("1")
        (tmp / "b").write_text("1")
        with storage.atomic_directory(tmp_path / "other"):  # its clean-up must not touch ours
            pass
        storage._remove_leftovers(target)
        assert tmp.is_dir()
    assert version_at(target) == "1" and leftovers(target) == []


def test_a_lock_is_reentrant_within_a_thread(tmp_path):
    target = tmp_path / "artifact"
    with storage.atomic_directory(target) as tmp:
        (tmp / "a").write_text("1")
        (tmp / "b").write_text("1")
    with storage.locked(target):
        assert version_at(target) == "1"  # a reader inside the writer's lock does not wait for itself
        with storage.atomic_directory(target) as tmp:
            (tmp / "a").write_text("2")
            (tmp / "b").write_text("2")
    assert version_at(target) == "2"


@pytest.mark.parametrize("where", ["folder", "under-a-file", "deep-under-a-file"])
def test_a_file_name_that_cannot_be_written_is_refused_before_writing(tmp_path, where):
    blocker = tmp_path / "blocker"
    blocker.write_text("")
    target = {"folder": tmp_path, "under-a-file": blocker / "out.npy",
              "deep-under-a-file": blocker / "a" / "b" / "out.npy"}[where]
    with pytest.raises(storage.WhitenError) as error:
        storage.atomic_write(target, lambda tmp: tmp.write_text("x"))
    assert str(target) in str(error.value)
    assert ("is a folder" if where == "folder" else f"{blocker} is a file, not a folder") in str(error.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["blocker"] and blocker.read_text() == ""


def test_missing_folders_of_a_file_name_are_made(tmp_path):
    target = storage.atomic_write(tmp_path / "a" / "b" / "out.txt", lambda tmp: tmp.write_text("x"))
    assert target.read_text() == "x"
