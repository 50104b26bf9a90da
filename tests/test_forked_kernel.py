"""The student's kernel forked from the run's fork server (issue 15): started exactly as nbgrader starts it
(the sandbox kernel spec ``pipeline.sandbox_settings`` writes, through jupyter_client), confined like a fresh
one, interruptible, gone with its client, and a fresh interpreter again when there is no server."""
from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path

import pytest
from jupyter_client import KernelManager

from autograder import pipeline, sandbox, server as fork_server
from grading import SANDBOX_PROBE

pytestmark = pytest.mark.skipif(not fork_server.supported(), reason="the fork server needs Linux")

SERVER_SECRET = "k3rnel-server-start-token"
ROOT = all(v["active"] for v in sandbox.protections().values())


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """A fork server preloaded as a run preloads it for a notebook that imports numpy."""
    folder = tmp_path_factory.mktemp("fork-server")
    os.chmod(folder, 0o700)
    os.environ["INSTRUCTOR_API_TOKEN"] = SERVER_SECRET  # in the grader's environment when the server starts
    try:
        running = fork_server.ForkServer.start(["numpy", *fork_server.KERNEL_PRELOAD], folder)
    finally:
        del os.environ["INSTRUCTOR_API_TOKEN"]
    with running:
        assert running.wait_ready()
        yield str(running.socket_path)


def start_kernel(tmp_path: Path, monkeypatch, server_socket: str | None, hide=()) -> tuple[KernelManager, int]:
    """The sandbox kernel of one job, started the way nbgrader's Execute starts it, and its uid (as root)."""
    job = tmp_path / "job"
    workdir = job / "course" / "autograded" / "student" / "a1"
    workdir.mkdir(parents=True)
    os.chmod(tmp_path, 0o755)
    opts = pipeline.Options(assignment="a1", submissions=tmp_path, out=tmp_path, memory_bytes=4 << 30,
                            submission_timeout=300)
    settings = pipeline.sandbox_settings(opts, job, workdir, opts.first_uid, [job / "secret", *hide], [])
    runtime = job / "runtime"
    monkeypatch.setenv("JUPYTER_PATH", str(job / "jupyter"))
    if server_socket:
        monkeypatch.setenv(fork_server.SERVER_VARIABLE, server_socket)
    else:
        monkeypatch.delenv(fork_server.SERVER_VARIABLE, raising=False)
    assert "c.KernelManager.transport = 'ipc'" in settings
    km = KernelManager(kernel_name=pipeline.SANDBOX_KERNEL, transport="ipc", ip=str(runtime / "kernel"),
                       connection_file=str(runtime / "kernel-test.json"))  # in the folder the sandbox keeps
    km.start_kernel(cwd=str(workdir))
    return km, opts.first_uid


def run(km: KernelManager, code: str, timeout: float = 60) -> tuple[str, str]:
    """(status, text printed or the error) of one execution."""
    kc = km.client()
    kc.start_channels()
    try:
        kc.wait_for_ready(timeout=120)
        texts = []
        reply = kc.execute_interactive(code, timeout=timeout, output_hook=lambda m: texts.append(
            m["content"].get("text") or m["content"].get("ename") or ""))
        return reply["content"]["status"], "".join(texts)
    finally:
        kc.stop_channels()


PROBE = SANDBOX_PROBE + """
import json, os, sys
found = probe(PATHS, PORT)
found.update(isolated=sys.flags.isolated, pid=os.getpid(), imported="numpy" in sys.modules, cwd=os.getcwd())
found["in_memory"] = []  # every readable mapping of this process: what the fork inherited
with open("/proc/self/mem", "rb", 0) as mem:
    for line in open("/proc/self/maps"):
        parts = line.split()
        start, end = (int(x, 16) for x in parts[0].split("-"))
        if "r" not in parts[1] or end - start > 300 << 20 or parts[-1] in ("[vvar]", "[vsyscall]"):
            continue
        try:
            mem.seek(start)
            data = mem.read(end - start)
        except (OSError, OverflowError, ValueError):
            continue
        for head, tail in WORDS:  # the word is never whole in this process, unless it was there before
            at = data.find(head.encode())
            while at >= 0 and head + "|" + tail not in found["in_memory"]:
                if data[at + len(head):at + len(head) + len(tail)] == tail.encode():
                    found["in_memory"].append(head + "|" + tail)
                at = data.find(head.encode(), at + 1)
found["runtime"] = []  # the runtime folder, once the grading side has locked it
for name in NAMES:
    try:
        os.chmod(os.path.join(RUNTIME, name), 0o777)
        found["runtime"].append(name)
    except OSError:
        pass
print(json.dumps(found))
"""


@pytest.mark.skipif(not ROOT, reason="needs every protection (root)")
def test_a_forked_kernel_is_confined_like_a_fresh_one(server, tmp_path, monkeypatch):
    secret = tmp_path / "submissions" / "answers.txt"
    secret.parent.mkdir()
    secret.write_text("42")
    monkeypatch.setenv("INSTRUCTOR_TOKEN", "s3cr3t-token")
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    paths = [str(secret), str(pipeline.REPO / "source" / "quiz" / "quiz.ipynb"), server]
    elsewhere = tmp_path / "instructor-only"  # hidden too; its name appears nowhere in what the kernel is sent
    km, _ = start_kernel(tmp_path, monkeypatch, server, hide=[secret.parent, elsewhere])
    runtime = tmp_path / "job" / "runtime"
    words = [(w[:len(w) // 2], w[len(w) // 2:]) for w in (str(elsewhere), "s3cr3t-token", SERVER_SECRET)]
    try:
        run(km, "1")  # ready: the grading side locks the runtime folder now (grade_one's CappedExecute)
        sandbox.lock_scratch(runtime)
        names = sorted(os.listdir(runtime))  # the connection file and the ipc socket files (kernel-N)
        assert len(names) >= 6, names
        code = (f"PATHS, PORT, RUNTIME, NAMES = {paths!r}, {listener.getsockname()[1]}, {str(runtime)!r}, {names!r}\n"
                f"WORDS = {words!r}\n" + PROBE)
        status, text = run(km, code)
        assert status == "ok", text
        found = json.loads(text)
    finally:
        km.shutdown_kernel(now=True)
        listener.close()
    assert found["isolated"] == 1 and found["imported"], "not forked from the server: " + str(found)
    assert found["pid"] == 1 and found["processes"] < 5, found
    assert found["uid"] not in (0, os.getuid()), found
    assert not found["read"] and not found["loopback"], found
    assert found["cwd"].endswith("autograded/student/a1"), found
    environ = str(found["environ"])  # os.environ now and "(initial block)": the strings it started with
    assert "s3cr3t-token" not in environ and SERVER_SECRET not in environ and len(found["environ"]["(initial block)"]) > 20
    assert found["in_memory"] == [], "in the kernel's memory: " + str(found["in_memory"])
    assert found["runtime"] == [], "the kernel could open up its runtime folder: " + str(found["runtime"])


def test_a_forked_kernel_is_interrupted_and_dies_with_its_client(server, tmp_path, monkeypatch):
    km, uid = start_kernel(tmp_path, monkeypatch, server)
    try:
        status, text = run(km, "import os, sys; print(sys.flags.isolated, os.getpid())")
        assert (status, text.split()) == ("ok", ["1", "1"]), text
        kc = km.client()
        kc.start_channels()
        msg_id = kc.execute("import time; time.sleep(120)")
        time.sleep(2)
        started = time.monotonic()
        km.interrupt_kernel()  # what nbgrader does to a cell that overruns (SIGINT to the client's group)
        reply = kc.get_shell_msg(timeout=30)
        kc.stop_channels()
        assert reply["parent_header"]["msg_id"] == msg_id
        assert reply["content"]["status"] == "error" and reply["content"]["ename"] == "KeyboardInterrupt", reply
        assert time.monotonic() - started < 30
        assert run(km, "print(6 * 7)") == ("ok", "42\n")  # the same kernel goes on
        client = km.provisioner.process
    finally:
        km.shutdown_kernel(now=True)  # SIGKILL to the client: the server kills the kernel
    assert client.poll() is not None
    if ROOT:  # the kernel ran as the job's own uid: no process of that uid may be left
        deadline = time.monotonic() + 10
        while users(uid) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not users(uid), "the kernel outlived its client"


def users(uid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and (entry / "status").read_text().split("Uid:")[1].split()[0] == str(uid):
                found.append(int(entry.name))
        except (OSError, IndexError):
            pass
    return found


def test_without_a_server_the_kernel_is_a_fresh_interpreter(tmp_path, monkeypatch):
    km, _ = start_kernel(tmp_path, monkeypatch, str(tmp_path / "no-such-server.sock"))
    try:
        status, text = run(km, "import os, sys; print(sys.flags.isolated, 'numpy' in sys.modules)")
    finally:
        km.shutdown_kernel(now=True)
    assert (status, text.split()) == ("ok", ["0", "False"]), text
