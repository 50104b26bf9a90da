"""Find each student's notebook in a folder or .zip of submissions, and say clearly why when it cannot.

Accepted layouts (a .zip of either, possibly wrapped in one top folder):
    SUBMISSIONS/<student_id>/<notebook>.ipynb
    SUBMISSIONS/[submitted/]<student_id>/<assignment>/<notebook>.ipynb      (nbgrader's layout)

Submissions are read, never followed (issue 12): only regular files are read, each through a descriptor
opened with O_NOFOLLOW | O_NONBLOCK below real folders (no symbolic link anywhere on the way), checked with
fstat and capped at MAX_NOTEBOOK_BYTES; FIFOs, devices and sockets are never even opened. The bytes read
are written into a private copy that the grading uses: a file swapped after the check changes nothing.
A student folder that is a symbolic link, or a notebook that is not a regular file, gives that student a
``failed`` row with the reason; the batch goes on. Zip members that are links, absolute or that climb out of
their folder (``..``) are never unpacked; the archive's size and member count are capped before anything is
unpacked. Student ids (folder names) must follow STUDENT_ID_RULE.
"""
from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import stat
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path

MAX_NOTEBOOK_BYTES = 20 * 2**20  # one notebook, read from a folder or unpacked from a .zip
MAX_ARCHIVE_BYTES = 2 * 2**30  # all notebooks of one .zip together, uncompressed (as the archive declares them)
MAX_ARCHIVE_MEMBERS = 50_000  # entries of one .zip (files and folders)
MAX_STUDENT_ID = 100
STUDENT_ID_RULE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,%d}" % (MAX_STUDENT_ID - 1))
STUDENT_ID_HELP = (f"letters a-z/A-Z, digits and . _ - @ only, at most {MAX_STUDENT_ID} characters, "
                   "starting with a letter or a digit")

_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_READ_FLAGS = os.O_RDONLY | _NOFOLLOW | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0) | \
    getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0)
_DIR_FLAGS = os.O_RDONLY | _NOFOLLOW | getattr(os, "O_DIRECTORY", 0) | getattr(os, "O_CLOEXEC", 0)


class InstructorError(Exception):
    """A problem on the instructor's side (bad assignment, unreadable folder): stops the run."""


class Refused(Exception):
    """A submitted file that is not read (its message is the reason a student's row shows)."""


@dataclass
class Submission:
    student_id: str
    notebooks: dict[str, Path] = field(default_factory=dict)  # expected name -> private copy of the bytes read
    notes: list[str] = field(default_factory=list)  # graded, but the instructor should know this
    problem: str = ""  # why it cannot be graded ("" = it can)


@dataclass
class Unpacked:
    """A .zip unpacked into a private folder: ``folder``, and the members that were not unpacked, with why."""
    folder: Path
    refused: list[tuple[str, str]] = field(default_factory=list)  # (member name as in the archive, reason)


# ----------------------------------------------------------------------------- names and file kinds
def _visible(name: str) -> bool:
    return not name.startswith((".", "__MACOSX")) and name != ".ipynb_checkpoints"


def printable(name: str, limit: int = 120) -> str:
    """A name as it can be shown anywhere (CSV, HTML, a log line): control characters, undecodable bytes and
    quotes escaped as Python writes them, cut to ``limit`` characters."""
    text = repr(name)[1:-1]
    return text if len(text) <= limit else text[:limit] + "..."


def student_id_problem(name: str) -> str:
    """Why a folder name is not a valid student id ("" = it is)."""
    if STUDENT_ID_RULE.fullmatch(name):
        return ""
    return f"the folder name '{printable(name)}' is not a valid student id ({STUDENT_ID_HELP})"


def _kind(mode: int) -> str:
    if stat.S_ISLNK(mode):
        return "a symbolic link"
    if stat.S_ISFIFO(mode):
        return "a named pipe (FIFO)"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device file"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISDIR(mode):
        return "a folder"
    return "not a regular file"


def _lstat(path: Path) -> os.stat_result | None:
    try:
        return os.lstat(path)
    except OSError:
        return None


def _is_real_dir(path: Path) -> bool:
    st = _lstat(path)
    return st is not None and stat.S_ISDIR(st.st_mode)


def _size_text(n: int) -> str:
    return f"{n / 2**20:.1f} MB" if n >= 2**20 else f"{n} bytes"


# ----------------------------------------------------------------------------- reading one file
def read_regular(root: Path, relative: Path, limit: int = MAX_NOTEBOOK_BYTES) -> bytes:
    """The bytes of ``root/relative``, read only when it is a regular file of at most ``limit`` bytes reached
    through real folders. Raises Refused with the reason otherwise.

    Each folder below ``root`` is opened with O_NOFOLLOW relative to the previous one, the file itself with
    O_NOFOLLOW | O_NONBLOCK (a FIFO cannot block, a link is not followed), and the opened descriptor is
    checked with fstat: only what was checked is read, even if the path changes meanwhile.
    """
    name = relative.name
    st = _lstat(root / relative)
    if st is None:
        raise Refused(f"{name} could not be read (it disappeared)")
    if not stat.S_ISREG(st.st_mode):  # never open a link, a FIFO or a device, not even without blocking
        raise Refused(f"{name} is {_kind(st.st_mode)}: not read (only regular files are graded)")
    if st.st_size > limit:
        raise Refused(f"{name} is {_size_text(st.st_size)}, more than the {_size_text(limit)} limit per notebook")
    fd = None
    try:
        if os.open in os.supports_dir_fd:
            dir_fd = os.open(root, _DIR_FLAGS & ~_NOFOLLOW)  # the instructor's own folder: resolved already
            try:
                for part in relative.parts[:-1]:
                    nxt = os.open(part, _DIR_FLAGS, dir_fd=dir_fd)
                    os.close(dir_fd)
                    dir_fd = nxt
                fd = os.open(name, _READ_FLAGS, dir_fd=dir_fd)
            finally:
                os.close(dir_fd)
        else:  # no openat (Windows): the final component is still checked below
            fd = os.open(root / relative, _READ_FLAGS)
        opened = os.fstat(fd)
        if not stat.S_ISREG(opened.st_mode):
            raise Refused(f"{name} is {_kind(opened.st_mode)}: not read (only regular files are graded)")
        if (opened.st_dev, opened.st_ino) != (st.st_dev, st.st_ino):
            raise Refused(f"{name} changed while it was being read: not read")
        chunks, total = [], 0
        while total <= limit:
            try:
                chunk = os.read(fd, min(2**20, limit + 1 - total))
            except BlockingIOError:  # a regular file never blocks; be safe anyway
                raise Refused(f"{name} could not be read without waiting: not read") from None
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
        if total > limit:
            raise Refused(f"{name} is more than the {_size_text(limit)} limit per notebook (it grew while read)")
        return b"".join(chunks)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.EMLINK):
            raise Refused(f"{name} or a folder above it is a symbolic link: not followed") from None
        if exc.errno == errno.ENOTDIR:
            raise Refused(f"a folder above {name} is a symbolic link or not a folder: not followed") from None
        raise Refused(f"{name} could not be read: {exc.strerror}") from None
    finally:
        if fd is not None:
            os.close(fd)


def readable_problem(name: str, data: bytes) -> str:
    """Why these bytes are not a notebook nbgrader can read, or ""."""
    if not data.strip():
        return f"{name} is an empty file"
    try:
        nb = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        return f"{name} is not valid JSON (damaged file?): {exc}"
    if not isinstance(nb, dict) or not isinstance(nb.get("cells"), list):
        return f"{name} is JSON but not a notebook (no list of cells)"
    if nb.get("nbformat") != 4:
        return f"{name} has notebook format {nb.get('nbformat')!r}, expected 4"
    return ""


# ----------------------------------------------------------------------------- a .zip of submissions
def _member_parts(name: str) -> list[str]:
    """A member's path components as written in the archive (either slash), empty and '.' parts dropped."""
    return [p for p in re.split(r"[/\\]", name) if p not in ("", ".")]


def _member_problem(info: zipfile.ZipInfo) -> str:
    """Why this member is never unpacked ("" = it may be)."""
    name = info.filename
    mode = info.external_attr >> 16
    if "\x00" in name:
        return "its name holds a NUL character"
    if name.startswith(("/", "\\")) or re.match(r"[A-Za-z]:", name):
        return "its path is absolute"
    if ".." in _member_parts(name):
        return "its path climbs out of its folder ('..')"
    if mode and stat.S_IFMT(mode) and not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
        return f"it is {_kind(mode)}"
    return ""


def unpack(archive: Path, dest: Path) -> Unpacked:
    """Unpack the notebooks of a .zip into ``dest`` (a new, private folder), safely.

    Refused before anything is unpacked (an instructor error, exit 2): not a readable zip, more than
    MAX_ARCHIVE_MEMBERS entries, or notebooks declaring more than MAX_ARCHIVE_BYTES together (a zip bomb).
    Never unpacked, each named in its student's row: links, devices and other special members, absolute
    paths, paths with '..', a notebook declaring more than MAX_NOTEBOOK_BYTES, a member that cannot be
    decompressed or holds more than it declares. Other files are not needed for grading: only their names
    are kept (as empty files), so that the folder layout reads the same.
    """
    dest.mkdir(parents=True, exist_ok=True)
    root = dest.resolve()
    result = Unpacked(root)
    try:
        with zipfile.ZipFile(archive) as zf:
            members = zf.infolist()
            if len(members) > MAX_ARCHIVE_MEMBERS:
                raise InstructorError(f"submissions archive {archive} has {len(members)} entries, more than the "
                                      f"limit of {MAX_ARCHIVE_MEMBERS}: refused before unpacking")
            plan = []
            for info in members:
                problem = _member_problem(info)
                if not problem and not info.is_dir() and info.filename.endswith(".ipynb") \
                        and info.file_size > MAX_NOTEBOOK_BYTES:
                    problem = (f"it unpacks to {_size_text(info.file_size)}, more than the "
                               f"{_size_text(MAX_NOTEBOOK_BYTES)} limit per notebook")
                plan.append((info, problem))
            total = sum(info.file_size for info, problem in plan
                        if not problem and not info.is_dir() and info.filename.endswith(".ipynb"))
            if total > MAX_ARCHIVE_BYTES:
                raise InstructorError(f"submissions archive {archive} unpacks to {_size_text(total)} of notebooks, "
                                      f"more than the limit of {_size_text(MAX_ARCHIVE_BYTES)}: refused before "
                                      "unpacking (a zip bomb?)")
            for info, problem in plan:
                parts = _member_parts(info.filename)
                if not problem and not parts:
                    continue
                if problem:
                    _make_folders(root, _folders_before_escape(info.filename))
                    result.refused.append((info.filename, problem))
                    continue
                if info.is_dir():
                    _make_folders(root, parts)
                    continue
                problem = _extract(zf, info, root, parts)
                if problem:
                    _make_folders(root, parts[:-1])
                    result.refused.append((info.filename, problem))
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError, ValueError) as exc:
        raise InstructorError(f"cannot read submissions archive {archive}: {exc}") from None
    return result


def _folders_before_escape(name: str) -> list[str]:
    """The folders a refused member names before anything odd ('..'), for its student's row."""
    parts = _member_parts(name.replace("\x00", ""))
    if parts and re.fullmatch(r"[A-Za-z]:", parts[0]):
        parts = parts[1:]
    kept = []
    for part in parts[:-1]:
        if part == "..":
            break
        kept.append(part)
    return kept


def _make_folders(root: Path, parts: list[str]) -> None:
    folder = root
    for part in parts:
        folder = folder / part
        if not _is_real_dir(folder):
            try:
                folder.mkdir()
            except OSError:
                return


def _extract(zf: zipfile.ZipFile, info: zipfile.ZipInfo, root: Path, parts: list[str]) -> str:
    """Write one member below ``root`` ("" = done, else why not). Only notebooks get their bytes."""
    _make_folders(root, parts[:-1])
    target = root.joinpath(*parts)
    if not _is_real_dir(target.parent):
        return "its folder could not be made (a file of the same name is in the archive)"
    try:
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW | getattr(os, "O_BINARY", 0), 0o600)
    except FileExistsError:
        return "the archive holds two entries of this name" if info.filename.endswith(".ipynb") else ""
    except OSError as exc:
        return f"it could not be unpacked: {exc.strerror}"
    try:
        if not info.filename.endswith(".ipynb"):
            return ""
        limit = min(info.file_size, MAX_NOTEBOOK_BYTES)
        written = 0
        with zf.open(info) as member:
            while True:
                chunk = member.read(min(2**20, limit + 1 - written))
                if not chunk:
                    break
                written += len(chunk)
                if written > limit:
                    raise zipfile.BadZipFile("it holds more than it declares")
                os.write(fd, chunk)
        return ""
    except (zipfile.BadZipFile, zlib.error, NotImplementedError, RuntimeError, EOFError, OSError, ValueError) as exc:
        os.ftruncate(fd, 0)
        return f"it could not be unpacked ({exc})"
    finally:
        os.close(fd)


# ----------------------------------------------------------------------------- the student folders
def students_folder(root: Path, assignment: str) -> Path:
    """The folder whose children are the student folders (real folders only: links are never followed)."""
    def children_of(folder: Path) -> list[Path]:
        return [p for p in folder.iterdir() if _visible(p.name)]

    def submitted_in(folder: Path) -> Path | None:
        path = folder / "submitted"
        st = _lstat(path)
        if st is not None and stat.S_ISLNK(st.st_mode):
            raise InstructorError(f"{path} is a symbolic link: not followed (give the folder it points to)")
        return path if st is not None and stat.S_ISDIR(st.st_mode) else None

    found = submitted_in(root)
    if found:
        return found
    children = children_of(root)
    # a zip of the folder itself: one folder holding only folders, none of them named after the assignment
    while (len(children) == 1 and _is_real_dir(children[0]) and not _is_real_dir(children[0] / assignment)
           and all(_is_real_dir(p) for p in children_of(children[0]))):
        root = children[0]
        found = submitted_in(root)
        if found:
            return found
        children = children_of(root)
    return root


def _walk(folder: Path) -> tuple[list[Path], list[Path]]:
    """(entries named *.ipynb that are not folders, other links and special files), below ``folder``, without
    following any link. .ipynb_checkpoints folders are skipped."""
    notebooks, odd = [], []
    try:
        entries = sorted(os.scandir(folder), key=lambda e: e.name)
    except OSError:
        return notebooks, odd
    for entry in entries:
        path = Path(entry.path)
        if entry.is_dir(follow_symlinks=False):
            if entry.name != ".ipynb_checkpoints":
                more, strange = _walk(path)
                notebooks += more
                odd += strange
        elif entry.name.endswith(".ipynb"):
            notebooks.append(path)
        elif not entry.is_file(follow_symlinks=False):
            odd.append(path)
    return sorted(notebooks, key=str), sorted(odd, key=str)


def _refused_in(folder: Path, root: Path, refused: list[tuple[str, str]]) -> list[str]:
    """Reasons of the archive members refused inside this student folder (taken out of ``refused``)."""
    try:
        mine = list(folder.relative_to(root).parts)
    except ValueError:
        return []
    taken = [(name, why) for name, why in refused if _folders_before_escape(name)[:len(mine)] == mine]
    for entry in taken:
        refused.remove(entry)
    return [f"archive member '{printable(name)}' was not unpacked: {why}" for name, why in taken]


def find_submissions(submissions: Path, assignment: str, expected: list[str], copy_to: Path,
                     refused: list[tuple[str, str]] | None = None) -> list[Submission]:
    """One Submission per student folder; ``expected`` are the assignment's notebook file names.

    Each notebook to grade is read (``read_regular``) and its bytes are written under ``copy_to`` (a private
    folder): ``Submission.notebooks`` points at those copies. ``refused`` are archive members ``unpack``
    did not unpack: each fails the student whose folder it was in and is taken out of the list (what is left
    belonged to no student folder).
    """
    refused = [] if refused is None else refused
    try:
        top = students_folder(submissions, assignment)
        entries = sorted((e for e in os.scandir(top) if _visible(e.name)), key=lambda e: e.name)
    except OSError as exc:
        raise InstructorError(f"cannot read submissions folder {submissions}: {exc.strerror}") from None
    found = []
    for index, entry in enumerate(entries):
        folder = Path(entry.path)
        if not entry.is_symlink() and not entry.is_dir(follow_symlinks=False):
            continue  # a stray file next to the student folders: not a submission
        id_problem = student_id_problem(entry.name)
        sub = Submission(entry.name if not id_problem else printable(entry.name, limit=1000))
        if id_problem:
            sub.problem = id_problem
            found.append(sub)
            continue
        if entry.is_symlink():
            sub.problem = f"the student folder {entry.name} is a symbolic link: not followed"
            found.append(sub)
            continue
        _choose(sub, folder, assignment, expected)
        problems = _refused_in(folder, submissions, refused)
        if problems:
            sub.problem = "; ".join(problems)
        if not sub.problem:
            _read(sub, submissions, copy_to / f"{index:05d}")
        found.append(sub)
    return found


def _choose(sub: Submission, folder: Path, assignment: str, expected: list[str]) -> None:
    """Which file is graded as which expected notebook (paths, not read yet), and the notes about it."""
    base = folder / assignment if _is_real_dir(folder / assignment) else folder
    files, odd = _walk(base)
    by_name = {p.name: p for p in files}
    for name in expected:
        if name in by_name:
            sub.notebooks[name] = by_name[name]
    extra = [p.name for p in files if p.name not in expected]
    if len(expected) == 1 and not sub.notebooks and len(files) == 1:
        sub.notebooks[expected[0]] = files[0]
        sub.notes.append(f"graded {files[0].name} as {expected[0]}")
    elif not files:
        sub.problem = f"no notebook submitted (expected {', '.join(expected)})"
        if odd:
            kinds = [f"{p.relative_to(folder)} ({_kind(_lstat(p).st_mode) if _lstat(p) else 'gone'})" for p in odd]
            sub.problem += f"; not followed: {', '.join(kinds)}"
    elif not sub.notebooks:
        sub.problem = f"found {len(files)} notebooks ({', '.join(p.name for p in files)}), none named {', '.join(expected)}"
    elif extra:
        sub.notes.append(f"ignored extra notebook(s): {', '.join(extra)}")
    missing = [n for n in expected if n not in sub.notebooks]
    if sub.notebooks and missing:
        sub.notes.append(f"missing notebook(s): {', '.join(missing)} (scored 0)")


def _read(sub: Submission, root: Path, copy_to: Path) -> None:
    """Read each chosen notebook once, check it, and keep the bytes read in a private copy."""
    copies = {}
    for name, path in sub.notebooks.items():
        try:
            data = read_regular(root, path.relative_to(root))
        except Refused as refusal:
            sub.problem = str(refusal)
            return
        problem = readable_problem(path.name, data)
        if problem:
            sub.problem = problem
            return
        copy_to.mkdir(parents=True, exist_ok=True)
        copy = copy_to / name
        fd = os.open(copy, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW | getattr(os, "O_BINARY", 0), 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        copies[name] = copy
    sub.notebooks = copies


def feedback_name(student_id: str) -> str:
    """The feedback file of a student (a valid id is a safe file name; any other gets a name derived from it)."""
    if STUDENT_ID_RULE.fullmatch(student_id):
        return f"{student_id}.html"
    digest = hashlib.sha256(student_id.encode("utf-8", "surrogateescape")).hexdigest()[:12]
    return f"invalid-id-{digest}.html"
