"""_io: atomic writes that follow the umask, renames that never replace, the run lock."""

import os
import signal
import stat
import subprocess
import sys
import time

import pytest

from tfcompress import _io


@pytest.mark.parametrize("mask", [0o022, 0o077, 0o002])
def test_atomic_writes_follow_the_umask_like_open(tmp_path, mask):
    old = os.umask(mask)
    try:
        _io.atomic_write_bytes(tmp_path / "a", b"x")
        with open(tmp_path / "b", "wb") as f:
            f.write(b"x")
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(tmp_path / "a").st_mode) == stat.S_IMODE(
        os.stat(tmp_path / "b").st_mode) == 0o666 & ~mask


def test_a_replaced_file_keeps_its_mode(tmp_path):
    path = tmp_path / "a"
    path.write_bytes(b"old")
    os.chmod(path, 0o640)
    _io.atomic_write_bytes(path, b"new", overwrite=True)
    assert path.read_bytes() == b"new" and stat.S_IMODE(os.stat(path).st_mode) == 0o640


def test_a_directory_is_never_written_over(tmp_path):
    with pytest.raises(IsADirectoryError, match="not a directory|over a directory"):
        _io.atomic_write_bytes(tmp_path, b"x", overwrite=True)
    assert [p.name for p in tmp_path.iterdir()] == []  # no temporary file left


def test_rename_no_replace_keeps_an_empty_directory_that_appeared(tmp_path):
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "f").write_text("results")
    (tmp_path / "dst").mkdir()  # os.rename would replace this one silently
    with pytest.raises(FileExistsError):
        _io.rename_no_replace(tmp_path / "src", tmp_path / "dst")
    assert (tmp_path / "src" / "f").exists() and not list((tmp_path / "dst").iterdir())
    _io.rename_no_replace(tmp_path / "src", tmp_path / "new")
    assert (tmp_path / "new" / "f").read_text() == "results"


def test_the_lock_names_its_holder_and_dies_with_it(tmp_path):
    lock = tmp_path / "out.partial.lock"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from tfcompress import _io\n"
         f"with _io.exclusive_lock({str(lock)!r}, what='out'):\n"
         "    print('held', flush=True); time.sleep(60)"], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(BlockingIOError, match=f"pid {holder.pid}"):
            with _io.exclusive_lock(lock, what="out"):
                pass
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    with _io.exclusive_lock(lock, what="out"):  # a killed holder leaves no lock behind
        assert lock.read_text() == str(os.getpid())
    assert not lock.exists()
