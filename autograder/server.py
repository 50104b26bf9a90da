"""The fork server: frameworks imported once per grading run; a fresh process forked for each judge and runner.

    with ForkServer.start(preload_for([source_nb]), folder=private_dir) as server:
        verdicts = judge.check_submission(source_nb, submitted_nb, server=server.socket_path)

The judge needs the check modules and the frameworks (torch and torchvision, about 3 s of imports here, or
TensorFlow, about 8 s), and so does every runner. This server imports them once; each judge and each
runner is still a process of its own, forked from the server's clean state: the server itself never
reads a notebook, never holds a hidden test and never runs student code, so what one process does never
reaches another.

Who does what (Linux; elsewhere ``supported()`` is False and judges and runners start as fresh
interpreters: ``python -m autograder.judge``, ``python -m autograder.runner``):

* the **server** (``serve``) binds a unix socket (mode 600, in a folder only the grading user can enter),
  imports the modules, then only accepts connections and forks one **supervisor** per connection. It
  exits when its stdin closes (the grading run that started it is over).
* a **supervisor** (``supervise``) refuses a peer that is not the server's own user and reads one
  request. For a *judge* request it becomes the judge: it runs ``autograder.judge.judge_job`` on the job
  (paths of the instructor's and the student's notebook, limits) and sends the verdicts back on the
  connection. For a *runner* request (sent by a judge: the sandbox spec, the runner's environment, the
  answer pipe and a stderr pipe, the runner request) it enters fresh mount, network, pid and IPC namespaces
  when the sandbox has them (``sandbox.enter_namespaces``), forks the **runner** with
  ``sandbox.fork_confined`` (pid 1 of those namespaces, the private view, limits, the job's user) and
  reports its pid and, when it ends, its exit status; it kills it if the judge goes away.
* the **runner** runs ``autograder.runner.run``: its imports are done, so it goes straight to rebuilding
  the call's arguments, loading the student's definitions and calling one function.
* for a *kernel* request (sent by ``kernel_client``, the program nbgrader starts as the student's kernel:
  the sandbox spec, the connection file, the kernel's environment) the supervisor hands the connection
  file to the job's user, enters fresh namespaces and forks the **kernel** with ``sandbox.fork_confined``
  like a runner; the kernel (``run_kernel``) becomes an IPython kernel with the imports done. The
  supervisor passes on SIGINT from the client (nbgrader interrupts a cell that overruns) and kills the
  kernel when the client goes. Without a server, the client execs the same kernel as a fresh interpreter.

Client side: ``launch_runner`` returns a ``ForkedChild`` that behaves like the ``subprocess.Popen`` of
a fresh runner (``pid`` to kill its process group, ``stderr``, ``wait``); ``run_judge`` waits for verdicts.
"""
from __future__ import annotations

import base64
import importlib
import json
import os
import select
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

SERVER_VARIABLE = "FTLAB_FORK_SERVER"  # where the judge finds the server (set per grading job)
MAGIC = b"FTLAB-FORK-1"
HEADER = struct.Struct("!II")  # lengths of the header JSON and of the job JSON
MAX_HEADER = 1 << 20
MAX_JOB = 64 << 20
CONNECT_TIMEOUT = 600.0  # the first client may wait while the server is still importing TensorFlow


def supported() -> bool:
    return sys.platform.startswith("linux") and hasattr(os, "fork") and hasattr(socket, "send_fds") \
        and hasattr(os, "pidfd_open")


# ---- the server ---------------------------------------------------------------------------------------
def serve(socket_path: str, preload: list[str]) -> None:
    """Bind, import ``preload`` (torch family before TensorFlow), then fork one
    supervisor per connection until stdin closes."""
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old_mask = os.umask(0o177)
    try:
        listener.bind(socket_path)
    finally:
        os.umask(old_mask)
    listener.listen(128)  # clients that come while the imports run wait in the backlog
    print("listening", flush=True)
    from autograder import cells, judge, runner, sandbox  # noqa: F401 - imported once, for every fork
    sandbox.protections()  # probe the namespaces once, here, not in every supervisor
    for name in cells.import_order(preload):
        try:
            importlib.import_module(name)
        except Exception as error:  # a judge or runner that needs it reports the import error
            print(f"import {name}: {type(error).__name__}: {error}", file=sys.stderr, flush=True)
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # supervisors are reaped by the kernel
    print("ready", flush=True)
    stdin = sys.stdin.fileno()
    while True:
        ready, _, _ = select.select([listener, stdin], [], [])
        if stdin in ready and not os.read(stdin, 4096):
            return  # the grading run is over
        if listener not in ready:
            continue
        try:
            conn, _ = listener.accept()
        except OSError:
            continue
        try:
            pid = os.fork()
        except OSError as error:
            print(f"fork failed: {error}", file=sys.stderr, flush=True)
            conn.close()
            continue
        if pid == 0:
            status = 1
            try:
                listener.close()
                supervise(conn)
                status = 0
            except BaseException as error:  # noqa: BLE001 - report, never return into the server loop
                try:
                    send_line(conn, {"error": f"{type(error).__name__}: {error}"[:500]})
                except OSError:
                    pass
            finally:
                os._exit(status)
        conn.close()


def send_line(conn: socket.socket, message: dict) -> None:
    conn.sendall(json.dumps(message).encode() + b"\n")


def receive_request(conn: socket.socket) -> tuple[dict, bytes, list[int]]:
    """(header, job bytes, file descriptors) of one client request."""
    data, fds, _, _ = socket.recv_fds(conn, 65536, 2)
    try:
        size = len(MAGIC) + HEADER.size
        while len(data) < size:
            chunk = conn.recv(65536)
            if not chunk:
                raise ConnectionError("the request ended early")
            data += chunk
        if not data.startswith(MAGIC):
            raise ConnectionError("not a fork server request")
        header_size, job_size = HEADER.unpack_from(data, len(MAGIC))
        if header_size > MAX_HEADER or job_size > MAX_JOB:
            raise ConnectionError("request too large")
        total = size + header_size + job_size
        parts = [data]
        received = len(data)
        while received < total:
            chunk = conn.recv(min(1 << 20, total - received))
            if not chunk:
                raise ConnectionError("the request ended early")
            parts.append(chunk)
            received += len(chunk)
        data = b"".join(parts)
        header = json.loads(data[size:size + header_size])
        return header, data[size + header_size:total], fds
    except BaseException:
        for fd in fds:
            os.close(fd)
        raise


def end_with_client(conn: socket.socket) -> None:
    """A judge's watch: when the process that asked for its verdicts is gone, it ends at once (and its
    runners' supervisors, seeing it go, kill the runners)."""
    try:
        while conn.recv(4096):
            pass
    except OSError:
        pass
    os._exit(1)


JUDGE_MEMORY_HEADROOM = 6 << 30  # address space a judge may add to what the server had mapped when it forked


def bound_judge_memory() -> None:
    """The judge rebuilds models from a runner's plain data: whatever sizes slip through the schema, it cannot
    take more than JUDGE_MEMORY_HEADROOM of address space (a MemoryError there is a failed check, a killed judge
    a failed row), never the machine's memory (red team, finding 3)."""
    import resource

    limit = mapped_bytes() + JUDGE_MEMORY_HEADROOM
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


def mapped_bytes() -> int:
    """The address space this process has mapped (VmSize): what a fork of it inherits."""
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmSize:"))


def supervise(conn: socket.socket) -> None:
    """One request: become the judge, or start a confined runner and report on it."""
    from autograder import judge, runner, sandbox

    os.setsid()  # the client kills this process group (supervisor + runner) when a call overruns
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    _, peer_uid, _ = struct.unpack("3i", conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED,
                                                                 struct.calcsize("3i")))
    if peer_uid != os.geteuid():
        raise PermissionError(f"uid {peer_uid} may not use this fork server")
    header, job, fds = receive_request(conn)
    if header.get("role") == "judge":
        for fd in fds:
            os.close(fd)
        threading.Thread(target=end_with_client, args=(conn,), daemon=True).start()
        bound_judge_memory()
        verdicts = judge.judge_job(json.loads(job))
        send_line(conn, {"verdicts": verdicts})
        return
    if header.get("role") == "kernel":
        for fd in fds:
            os.close(fd)
        kernel = json.loads(job)
        # its address-space limit counts what the kernel maps beyond the server's imports, which a fresh
        # kernel would map itself (``--memory`` as the cgroup counts it: pages the submission makes)
        spec = {**kernel["sandbox"], "memory": int(kernel["sandbox"]["memory"]) + mapped_bytes()}
        sandbox.hand_over(spec, [kernel["connection_file"]])
        sandbox.enter_namespaces()
        child = sandbox.fork_confined(spec, lambda: run_kernel(conn, kernel["connection_file"]),
                                      base_env=header["env"], pass_fds=(conn.fileno(),))
        watch(conn, child)
        return
    if len(fds) != 2:
        raise ConnectionError("a runner request needs its answer and stderr pipes")
    answer_fd, stderr_fd = fds
    spec = header["sandbox"]
    sandbox.enter_namespaces()

    def run() -> None:
        conn.close()
        os.dup2(stderr_fd, 2)
        os.close(stderr_fd)
        devnull = os.open(os.devnull, os.O_RDWR)
        os.dup2(devnull, 0)
        os.dup2(devnull, 1)
        os.close(devnull)
        runner.run(job, answer_fd)

    child = sandbox.fork_confined(spec, run, base_env=header["env"],
                                  pass_fds=(answer_fd, stderr_fd, conn.fileno()))
    del job
    os.close(answer_fd)
    os.close(stderr_fd)
    watch(conn, child)


FORWARDED = {int(signal.SIGINT): signal.SIGINT}  # what a kernel's client may pass on (nbclient's interrupt)


def watch(conn: socket.socket, child: int) -> None:
    """Report the child's pid, pass on the interrupts its client forwards, report its exit status; kill it
    when the client goes away (a judge or a kernel client that is gone wants nothing more from it)."""
    send_line(conn, {"pid": child, "group": os.getpid()})
    pidfd = os.pidfd_open(child)
    buffer = b""
    while True:
        ready, _, _ = select.select([conn, pidfd], [], [])
        if pidfd in ready:
            _, status = os.waitpid(child, 0)
            send_line(conn, {"exit": os.waitstatus_to_exitcode(status)})
            return
        chunk = conn.recv(4096)
        if not chunk:
            os.kill(child, signal.SIGKILL)
            os.waitpid(child, 0)
            return
        *lines, buffer = (buffer + chunk)[-4096:].split(b"\n")
        for line in lines:
            try:
                number = json.loads(line).get("signal")
            except (ValueError, AttributeError):
                continue
            if number in FORWARDED:
                os.kill(child, FORWARDED[number])


# ---- a kernel forked from the server ------------------------------------------------------------------
# Not matplotlib_inline: imported before the kernel's shell exists, it would not hook itself into the shell.
KERNEL_PRELOAD = ["ipykernel.kernelapp", "ipykernel.ipkernel", "ipykernel.zmqshell"]


def run_kernel(conn: socket.socket, connection_file: str) -> None:
    """In the confined child: become the student's IPython kernel, as ``python -m ipykernel_launcher -f
    CONNECTION_FILE`` would, with the server's imports already done. Its output goes to /dev/null (what its
    cells print travels over the kernel's sockets)."""
    from autograder import sandbox

    conn.close()
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(devnull, fd)
    os.close(devnull)
    sandbox.dumpable_again()
    sys.path.insert(0, os.getcwd())  # as ``python -m`` does: the notebook's folder first
    sys.argv = ["ipykernel_launcher", "-f", connection_file]
    fresh_interpreter_state()
    from ipykernel.kernelapp import IPKernelApp

    IPKernelApp.launch_instance(argv=["-f", connection_file])
    os._exit(0)


def fresh_interpreter_state() -> None:
    """What a fresh kernel would have that a fork of the server does not: its own random state (numpy's global
    generator was seeded once, in the server) and matplotlib's backend from this environment (the server
    imported matplotlib with MPLBACKEND=Agg; ipykernel's default is the inline backend)."""
    numpy = sys.modules.get("numpy")
    if numpy is not None:
        numpy.random.seed()
    matplotlib = sys.modules.get("matplotlib")
    if matplotlib is not None:
        backend = os.environ.get("MPLBACKEND") or "module://matplotlib_inline.backend_inline"
        os.environ["MPLBACKEND"] = backend
        matplotlib.rcParams["backend"] = backend


# ---- starting and stopping it (the grading pipeline, tests) ---------------------------------------------
class ForkServer:
    """A running server process; ``stop()`` (or leaving the ``with`` block) ends it and its children."""

    def __init__(self, process: subprocess.Popen, socket_path: Path, log_path: Path):
        self.process, self.socket_path, self.log_path = process, socket_path, log_path

    @classmethod
    def start(cls, preload: list[str], folder: Path, env: dict | None = None) -> "ForkServer":
        """Start a server whose socket lives in ``folder`` (which only the grading user may enter) and
        wait until it listens (its imports go on in the background). ``env``: extra variables, e.g. the
        thread counts, which torch and TensorFlow read when the server imports them."""
        from autograder import sandbox

        folder = Path(folder)
        socket_path = folder / "fork.sock"
        log_path = folder / "fork-server.log"
        # Only the harmless variables: runners are forks of this process, and the environment strings it
        # started with stay in its memory (and theirs) whatever os.environ says later (red team, finding 1).
        env = {**{k: v for k, v in sandbox.safe_environment(os.environ).items()
                  if not k.startswith("PYTHON") and k != SERVER_VARIABLE}, **(env or {})}
        env.update(NBGRADER_EXECUTION="autograde", MPLBACKEND="Agg", TF_CPP_MIN_LOG_LEVEL="2",
                   HOME=str(folder), KERAS_HOME=str(folder / ".keras"), MPLCONFIGDIR=str(folder / ".matplotlib"))
        with open(log_path, "wb") as log:
            process = subprocess.Popen([sys.executable, "-I", "-m", "autograder.server", str(socket_path),
                                        json.dumps(preload)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                       stderr=log, env=env, cwd=folder, start_new_session=True)
        line = process.stdout.readline()
        if line.strip() != b"listening":
            process.kill()
            process.wait()
            raise RuntimeError(f"the fork server did not start: {log_path.read_text()[-500:]}")
        server = cls(process, socket_path, log_path)
        return server

    def wait_ready(self) -> bool:
        """Block until the server has imported its modules (True), or has died (False)."""
        return self.process.stdout.readline().strip() == b"ready"

    def stop(self) -> None:
        try:
            self.process.stdin.close()  # the server's signal to stop
            self.process.wait(timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            self.process.kill()
            self.process.wait()
        try:
            os.killpg(self.process.pid, signal.SIGKILL)  # supervisors still running (their checks are over)
        except (ProcessLookupError, PermissionError):
            pass
        self.process.stdout.close()

    def __enter__(self) -> "ForkServer":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


# ---- the client side ------------------------------------------------------------------------------------
class ForkedChild:
    """A runner the server started for us, with the parts of ``subprocess.Popen`` the judge uses."""

    def __init__(self, conn: socket.socket, group: int, stderr):
        self.conn, self.pid, self.stderr, self.returncode = conn, group, stderr, None
        self.stdin = None
        self._buffer = b""

    def wait(self, timeout: float | None = None) -> int | None:
        """The runner's exit code (negative: killed by that signal); None if the supervisor was killed
        before it could say."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.conn.fileno() >= 0:  # not yet closed by an earlier wait
            *lines, self._buffer = self._buffer.split(b"\n")
            for line in lines:
                try:
                    message = json.loads(line)
                except ValueError:
                    continue
                if isinstance(message, dict) and isinstance(message.get("exit"), int):
                    self.returncode = message["exit"]
            if self.returncode is not None:
                self.conn.close()
                return self.returncode
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                raise subprocess.TimeoutExpired("runner", timeout)
            ready, _, _ = select.select([self.conn], [], [], left)
            if not ready:
                continue
            chunk = self.conn.recv(4096)
            if not chunk:
                self.conn.close()
                return None
            self._buffer += chunk
        return self.returncode

    def kill(self) -> None:
        try:
            os.killpg(self.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


def connect(socket_path: str, header: dict, job: bytes, fds: list[int]) -> socket.socket:
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    conn.settimeout(CONNECT_TIMEOUT)
    try:
        conn.connect(str(socket_path))
        data = json.dumps(header).encode()
        socket.send_fds(conn, [MAGIC + HEADER.pack(len(data), len(job)) + data], fds)
        conn.sendall(job)
    except OSError:
        conn.close()
        raise
    return conn


def read_line(conn: socket.socket, limit: int = 1 << 20) -> tuple[dict, bytes]:
    reply = b""
    while b"\n" not in reply:
        chunk = conn.recv(65536)
        if not chunk:
            raise ConnectionError("the fork server closed the connection")
        reply += chunk
        if len(reply) > limit:
            raise ConnectionError("the fork server's reply is too long")
    first, _, rest = reply.partition(b"\n")
    return json.loads(first), rest


def launch_runner(socket_path: str, request: bytes, *, answer_fd: int, env: dict, sandbox_spec: dict) -> ForkedChild:
    """Ask the server at ``socket_path`` for a runner for ``request``; raises OSError when the server cannot
    be reached or refuses (the judge then starts ``python -m autograder.runner``)."""
    stderr_read, stderr_write = os.pipe()
    try:
        conn = connect(socket_path, {"role": "runner", "sandbox": sandbox_spec, "env": env}, request,
                       [answer_fd, stderr_write])
        message, rest = read_line(conn)
        if "pid" not in message:
            conn.close()
            raise ConnectionError(f"the fork server refused: {message.get('error', message)}")
    except (OSError, ValueError) as error:
        os.close(stderr_read)
        os.close(stderr_write)
        raise OSError(f"fork server at {socket_path}: {error}") from error
    os.close(stderr_write)
    conn.settimeout(None)
    child = ForkedChild(conn, int(message["group"]), os.fdopen(stderr_read, "rb"))
    child._buffer = rest
    return child


def run_judge(socket_path: str, job: dict, timeout: float) -> dict:
    """Ask the server at ``socket_path`` for a judge, wait for its verdicts (at most ``timeout`` s).
    Raises OSError when the server cannot be reached or the judge ends without verdicts."""
    try:
        conn = connect(socket_path, {"role": "judge"}, json.dumps(job).encode(), [])
    except OSError as error:
        raise OSError(f"fork server at {socket_path}: {error}") from error
    try:
        conn.settimeout(timeout)
        message, _ = read_line(conn, limit=256 << 20)
    except (OSError, ValueError) as error:
        raise OSError(f"the judge ended without verdicts: {error}") from error
    finally:
        try:
            conn.close()
        except OSError:
            pass
    if not isinstance(message.get("verdicts"), dict):
        raise OSError(f"the judge failed: {str(message.get('error', message))[:500]}")
    return message["verdicts"]


def kernel_client(argv: list[str]) -> int:
    """``kernel SPEC CONNECTION_FILE -- FALLBACK...``: the student's kernel as jupyter_client starts it (the
    sandbox kernel's kernel.json, ``pipeline.sandbox_settings``). With a fork server ($FTLAB_FORK_SERVER),
    ask it for a kernel forked into the sandbox ``SPEC`` describes and stand in for it: exit with its status,
    pass on SIGINT (nbgrader interrupts a cell that overruns), and take it down when killed (the server kills
    a kernel whose client is gone). Without one, or if the server refuses, exec FALLBACK (the same kernel
    started as a fresh interpreter through ``sandbox.wrap``)."""
    from autograder import sandbox

    spec = json.loads(base64.urlsafe_b64decode(argv[0]))
    connection_file, fallback = argv[1], argv[3:] if argv[2:3] == ["--"] else argv[2:]
    server = os.environ.get(SERVER_VARIABLE)
    if server and supported():
        try:
            conn = connect(server, {"role": "kernel", "env": sandbox.safe_environment(os.environ)},
                           json.dumps({"sandbox": spec, "connection_file": connection_file}).encode(), [])
            message, rest = read_line(conn)
            if "pid" not in message:
                raise ConnectionError(f"the fork server refused: {message.get('error', message)}")
        except (OSError, ValueError) as error:
            print(f"kernel: fork server at {server}: {error}; starting a fresh kernel instead", file=sys.stderr,
                  flush=True)
        else:
            conn.settimeout(None)
            signal.signal(signal.SIGINT, lambda *_: conn.sendall(b'{"signal": 2}\n'))
            child = ForkedChild(conn, int(message["group"]), None)
            child._buffer = rest
            code = child.wait()
            return 1 if code is None else (code if code >= 0 else 128 - code)
    os.execvp(fallback[0], fallback)


def main(argv: list[str]) -> int:
    if argv[:1] == ["kernel"]:
        return kernel_client(argv[1:])
    serve(argv[0], json.loads(argv[1]))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
