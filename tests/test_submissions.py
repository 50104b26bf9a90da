"""Submissions are read, never followed (issue 12): fast unit tests of autograder/submissions.py.

What the real grading run does with the same cases (a failed row each, the batch going on, the files
unchanged) is in tests/test_pipeline.py; these tests pin each rule and its limit without a kernel.
"""
from __future__ import annotations

import json
import os
import stat
import threading
import zipfile
from pathlib import Path

import pytest

from autograder import submissions as subs
from autograder.submissions import InstructorError, Refused, find_submissions, read_regular, unpack

NOTEBOOK = json.dumps({"cells": [], "metadata": {}, "nbformat": 4, "nbformat_minor": 5}).encode()


def find(root: Path, tmp_path: Path, refused=None):
    return {s.student_id: s for s in find_submissions(root, "mini", ["mini.ipynb"], copy_to=tmp_path / "copies",
                                                      refused=refused)}


def student(root: Path, name: str, data: bytes = NOTEBOOK, file: str = "mini.ipynb") -> Path:
    (root / name).mkdir(parents=True, exist_ok=True)
    (root / name / file).write_bytes(data)
    return root / name / file


# ----------------------------------------------------------------------------- one file
def test_a_regular_file_is_read(tmp_path):
    student(tmp_path, "alice")
    assert read_regular(tmp_path, Path("alice/mini.ipynb")) == NOTEBOOK


@pytest.mark.parametrize("make,why", [
    (lambda p: os.symlink("/dev/zero", p), "is a symbolic link"),
    (lambda p: os.symlink(p.parent / "real.ipynb", p), "is a symbolic link"),
    (lambda p: os.mkfifo(p), "is a named pipe (FIFO)"),
    (lambda p: p.mkdir(), "is a folder"),
])
def test_links_fifos_and_folders_are_not_read(tmp_path, make, why):
    (tmp_path / "alice").mkdir()
    (tmp_path / "alice" / "real.ipynb").write_bytes(NOTEBOOK)
    make(tmp_path / "alice" / "mini.ipynb")
    result = {}
    thread = threading.Thread(target=lambda: result.update(
        error=pytest.raises(Refused, read_regular, tmp_path, Path("alice/mini.ipynb"))), daemon=True)
    thread.start()
    thread.join(10)
    assert not thread.is_alive(), "reading a FIFO must never block"
    assert why in str(result["error"].value)


def test_a_device_is_not_read():
    with pytest.raises(Refused, match="is a device file"):
        read_regular(Path("/dev"), Path("zero"))


def test_a_link_in_a_folder_above_is_not_followed(tmp_path):
    student(tmp_path, "elsewhere")
    (tmp_path / "alice").mkdir()
    os.symlink(tmp_path / "elsewhere", tmp_path / "alice" / "mini")
    with pytest.raises(Refused, match="symbolic link"):
        read_regular(tmp_path, Path("alice/mini/mini.ipynb"))


def test_size_is_capped(tmp_path, monkeypatch):
    student(tmp_path, "alice", b" " * 2048)
    with pytest.raises(Refused, match="2048 bytes, more than the 1024 bytes limit per notebook"):
        read_regular(tmp_path, Path("alice/mini.ipynb"), limit=1024)
    assert subs.MAX_NOTEBOOK_BYTES == 20 * 2**20


# ----------------------------------------------------------------------------- the student folders
def test_each_case_gets_its_reason_and_the_grading_gets_a_private_copy(tmp_path):
    root = tmp_path / "subs"
    original = student(root, "alice")
    student(root, "bob")
    os.symlink(root / "alice", root / "carol")  # a student folder that is a link
    (root / "dave").mkdir()
    os.mkfifo(root / "dave" / "mini.ipynb")
    (root / "erin").mkdir()
    os.symlink(root / "alice", root / "erin" / "mini")  # the assignment folder is a link: nothing found
    student(root, "-rf")
    student(root, "x" * 101)
    found = find(root, tmp_path)
    assert found["alice"].problem == "" and found["bob"].problem == ""
    assert found["carol"].problem == "the student folder carol is a symbolic link: not followed"
    assert found["dave"].problem == "mini.ipynb is a named pipe (FIFO): not read (only regular files are graded)"
    assert found["erin"].problem == "no notebook submitted (expected mini.ipynb); not followed: mini (a symbolic link)"
    assert "'-rf' is not a valid student id" in found["-rf"].problem
    assert "is not a valid student id" in found["x" * 101].problem
    copy = found["alice"].notebooks["mini.ipynb"]
    assert copy.read_bytes() == NOTEBOOK and copy != original and (tmp_path / "copies") in copy.parents
    original.write_bytes(b"swapped after the check")  # the grading uses what was read, not the path
    assert copy.read_bytes() == NOTEBOOK


@pytest.mark.parametrize("name,valid", [("alice", True), ("a.b-c_d@uni.edu", True), ("123", True),
                                        ("x" * 100, True), ("x" * 101, False), (".hidden", None), ("-x", False),
                                        ("@x", False), ("=1+1", False), ("a b", False), ("é", False),
                                        ("a\nb", False)])
def test_the_student_id_rule(name, valid):
    if valid is None:
        return  # hidden names are skipped, as before
    assert (subs.student_id_problem(name) == "") is valid


def test_an_invalid_id_is_printed_safely(tmp_path):
    student(tmp_path, "=cmd\x1b[31m")
    (sub,) = find(tmp_path, tmp_path / "x").values()
    assert sub.student_id == "=cmd\\x1b[31m" and "\x1b" not in sub.problem and sub.notebooks == {}


def test_a_linked_submitted_folder_is_an_instructor_error(tmp_path):
    student(tmp_path / "real", "alice")
    (tmp_path / "subs").mkdir()
    os.symlink(tmp_path / "real", tmp_path / "subs" / "submitted")
    with pytest.raises(InstructorError, match="submitted is a symbolic link: not followed"):
        find(tmp_path / "subs", tmp_path)


# ----------------------------------------------------------------------------- a .zip
def zip_with(path: Path, members: list[tuple[str, bytes, int]]) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data, mode in members:
            info = zipfile.ZipInfo(name)
            info.create_system, info.external_attr, info.compress_type = 3, mode << 16, zipfile.ZIP_DEFLATED
            zf.writestr(info, data)
    return path


REG = stat.S_IFREG | 0o644


def test_bad_members_are_refused_and_fail_their_student(tmp_path):
    archive = zip_with(tmp_path / "in.zip", [
        ("alice/mini.ipynb", NOTEBOOK, REG),
        ("bob/mini.ipynb", b"/etc/passwd", stat.S_IFLNK | 0o777),
        ("carol/mini.ipynb", NOTEBOOK, REG), ("carol/../../evil.ipynb", NOTEBOOK, REG),
        ("/dave/mini.ipynb", NOTEBOOK, REG),
        ("erin/mini.ipynb", NOTEBOOK, stat.S_IFIFO | 0o644),
        ("frank\\mini.ipynb", NOTEBOOK, REG),  # a Windows tool's separator: fine
        ("gina/data.bin", b"\0" * 10**6, REG), ("gina/mini.ipynb", NOTEBOOK, REG),
        ("../outside.ipynb", NOTEBOOK, REG),
    ])
    unpacked = unpack(archive, tmp_path / "out")
    found = find(unpacked.folder, tmp_path, unpacked.refused)
    assert sorted(found) == ["alice", "bob", "carol", "dave", "erin", "frank", "gina"]
    assert found["alice"].problem == found["frank"].problem == found["gina"].problem == ""
    assert found["bob"].problem == "archive member 'bob/mini.ipynb' was not unpacked: it is a symbolic link"
    assert "'carol/../../evil.ipynb' was not unpacked: its path climbs out of its folder" in found["carol"].problem
    assert "'/dave/mini.ipynb' was not unpacked: its path is absolute" in found["dave"].problem
    assert "it is a named pipe (FIFO)" in found["erin"].problem
    assert unpacked.refused == [("../outside.ipynb", "its path climbs out of its folder ('..')")]  # no student's
    assert (unpacked.folder / "gina" / "data.bin").stat().st_size == 0  # only notebooks are unpacked
    assert not (tmp_path / "outside.ipynb").exists() and not (tmp_path / "evil.ipynb").exists()
    assert not any(p.is_symlink() for p in unpacked.folder.rglob("*"))


def test_a_zip_bomb_is_refused_before_unpacking(tmp_path, monkeypatch):
    big = zip_with(tmp_path / "big.zip", [(f"s{i}/mini.ipynb", b" " * 5000, REG) for i in range(4)])
    monkeypatch.setattr(subs, "MAX_ARCHIVE_BYTES", 15000)
    with pytest.raises(InstructorError, match="unpacks to 20000 bytes of notebooks, more than the limit"):
        unpack(big, tmp_path / "out1")
    assert not list((tmp_path / "out1").iterdir())
    monkeypatch.setattr(subs, "MAX_ARCHIVE_MEMBERS", 3)
    with pytest.raises(InstructorError, match="has 4 entries, more than the limit of 3"):
        unpack(big, tmp_path / "out2")
    monkeypatch.setattr(subs, "MAX_ARCHIVE_MEMBERS", 100)
    monkeypatch.setattr(subs, "MAX_NOTEBOOK_BYTES", 4000)  # one member too big: only its student fails
    unpacked = unpack(big, tmp_path / "out3")
    assert len(unpacked.refused) == 4 and "unpacks to 5000 bytes, more than the 4000 bytes" in unpacked.refused[0][1]


def test_a_member_that_holds_more_than_it_declares_is_refused(tmp_path):
    archive = zip_with(tmp_path / "lie.zip", [("alice/mini.ipynb", NOTEBOOK + b" " * 100_000, REG)])
    data = bytearray(archive.read_bytes())
    size = (len(NOTEBOOK) + 100_000).to_bytes(4, "little")
    small = (100).to_bytes(4, "little")
    assert data.count(size) == 2  # the local header and the central directory both declare it
    archive.write_bytes(bytes(data).replace(size, small))
    unpacked = unpack(archive, tmp_path / "out")
    assert unpacked.refused and "could not be unpacked" in unpacked.refused[0][1]
    assert "alice" in find(unpacked.folder, tmp_path, unpacked.refused)
