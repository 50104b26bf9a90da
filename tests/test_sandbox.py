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

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="a separate user needs root")
needs_view = pytest.mark.skipif(not sandbox.protections()["hidden_files"]["active"],
                                reason=sandbox.protections()["hidden_files"]["how"])
needs_groups = pytest.mark.skipif(not (sandbox.protections()["memory_per_submission"]["active"] and
                                       sandbox.protections()["processes_per_submission"]["active"]),
                                  reason=sandbox.protections()["memory_per_submission"]["how"])


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


@needs_view
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


@needs_view
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


@needs_view
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


@needs_root
def test_shared_memory_segments_die_with_the_sandbox(way, tmp_path):
    """A System V shared-memory segment is not charged to the memory limit and is not freed when its creator
    exits; in its own IPC namespace it disappears with the sandbox instead of outliving the grading."""
    done = sandboxed("""
        import ctypes
        libc = ctypes.CDLL(None, use_errno=True)
        key = 0x46544c42  # a fixed key the host can look for
        segment = libc.shmget(key, 1 << 20, 0o1000 | 0o600)  # IPC_CREAT
        print("created" if segment >= 0 else f"shmget failed {ctypes.get_errno()}")
        print(open("/proc/sysvipc/shm").read())
    """, tmp_path, way)
    assert done.returncode == 0 and "created" in done.stdout, done.stdout + done.stderr
    assert f"{0x46544c42:10d}".strip() in done.stdout  # the sandbox saw its own segment
    host = Path("/proc/sysvipc/shm").read_text().split()
    assert str(0x46544c42) not in host, "the segment outlived the sandbox on the host"


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


@pytest.fixture
def planted_outside():
    """A world-readable secret where a deny-list sandbox (tmpfs over /tmp, the course, named folders) left
    everything visible: /srv as root, the home folder otherwise."""
    base = Path("/srv") if os.geteuid() == 0 and os.access("/srv", os.W_OK) else Path.home()
    folder = base / f"ftlab-planted-unit-{os.getpid()}"
    folder.mkdir()
    os.chmod(folder, 0o755)
    (folder / "answers.txt").write_text("42")
    os.chmod(folder / "answers.txt", 0o644)
    yield folder / "answers.txt"
    import shutil
    shutil.rmtree(folder)


@needs_view
def test_sees_only_its_allow_list(way, tmp_path, planted_outside):
    """Nothing is hidden by name: a secret nobody listed, another checkout of the course (/work/main when this
    machine has one) and this one's source/ are simply not there; the root holds VIEW's paths only."""
    (tmp_path / "work").mkdir()
    other = [str(p) for p in Path("/work").glob("*/source/quiz/quiz.ipynb")] if Path("/work").is_dir() else []
    paths = [str(planted_outside), str(REPO / "source" / "quiz" / "quiz.ipynb"), "/etc/hostname", *other]
    done = sandboxed(f"""
        import os
        for path in {paths!r}:
            try:
                open(path).read()
                print("READ", path)
            except OSError as e:
                print("blocked", type(e).__name__)
        print("ROOT", " ".join(sorted(os.listdir("/"))))
        print("ETC", " ".join(sorted(os.listdir("/etc"))))
    """, tmp_path / "work", way)
    assert done.returncode == 0, done.stderr
    assert "READ" not in done.stdout and done.stdout.count("blocked") == len(paths), done.stdout
    allowed = {p.strip("/").split("/")[0] for p, _, _ in sandbox.VIEW if p.startswith("/")} | \
        {p.strip("/").split("/")[0] for p in (sys.base_prefix, sys.prefix, str(REPO), str(tmp_path))}
    root = set(done.stdout.split("ROOT ")[1].splitlines()[0].split())
    assert root <= allowed, root - allowed
    etc = set(done.stdout.split("ETC ")[1].splitlines()[0].split())
    assert etc <= {p.split("/")[2] for p, _, _ in sandbox.VIEW if p.startswith("/etc/")}, etc


def _hold(code: str, workdir: Path, **kw) -> subprocess.Popen:
    argv = sandbox.wrap([sys.executable, "-c", textwrap.dedent(code)], workdir=workdir, **kw)
    return subprocess.Popen(argv, cwd=workdir, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@needs_groups
@pytest.mark.parametrize("way", ["exec", "fork"])
def test_one_submission_shares_one_memory_budget_tmpfs_included(way, tmp_path):
    """The kernel and a runner of one submission (two processes, two uids, each far below its own address
    space limit) share the submission's memory group: 300 MB held by one plus 300 MB written to the other's
    private /tmp (tmpfs) do not fit in 512 MB, and the out-of-memory killer ends the holder."""
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    group = sandbox.submission_group(f"test-{os.getpid()}-mem", 512 * 2**20, 64)
    try:
        kw = dict(memory_bytes=4 * 2**30, cgroups=group)
        holder = _hold("""
            hog = bytearray(300 * 2**20)
            print("holding", flush=True)
            import time; time.sleep(30)
        """, tmp_path / "a", uid=61101, **kw)
        assert holder.stdout.readline().strip() == "holding", holder.stderr.read()
        writer = sandboxed("""
            with open("/tmp/hog", "wb") as f:
                for _ in range(300):
                    f.write(b"x" * 2**20)
            print("wrote 300 MB to /tmp")
        """, tmp_path / "b", way, uid=61102, **kw)
        try:
            holder.wait(timeout=10)
        except subprocess.TimeoutExpired:
            holder.kill()
            holder.wait()
            pytest.fail(f"both held 600 MB under a 512 MB limit: {writer.stdout} {writer.stderr[-500:]}")
        finally:
            holder.stdout.close()
            holder.stderr.close()
        assert holder.returncode in (-9, 137) or "wrote" not in writer.stdout, (holder.returncode, writer.stdout)
        assert sandbox.group_report(group)["memory_limit_reached"]
    finally:
        sandbox.remove_group(group)


@needs_groups
@pytest.mark.parametrize("way", ["exec", "fork"])
def test_one_submission_shares_one_process_budget(way, tmp_path):
    """Two processes of one submission, as two uids with a generous per-uid limit, share its pids group."""
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    group = sandbox.submission_group(f"test-{os.getpid()}-pids", 2**30, 30)
    fork_some = """
        import os, time
        children = 0
        try:
            for _ in range(25):
                if os.fork() == 0:
                    time.sleep(30); os._exit(0)
                children += 1
        except OSError:
            pass
        print("forked", children, flush=True)
    """
    try:
        first = _hold(fork_some + "    time.sleep(30)\n", tmp_path / "a", uid=61201, processes=1000, cgroups=group)
        assert first.stdout.readline().split() == ["forked", "25"], first.stderr.read()
        second = sandboxed(fork_some, tmp_path / "b", way, uid=61202, processes=1000, cgroups=group)
        line = second.stdout.split()
        assert line[:1] == ["forked"] and int(line[1]) < 25, (line, second.stderr[-500:])
        first.kill()
        assert sandbox.group_report(group)["process_limit_reached"]
    finally:
        sandbox.remove_group(group)


def test_a_course_checked_out_below_tmp_stays_visible_inside(tmp_path):
    """The view mounts fresh tmpfs over /tmp, /var/tmp and /dev/shm; the course, its environment and the
    interpreter are bound after them, so a checkout below /tmp (a CI clone) is not covered up (it was: every
    sandboxed process then failed with 'execvp .../.venv/bin/python: No such file or directory')."""
    spec = sandbox.make_spec(workdir=tmp_path / "work")
    steps = sandbox.view_plan(spec, inside_uid=61000)
    last_tmpfs = max(i for i, (kind, _, where) in enumerate(steps) if kind == "tmpfs")
    sources = sandbox._view_sources()
    for name in ("{interpreter}", "{environment}", "{course}", "{autograder}"):
        for path in sources[name]:
            binds = [i for i, (kind, _, where) in enumerate(steps) if where == path and kind == "ro"]
            covering = [where for kind, _, where in steps if kind == "ro" and path.startswith(where.rstrip("/") + "/")]
            assert binds or covering, (name, path, steps)
            assert all(i > last_tmpfs for i in binds), (name, path, "bound before a tmpfs that can cover it")


LEAVES_LEFTOVERS = r"""
import os, subprocess, sys
from pathlib import Path
from autograder import sandbox
link = Path(sys.argv[1]) / "runtime"
folder = os.path.realpath(sandbox.scratch_folder(link))
group = sandbox.submission_group("leftover-test", 2**30, 30)
run_folder = sandbox.private_folder("ftlab-grade-")
sleeper = subprocess.Popen(["sleep", "600"], preexec_fn=lambda: sandbox.join_group(group), start_new_session=True,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
print(folder, run_folder, sleeper.pid, *group, flush=True)
os._exit(0)  # as if killed: no cleanup
"""


@needs_groups
def test_kept_folders_are_out_of_every_sweeps_reach(tmp_path):
    """--keep-temp: the run's folder moves into a new ftlab-kept-* folder (mkdtemp: no one can take the name
    first, red team session 7), which a sweep leaves even once its maker is gone."""
    done = subprocess.run([sys.executable, "-c", "from autograder import sandbox; print(sandbox.keep_folder("
                           "sandbox.private_folder('ftlab-grade-')))"], capture_output=True, text=True, cwd=REPO,
                          timeout=60)
    kept = Path(done.stdout.strip())
    try:
        assert kept.parent.name.startswith("ftlab-kept-") and kept.name.startswith("ftlab-grade-"), done.stderr
        assert kept.is_dir() and str(kept) not in sandbox.remove_leftovers() and kept.is_dir()
    finally:
        sandbox.remove_tree(kept.parent)


def test_leftovers_of_a_killed_grader_are_removed_and_only_theirs(tmp_path):
    """A grading process that dies without cleaning up (SIGKILL, OOM killer) leaves its kernel's runtime folder on
    /dev/shm and its submission's cgroups, maybe with a process of the submission still in them. The next run's
    sweep removes them and its run folder (copies of the course, hidden tests included) and kills that
    process; a live process's are left alone, and so is whatever else anyone may name alike in /dev/shm or /tmp
    (world-writable): odd pids, links, another pid namespace's (red team, session 7: 'ftlab-runtime-²-x' made
    every run fail at start)."""
    done = subprocess.run([sys.executable, "-c", LEAVES_LEFTOVERS, str(tmp_path)], capture_output=True, text=True,
                          cwd=REPO, timeout=60)
    folder, run_folder, sleeper, *group = done.stdout.split()
    assert os.path.isdir(folder) and group and all(os.path.isdir(g) for g in group), done.stderr[-2000:]
    assert os.path.isdir(run_folder) and sandbox.maker_tag().split(".")[1] in Path(run_folder, sandbox.MAKER_FILE).read_text()
    assert Path(group[0], "cgroup.procs").read_text().split() == [sleeper]
    mine = sandbox.scratch_folder(tmp_path / "mine")
    my_group = sandbox.submission_group("leftover-test-live", 2**30, 30)
    dead = folder.rsplit("/", 1)[1].split("-")[2]  # the killed maker's <pid>.<namespace>
    pid, namespace = dead.split(".")
    root = os.path.dirname(folder)
    alike = [os.path.join(root, sandbox.SCRATCH_PREFIX + name) for name in (
        "\u00b2-x", "\u00b2.1-x", "99999999999999999999.1-x", f"99999999999.{namespace}-x", f"{pid}.{int(namespace) + 1}-x")]
    for path in alike:
        os.mkdir(path)
    link = os.path.join(root, f"{sandbox.SCRATCH_PREFIX}{dead}-link")
    os.symlink(tmp_path, link)
    deep = os.path.join(root, f"{sandbox.SCRATCH_PREFIX}{dead}-deep")  # shutil.rmtree: RecursionError (red team)
    os.mkdir(deep)
    fd = os.open(deep, os.O_RDONLY)
    for _ in range(1500):
        os.mkdir("d", dir_fd=fd)
        fd, parent = os.open("d", os.O_RDONLY, dir_fd=fd), fd
        os.close(parent)
    os.close(fd)
    try:
        removed = sandbox.remove_leftovers()
        assert folder in removed and run_folder in removed and all(g in removed for g in group), removed
        assert deep in removed and not os.path.lexists(deep)
        assert not os.path.exists(folder) and not os.path.exists(run_folder) and not any(os.path.exists(g) for g in group)
        state = Path(f"/proc/{sleeper}/status").read_text() if os.path.exists(f"/proc/{sleeper}") else "State: gone"
        assert "(zombie)" in state or "gone" in state, state
        assert os.path.isdir(os.path.realpath(mine)) and all(os.path.isdir(g) for g in my_group)
        assert all(os.path.isdir(path) for path in alike) and os.path.islink(link) and tmp_path.is_dir()
    finally:
        sandbox.remove_group(my_group)
        sandbox.remove_scratch(mine)
        for path in alike:
            os.rmdir(path)
        os.unlink(link)
