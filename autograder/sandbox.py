"""Run student code where it sees only what it needs, within bounds that hold per submission (issues 7, 12).

    argv = wrap([sys.executable, "-c", code], workdir=Path("/tmp/job"))   # a command line: a fresh kernel
    pid = fork_confined(make_spec(workdir=...), run)                      # a forked function: runners, kernels

**What a sandboxed process sees** is one table, ``VIEW`` below, for every way in: it starts from an empty
root holding only those paths (read-only), a private writable copy of its working folder on tmpfs, private
tmpfs ``/tmp``, ``/var/tmp`` and ``/dev/shm``, and the folders in ``keep`` (the kernel's connection file and
sockets). Nothing else of the machine exists for it: not the course folder (wherever ``--course`` is), not
another checkout or a backup of the course, not home folders, the submissions, the output, ``/etc`` or
``/sys``. It has its own network namespace (no interface up: no host, no loopback service), its own pid, IPC
and UTS namespaces, and no capability.

**How** (``protections()`` says what this host gets; a missing mechanism is reported inactive, never faked):

* a command line (``wrap``: the student's kernel, a runner started as a fresh interpreter) goes through
  bubblewrap (``bwrap``) when it works here. Run as root, bwrap makes the namespaces without a user
  namespace and this module's ``inside`` step switches to the submission's own uid before the command
  starts; run as another user, bwrap adds a user namespace (the code keeps that user's uid, with no
  capability). Without a working bwrap, this module builds the same view itself (next point).
* a forked function (``fork_confined``: a runner or a kernel forked by the fork server, whose Python has
  imported torch or TensorFlow already, which no exec'd tool can take over): the supervisor enters fresh mount,
  pid, network, IPC and UTS namespaces (``enter_namespaces``; plus a user namespace when not root) and the
  child, pid 1 there, mounts the same VIEW into an empty tmpfs and ``pivot_root``s into it
  (``_build_root``), then switches to the submission's uid (root) or drops every capability (not root).
* bounds per submission, not per process (``submission_group``): one memory cgroup (tmpfs pages count:
  they are charged to the group of the process that writes them) and one pids cgroup that the kernel and
  every runner of a submission join. cgroup v1 (the memory and pids hierarchies, as on these machines) or
  v2; made under the grading process's own group, so a submission never gets more than the run has.
  Creating them needs root (or a delegated v2 group). Per process, as before: rlimits (address space,
  CPU seconds, processes, file size, no core dumps).
* no writes to the host disk: everything writable in the view is tmpfs; the kernel's runtime folder (its
  connection file and sockets) lives on ``/dev/shm`` (``scratch_folder``).
"""
from __future__ import annotations

import base64
import ctypes
import json
import os
import re
import shutil
import signal
import stat
import subprocess
import sys
from functools import lru_cache
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_MEMORY = 8 * 2**30
DEFAULT_CPU_SECONDS = 3600
DEFAULT_PROCESSES = 512
DEFAULT_UID = 61000
FILE_SIZE_LIMIT = 2**30
# Folders and cgroups a grading process makes carry ``maker_tag()`` after their prefix (see remove_leftovers)
SCRATCH_PREFIX = "ftlab-runtime-"  # scratch_folder's folders on /dev/shm: ftlab-runtime-<maker>-...
GROUP_PREFIX = "ftlab-"  # submission_group's cgroups: ftlab-<maker>-<name>
GRADE_PREFIXES = ("ftlab-grade-", "ftlab-worker-")  # private_folder's in the temporary folder: a run's, a dask worker's
SCRATCH_BYTES = 2**30  # each private tmpfs (working copy, /tmp, /var/tmp, /dev/shm) holds at most this
MAX_WORKDIR_ENTRIES = 1000  # files and folders copied into the private working copy
ENV_KEPT = ("PATH", "LANG", "LC_ALL", "LC_CTYPE", "TZ", "NBGRADER_EXECUTION", "PYTHONHASHSEED",
            "OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "TF_NUM_INTRAOP_THREADS",
            "TF_NUM_INTEROP_THREADS", "TF_CPP_MIN_LOG_LEVEL", "KERAS_BACKEND",
            "CUDA_VISIBLE_DEVICES", "PYDEVD_DISABLE_FILE_VALIDATION", "JPY_PARENT_PID", "MPLBACKEND")
ENV_PREFIXES_KEPT = ("FTLAB_",)

# ----------------------------------------------------------------------------- THE POLICY
# What a sandboxed process sees: (path, how, why). The README quotes this table; ``view_plan`` turns it into
# the steps both mechanisms (bwrap's arguments, this module's mounts) carry out, in this order.
#   ro     the host's path, bound read-only (skipped when missing)
#   host   as on the host: a symbolic link stays that link (merged /usr), a folder is bound read-only
#   made   a small file written for the sandbox
#   dev    a fresh /dev: null, zero, full, random, urandom, tty, and the fd/stdin/stdout/stderr links
#   proc   a fresh /proc: its own processes only
#   tmpfs  an empty private tmpfs (SCRATCH_BYTES, mode 1777)
#   rw     bound read-write (only the ``keep`` folders)
#   copy   a private tmpfs holding a copy of the working folder's files (writes never reach the real one)
VIEW = (
    ("/usr", "ro", "programs and shared libraries"),
    ("/bin", "host", "merged-/usr links"), ("/sbin", "host", "merged-/usr links"),
    ("/lib", "host", "merged-/usr links"), ("/lib32", "host", "merged-/usr links"),
    ("/lib64", "host", "merged-/usr links"), ("/libx32", "host", "merged-/usr links"),
    ("/etc/ld.so.cache", "ro", "where the dynamic linker finds libraries"),
    ("/etc/ld.so.conf", "ro", "where the dynamic linker finds libraries"),
    ("/etc/ld.so.conf.d", "ro", "where the dynamic linker finds libraries"),
    ("/etc/localtime", "ro", "the time zone"),
    ("/etc/passwd", "made", "two users: root and the sandbox's own"),
    ("/etc/group", "made", "two groups: root and the sandbox's own"),
    ("/dev", "dev", "device nodes a program needs"),
    ("/proc", "proc", "its own processes (pid namespace)"),
    ("/tmp", "tmpfs", "private scratch space"),
    ("/var/tmp", "tmpfs", "private scratch space"),
    ("/dev/shm", "tmpfs", "private shared memory"),
    # after the tmpfs mounts: a course (and its .venv) checked out below /tmp stays visible
    ("{interpreter}", "ro", "the Python installation (sys.base_prefix)"),
    ("{environment}", "ro", "the environment (sys.prefix, the course's .venv)"),
    ("{course}", "ro", "the course package (course/), which the notebooks import"),
    ("{autograder}", "ro", "the autograder package (the runner, this module's inside step)"),
    ("{keep}", "rw", "the kernel's connection file and sockets (a folder on /dev/shm)"),
    ("{workdir}", "copy", "its working folder: a private writable copy, on tmpfs"),
)
DEV_NODES = ("null", "zero", "full", "random", "urandom", "tty")


def _view_sources() -> dict[str, list[str]]:
    import importlib.util
    course = importlib.util.find_spec("course")
    course_dir = os.path.dirname(course.origin) if course and course.origin else str(REPO / "course")
    venv = os.path.dirname(os.path.dirname(os.path.abspath(sys.executable)))  # sys.prefix is not it under -S
    environment = venv if os.path.exists(os.path.join(venv, "pyvenv.cfg")) else sys.prefix
    return {"{interpreter}": [os.path.realpath(sys.base_prefix)], "{environment}": [os.path.realpath(environment)],
            "{course}": [os.path.realpath(course_dir)], "{autograder}": [str(Path(__file__).resolve().parent)]}


def view_plan(spec: dict, inside_uid: int) -> list[tuple[str, str | None, str]]:
    """VIEW for this spec as steps ``(kind, source, destination)``; kinds: ro, rw, link, tmpfs, proc, dev,
    data (source is the text), copy, hide."""
    sources = _view_sources()
    steps, bound = [], []

    def covered(path: str) -> bool:
        return any(path == b or path.startswith(b.rstrip("/") + "/") for b in bound)

    for path, how, _ in VIEW:
        if how in ("ro", "host"):
            for target in sources.get(path, [path]):
                if covered(target):
                    continue
                if how == "host" and os.path.islink(target):
                    steps.append(("link", os.readlink(target), target))
                elif os.path.exists(target):
                    steps.append(("ro", os.path.realpath(target), target))
                    bound.append(target)
        elif how == "made":
            who = "root:x:0:0:root:/root:/usr/sbin/nologin\n" if path.endswith("passwd") else "root:x:0:\n"
            mine = (f"student:x:{inside_uid}:{inside_uid}:student:{spec['workdir']}:/usr/sbin/nologin\n"
                    if path.endswith("passwd") else f"student:x:{inside_uid}:\n")
            steps.append(("data", who + (mine if inside_uid else ""), path))
        elif path == "{keep}":
            for p in spec["keep"]:  # at the path given and where it really is (a link to /dev/shm)
                if os.path.isdir(p):
                    steps += [("rw", os.path.realpath(p), q) for q in dict.fromkeys([p, os.path.realpath(p)])]
        elif path == "{workdir}":
            steps.append(("copy", spec["workdir"], spec["workdir"]))
        else:
            steps.append((how, None, path))
    for path in spec["hide"]:  # a folder to hide that lies inside a bound one (never otherwise visible)
        if covered(path) and os.path.exists(path):
            steps.append(("hide", None, path))
    return steps


# ----------------------------------------------------------------------------- what this host allows
def _is_root() -> bool:
    return hasattr(os, "geteuid") and os.geteuid() == 0


def _bwrap_base(root: bool) -> list[str]:
    base = [shutil.which("bwrap") or "bwrap", "--die-with-parent", "--unshare-pid", "--as-pid-1", "--unshare-net",
            "--unshare-ipc", "--unshare-uts", "--unshare-cgroup-try"]
    if root:  # no user namespace: the inside step needs these to become the submission's user, then has none
        return base + ["--cap-add", "CAP_SETUID", "--cap-add", "CAP_SETGID", "--cap-add", "CAP_CHOWN"]
    return base + ["--unshare-user"]


@lru_cache(maxsize=None)
def bwrap_works() -> tuple[bool, str]:
    """Whether bubblewrap can build a view here, as this user; (ok, version or why not)."""
    if os.environ.get("FTLAB_SANDBOX_BWRAP") == "0":
        return False, "bubblewrap disabled (FTLAB_SANDBOX_BWRAP=0)"
    path = shutil.which("bwrap")
    if not sys.platform.startswith("linux") or not path:
        return False, "bubblewrap (bwrap) is not installed"
    probe = subprocess.run([*_bwrap_base(_is_root()), "--ro-bind", "/", "/", "--proc", "/proc", "--dev", "/dev",
                            "--tmpfs", "/tmp", "true"], capture_output=True, text=True)
    if probe.returncode != 0:
        return False, f"bwrap does not work here: {probe.stderr.strip()[:150]}"
    version = subprocess.run([path, "--version"], capture_output=True, text=True).stdout.strip()
    return True, version or "bubblewrap"


@lru_cache(maxsize=None)
def namespaces_work() -> tuple[bool, str]:
    """Whether this process can make the namespaces the fork path needs (as root, or through a user
    namespace); probed in a forked child."""
    if not sys.platform.startswith("linux") or not hasattr(os, "fork"):
        return False, "no Linux namespaces on this system"
    pid = os.fork()
    if pid == 0:
        try:
            _unshare()
            child = os.fork()
            if child == 0:
                _mount("tmpfs", "/tmp", "tmpfs", _MS_NOSUID | _MS_NODEV, "size=1m")
                os._exit(0)
            os._exit(os.waitstatus_to_exitcode(os.waitpid(child, 0)[1]))
        except BaseException:
            os._exit(1)
    ok = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 0
    how = "namespaces" if _is_root() else "namespaces in a user namespace"
    return (True, how) if ok else (False, "the kernel refuses new namespaces" +
                                   ("" if _is_root() else " to this user (unprivileged user namespaces are off)"))


def exec_mechanism() -> str | None:
    """How ``wrap`` confines a command line here: "bwrap", "namespaces" (this module), or None."""
    if bwrap_works()[0]:
        return "bwrap"
    return "namespaces" if namespaces_work()[0] else None


def protections() -> dict[str, dict]:
    """Which protections this host gives: ``{name: {"active": bool, "how": str}}`` (run.json, the banner)."""
    root, bw, ns = _is_root(), bwrap_works(), namespaces_work()
    exec_how = f"kernel and fresh runners: {bw[1]}" if bw[0] else \
        (f"kernel and fresh runners: {ns[1]} + pivot_root (autograder/sandbox.py; {bw[1]})" if ns[0] else None)
    fork_how = f"forked runners: {ns[1]} + pivot_root (autograder/sandbox.py)" if ns[0] else None
    view = bool(exec_how and fork_how)
    why_not = "; ".join(w for w in (None if bw[0] else bw[1], None if ns[0] else ns[1]) if w)
    view_how = f"allow-list view (sandbox.VIEW); {exec_how}; {fork_how}" if view else why_not
    groups = cgroup_support()
    scratch = scratch_root()
    return {
        "separate_user": {"active": root, "how": "a uid per submission, no groups, no_new_privs" if root else
                          "not root: the code runs as the grading user (in a user namespace, no capability)"},
        "hidden_files": {"active": view, "how": view_how},
        "no_network": {"active": view, "how": "own network namespace: only its own loopback" if view else why_not},
        "own_processes": {"active": view, "how": "own pid namespace" if view else why_not},
        "no_host_disk_writes": {"active": view and scratch is not None,
                                "how": ("writable: tmpfs only; kernel runtime folder on /dev/shm" if scratch
                                        else "no tmpfs at /dev/shm: the kernel's runtime folder is on disk")
                                if view else why_not},
        "memory_per_submission": {"active": groups["memory"][0] is not None, "how": groups["memory"][1]},
        "processes_per_submission": {"active": groups["pids"][0] is not None, "how": groups["pids"][1]},
        "limits": {"active": os.name == "posix", "how": "setrlimit per process: address space, CPU time, "
                   "processes, file size" if os.name == "posix" else "no rlimits on this system"},
    }


def summary(active: dict | None = None) -> str:
    """One line: which protections are on and which are off (and why)."""
    active = active or protections()
    on = [k for k, v in active.items() if v["active"]]
    off = [f"{k} ({v['how']})" for k, v in active.items() if not v["active"]]
    return "sandbox: on: " + (", ".join(on) or "nothing") + ("; OFF: " + ", ".join(off) if off else "")


# ----------------------------------------------------------------------------- cgroups: bounds per submission
def _cgroup_mounts() -> dict[str, tuple[str, str]]:
    """controller -> (mount point, version) from /proc/self/mountinfo ("memory", "pids"; v1 first)."""
    found = {}
    try:
        lines = Path("/proc/self/mountinfo").read_text().splitlines()
    except OSError:
        return found
    for line in lines:
        left, _, right = line.partition(" - ")
        fields, extra = left.split(), right.split()
        if len(extra) < 3:
            continue
        if extra[0] == "cgroup":
            for controller in ("memory", "pids"):
                if controller in extra[2].split(","):
                    found.setdefault(controller, (fields[4], "v1"))
        elif extra[0] == "cgroup2":
            for controller in ("memory", "pids"):
                found.setdefault(controller + "@v2", (fields[4], "v2"))
    return found


def _own_cgroup(controller: str | None) -> str:
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        number, names, path = line.split(":", 2)
        if (controller is None and number == "0") or (controller and controller in names.split(",")):
            return path
    return "/"


@lru_cache(maxsize=None)
def cgroup_support() -> dict[str, tuple[str | None, str]]:
    """controller -> (folder to make submission groups in, or None; how or why not)."""
    mounts, result = _cgroup_mounts(), {}
    for controller in ("memory", "pids"):
        if controller in mounts:
            base = os.path.join(mounts[controller][0], _own_cgroup(controller).lstrip("/"))
            how = f"cgroup v1 {controller} group per submission (under {base})"
            result[controller] = _probe_group(base, controller, how)
        elif controller + "@v2" in mounts:
            mount = mounts[controller + "@v2"][0]
            bases = [os.path.join(mount, _own_cgroup(None).lstrip("/"))] + ([mount] if _is_root() else [])
            result[controller] = (None, f"cgroup v2 at {mount} has no {controller} controller we may use")
            for base in dict.fromkeys(bases):
                try:
                    controllers = Path(base, "cgroup.controllers").read_text().split()
                    if controller not in controllers:
                        continue
                    if controller not in Path(base, "cgroup.subtree_control").read_text().split():
                        Path(base, "cgroup.subtree_control").write_text(f"+{controller}")
                except OSError:
                    continue
                got = _probe_group(base, controller, f"cgroup v2 group per submission (under {base})")
                if got[0]:
                    result[controller] = got
                    break
        else:
            result[controller] = (None, f"no cgroup {controller} controller on this host")
    if result["memory"][0] and "v1" in result["memory"][1]:
        if not os.path.exists(os.path.join(result["memory"][0], "memory.memsw.limit_in_bytes")) and _swap_total():
            result["memory"] = (result["memory"][0], result["memory"][1] + "; swap not bounded (no memsw accounting)")
    return result


def _swap_total() -> int:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("SwapTotal:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def _probe_group(base: str, controller: str, how: str) -> tuple[str | None, str]:
    probe = os.path.join(base, f"ftlab-probe-{os.getpid()}")
    try:
        os.mkdir(probe)
        os.rmdir(probe)
    except OSError as error:
        why = "not root" if not _is_root() and error.errno in (13, 1, 30) else error.strerror
        return None, f"cannot make a {controller} cgroup under {base}: {why}"
    return base, how


def submission_group(name: str, memory_bytes: int, processes: int) -> list[str]:
    """Make the cgroups one submission's sandboxed processes share; returns their folders (none where this
    host has no such control: ``protections()`` says why)."""
    made = []
    for controller, (base, how) in cgroup_support().items():
        if base is None:
            continue
        path = os.path.join(base, f"{GROUP_PREFIX}{maker_tag()}-{name}")
        v2 = "v2" in how
        try:
            os.makedirs(path, exist_ok=True)
            if controller == "memory":
                limits = [("memory.max", memory_bytes), ("memory.swap.max", 0)] if v2 else \
                    [("memory.limit_in_bytes", memory_bytes), ("memory.memsw.limit_in_bytes", memory_bytes)]
            else:
                limits = [("pids.max", processes)]
            for file, value in limits:
                if os.path.exists(os.path.join(path, file)):
                    Path(path, file).write_text(str(value))
        except OSError:
            remove_group([path])
            raise
        if path not in made:
            made.append(path)
    return made


def join_group(paths) -> None:
    """Move this process into the submission's cgroups (before it builds its view or drops root)."""
    for path in paths or ():
        Path(path, "cgroup.procs").write_text("0")


def group_report(paths) -> dict:
    """What the submission's groups saw: peak memory, and whether each limit was reached."""
    report = {}
    for path in paths or ():
        def number(name):
            try:
                return int(Path(path, name).read_text().split()[0])
            except (OSError, ValueError, IndexError):
                return None
        peak = number("memory.max_usage_in_bytes") or number("memory.peak")
        if peak is not None:
            report["memory_peak_bytes"] = peak
            failures = number("memory.failcnt")
            try:  # v1: the limit can be reached with failcnt 0 when the out-of-memory killer made room
                failures = (failures or 0) + int(Path(path, "memory.oom_control").read_text().split("oom_kill ")[1].split()[0])
            except (OSError, ValueError, IndexError):
                pass
            try:
                events = dict(line.split() for line in Path(path, "memory.events").read_text().splitlines())
                failures = int(events.get("max", 0)) + int(events.get("oom_kill", 0))
            except (OSError, ValueError):
                pass
            report["memory_limit_reached"] = bool(failures)
        if os.path.exists(os.path.join(path, "pids.max")):
            try:
                events = dict(line.split() for line in Path(path, "pids.events").read_text().splitlines())
                report["process_limit_reached"] = int(events.get("max", 0)) > 0
            except (OSError, ValueError):
                pass
    return report


def remove_group(paths) -> dict:
    """Kill whatever is left in the submission's cgroups, remove them; returns ``group_report``."""
    import time
    report = group_report(paths)
    for path in paths or ():
        for _ in range(200):  # up to 10 s: a killed process leaves its group when it has been reaped
            try:
                pids = [int(p) for p in Path(path, "cgroup.procs").read_text().split()]
            except OSError:
                break
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except OSError:
                    pass
            try:
                os.rmdir(path)
                break
            except OSError:
                time.sleep(0.05)
    return report


# ----------------------------------------------------------------------------- scratch space (no host disk)
@lru_cache(maxsize=None)
def scratch_root() -> str | None:
    """/dev/shm when it is a tmpfs this user can write (the kernel's runtime folder goes there), else None."""
    try:
        mounts = Path("/proc/self/mounts").read_text().splitlines()
    except OSError:
        return None
    if any(line.split()[1:3] == ["/dev/shm", "tmpfs"] for line in mounts) and os.access("/dev/shm", os.W_OK):
        return "/dev/shm"
    return None


def scratch_folder(link: Path) -> Path:
    """A folder on tmpfs (``scratch_root``) that ``link`` points to; ``link`` itself when there is none."""
    link = Path(link)
    root = scratch_root()
    if root is None:
        link.mkdir()
        return link
    import tempfile
    target = tempfile.mkdtemp(prefix=f"{SCRATCH_PREFIX}{maker_tag()}-", dir=root)
    os.chmod(target, 0o700)
    link.symlink_to(target)
    return link


def lock_scratch(path: Path) -> None:
    """Give a ``scratch_folder`` on tmpfs (``path``, or the link to it) and what is in it back to root: once
    the kernel has bound its sockets there, its code can no longer create files (filling the host's /dev/shm),
    write to or read its connection file, nor open its socket files to other users of the host (a bound
    socket keeps working; root, the grading process, connects). As root only: a plain user's sandbox runs as
    that same user, who could take the folder back (README, Known limits)."""
    folder = os.path.realpath(path)
    if not _is_root() or not os.path.basename(folder).startswith(SCRATCH_PREFIX):
        return
    for name in os.listdir(folder):
        entry = os.path.join(folder, name)
        if not os.path.islink(entry):  # the connection file and the kernel's sockets (bound: they keep working)
            os.chown(entry, 0, 0, follow_symlinks=False)
            os.chmod(entry, 0o600)
    os.chown(folder, 0, 0)
    os.chmod(folder, 0o711)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # EPERM: it exists
        return True
    return True


def _pid_namespace() -> int:
    try:
        return os.stat("/proc/self/ns/pid").st_ino
    except OSError:
        return 0


def maker_tag() -> str:
    """``<pid>.<pid namespace>`` of this process: who made a folder or cgroup, for ``remove_leftovers``."""
    return f"{os.getpid()}.{_pid_namespace()}"


_MAKER = re.compile(r"([0-9]{1,10})\.([0-9]{1,20})-")
MAKER_FILE = "maker"  # in a private_folder: its maker_tag (not in the name, which socket paths are made from)


def _maker_in_name(path: str, rest: str):
    return _MAKER.match(rest)


def _maker_in_file(path: str, rest: str):
    """The tag in a private folder of ours (another user's folder of that name is not looked into)."""
    if os.lstat(path).st_uid != os.geteuid():
        return None
    fd = os.open(os.path.join(path, MAKER_FILE), os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    try:
        return _MAKER.fullmatch(os.read(fd, 64).decode("ascii", "replace"))
    finally:
        os.close(fd)


def remove_leftovers() -> list[str]:
    """Remove the runtime folders (``scratch_folder``), cgroups (``submission_group``) and private folders
    (``private_folder``) of grading processes that died without cleaning up (SIGKILL, the OOM killer, a power
    cut); returns their paths. Their names (a private folder: its MAKER_FILE) carry ``maker_tag()``: only
    those made in this process's pid namespace (another one's pids mean nothing here: a container sharing
    /dev/shm) by a process that is gone are touched (a reused pid leaves them for a later sweep), and whatever still runs in such a cgroup (a
    submission's processes that outlived their grader) is killed first. Any other name, a link, or an entry
    that cannot be read is left alone: /dev/shm and /tmp are writable by every user of the host."""
    import tempfile

    places = [(scratch_root(), SCRATCH_PREFIX, _maker_in_name, remove_tree)]
    places += [(tempfile.gettempdir(), prefix, _maker_in_file, remove_tree) for prefix in GRADE_PREFIXES]
    places += [(base, GROUP_PREFIX, _maker_in_name, lambda path: remove_group([path]))
               for base, _ in cgroup_support().values()]
    namespace, removed = _pid_namespace(), []
    for place, prefix, read_maker, remove in places:
        try:
            names = os.listdir(place) if place else []
        except OSError:
            continue
        for name in names:
            if not name.startswith(prefix):
                continue
            path = os.path.join(place, name)
            try:
                if not stat.S_ISDIR(os.lstat(path).st_mode):
                    continue
                maker = read_maker(path, name[len(prefix):])
                if maker is None or int(maker.group(2)) != namespace or _alive(int(maker.group(1))):
                    continue
                remove(path)
            except Exception:  # noqa: BLE001 - whatever one entry holds, the run goes on
                continue
            if not os.path.lexists(path):
                removed.append(path)
    return removed


def remove_tree(path) -> None:
    """Remove a folder however deep (``shutil.rmtree`` recurses once per level: a tree 1,000 levels deep, which
    a student's kernel or any user of the host can make in /dev/shm or /tmp, raises RecursionError), never
    following links nor crossing into another file system; never raises."""
    try:
        subprocess.run(["rm", "-rf", "--one-file-system", "--", str(path)], stdin=subprocess.DEVNULL,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=600, check=False)
    except (OSError, subprocess.SubprocessError):
        pass


def private_folder(prefix: str) -> Path:
    """A new folder (mode 0700) in the temporary folder for a run's or a worker's copies of the course and the
    submissions; a killed maker's is removed by ``remove_leftovers``."""
    import tempfile

    assert prefix in GRADE_PREFIXES, prefix
    folder = Path(tempfile.mkdtemp(prefix=prefix))  # short: the kernels' socket paths start with it
    os.chmod(folder, 0o700)
    (folder / MAKER_FILE).write_text(maker_tag() + "-")  # as in a name: _MAKER reads both
    return folder


def keep_folder(folder: Path) -> Path:
    """``folder`` (a ``private_folder``) moved into a new ``ftlab-kept-*`` folder, a name no sweep touches
    (--keep-temp); made by mkdtemp, so no other user of the host can take that name first."""
    import tempfile

    kept = Path(tempfile.mkdtemp(prefix="ftlab-kept-", dir=Path(folder).parent)) / Path(folder).name
    Path(folder).rename(kept)
    return kept


def remove_scratch(link: Path) -> None:
    """Remove a ``scratch_folder`` (what ``link`` points to, then the link)."""
    link = Path(link)
    if link.is_symlink():
        remove_tree(os.readlink(link))
        link.unlink()


# ----------------------------------------------------------------------------- building the command
JOB_VARIABLES = ("FTLAB_FORK_SERVER", "FTLAB_WARM_COURSE", "FTLAB_WARM_PARENT")  # the grader's own: never passed on


def safe_environment(base: dict) -> dict:
    """Only the harmless variables of ``base`` (``ENV_KEPT``, ``FTLAB_*`` settings): what may reach a process
    that runs student code. Tokens, passwords and paths of the grading user's environment stay behind."""
    return {k: v for k, v in base.items() if (k in ENV_KEPT or k.startswith(ENV_PREFIXES_KEPT)) and k not in JOB_VARIABLES}


def make_spec(*, workdir: Path, memory_bytes: int | None = None, cpu_seconds: int = DEFAULT_CPU_SECONDS,
              processes: int = DEFAULT_PROCESSES, uid: int | None = None, hide: tuple = (), keep: tuple = (),
              cgroups: tuple = ()) -> dict:
    """What ``wrap`` and ``fork_confined`` confine code to (see ``wrap`` for the arguments).

    Defaults: DEFAULT_UID and DEFAULT_MEMORY (the grading pipeline gives each job its own uid).
    """
    uid = DEFAULT_UID if uid is None else uid
    memory_bytes = DEFAULT_MEMORY if memory_bytes is None else memory_bytes
    hide = [str(Path(p).resolve()) for p in hide]
    if any(os.path.exists(os.path.join(g, "pids.max")) for g in cgroups):
        # the submission's pids group (``submission_group``) is its process bound: each process's RLIMIT_NPROC
        # sits a little above it, so that a fork bomb meets the group (the kernel checks the rlimit first) and
        # ``group_report`` can say so
        processes += 16
    return {"workdir": str(Path(workdir).resolve()), "memory": int(memory_bytes), "cpu": int(cpu_seconds),
            "processes": int(processes), "uid": int(uid), "keep": [os.path.abspath(p) for p in keep],
            "hide": [p for p in hide if _inside_view(p)], "cgroups": [str(p) for p in cgroups]}


def _inside_view(path: str) -> bool:
    """Whether ``path`` lies inside a host path VIEW binds: only those need hiding. The others are left out of
    the spec, which a forked sandbox child inherits in its memory: it would learn where the course, the
    submissions and the output are (red team of 2026-12-03, second round)."""
    sources = _view_sources()
    for entry, how, _ in VIEW:
        if how in ("ro", "host"):
            for target in sources.get(entry, [entry]):
                for bound in dict.fromkeys([target, os.path.realpath(target)]):
                    if path == bound or path.startswith(bound.rstrip("/") + "/"):
                        return True
    return False


def wrap(argv: list[str], *, workdir: Path, memory_bytes: int | None = None,
         cpu_seconds: int = DEFAULT_CPU_SECONDS, processes: int = DEFAULT_PROCESSES, uid: int | None = None,
         hide: tuple = (), keep: tuple = (), give: tuple = (), cgroups: tuple = ()) -> list[str]:
    """The argv that runs ``argv`` sandboxed (see the module docstring for what that means here).

    workdir: the folder the code starts in; it sees a private writable copy of it.
    hide: folders/files never to show (already invisible unless inside a bound path).
    keep: folders to leave visible and writable at the same path (handed to the sandbox user).
    give: files to hand to the sandbox user before it starts (e.g. "{connection_file}").
    uid: a different uid per concurrent job (as root) so that jobs cannot signal each other.
    cgroups: the submission's groups (``submission_group``), joined before anything runs.
    No env/preexec_fn needed: the helper keeps only ``safe_environment``.
    """
    spec = make_spec(workdir=workdir, memory_bytes=memory_bytes, cpu_seconds=cpu_seconds, processes=processes,
                     uid=uid, hide=hide, keep=keep, cgroups=cgroups)
    blob = base64.urlsafe_b64encode(json.dumps(spec).encode()).decode()
    helper = [sys.executable, "-I", "-S", str(Path(__file__).resolve()), "enter", blob]
    for path in give:
        helper += ["--give", str(path)]
    return helper + ["--", *argv]


def _inheritable_fds() -> list[int]:
    kept = []
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        try:
            if fd > 2 and os.get_inheritable(fd):
                kept.append(fd)
        except OSError:
            pass
    return kept


def _bwrap_argv(spec: dict, command: list[str], keep_fds: list[int]) -> list[str]:
    """bwrap's arguments for ``view_plan``; the fds it reads (file copies, made files) are left open."""
    root = _is_root()
    inside_uid = spec["uid"] if root else os.getuid()
    args, made = _bwrap_base(root), set()
    for kind, source, dest in view_plan(spec, inside_uid):
        for parent in reversed(Path(dest).parents[:-1]):  # bwrap would make missing parents 0700
            if str(parent) not in made:
                made.add(str(parent))
                args += ["--perms", "0755", "--dir", str(parent)]
        if kind == "ro":
            args += ["--ro-bind", source, dest]
        elif kind == "rw":
            args += ["--bind", source, dest]
        elif kind == "link":
            args += ["--symlink", source, dest]
        elif kind == "tmpfs":
            args += ["--perms", "1777", "--size", str(SCRATCH_BYTES), "--tmpfs", dest]
        elif kind in ("proc", "dev"):
            args += [f"--{kind}", dest]
        elif kind == "data":
            fd = os.memfd_create("ftlab-view", 0)
            os.write(fd, source.encode())
            os.lseek(fd, 0, os.SEEK_SET)
            args += ["--perms", "0644", "--ro-bind-data", str(fd), dest]
        elif kind == "copy":
            args += ["--perms", "0700", "--size", str(SCRATCH_BYTES), "--tmpfs", dest]
            args += _copy_arguments(source, dest)
        elif kind == "hide":
            args += ["--tmpfs", dest] if os.path.isdir(dest) else ["--ro-bind", "/dev/null", dest]
    args += ["--remount-ro", "/", "--chdir", spec["workdir"], "--",
             sys.executable, "-I", "-S", str(Path(__file__).resolve()), "inside",
             str(spec["uid"] if root else -1), spec["workdir"], ",".join(map(str, keep_fds)), "--", *command]
    return args


def _copy_arguments(source: str, dest: str) -> list[str]:
    """bwrap steps that copy the folder ``source`` (links kept as links, special files skipped) into ``dest``."""
    args, count = [], 0
    for top, dirs, files in os.walk(source):
        rel = os.path.relpath(top, source)
        target_top = dest if rel == "." else os.path.join(dest, rel)
        for name in sorted(dirs + files):
            count += 1
            if count > MAX_WORKDIR_ENTRIES:
                raise OSError(f"more than {MAX_WORKDIR_ENTRIES} entries in {source}")
            path, target = os.path.join(top, name), os.path.join(target_top, name)
            mode = os.lstat(path).st_mode
            if stat.S_ISLNK(mode):
                args += ["--symlink", os.readlink(path), target]
            elif stat.S_ISDIR(mode):
                args += ["--perms", "0755", "--dir", target]
            elif stat.S_ISREG(mode):
                fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
                os.set_inheritable(fd, True)
                args += ["--perms", f"{stat.S_IMODE(mode) | 0o600:o}", "--file", str(fd), target]
    return args


def hand_over(spec: dict, give=()) -> None:
    """As root: give the kept folders and the ``give`` files (the kernel's connection file) to the sandbox's
    uid before it starts (``lock_scratch`` takes them back once the kernel has bound its sockets)."""
    if _is_root():
        for path in [*give, *(p for p in spec["keep"] if os.path.isdir(p))]:
            os.chown(os.path.realpath(path), spec["uid"], spec["uid"])


def enter(argv: list[str]) -> None:
    """``enter SPEC [--give FILE]... -- ARGV``: join the submission's groups, hand over the kept folders and
    given files (root), set the limits, then run ARGV in the view (bwrap, or this module's namespaces)."""
    spec = json.loads(base64.urlsafe_b64decode(argv[0]))
    rest, give = argv[1:], []
    while rest and rest[0] == "--give":
        give.append(rest[1])
        rest = rest[2:]
    command = rest[1:] if rest[:1] == ["--"] else rest
    join_group(spec.get("cgroups"))
    hand_over(spec, give)
    mechanism = exec_mechanism()
    if mechanism == "bwrap":
        keep_fds = _inheritable_fds()
        bwrap = _bwrap_argv(spec, command, keep_fds)
        _limit(spec)
        os.execvpe(bwrap[0], bwrap, _environment(spec["workdir"]))
    if mechanism == "namespaces":
        enter_namespaces()
        child = fork_confined(spec, lambda: os.execvp(command[0], command), pass_fds=tuple(_inheritable_fds()))
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # the child, in our process group, gets it itself
        for forwarded in (signal.SIGTERM, signal.SIGHUP):
            signal.signal(forwarded, lambda number, _frame: os.kill(child, number))
        status = os.waitstatus_to_exitcode(os.waitpid(child, 0)[1])
        os._exit(status if status >= 0 else 128 - status)
    env = confine(spec, tuple(give))  # no view on this host: limits (and, as root, the user switch) only
    os.execvpe(command[0], command, env)


def inside(argv: list[str]) -> None:
    """``inside UID WORKDIR FDS -- ARGV``, in bwrap's view: (root) hand the working copy to UID and become
    it; close every descriptor but 0-2 and FDS; exec ARGV."""
    uid, workdir, fds = int(argv[0]), argv[1], {int(f) for f in argv[2].split(",") if f}
    command = argv[4:] if argv[3:4] == ["--"] else argv[3:]
    if uid >= 0 and _is_root():
        for top, dirs, files in os.walk(workdir):
            for name in [top, *(os.path.join(top, n) for n in dirs + files)]:
                os.lchown(name, uid, uid)
        _drop_privileges(uid)
    _close_all_but((0, 1, 2, *fds))
    os.chdir(workdir)
    os.execvp(command[0], command)


# ----------------------------------------------------------------------------- this module's own view
_MS_RDONLY, _MS_NOSUID, _MS_NODEV, _MS_NOEXEC, _MS_REMOUNT, _MS_BIND, _MS_REC = 1, 2, 4, 8, 32, 4096, 16384
_MS_NOATIME, _MS_NODIRATIME, _MS_RELATIME, _MS_PRIVATE = 1024, 2048, 1 << 21, 1 << 18
_CLONE_NEWNS, _CLONE_NEWUTS, _CLONE_NEWIPC = 0x00020000, 0x04000000, 0x08000000
_CLONE_NEWUSER, _CLONE_NEWPID, _CLONE_NEWNET = 0x10000000, 0x20000000, 0x40000000
_MNT_DETACH, _PR_SET_PDEATHSIG, _PR_SET_NO_NEW_PRIVS, _PR_CAPBSET_DROP, _PR_SET_DUMPABLE = 2, 1, 38, 24, 4
_libc = ctypes.CDLL(None, use_errno=True)


def _check(result: int, what: str) -> None:
    if result != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def _mount(source: str | None, target: str, fstype: str | None, flags: int, data: str | None = None) -> None:
    _libc.mount.argtypes = [ctypes.c_char_p] * 3 + [ctypes.c_ulong, ctypes.c_char_p]
    _check(_libc.mount(source.encode() if source else None, target.encode(), fstype.encode() if fstype else None,
                       flags, data.encode() if data else None), f"mount {source} on {target}")


def _unshare() -> None:
    """unshare mount, pid, network, IPC, UTS namespaces (and a user namespace mapping this uid when not
    root); mounts private from here on."""
    root, uid, gid = _is_root(), os.getuid(), os.getgid()
    flags = _CLONE_NEWNS | _CLONE_NEWPID | _CLONE_NEWNET | _CLONE_NEWIPC | _CLONE_NEWUTS
    _check(_libc.unshare(flags | (0 if root else _CLONE_NEWUSER)), "unshare")
    if not root:
        Path("/proc/self/setgroups").write_text("deny")
        Path("/proc/self/uid_map").write_text(f"{uid} {uid} 1")
        Path("/proc/self/gid_map").write_text(f"{gid} {gid} 1")
    _mount("none", "/", None, _MS_REC | _MS_PRIVATE)


def enter_namespaces() -> bool:
    """Fresh namespaces for THIS process (``_unshare``), when ``namespaces_work()``: its next child is pid 1
    there and builds the view (``fork_confined``). Returns whether it did; raises OSError if refused."""
    if not namespaces_work()[0]:
        return False
    _unshare()
    return True


def _remount_read_only(target: str) -> None:
    flags = os.statvfs(target).f_flag  # keep the flags a user namespace may not clear (nosuid, nodev, ...)
    keep = _MS_RDONLY | _MS_REMOUNT | _MS_BIND
    for st_flag, ms_flag in ((2, _MS_NOSUID), (4, _MS_NODEV), (8, _MS_NOEXEC), (1024, _MS_NOATIME),
                             (2048, _MS_NODIRATIME), (4096, _MS_RELATIME)):
        if flags & st_flag:
            keep |= ms_flag
    _mount(None, target, None, keep)


def _bind(fd: int, target: str, read_only: bool) -> None:
    try:  # not recursive: mounts below a bound folder stay out of the view
        _mount(f"/proc/self/fd/{fd}", target, None, _MS_BIND)
    except OSError:  # a user namespace refuses that when mounts lie below: take them, read-only too
        _mount(f"/proc/self/fd/{fd}", target, None, _MS_BIND | _MS_REC)
    if read_only:
        _remount_read_only(target)


def _build_root(spec: dict, inside_uid: int) -> None:
    """Make VIEW (``view_plan``) the root of this mount namespace: an empty tmpfs, the steps, pivot_root."""
    plan = view_plan(spec, inside_uid)
    fds = {}
    for kind, source, dest in plan:  # opened first: the new root hides the host's paths
        if kind in ("ro", "rw"):
            fds[dest] = os.open(source, os.O_PATH)
        elif kind == "copy":
            fds[dest] = os.open(source, os.O_RDONLY | os.O_DIRECTORY)
    devices = {name: os.open(f"/dev/{name}", os.O_PATH) for name in DEV_NODES if os.path.exists(f"/dev/{name}")}
    new = "/tmp"
    _mount("tmpfs", new, "tmpfs", _MS_NOSUID | _MS_NODEV, "size=16m,mode=0755")
    for kind, source, dest in plan:
        target = new + dest
        if kind == "link":
            os.makedirs(os.path.dirname(target), exist_ok=True)
            os.symlink(source, target)
        elif kind in ("ro", "rw"):
            if stat.S_ISDIR(os.fstat(fds[dest]).st_mode):
                os.makedirs(target, exist_ok=True)
            else:
                os.makedirs(os.path.dirname(target), exist_ok=True)
                open(target, "a").close()
            _bind(fds.pop(dest), target, kind == "ro")
        elif kind in ("tmpfs", "copy", "hide"):
            os.makedirs(target, exist_ok=True)
            mode = {"tmpfs": "1777", "copy": "0700", "hide": "0755"}[kind]
            _mount("tmpfs", target, "tmpfs", _MS_NOSUID | _MS_NODEV, f"size={SCRATCH_BYTES},mode={mode}")
            if kind == "copy":
                fd = fds.pop(dest)
                shutil.copytree(f"/proc/self/fd/{fd}", target, symlinks=True, dirs_exist_ok=True,
                                ignore=_special_files)
                os.close(fd)
                for top, dirs, files in os.walk(target):
                    for name in [top, *(os.path.join(top, n) for n in dirs + files)]:
                        os.lchown(name, inside_uid, inside_uid)
        elif kind == "proc":
            os.makedirs(target, exist_ok=True)
            _mount("proc", target, "proc", _MS_NOSUID | _MS_NODEV | _MS_NOEXEC)
        elif kind == "dev":
            os.makedirs(target, exist_ok=True)
            _mount("tmpfs", target, "tmpfs", _MS_NOSUID, "size=64k,mode=0755")
            for name, fd in devices.items():
                open(f"{target}/{name}", "a").close()
                _bind(fd, f"{target}/{name}", False)
                os.close(fd)
            for name, link in (("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"), ("stdout", "/proc/self/fd/1"),
                               ("stderr", "/proc/self/fd/2")):
                os.symlink(link, f"{target}/{name}")
        elif kind == "data":
            os.makedirs(os.path.dirname(target), exist_ok=True)
            Path(target).write_text(source)
            os.chmod(target, 0o644)
    os.chdir(new)
    _libc.syscall.restype = ctypes.c_long
    _check(_libc.syscall(155, b".", b"."), "pivot_root")  # SYS_pivot_root (x86_64)
    _check(_libc.umount2(b".", _MNT_DETACH), "umount the host's root")
    os.chdir("/")
    _remount_read_only("/")


def _special_files(folder: str, names: list[str]) -> list[str]:
    return [n for n in names if not (os.path.islink(os.path.join(folder, n)) or os.path.isdir(os.path.join(folder, n))
                                     or os.path.isfile(os.path.join(folder, n)))]


def _limit(spec: dict) -> None:
    try:
        import resource
    except ImportError:  # Windows: no rlimits
        return
    for name, value in (("RLIMIT_AS", spec["memory"]), ("RLIMIT_CPU", spec["cpu"]),
                        ("RLIMIT_NPROC", spec["processes"]), ("RLIMIT_FSIZE", FILE_SIZE_LIMIT),
                        ("RLIMIT_CORE", 0)):
        if hasattr(resource, name):
            resource.setrlimit(getattr(resource, name), (value, value))


def _drop_privileges(uid: int) -> None:
    """Root: become ``uid``, no groups, no new privileges (every capability goes with the uid switch)."""
    _libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)
    os.setgroups([])
    os.setresgid(uid, uid, uid)
    os.setresuid(uid, uid, uid)


def _drop_capabilities() -> None:
    """Not root, in our own user namespace: keep the uid, give up every capability for good."""
    _check(_libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "no_new_privs")
    for cap in range(64):
        if _libc.prctl(_PR_CAPBSET_DROP, cap, 0, 0, 0) != 0:
            break  # past the last capability this kernel knows
    header = (ctypes.c_uint32 * 2)(0x20080522, 0)  # _LINUX_CAPABILITY_VERSION_3, this thread
    _check(_libc.capset(header, (ctypes.c_uint32 * 6)()), "capset")


def _environment(workdir: str, base: dict | None = None) -> dict:
    env = safe_environment(os.environ if base is None else base)
    env.update(HOME=workdir, USER="student", LOGNAME="student", TMPDIR="/tmp",
               MPLCONFIGDIR=os.path.join(workdir, ".matplotlib"), KERAS_HOME=os.path.join(workdir, ".keras"),
               PYTHONDONTWRITEBYTECODE="1")
    return env


def confine(spec: dict, give: tuple = (), base_env: dict | None = None) -> dict:
    """Confine THIS process as ``spec`` says; returns the environment the confined code should get.

    As pid 1 of fresh namespaces: the view (``_build_root``). Then the working folder, the ``give`` files,
    the limits, and the switch to the sandbox user (root) or the loss of every capability (user namespace).
    """
    root = _is_root()
    in_view = os.getpid() == 1
    if in_view:
        _build_root(spec, spec["uid"] if root else os.getuid())
    else:  # degraded: no view, so the code works in the real folder
        os.makedirs(spec["workdir"], exist_ok=True)
        if root:
            os.chown(spec["workdir"], spec["uid"], spec["uid"])
    os.chdir(spec["workdir"])
    if root:
        for path in give:
            os.chown(path, spec["uid"], spec["uid"])
    _limit(spec)
    if root:
        _drop_privileges(spec["uid"])
    elif in_view:
        _drop_capabilities()
    return _environment(spec["workdir"], base_env)


# ----------------------------------------------------------------------------- the other way in: fork
def fork_confined(spec: dict, run, base_env: dict | None = None, pass_fds: tuple = ()) -> int:
    """Fork a child that runs ``run()`` confined like ``enter`` confines a program; returns its pid.

    After ``enter_namespaces()`` the child is pid 1 of the fresh namespaces: it joins the submission's
    cgroups, mounts its own /proc and builds the view. It gets the environment ``confine`` gives (from
    ``base_env``), only the file descriptors 0-2 and ``pass_fds`` (as exec with close_fds would), dies with
    this process (parent-death signal, set after the user switch, which would clear it) and never returns:
    ``run`` should end with ``os._exit``; an exception ends the child with status 70.
    """
    parent = os.getpid()
    pid = os.fork()
    if pid:
        return pid
    try:
        join_group(spec.get("cgroups"))
        if os.getpid() == 1:
            _mount("proc", "/proc", "proc", _MS_NOSUID | _MS_NODEV | _MS_NOEXEC)
        env = confine(spec, base_env=base_env)
        _close_all_but((0, 1, 2, *pass_fds))
        os.environ.clear()
        os.environ.update(env)
        import tempfile
        tempfile.tempdir = None
        _libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
        if os.getppid() != parent and os.getpid() != 1:
            os._exit(71)  # the parent is already gone
        run()
    except BaseException:
        import traceback
        traceback.print_exc()
    finally:
        os._exit(70)


def dumpable_again() -> None:
    """In a forked child after the user switch: be dumpable again, as an exec'd program is (the switch cleared it),
    so that its own /proc/self files belong to its user, as in a fresh process (a kernel's code may write
    ``/proc/self/oom_score_adj``). Only processes of the same uid, i.e. of the same submission, gain anything."""
    _libc.prctl(_PR_SET_DUMPABLE, 1, 0, 0, 0)


def _close_all_but(kept: tuple) -> None:
    """Close every file descriptor of this process except ``kept``."""
    for name in os.listdir("/proc/self/fd" if os.path.isdir("/proc/self/fd") else "/dev/fd"):
        fd = int(name)
        if fd not in kept:
            try:
                os.close(fd)
            except OSError:
                pass  # the listing's own descriptor, already gone


def kill_user_processes(uid: int) -> int:
    """SIGKILL every process whose real uid is ``uid`` (a finished job's leftovers); returns how many."""
    import signal
    killed = 0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            status = (entry / "status").read_text()
        except OSError:
            continue
        uid_line = next((line for line in status.splitlines() if line.startswith("Uid:")), "")
        if uid_line.split()[1:2] == [str(uid)]:
            try:
                os.kill(int(entry.name), signal.SIGKILL)
                killed += 1
            except OSError:
                pass
    return killed


if __name__ == "__main__":
    if sys.argv[1:2] == ["enter"]:
        enter(sys.argv[2:])
    elif sys.argv[1:2] == ["inside"]:
        inside(sys.argv[2:])
    else:
        print(summary())
