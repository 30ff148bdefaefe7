"""Atomic writes: a failed or interrupted write leaves the previous file whole and no temporary behind."""

from __future__ import annotations

import pytest

from dcspass.files import stale_temporaries, write_atomic, write_text_atomic


def test_write_text_atomic_replaces_the_content_and_creates_the_folder(tmp_path):
    path = tmp_path / "new" / "report.json"
    assert write_text_atomic(path, "{}\n") == path
    write_text_atomic(path, '{"a": 1}\n')
    assert path.read_text() == '{"a": 1}\n'
    assert not stale_temporaries(path)


@pytest.mark.parametrize("error", [RuntimeError, KeyboardInterrupt])
def test_a_write_that_fails_keeps_the_previous_file(tmp_path, error):
    path = tmp_path / "results.json"
    path.write_text("old\n")

    def half_then_fail(f):
        f.write(b"new, but only ha")
        raise error("killed mid-write")

    with pytest.raises(error, match="killed mid-write"):
        write_atomic(path, half_then_fail)
    assert path.read_text() == "old\n"
    assert not stale_temporaries(path)


def test_temporaries_a_killed_write_left_are_removed_by_the_next_write(tmp_path):
    path = tmp_path / "results.json"
    left = tmp_path / ".results.json.abc123.tmp"  # what a SIGKILL between mkstemp and os.replace leaves
    left.write_text("partial")
    assert stale_temporaries(path) == [left]
    write_text_atomic(path, "done\n")
    assert not left.exists() and path.read_text() == "done\n"
