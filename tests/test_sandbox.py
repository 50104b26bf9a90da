"""autograder.sandbox on its own: what code confined by it can and cannot reach (issue 7).

Every check runs both ways in: ``wrap`` (a command line, exec'd: the student's kernel, a runner
without a server) and ``fork_confined`` after ``enter_namespaces`` (a forked Python function: the fork
server's runners)."""
from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import textwrap
import traceback
from pathlib import Path

import pytest

from autograder import sandbox
from conftest import REPO

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="user/namespace protections need root")


@pytest.fixture(params=["exec", "fork"])
def way(request):
    return request.param


def sandboxed(code: str, workdir: Path, way: str, **kw) -> subprocess.CompletedProcess:
    if way == "fork":
        return forked(textwrap.dedent(code), workdir, **kw)
    argv = sandbox.wrap([sys.executable, "-c", textwrap.dedent(code)], workdir=workdir, **kw)
    return subprocess.run(argv, cwd=workdir, capture_output=True, text=True, timeout=120)


def forked(code: str, workdir: Path, **kw) -> subprocess.CompletedProcess:
    """``code`` run as the fork server runs a runner: a supervisor process enters the namespaces and
    ``fork_confined`` runs the code in its child. Exit status as subprocess reports it."""
    spec = sandbox.make_spec(workdir=workdir, **kw)
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        supervisor = os.fork()
        if supervisor == 0:
            try:
                sandbox.enter_namespaces()

                def run():
                    os.dup2(out.fileno(), 1)
                    os.dup2(err.fileno(), 2)
                    os.close(out.fileno())
                    os.close(err.fileno())
                    sys.stdout = open(1, "w", closefd=False)  # not pytest's capture objects
                    sys.stderr = open(2, "w", closefd=False)
                    status = 0
                    try:
                        exec(compile(code, "<sandboxed>", "exec"), {"__name__": "__main__"})
                    except SystemExit as stop:
                        status = stop.code if isinstance(stop.code, int) else 1
                    except BaseException:
                        traceback.print_exc()
                        status = 1
                    sys.stdout.flush()
                    sys.stderr.flush()
                    os._exit(status)

                child = sandbox.fork_confined(spec, run, base_env=dict(os.environ),
                                              pass_fds=(out.fileno(), err.fileno()))
                status = os.waitstatus_to_exitcode(os.waitpid(child, 0)[1])
                os._exit(status if status >= 0 else 128 - status)
            finally:
                os._exit(99)
        status = os.waitstatus_to_exitcode(os.waitpid(supervisor, 0)[1])
        out.seek(0)
        err.seek(0)
        return subprocess.CompletedProcess(["fork"], status, out.read().decode(errors="replace"),
                                           err.read().decode(errors="replace"))


@pytest.fixture
def secret_folder(tmp_path):
    """A folder like a submissions folder: readable by everyone on the host."""
    folder = tmp_path / "secret"
    folder.mkdir()
    (folder / "answers.txt").write_text("42")
    os.chmod(tmp_path, 0o755)
    return folder


def test_protections_are_reported_as_they_are():
    active = sandbox.protections()
    assert active["separate_user"]["active"] == (os.geteuid() == 0)
    assert "sandbox: on:" in sandbox.summary(active)
    if not all(v["active"] for v in active.values()):
        assert "OFF" in sandbox.summary(active)


@needs_root
def test_runs_as_another_user_in_a_private_copy_of_its_workdir(way, tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    (work / "given.txt").write_text("input")
    done = sandboxed("""
        import os
        print(os.getuid(), open("given.txt").read())
        open("given.txt", "w").write("changed")
        os.symlink("/etc/passwd", "planted")
    """, work, way, uid=61999)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["61999", "input"]
    assert (work / "given.txt").read_text() == "input" and not (work / "planted").exists()


@needs_root
def test_cannot_read_course_files_or_hidden_folders(way, tmp_path, secret_folder):
    (tmp_path / "work").mkdir()
    done = sandboxed(f"""
        import os
        for path in [{str(REPO / 'nbgrader_config.py')!r}, {str(REPO / 'tests' / 'conftest.py')!r},
                     {str(REPO / '.git' / 'HEAD')!r}, {str(secret_folder / 'answers.txt')!r}]:
            try:
                open(path).read()
                print("READ", path)
            except OSError as e:
                print("blocked", type(e).__name__)
        import course  # what the lessons need is still there
        print("course ok")
    """, tmp_path / "work", way, hide=(secret_folder,))
    assert done.returncode == 0, done.stderr
    assert "READ" not in done.stdout and done.stdout.count("blocked") == 4
    assert "course ok" in done.stdout


@needs_root
def test_cannot_write_to_a_hidden_folder(way, tmp_path, secret_folder):
    (tmp_path / "work").mkdir()
    done = sandboxed(f"""
        try:
            open({str(secret_folder / 'answers.txt')!r}, "a").write("forged")
            print("WROTE")
        except OSError as e:
            print("blocked", e)
    """, tmp_path / "work", way, hide=(secret_folder,))
    assert done.returncode == 0 and "blocked" in done.stdout, done.stdout + done.stderr  # it ran, and was stopped
    assert "WROTE" not in done.stdout
    assert (secret_folder / "answers.txt").read_text() == "42"


@needs_root
def test_no_network_not_even_loopback(way, tmp_path):
    import socket
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    port = server.getsockname()[1]
    done = sandboxed(f"""
        import socket
        try:
            socket.create_connection(("127.0.0.1", {port}), timeout=3)
            print("CONNECTED")
        except OSError as e:
            print("blocked", e)
    """, tmp_path, way)
    server.close()
    assert done.returncode == 0 and "blocked" in done.stdout and "CONNECTED" not in done.stdout, done.stderr


def test_unbounded_allocation_hits_the_memory_limit(way, tmp_path):
    done = sandboxed("""
        hog = []
        try:
            while True:
                hog.append(bytearray(2**27))
        except MemoryError:
            print("stopped at", len(hog) * 128, "MiB")
    """, tmp_path, way, memory_bytes=1 * 2**30)
    assert done.returncode == 0, done.stderr
    assert int(done.stdout.split()[2]) < 1024


@needs_root
def test_process_count_is_bounded(way, tmp_path):
    done = sandboxed("""
        import os
        children = 0
        try:
            for _ in range(200):
                if os.fork() == 0:
                    import time; time.sleep(5); os._exit(0)
                children += 1
        except OSError as e:
            print("stopped after", children, type(e).__name__)
    """, tmp_path, way, processes=20)
    assert "stopped after" in done.stdout, done.stdout + done.stderr
    assert int(done.stdout.split()[2]) < 20


def test_no_file_descriptor_beyond_the_standard_three(way, tmp_path):
    """A forked child inherits every descriptor its parent holds (the fork server's, the view's
    bind-mount handles): only 0-2 may reach the confined code, as with exec and close_fds."""
    done = sandboxed("""
        import os
        for name in sorted(os.listdir("/proc/self/fd"), key=int):
            try:
                print(name, os.readlink("/proc/self/fd/" + name))
            except OSError:
                pass  # the listing's own descriptor
    """, tmp_path, way)
    assert done.returncode == 0, done.stderr
    assert sorted(int(line.split()[0]) for line in done.stdout.splitlines()) == [0, 1, 2], done.stdout
