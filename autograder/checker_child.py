"""The checker's child process: runs one submission's test cells and reports verdicts to its parent.

Started by ``autograder.checker.check_submission`` either as ``python -I -m autograder.checker_child``
(through the OS sandbox when there is one; ``main`` reads one JSON job from stdin) or forked, already
confined, by the checker server (``autograder.checker_server``), which calls ``run(job)`` with the
frameworks imported. See ``checker.py`` for the job's fields; this process never reads the course's files.
Order of events, which is what makes verdicts hard to forge:

1. read the job, the verdict nonce and the verdict pipe's fd; move the fd to a random number, make it
   non-inheritable and keep fd and nonce only inside the ``report`` closure;
2. import the frameworks and modules the instructor's cells import (torch family before TensorFlow),
   including the course check modules, which capture their own references at import;
3. take a ``Snapshot`` of everything student code could patch, capture the references this module
   judges with, and install an audit hook that refuses introspection and process tricks to student code;
4. load the instructor's import/literal/def statements and the student's allowed statements;
   restore the snapshot;
5. for each test cell: a fresh namespace (fresh builtins dict, the instructor's bindings over the
   admissible student bindings, student functions wrapped so that every call is followed by a
   restore), run it under a soft time limit, restore, report ``pass`` or ``fail`` with the message.
"""
from __future__ import annotations

import _thread
import ast
import builtins
import gc
import importlib
import io
import json
import os
import secrets
import signal
import sys
import threading
import types
import warnings

# ---- references captured before any student code can run --------------------------------------------
_dict_items, _dict_get, _dict_keys = dict.items, dict.get, dict.keys
_dict_setitem, _dict_delitem, _dict_copy = dict.__setitem__, dict.__delitem__, dict.copy
_list, _len, _isinstance, _issubclass, _type, _id = list, len, isinstance, issubclass, type, id
_str, _int, _repr, _tuple, _set, _frozenset = str, int, repr, tuple, set, frozenset
_BaseException, _AssertionError, _RuntimeError = BaseException, AssertionError, RuntimeError
_type_setattr, _type_delattr = type.__setattr__, type.__delattr__
_type_name = type.__dict__["__name__"].__get__
_type_mro = type.__dict__["__mro__"].__get__
_mappingproxy_items = types.MappingProxyType.items
_FunctionType, _ModuleType, _MethodType = types.FunctionType, types.ModuleType, types.MethodType
_func_code = types.FunctionType.__dict__["__code__"]
_func_defaults = types.FunctionType.__dict__["__defaults__"]
_func_kwdefaults = types.FunctionType.__dict__["__kwdefaults__"]
_code_filename = types.CodeType.__dict__["co_filename"].__get__
_frame_back = types.FrameType.__dict__["f_back"].__get__
_frame_code = types.FrameType.__dict__["f_code"].__get__
_tb_next = types.TracebackType.__dict__["tb_next"].__get__
_tb_frame = types.TracebackType.__dict__["tb_frame"].__get__
_tb_lineno = types.TracebackType.__dict__["tb_lineno"].__get__
_getframe = sys._getframe
_os_write, _os_exit, _os_close, _os_dup2 = os.write, os._exit, os.close, os.dup2
_set_inheritable, _getpid = os.set_inheritable, os.getpid
_encode_str = json.encoder.encode_basestring_ascii  # the C implementation: patching json changes nothing
_json_loads = json.loads
_compile, _exec, _literal_eval = compile, exec, ast.literal_eval
_setitimer, _signal, _getsignal = signal.setitimer, signal.signal, signal.getsignal
_settrace, _setprofile = sys.settrace, sys.setprofile
_thread_count = _thread._count
_import_module = importlib.import_module
_str_startswith = str.startswith
_gc_enable = gc.enable
_StringIO, _output_text = io.StringIO, io.StringIO.getvalue  # built-in type: its methods cannot be patched
_output_seek, _output_truncate = io.StringIO.seek, io.StringIO.truncate

MISSING = object()
MESSAGE_LIMIT = 3000
OUTPUT_LIMIT = 20000  # characters a test cell may print into the feedback
TORCH_FAMILY = ("torch", "torchvision", "course.torch_tools", "course.checks.torch")
TF_FAMILY = ("tensorflow", "keras", "tf_keras", "course.keras_tools", "course.checks.keras")
# Modules whose dicts, and whose classes' dicts, are restored after every student call and test cell.
PROTECTED_PREFIXES = ("builtins", "sys", "os", "posixpath", "json", "ast", "types", "functools", "inspect",
                      "warnings", "threading", "signal", "gc", "importlib", "copy", "math", "random",
                      "numpy", "torch.nn", "torch.optim", "torch.autograd", "torch._tensor", "torch.random",
                      "torch.functional", "torch.serialization", "torchvision.models", "torchvision.ops",
                      "keras", "tensorflow.python.keras", "course", "autograder.checker_child", "IPython.core.interactiveshell")
PROTECTED_EXACT = ("torch", "torchvision", "tensorflow", "unittest.mock")
KEY_CLASSES_FOR_CODE = ("Module", "Tensor", "TensorBase", "Parameter", "Optimizer", "Layer", "Model", "Variable",
                        "Sequential", "Functional", "BatchNorm2d", "BatchNormalization", "Dense", "Linear", "SGD", "Adam")
SIGNALS = tuple(s for s in (getattr(signal, n, None) for n in ("SIGALRM", "SIGINT", "SIGTERM", "SIGUSR1", "SIGUSR2",
                                                                "SIGHUP", "SIGVTALRM", "SIGPROF", "SIGCHLD"))
                if s is not None)
LITERAL_TYPES = (str, int, float, complex, bool, type(None), bytes, tuple, list, dict, set, frozenset)
FRAME_ATTRIBUTES = frozenset({"tb_frame", "gi_frame", "cr_frame", "ag_frame", "f_code", "gi_code", "cr_code",
                              "ag_code", "__code__", "f_back", "f_locals", "f_globals"})
# Standard-library helpers that hand out frames: when one of them asks, its caller is the one judged.
FRAME_HELPERS = (f"{os.sep}inspect.py", f"{os.sep}traceback.py", f"logging{os.sep}__init__.py")
CALLER_EVENTS = frozenset({"sys._getframe", "sys._current_frames", "compile", "exec", "marshal.loads",
                           "marshal.load", "code.__new__", "function.__new__", "cpython.PyInterpreterState_Clear"})
STACK_EVENTS = frozenset({"gc.get_referrers", "gc.get_referents", "gc.get_objects", "sys.settrace", "sys.setprofile",
                          "sys._current_frames", "os.fork", "os.forkpty", "os.system", "os.exec", "os.posix_spawn",
                          "os.spawn", "subprocess.Popen", "os.kill", "os.killpg", "signal.pthread_kill", "pty.spawn",
                          "sys.setrecursionlimit", "sys.set_asyncgen_hooks", "sys.setswitchinterval",
                          "cpython.run_command", "os.startfile", "gc.freeze", "sys.remote_exec"})


class CellTimeout(BaseException):
    """Raised by the soft per-cell timer (a BaseException, so ``except Exception`` cannot swallow it)."""


# ---- the verdict channel -------------------------------------------------------------------------------
def make_reporter(fd: int, nonce: str):
    """``report(event, **fields)`` writing one nonce-tagged JSON line to the verdict pipe.

    The fd is moved to a random number and made non-inheritable; fd and nonce live only in this closure.
    """
    target = 200 + secrets.randbelow(700)
    _os_dup2(fd, target, inheritable=False)
    _os_close(fd)
    fd = target
    tag = _encode_str(nonce)

    def report(event: str, **fields) -> None:
        parts = ['{"nonce":', tag, ',"event":', _encode_str(event)]
        for key, value in _dict_items(fields):
            parts.append("," + _encode_str(key) + ":")
            if value is True or value is False or value is None:
                parts.append({True: "true", False: "false", None: "null"}[value])
            elif _type(value) is _int:
                parts.append(_int.__repr__(value))
            else:
                parts.append(_encode_str(_str.__str__(value) if _type(value) is _str else "?"))
        line = ("".join(parts) + "}\n").encode()
        while line:
            line = line[_os_write(fd, line):]

    return report


# ---- the snapshot: everything a student could patch ----------------------------------------------------
def make_self_restorer(module_dict: dict):
    """A function that puts this module's globals back using only references bound as default values,
    so that it works even when student code has replaced the helpers everything else here looks up."""
    saved = _dict_copy(module_dict)

    def restore_self(saved=saved, target=module_dict, items=dict.items, get=dict.get, setitem=dict.__setitem__,
                     keys=dict.keys, delitem=dict.__delitem__, to_list=list, size=len, missing=MISSING):
        for key, value in items(saved):
            if get(target, key, missing) is not value:
                setitem(target, key, value)
        if size(target) != size(saved):
            for key in to_list(keys(target)):
                if key not in saved:
                    delitem(target, key)

    return restore_self


def protected_modules() -> list:
    chosen = [sys.modules[__name__]]
    for name, module in _list(_dict_items(sys.modules)):
        if not _isinstance(module, _ModuleType):
            continue
        if name in PROTECTED_EXACT or any(name == p or _str_startswith(name, p + ".") for p in PROTECTED_PREFIXES):
            chosen.append(module)
    return chosen


class Snapshot:
    """Module dicts, class dicts, key functions' code/defaults and interpreter hooks, restorable in place."""

    def __init__(self, modules: list):
        self.modules = [(m.__dict__, _dict_copy(m.__dict__)) for m in modules]
        classes = {}
        for module_dict, saved in self.modules:
            for value in saved.values():
                if _isinstance(value, type):
                    for cls in _type_mro(value):
                        classes[_id(cls)] = cls
        self.classes = [(cls, dict(_mappingproxy_items(cls.__dict__))) for cls in classes.values()]
        self.types = existing_types()  # every class alive now: anything else was made by student code
        self.functions = []
        for cls, saved in self.classes:
            if _type_name(cls) in KEY_CLASSES_FOR_CODE:
                self.functions += [(f, _func_code.__get__(f), _func_defaults.__get__(f), _func_kwdefaults.__get__(f))
                                   for f in saved.values() if _type(f) is _FunctionType]
        for module_dict, saved in self.modules:
            if _str_startswith(_dict_get(saved, "__name__", "") or "", "course"):
                self.functions += [(f, _func_code.__get__(f), _func_defaults.__get__(f), _func_kwdefaults.__get__(f))
                                   for f in saved.values() if _type(f) is _FunctionType]
        self.sys_modules = _dict_copy(sys.modules)
        self.meta_path, self.path_hooks, self.path = _list(sys.meta_path), _list(sys.path_hooks), _list(sys.path)
        self.hooks = {name: getattr(sys, name) for name in ("excepthook", "displayhook", "unraisablehook",
                                                              "breakpointhook", "stdout", "stderr", "stdin")}
        self.signals = {s: _getsignal(s) for s in SIGNALS}
        self.warning_filters = _list(warnings.filters)
        self.environ = _dict_copy(os.environ._data)
        self.gc_callbacks = _list(gc.callbacks)
        self.cwd = os.getcwd()
        self.threads = _thread_count()

    def restore(self) -> list[str]:
        """Put everything back; returns short descriptions of what had been changed (for the record)."""
        changed = []
        _settrace(None)
        _setprofile(None)
        threading.settrace(None)
        threading.setprofile(None)
        for module_dict, saved in self.modules:
            for key, value in _dict_items(saved):
                if _dict_get(module_dict, key, MISSING) is not value:
                    _dict_setitem(module_dict, key, value)
                    changed.append(f"{_dict_get(saved, '__name__', '?')}.{key}")
            if _len(module_dict) != _len(saved):
                for key in _list(_dict_keys(module_dict)):
                    if key not in saved and not _isinstance(_dict_get(module_dict, key), _ModuleType):
                        _dict_delitem(module_dict, key)
                        changed.append(f"{_dict_get(saved, '__name__', '?')}.{key} (added)")
        for cls, saved in self.classes:
            current = cls.__dict__
            for key, value in _dict_items(saved):
                if current.get(key, MISSING) is not value:
                    try:
                        _type_setattr(cls, key, value)
                        changed.append(f"{_type_name(cls)}.{key}")
                    except (TypeError, AttributeError):
                        pass
            if _len(current) != _len(saved):
                for key in _list(current.keys()):
                    if key not in saved and key != "__slotnames__":
                        try:
                            _type_delattr(cls, key)
                            changed.append(f"{_type_name(cls)}.{key} (added)")
                        except (TypeError, AttributeError):
                            pass
        for f, code, defaults, kwdefaults in self.functions:
            if _func_code.__get__(f) is not code:
                _func_code.__set__(f, code)
                changed.append(f"{f.__qualname__}.__code__")
            if _func_defaults.__get__(f) is not defaults:
                _func_defaults.__set__(f, defaults)
            if _func_kwdefaults.__get__(f) is not kwdefaults:
                _func_kwdefaults.__set__(f, kwdefaults)
        modules = sys.modules
        for name, module in _dict_items(self.sys_modules):
            if _dict_get(modules, name, MISSING) is not module:
                _dict_setitem(modules, name, module)
                changed.append(f"sys.modules[{name!r}]")
        sys.meta_path[:] = self.meta_path
        sys.path_hooks[:] = self.path_hooks
        sys.path[:] = self.path
        for name, value in _dict_items(self.hooks):
            if getattr(sys, name) is not value:
                setattr(sys, name, value)
                changed.append(f"sys.{name}")
        for number, handler in _dict_items(self.signals):
            if _getsignal(number) is not handler and handler is not None:
                _signal(number, handler)
        warnings.filters[:] = self.warning_filters
        warnings._filters_mutated()
        os.environ._data.clear()
        os.environ._data.update(self.environ)
        gc.callbacks[:] = self.gc_callbacks
        _gc_enable()
        if os.getcwd() != self.cwd:
            os.chdir(self.cwd)
        return changed


# ---- framework state that is not a dict entry -----------------------------------------------------------
def framework_state():
    """(get, put) for global framework settings a student call could flip: grad mode, default dtypes."""
    torch = sys.modules.get("torch")
    keras = sys.modules.get("keras")
    pairs = []
    if torch is not None:
        pairs += [(torch.is_grad_enabled, torch.set_grad_enabled), (torch.get_default_dtype, torch.set_default_dtype),
                  (torch.are_deterministic_algorithms_enabled, torch.use_deterministic_algorithms),
                  (torch.is_anomaly_enabled, torch.set_anomaly_enabled)]
    if keras is not None:
        try:
            pairs += [(keras.config.floatx, keras.config.set_floatx),
                      (keras.config.image_data_format, keras.config.set_image_data_format),
                      (keras.config.dtype_policy, keras.config.set_dtype_policy)]
        except AttributeError:
            pass

    def get() -> list:
        return [getter() for getter, _ in pairs]

    def put(values: list) -> None:
        for (getter, setter), value in zip(pairs, values):
            try:
                if getter() is not value and getter() != value:
                    setter(value)
            except Exception:
                pass

    return get, put


# ---- the audit hook: no introspection or process tricks from student code --------------------------------
def install_audit_hook(student_tag: str):
    """Refuse to student code: new audit hooks, frame/code introspection, gc walks, ctypes, processes, signals.

    "Student code" = frames whose code was compiled from an answer cell (filename contains ``student_tag``).
    Frame/code access and compile/exec are refused only when student code is the direct caller (or calls
    a standard frame helper), so library code a student function calls keeps working; gc, ctypes, tracing
    and processes are refused when any student frame is on the stack. Every reference the hook uses is
    bound here, never looked up in this module's globals (which student code could rewrite).
    """

    def hook(event, args, busy=[False], marker=student_tag, caller_events=CALLER_EVENTS, stack_events=STACK_EVENTS,
             frame_attributes=FRAME_ATTRIBUTES, helpers=FRAME_HELPERS, size=len, kind=type, function=_FunctionType,
             startswith=str.startswith, endswith=str.endswith, refuse=RuntimeError, getframe=sys._getframe,
             back=_frame_back, code_of=_frame_code, filename_of=_code_filename):
        if busy[0]:
            return
        if event == "sys.addaudithook":
            raise refuse("the checker does not allow audit hooks")
        caller_only = event in caller_events or (event == "object.__getattr__" and size(args) > 1
                                                 and args[1] in frame_attributes)
        if event == "object.__setattr__" and size(args) > 1 and kind(args[0]) is function:
            caller_only = False
            whole = True
        else:
            whole = event in stack_events or startswith(event, "ctypes.")
        if not (caller_only or whole):
            return
        busy[0] = True
        try:
            frame = back(getframe(0))  # the Python frame that caused the event
            while frame is not None:
                filename = filename_of(code_of(frame))
                if marker in filename:
                    raise refuse(f"the checker does not allow {event} in answer code")
                if caller_only and not endswith(filename, helpers):
                    break
                frame = back(frame)  # a frame helper (inspect.currentframe...): judge its caller
        finally:
            busy[0] = False

    sys.addaudithook(hook)


# ---- loading statements ---------------------------------------------------------------------------------
def bind_literal(namespace: dict, target, value) -> None:
    if _type(target) is _str:
        _dict_setitem(namespace, target, value)
        return
    values = _list(value)
    if _len(values) != _len(target):
        raise ValueError("cannot unpack")
    for sub_target, sub_value in zip(target, values):
        bind_literal(namespace, sub_target, sub_value)


ALLOWED_CODE = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Import, ast.ImportFrom)


def run_statement(statement: dict, namespace: dict, filename: str, notes: list, tf_loaded) -> None:
    """One statement the parent chose: ``literal`` (bound here, no code runs) or ``code`` (def/class/import,
    re-parsed here and refused unless it is exactly one such statement)."""
    if statement["kind"] == "literal":
        bind_literal(namespace, statement["target"], _literal_eval(statement["value"]))
        return
    module = statement.get("module") or ""
    if tf_loaded() and (module == "torchvision" or _str_startswith(module, "torchvision.")) \
            and "torchvision" not in sys.modules:
        notes.append(f"line {statement['line']}: not imported (torchvision after TensorFlow crashes Python)")
        return
    tree = ast.parse("\n" * (statement["line"] - 1) + statement["source"], filename)
    if _len(tree.body) != 1 or not _isinstance(tree.body[0], ALLOWED_CODE):
        raise _RuntimeError("not a single def, class or import statement")
    _exec(_compile(tree, filename, "exec", dont_inherit=True, optimize=0), namespace)


def existing_types() -> dict:
    """id -> class for every class alive now (walked through ``__subclasses__`` from ``object``)."""
    subclasses = type.__dict__["__subclasses__"]
    seen, stack = {}, [object]
    while stack:
        cls = stack.pop()
        if _id(cls) not in seen:
            seen[_id(cls)] = cls
            stack.extend(subclasses(cls))
    return seen


def admissible(value, snapshot: Snapshot) -> bool:
    """May a student binding reach the test cells? Values of literal types, modules, functions, classes
    whose metaclass existed before student code ran, and instances of torch/numpy/keras/tensorflow types
    that existed then. Never an object of a class the student made or of a type like ``mock.ANY``'s, which
    could compare equal to anything."""
    kind = _type(value)
    if kind in LITERAL_TYPES:
        return True
    if _id(kind) not in snapshot.types:
        return False
    if _isinstance(value, (type, _ModuleType)) or kind in (_FunctionType, types.BuiltinFunctionType):
        return True
    module = types.MappingProxyType.get(_type.__dict__["__dict__"].__get__(kind), "__module__", "") or ""
    return _isinstance(module, _str) and any(_str_startswith(module, p) for p in ("torch", "numpy", "keras", "tensorflow"))


def student_function(value, student_tag: str) -> bool:
    return _type(value) is _FunctionType and student_tag in _code_filename(_func_code.__get__(value))


# ---- main -----------------------------------------------------------------------------------------------
def import_order(preload: list[str]) -> list[str]:
    """``preload`` in a safe order: the torch family first (torchvision after TensorFlow crashes Python)."""
    ordered = [m for m in preload if m.startswith(TORCH_FAMILY)] + \
              [m for m in preload if not m.startswith(TORCH_FAMILY + TF_FAMILY)] + \
              [m for m in preload if m.startswith(TF_FAMILY) and not m.startswith(TORCH_FAMILY)]
    if any(m.startswith(TORCH_FAMILY) for m in ordered) and any(m.startswith(TF_FAMILY) for m in ordered):
        ordered.insert(0, "torchvision")
    return ordered


def main() -> None:
    """``python -I -m autograder.checker_child``: the job comes on stdin."""
    job = _json_loads(sys.stdin.buffer.read().decode())
    devnull = os.open(os.devnull, os.O_RDONLY)
    _os_dup2(devnull, 0)
    _os_close(devnull)
    run(job)


def run(job: dict) -> None:
    """Judge one job (steps 1-5 above) and end the process. Also entered in a child forked by the checker
    server, whose imports are then already done."""
    report = make_reporter(job.pop("verdict_fd"), job.pop("nonce"))
    student_tag = job["student_tag"]
    if sys.flags.optimize:
        report("fatal", message="the checker must run without -O (assert statements would vanish)")
        _os_exit(3)

    # 2. frameworks and check modules, torch family first (already imported in a fork server's child)
    setup_notes = []
    for name in import_order(job["preload"]):
        try:
            _import_module(name)
        except Exception as error:  # a missing optional module: the test cells that need it will fail
            setup_notes.append(f"import {name}: {_type_name(_type(error))}: {error}")

    # 3. snapshot, captured state, audit hook; what the test cells print is kept for the feedback (sys.stdout
    # is part of the snapshot: code that replaces it gets this buffer back at the next restore)
    printed = _StringIO()
    sys.stdout = printed
    restore_self = make_self_restorer(sys.modules[__name__].__dict__)
    snapshot = Snapshot(protected_modules())
    snapshot_restore = snapshot.restore  # bound now: patching Snapshot.restore later changes nothing here
    get_state, put_state = framework_state()
    initial_state = get_state()
    builtins_saved = _dict_copy(builtins.__dict__)

    def restore(state=None) -> None:
        restore_self()
        snapshot_restore()
        put_state(initial_state if state is None else state)

    tf_loaded = lambda: "tensorflow" in sys.modules  # noqa: E731
    install_audit_hook(student_tag)
    cell_timeout = float(job["cell_timeout"])
    timed_out = [False]

    def on_alarm(signum, frame):
        timed_out[0] = True
        raise CellTimeout()

    _signal(signal.SIGALRM, on_alarm)
    snapshot.signals[signal.SIGALRM] = on_alarm

    # 4. load statements: instructor bindings and student definitions in one namespace (student globals)
    def fresh_namespace() -> dict:
        return {"__name__": "__main__", "__builtins__": _dict_copy(builtins_saved)}

    student_globals = fresh_namespace()
    instructor = fresh_namespace()
    student_names: dict[str, str] = {}
    notes: dict[str, list] = {}
    for block in job["program"]:
        if block["owner"] == "instructor":
            for target in (student_globals, instructor):
                for statement in block["statements"]:
                    try:
                        run_statement(statement, target, "<instructor cell>", setup_notes, tf_loaded)
                    except Exception as error:
                        setup_notes.append(f"instructor line {statement['source'][:60]!r}: {error!r}")
            continue
        cell = block["cell"]
        cell_notes = notes.setdefault(cell, [])
        cell_notes.extend(block.get("ignored") or [])
        report("loading", cell=cell)
        filename = f"<answer {cell} {student_tag}>"
        threads_before = _thread_count()
        for statement in block["statements"]:
            before = set(student_globals) if statement.get("star") else None
            _setitimer(signal.ITIMER_REAL, cell_timeout)
            try:
                run_statement(statement, student_globals, filename, cell_notes, tf_loaded)
            except CellTimeout:
                cell_notes.append(f"line {statement['line']}: did not finish within {cell_timeout:g} s while loading")
            except _BaseException as error:
                cell_notes.append(f"line {statement['line']}: {_type_name(_type(error))} while loading: {error}"[:300])
            finally:
                _setitimer(signal.ITIMER_REAL, 0)
            for name in statement.get("names", []):
                student_names[name] = cell
            if before is not None:
                for name in set(student_globals) - before:
                    student_names[name] = cell
            if _thread_count() > threads_before:
                report("fatal", message=f"answer cell {cell} started a thread while loading; the checker does not allow that")
                _os_exit(4)
        restore()
    restore()
    report("loaded")
    student_globals["__builtins__"] = _dict_copy(builtins_saved)
    instructor_names = _set(k for k in instructor if not (k.startswith("__") and k.endswith("__")))

    # the test cells' view of the student's work
    tainted = [None]

    def wrap(function):
        def call(*args, **kwargs):
            threads_before = _thread_count()
            state = get_state()  # the caller's (e.g. a check inside torch.no_grad())
            try:
                return function(*args, **kwargs)
            finally:
                restore(state)
                if _thread_count() > threads_before:
                    tainted[0] = "your code started a background thread, which the checker does not allow"
        call.__name__ = call.__qualname__ = function.__name__ if _type(function.__name__) is _str else "answer"
        call.__doc__ = function.__doc__ if _type(function.__doc__) is _str else None
        call.__wrapped__ = function
        return call

    exported = {}
    for name, cell in _dict_items(student_names):
        if name.startswith("__") or name in builtins_saved or name in instructor_names or name not in student_globals:
            continue
        value = student_globals[name]
        try:
            accepted = admissible(value, snapshot)
            if accepted:
                exported[name] = wrap(value) if student_function(value, student_tag) else value
        except Exception:
            accepted = False
        if not accepted:
            notes.setdefault(cell, []).append(f"{name}: an object of a type the checker does not accept, ignored")
    restore()

    def note_for(cells: list) -> str:
        lines = [f"[{c}] {n}" for c in cells for n in notes.get(c, [])]
        if not lines:
            return ""
        return "\n(checker notes on your answer cells: " + "; ".join(lines)[:1500] + ")"

    report("ready", notes=" | ".join(setup_notes)[:2000])

    # 5. the test cells
    for index in job["run"]:
        test = job["tests"][index]
        report("start", index=index)
        namespace = {**exported, **{k: instructor[k] for k in instructor_names}}
        namespace.update(__name__="__main__", __builtins__=_dict_copy(builtins_saved))
        tainted[0] = None
        timed_out[0] = False
        filename = f"<test cell {test['grade_id']}>"
        passed, message = True, ""
        _output_seek(printed, 0)
        _output_truncate(printed, 0)
        try:
            code = _compile(test["source"], filename, "exec", dont_inherit=True, optimize=0)
            _setitimer(signal.ITIMER_REAL, cell_timeout)
            try:
                _exec(code, namespace)
            finally:
                _setitimer(signal.ITIMER_REAL, 0)
        except CellTimeout:
            restore()
            passed, message = False, f"the test cell did not finish within {cell_timeout:g} s"
        except _BaseException as error:
            restore()  # describe() below must be this module's own
            passed, message = False, describe(error, filename)
        restore()
        if timed_out[0]:
            passed, message = False, f"the test cell did not finish within {cell_timeout:g} s"
        if tainted[0]:
            passed, message = False, tainted[0]
        if not passed:
            message = (message[:MESSAGE_LIMIT] + note_for(test.get("answer_cells") or _list(notes)))
        report("verdict", index=index, passed=passed, message=message, output=cell_output(printed))
        if tainted[0]:
            _os_exit(5)  # a stray thread may keep patching: the parent relaunches for the remaining cells
    report("done")
    _os_exit(0)  # no atexit handlers, no finalizers of student objects


def cell_output(printed) -> str:
    """What the test cell printed (worked solutions, counts), cut to OUTPUT_LIMIT characters."""
    try:
        text = _output_text(printed)
    except _BaseException:
        return ""
    if _type(text) is not _str:
        return ""
    return text if _len(text) <= OUTPUT_LIMIT else text[:OUTPUT_LIMIT] + "\n... (output cut)\n"


def describe(error: BaseException, filename: str) -> str:
    """The failure message: an AssertionError's text, else ``Type: text``; the failing test line if silent."""
    try:
        text = _str(error) if _type(error) is not _str else error
        if _type(text) is not _str:
            text = "?"
    except _BaseException:
        text = "(an exception whose text could not be read)"
    kind = _type_name(_type(error))
    if not text:
        line = None
        tb = error.__traceback__ if _isinstance(error.__traceback__, types.TracebackType) else None
        while tb is not None:
            if _code_filename(_frame_code(_tb_frame(tb))) == filename:
                line = _tb_lineno(tb)
            tb = _tb_next(tb)
        text = f"{kind} at line {line} of the test cell" if line else kind
        return text
    return text if _issubclass(_type(error), _AssertionError) and kind == "AssertionError" else f"{kind}: {text}"


if __name__ == "__main__":
    main()
