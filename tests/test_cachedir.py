"""The one atomic writer (`cachedir.open_atomic` and its text/bytes forms)."""

from __future__ import annotations

import numpy as np
import pytest

from remix_ds.cachedir import open_atomic, write_bytes_atomic, write_text_atomic


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temp(tmp_path):
    path = tmp_path / "results.json"
    write_text_atomic(path, "old\n")
    with pytest.raises(RuntimeError, match="disk"):
        with open_atomic(path) as f:
            f.write("half of the new")
            raise RuntimeError("disk full")
    assert path.read_text() == "old\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.json"]


def test_text_bytes_and_savez_land_whole(tmp_path):
    write_text_atomic(tmp_path / "a.txt", "é\r\n")
    assert (tmp_path / "a.txt").read_bytes() == "é\r\n".encode()  # UTF-8, newlines as written
    write_bytes_atomic(tmp_path / "b.bin", b"\x00\x01")
    assert (tmp_path / "b.bin").read_bytes() == b"\x00\x01"
    with open_atomic(tmp_path / "c.npz", "wb") as f:
        np.savez(f, x=np.arange(3))
    assert np.load(tmp_path / "c.npz")["x"].tolist() == [0, 1, 2]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt", "b.bin", "c.npz"]


def test_concurrent_writers_get_distinct_temp_files(tmp_path):
    path = tmp_path / "x.txt"
    with open_atomic(path) as f, open_atomic(path) as g:
        assert len(list(tmp_path.glob(".tmp-x.txt-*"))) == 2  # unique temp names: neither clobbers the other
        f.write("first")
        g.write("second")
    assert path.read_text() == "first"  # the last rename wins


def test_only_write_modes(tmp_path):
    with pytest.raises(ValueError, match="mode"):
        with open_atomic(tmp_path / "x", "a"):
            pass
