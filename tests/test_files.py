"""Writing results: complete or not at all, and a full disk is one clear line, not a traceback."""

from __future__ import annotations

import errno

import pytest
import torch

from reenact.embedding import MotionEmbedding
from reenact.errors import ReenactError, WriteError
from reenact.files import atomic_write
from reenact.metrics import frame_psnr, psnr


def test_a_finished_write_replaces_the_file_and_leaves_no_temp(tmp_path):
    target = tmp_path / "sub" / "a.txt"
    with atomic_write(target) as tmp:
        assert tmp.parent == target.parent and tmp.name.startswith(".") and tmp.suffix == ".txt"
        tmp.write_text("new")
    assert target.read_text() == "new"
    assert [p.name for p in target.parent.iterdir()] == ["a.txt"]


def test_a_failed_write_keeps_the_old_file_and_removes_the_temp(tmp_path):
    target = tmp_path / "a.txt"
    target.write_text("old")
    with pytest.raises(ValueError):
        with atomic_write(target) as tmp:
            tmp.write_text("half")
            raise ValueError("writer bug")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["a.txt"]


def test_a_folder_replaces_a_folder_whole(tmp_path):
    target = tmp_path / "frames"
    target.mkdir()
    (target / "old.png").write_text("x")
    with atomic_write(target) as tmp:
        tmp.mkdir()
        (tmp / "new.png").write_text("y")
    assert [p.name for p in target.iterdir()] == ["new.png"]
    assert [p.name for p in tmp_path.iterdir()] == ["frames"]


def test_a_full_disk_while_saving_an_embedding_is_one_line_and_leaves_nothing(tmp_path, monkeypatch):
    emb = MotionEmbedding(torch.zeros(3, 2, 4), {"base_model": "x"})
    path = tmp_path / "m.safetensors"

    def full_disk(self, data):
        with open(self, "wb") as fh:
            fh.write(data[:10])  # part of it made it to disk
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("pathlib.Path.write_bytes", full_disk)
    with pytest.raises(WriteError) as info:
        emb.save(path)
    assert isinstance(info.value, ReenactError) and isinstance(info.value, OSError)
    message = str(info.value)
    assert "\n" not in message and str(path) in message and "No space left on device" in message
    assert list(tmp_path.iterdir()) == []


def test_a_writer_that_reports_a_full_disk_in_its_own_words_is_a_write_error(tmp_path):
    # torch.save's RuntimeError on a full disk says only "file write failed"
    with pytest.raises(WriteError, match="No space left on device"):
        with atomic_write(tmp_path / "c.ckpt") as tmp:
            tmp.write_bytes(b"x")
            raise RuntimeError("[enforce fail at inline_container.cc:778] . PytorchStreamWriter "
                               "failed writing file data/0: file write failed")
    assert list(tmp_path.iterdir()) == []


def test_psnr_on_the_unit_scale():
    a = torch.zeros(2, 3, 4, 4)
    assert psnr(a, a) == float("inf")
    assert psnr(a, a + 0.2) == pytest.approx(20.0)  # 0.2 in [-1, 1] is 0.1 on [0, 1]
    assert frame_psnr(torch.stack([a[0], a[0] + 0.2]), torch.stack([a[0], a[0]])) == [
        float("inf"), pytest.approx(20.0)]
