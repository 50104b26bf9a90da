"""The runner: the only grading process that runs a student's code, one call of one function, sandboxed.

    request = make_request(program, "freeze_all", wire_request)     # built by the judge
    python -I -m autograder.runner FD < request                      # the answer goes to file descriptor FD

It is started for each call a check makes, either forked by the fork server (``autograder.server``,
which imported the frameworks once; it calls ``run``) or as a fresh interpreter (``main``), always inside
the OS sandbox (``autograder.sandbox``). What it gets: the program (the released notebook's import,
``def``, ``class`` and literal statements, then the student's, see ``autograder.cells``), the name of the
function to call and the call's arguments as plain data (``course.checks.wire``). What it never gets:
test cells, hidden tests, quiz answers, the grader's environment. Its order of work:

1. rebuild the arguments from the data, before any student code exists;
2. load the program (a decorator, default value or class body of the student's runs here);
3. call the function, and write down what it returned, raised and printed and the state of every
   argument afterwards (``wire.answer``), as plain data on the answer pipe; exit.

Whatever the student's code does here can only change that data; the judge (``autograder.judge``) reads
it with a strict parser, rebuilds the objects with the framework's own classes and decides. A runner that
dies, hangs or floods is stopped by the judge, and the check that called it fails with the reason.
"""
from __future__ import annotations

import ast
import builtins
import json
import os
import struct
import sys

LENGTH = struct.Struct("!Q")
READY = b"\x00ftlab-runner-ready\n"  # on stderr, just before the first student statement: the time limit starts
MAX_REQUEST_HEADER = 16 << 20


def make_request(program: list, function: str, call: bytes, preload: list) -> bytes:
    """One runner request: a JSON header (program, function name, modules to import first) and the
    wire-encoded call."""
    header = json.dumps({"program": program, "function": function, "preload": preload}).encode()
    return LENGTH.pack(len(header)) + header + call


def parse_request(request: bytes) -> tuple[dict, memoryview]:
    data = memoryview(request)
    (size,) = LENGTH.unpack(data[:LENGTH.size])
    if size > MAX_REQUEST_HEADER or LENGTH.size + size > len(data):
        raise ValueError("bad runner request")
    header = json.loads(bytes(data[LENGTH.size:LENGTH.size + size]))
    return header, data[LENGTH.size + size:]


def load_program(program: list, namespace: dict, after_each=None) -> list[str]:
    """Run the program's chosen statements in ``namespace``; returns notes on statements that failed.
    ``after_each``: called after every statement (the runner puts back what definition-time code patched)."""
    notes = []
    for block in program:
        cell = block.get("cell") or "an instructor cell"
        for statement in block.get("statements", []):
            try:
                run_statement(statement, namespace, f"<cell {cell}>")
            except Exception as error:  # noqa: BLE001 - reported with the call's answer
                notes.append(f"line {statement.get('line')} of {cell}: {type(error).__name__} while loading: {error}"[:300])
            if after_each is not None:
                after_each()
    return notes


def run_statement(statement: dict, namespace: dict, filename: str) -> None:
    if statement["kind"] == "literal":
        bind(namespace, statement["target"], ast.literal_eval(statement["value"]))
        return
    module = statement.get("module") or ""
    if module.split(".")[0] == "torchvision" and "tensorflow" in sys.modules and "torchvision" not in sys.modules:
        raise ImportError("torchvision cannot be imported after TensorFlow in one process (it crashes)")
    tree = ast.parse("\n" * (statement["line"] - 1) + statement["source"], filename)
    if len(tree.body) != 1 or not isinstance(tree.body[0], (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef,
                                                            ast.Import, ast.ImportFrom)):
        raise ValueError("not a single def, class or import statement")
    exec(compile(tree, filename, "exec", dont_inherit=True), namespace)  # noqa: S102 - the sandboxed student code


def bind(namespace: dict, target, value) -> None:
    if isinstance(target, str):
        namespace[target] = value
        return
    values = list(value)
    if len(values) != len(target):
        raise ValueError("cannot unpack")
    for sub_target, sub_value in zip(target, values):
        bind(namespace, sub_target, sub_value)


def run(request: bytes, answer_fd: int) -> None:
    """Steps 1-3 above; ends the process. Entered by a forked child of the fork server, or by ``main``."""
    from course.checks import wire

    try:
        header, call_data = parse_request(request)
        for module in header.get("preload") or []:  # done already in a fork of the fork server
            try:
                __import__(module)
            except Exception:  # noqa: BLE001 - a module this call may not need
                pass
        call = wire.Call(call_data)                                   # 1. the arguments, before student code
    except Exception as error:  # noqa: BLE001
        write(answer_fd, failure(wire, f"the runner could not read its request: {error}"))
        os._exit(2)
    del request, call_data
    restore = wire.guard()
    os.write(2, READY)
    namespace = {"__name__": "__main__", "__builtins__": builtins}
    # 2. the program; after each statement, what definition-time code patched in the builtins and the answer's
    # writer is put back (defence in depth: the judge reads the answer as data anyway)
    notes = load_program(header.get("program") or [], namespace, after_each=restore)
    name = header.get("function")
    function = namespace.get(name)
    if not callable(function):
        why = f"{name} is not defined" if function is None else f"{name} is not a function"
        why += (" (" + "; ".join(notes)[:1500] + ")") if notes else \
            ": the grader takes only def, class, import and literal assignments from your cells"
        write(answer_fd, failure(wire, why))
        os._exit(0)
    write(answer_fd, wire.answer(function, call, restore))            # 3. the call, and what came of it
    os._exit(0)  # no atexit handlers, no finalizers of student objects


def failure(wire, message: str) -> bytes:
    encoder = wire.Encoder()
    return encoder.packet({"inputs": [], "result": None, "error": {"type": "NameError", "message": message},
                           "printed": ""})


def write(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]
    os.close(fd)


def main() -> None:
    """``python -I -m autograder.runner FD``: the request on stdin, the answer to FD."""
    answer_fd = int(sys.argv[1])
    request = sys.stdin.buffer.read()
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1):
        os.dup2(devnull, fd)
    os.close(devnull)
    run(request, answer_fd)


if __name__ == "__main__":
    main()
