"""How the checks call your function: what goes in and what comes back travels as plain data.

    returned = call(freeze_all, model)      # what a check does instead of freeze_all(model)

The checks never judge objects your code could have touched. ``call`` writes the arguments down as plain
data (a model: its layers, their settings, every weight and flag), your function runs on a copy rebuilt
from that data, and what it returned and what it changed in its arguments are written down the same way.
The check then rebuilds those objects with the framework's own code and judges them. In your notebook
all of this happens right here; when your work is graded, your function runs in a separate, sandboxed
process and only the data comes back. The same data, the same rebuild, the same check: the verdict you
see is the verdict you get.

What travels: None, booleans, numbers, strings, bytes, lists, tuples, dicts, NumPy arrays and scalars,
and (from ``course.checks.torch_wire`` / ``course.checks.keras_wire``) tensors, standard layers, models
and optimizers. Anything else arrives as an ``Opaque`` stand-in that only knows its type's name.

The data format: ``MAGIC``, the length of a JSON header (8 bytes, big-endian), the header, then raw bytes
(tensor contents) that the header points into. Nothing is ever unpickled.
"""
from __future__ import annotations

import contextlib
import gc
import importlib
import io
import json
import math
import struct
import sys

MAGIC = b"FTLAB-WIRE-1\n"
LENGTH = struct.Struct("!Q")
MAX_HEADER = 64 << 20
MAX_DEPTH = 200
PRINTED_LIMIT = 20_000

NUMPY_DTYPES = ("bool", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64",
                "float16", "float32", "float64")
# which module describes which kind of node, and which objects (by their type's top-level package)
CODECS = {"torch": "course.checks.torch_wire", "keras": "course.checks.keras_wire"}


class WireError(Exception):
    """The data does not describe something the checks can rebuild; the message says what."""


class StudentCodeError(AssertionError):
    """Your function raised an error (or its process ended) while a check called it."""


class Opaque:
    """Stands for an object the checks cannot look into (its type's name is all that is known)."""

    def __init__(self, type_name: str):
        self.type_name = type_name

    def __repr__(self):
        return f"<an object of type {self.type_name}>"


class Remote:
    """A student's function that runs elsewhere (the grader's sandboxed process): ``run`` takes an encoded
    call and returns the encoded answer. The grader makes these; calling one goes through ``call``."""

    name = "function"

    def run(self, request: bytes) -> bytes:
        raise NotImplementedError

    def __call__(self, *args, **kwargs):
        return call(self, *args, **kwargs)


def codec(kind: str):
    """The module that encodes and rebuilds one framework's objects (imported on first use)."""
    return importlib.import_module(CODECS[kind])


def codec_for(value):
    """The codec for a framework object (only frameworks already imported are asked)."""
    for kind, package in (("torch", "torch"), ("keras", "keras")):
        if package in sys.modules:
            module = codec(kind)
            if module.handles(value):
                return module
    return None


# ---- writing data -------------------------------------------------------------------------------------
class Encoder:
    """Turns values into a JSON-able tree plus raw byte blobs.

    ``inputs``: objects that the other side already has (it rebuilt them from the call): such an object is
    written as a reference to its number, with its current state. When ``register`` is true every framework
    object met gets a number (the call's arguments: the other side numbers them the same way).
    """

    def __init__(self, inputs: list | None = None, register: bool = False, originals: dict | None = None):
        self.blobs: list[bytes] = []
        self.memo: dict[int, int] = {}
        self.alive: list = []
        self.inputs = list(inputs or [])
        self.input_index = {id(obj): k for k, obj in enumerate(self.inputs)}
        self.register = register
        self.originals = originals or {}  # input number -> bytes it arrived with (to say "unchanged")

    def blob(self, data: bytes) -> int:
        self.blobs.append(bytes(data))
        return len(self.blobs) - 1

    def remember(self, obj) -> tuple[dict, bool]:
        """(node, first) for a framework object: a node to fill the first time, a reference after that."""
        if id(obj) in self.memo:
            return {"ref": self.memo[id(obj)]}, False
        ref = len(self.memo)
        self.memo[id(obj)] = ref
        self.alive.append(obj)
        node = {"id": ref}
        if id(obj) in self.input_index:
            node["input"] = self.input_index[id(obj)]
        elif self.register:
            node["input"] = self.input_index[id(obj)] = len(self.inputs)
            self.inputs.append(obj)
        return node, True

    def unchanged(self, node: dict, data: bytes) -> bool:
        """True when an input object's bytes are the ones it arrived with."""
        return "input" in node and self.originals.get(node["input"]) == data

    def encode(self, value, depth: int = 0):
        if depth > MAX_DEPTH:
            raise WireError("the value is nested too deeply")
        kind = type(value)
        if value is None or kind is bool or kind is str:
            return value
        if isinstance(value, bool):
            return bool(value)
        if isinstance(value, int):
            return {"int": str(int.__add__(value, 0))} if abs(int.__add__(value, 0)) >= 2**53 else int.__add__(value, 0)
        if isinstance(value, float):
            number = float.__float__(value)
            return number if math.isfinite(number) else {"float": repr(number)}
        if isinstance(value, str):
            return str.__str__(value)
        if isinstance(value, (bytes, bytearray)):
            return {"bytes": self.blob(bytes(value))}
        if isinstance(value, (list, tuple)):
            tag = "list" if isinstance(value, list) else "tuple"
            return {tag: [self.encode(v, depth + 1) for v in list.__iter__(list(value))]}
        if isinstance(value, dict):
            return {"dict": [[self.encode(k, depth + 1), self.encode(v, depth + 1)] for k, v in dict.items(value)]}
        if type(value).__module__ == "numpy":
            return self.encode_numpy(value)
        module = codec_for(value)
        if module is not None:
            return module.encode(self, value, depth + 1)
        return {"opaque": f"{type(value).__module__}.{type(value).__qualname__}"[:200]}

    def encode_numpy(self, value):
        import numpy

        if isinstance(value, (numpy.ndarray, numpy.generic)) and str(value.dtype) in NUMPY_DTYPES:
            array = numpy.asarray(value)
            array = numpy.ascontiguousarray(array) if array.ndim else array
            return {"numpy": str(array.dtype), "shape": list(array.shape), "scalar": isinstance(value, numpy.generic),
                    "blob": self.blob(array.tobytes())}
        return {"opaque": f"numpy.{type(value).__qualname__}"}

    def packet(self, tree) -> bytes:
        """The packet for a tree of encoded values (JSON-able)."""
        offsets, position = [], 0
        for data in self.blobs:
            offsets.append([position, len(data)])
            position += len(data)
        header = json.dumps({"value": tree, "blobs": offsets}, allow_nan=False).encode()
        return b"".join([MAGIC, LENGTH.pack(len(header)), header, *self.blobs])


# ---- reading data -------------------------------------------------------------------------------------
class Decoder:
    """Rebuilds values from a packet. ``inputs``: this side's objects for the numbers an Encoder gave."""

    def __init__(self, packet: bytes, inputs: list | None = None):
        if not isinstance(packet, (bytes, bytearray, memoryview)) or bytes(packet[:len(MAGIC)]) != MAGIC:
            raise WireError("not a packet of the checks' data format")
        packet = memoryview(packet)
        start = len(MAGIC) + LENGTH.size
        if len(packet) < start:
            raise WireError("the packet is cut short")
        (size,) = LENGTH.unpack(packet[len(MAGIC):start])
        if size > MAX_HEADER or start + size > len(packet):
            raise WireError("the packet's header is too large or cut short")
        try:
            header = json.loads(bytes(packet[start:start + size]))
        except (ValueError, RecursionError) as error:
            raise WireError(f"the packet's header is not valid JSON: {error}") from None
        if not isinstance(header, dict) or set(header) != {"value", "blobs"} or not isinstance(header["blobs"], list):
            raise WireError("the packet's header has the wrong fields")
        self.data = packet[start + size:]
        self.blobs = []
        for entry in header["blobs"]:
            if (not isinstance(entry, list) or len(entry) != 2 or not all(type(x) is int and x >= 0 for x in entry)
                    or entry[0] + entry[1] > len(self.data)):
                raise WireError("the packet points outside its data")
            self.blobs.append(entry)
        self.tree = header["value"]
        if type(self.tree) is not dict:
            raise WireError("the packet holds no fields")
        self.memo: dict[int, object] = {}
        self.creating = inputs is None  # rebuilding a call's arguments (they get numbers) or reading an answer
        self.inputs = list(inputs or [])
        self.received: dict[int, bytes] = {}  # input number -> the bytes a tensor arrived with

    def blob(self, index) -> memoryview:
        if type(index) is not int or not 0 <= index < len(self.blobs):
            raise WireError("a value points to data that is not there")
        offset, length = self.blobs[index]
        return self.data[offset:offset + length]

    def field(self, name: str):
        """One top-level field of the packet, rebuilt."""
        return self.decode(self.tree.get(name))

    def remembered(self, node: dict):
        """The object a ``{"ref": n}`` node stands for."""
        ref = node.get("ref")
        if type(ref) is not int or ref not in self.memo:
            raise WireError("a reference to an object that was not described before")
        return self.memo[ref]

    def register(self, node: dict, obj) -> None:
        ref = node.get("id")
        if type(ref) is not int or ref in self.memo:
            raise WireError("an object is described twice")
        self.memo[ref] = obj
        if self.creating and "input" in node:
            number = node["input"]
            if type(number) is not int or number < 0 or number > 10**6:
                raise WireError("a bad input number")
            while len(self.inputs) <= number:
                self.inputs.append(None)
            self.inputs[number] = obj

    def existing(self, node: dict):
        """This side's own object for an input number, or None (a new object)."""
        number = node.get("input")
        if number is None or self.creating:
            return None
        if type(number) is not int or not 0 <= number < len(self.inputs) or self.inputs[number] is None:
            raise WireError("a reference to an argument the checks never sent")
        return self.inputs[number]

    def decode(self, node, depth: int = 0):
        if depth > MAX_DEPTH:
            raise WireError("the value is nested too deeply")
        if node is None or type(node) in (bool, int, float, str):
            return node
        if type(node) is not dict or not node:
            raise WireError(f"unexpected data: {str(node)[:80]}")
        if "ref" in node:
            return self.remembered(node)
        if "list" in node or "tuple" in node:
            items = node.get("list", node.get("tuple"))
            if type(items) is not list:
                raise WireError("a list that is not a list")
            values = [self.decode(item, depth + 1) for item in items]
            return values if "list" in node else tuple(values)
        if "dict" in node:
            pairs = node["dict"]
            if type(pairs) is not list or not all(type(p) is list and len(p) == 2 for p in pairs):
                raise WireError("a dict that is not a list of pairs")
            result = {}
            for key, value in pairs:
                key = self.decode(key, depth + 1)
                try:
                    result[key] = self.decode(value, depth + 1)
                except TypeError:
                    raise WireError("a dict key that cannot be a key") from None
            return result
        if "int" in node:
            try:
                return int(node["int"])
            except (TypeError, ValueError):
                raise WireError("a bad integer") from None
        if "float" in node:
            if node["float"] not in ("nan", "inf", "-inf"):
                raise WireError("a bad float")
            return float(node["float"])
        if "bytes" in node:
            return bytes(self.blob(node["bytes"]))
        if "numpy" in node:
            return self.decode_numpy(node)
        if "opaque" in node:
            return Opaque(str(node["opaque"])[:200])
        kind = node.get("kind")
        if kind in ("torch", "keras"):
            return codec(kind).decode(self, node, depth + 1)
        raise WireError(f"unexpected data: {str(node)[:80]}")

    def decode_numpy(self, node):
        import numpy

        dtype, shape = node.get("numpy"), node.get("shape")
        if dtype not in NUMPY_DTYPES or type(shape) is not list or not all(type(n) is int and n >= 0 for n in shape):
            raise WireError("a bad NumPy array")
        data = self.blob(node.get("blob"))
        if math.prod(shape) * numpy.dtype(dtype).itemsize != len(data):
            raise WireError("a NumPy array whose data has the wrong size")
        array = numpy.frombuffer(data, dtype=dtype).reshape(shape).copy()
        return array[()] if node.get("scalar") and shape == [] else array


def shape_of(shape) -> list[int]:
    if type(shape) is not list or len(shape) > 16 or not all(type(n) is int and 0 <= n < 2**40 for n in shape):
        raise WireError("a bad shape")
    return shape


# ---- a call -------------------------------------------------------------------------------------------
def encode_call(args: tuple, kwargs: dict) -> tuple[bytes, list]:
    """The request for one call, and the list of this side's objects numbered in it."""
    encoder = Encoder(register=True)
    tree = {"args": [encoder.encode(a) for a in args], "kwargs": {str(k): encoder.encode(v) for k, v in kwargs.items()}}
    return encoder.packet(tree), encoder.inputs


class Call:
    """A call rebuilt from its request (arguments first, before any student code exists)."""

    def __init__(self, request: bytes):
        decoder = Decoder(request)
        args, kwargs = decoder.tree.get("args"), decoder.tree.get("kwargs")
        if set(decoder.tree) != {"args", "kwargs"} or type(args) is not list or type(kwargs) is not dict:
            raise WireError("a call without arguments")
        self.args = [decoder.decode(a) for a in args]
        self.kwargs = {str(k): decoder.decode(v) for k, v in kwargs.items()}
        self.inputs, self.received = decoder.inputs, decoder.received


GUARDED = ("builtins", "course.checks.wire", "course.checks.torch_wire", "course.checks.keras_wire")


def guard():
    """A function that puts back what a function under test may have patched in the code that writes its
    answer: the builtins and this module's (and the codecs') globals, classes and function code. Defence in
    depth only: the answer is data that the other side checks anyway."""
    modules = [sys.modules[name] for name in GUARDED if name in sys.modules]
    saved = [(vars(m), dict(vars(m))) for m in modules]
    classes = [(c, dict(vars(c))) for m in modules if m.__name__ != "builtins"
               for c in vars(m).values() if isinstance(c, type) and c.__module__ == m.__name__]
    functions = [(f, f.__code__, f.__defaults__, f.__kwdefaults__)
                 for owner, contents in saved[1:] + classes for f in contents.values() if type(f) is FUNCTION]
    callbacks = list(gc.callbacks)
    hooks = [(table, list(table.items()), type(table).clear, type(table).__setitem__)
             for table in framework_hook_tables()]

    def restore(set_item=dict.__setitem__, clear=dict.clear, update=dict.update, set_attr=type.__setattr__,
                code=FUNCTION.__code__, defaults=FUNCTION.__defaults__, kwdefaults=FUNCTION.__kwdefaults__):
        for namespace, copy in saved:
            clear(namespace)
            update(namespace, copy)
        for cls, contents in classes:
            for key, value in dict.items(contents):
                try:
                    set_attr(cls, key, value)
                except (TypeError, AttributeError):
                    pass
        for function, body, values, keywords in functions:
            code.__set__(function, body)
            defaults.__set__(function, values)
            kwdefaults.__set__(function, keywords)
        gc.callbacks[:] = callbacks
        for table, items, clear_table, set_entry in hooks:
            clear_table(table)
            for key, value in items:
                set_entry(table, key, value)

    return restore


def framework_hook_tables() -> list[dict]:
    """PyTorch's process-wide hook tables (hooks run on every layer or parameter made or called)."""
    module = sys.modules.get("torch.nn.modules.module")
    if module is None:
        return []
    return [table for name, table in vars(module).items() if name.startswith("_global_") and isinstance(table, dict)]


FUNCTION = type(guard)


def answer(function, call: Call, restore=None) -> bytes:
    """Run ``function`` on the rebuilt arguments; encode what it returned (or raised), the state of every
    argument afterwards, and what it printed. ``restore`` (from ``guard()``) runs before anything is encoded."""
    restore = restore or guard()
    printed = io.StringIO()
    error = returned = None
    try:
        with contextlib.redirect_stdout(printed):
            returned = function(*call.args, **call.kwargs)
    except (Exception, SystemExit) as exc:  # noqa: BLE001 - the student's error is the answer
        restore()
        error = {"type": type(exc).__name__, "message": describe_error(exc)}
    restore()
    text = printed.getvalue()
    if len(text) > PRINTED_LIMIT:
        text = text[:PRINTED_LIMIT] + "\n... (output cut)\n"
    collecting = gc.isenabled()
    gc.disable()  # no finalizer of the student's objects runs while the answer is written
    try:
        encoder = Encoder(inputs=call.inputs, originals=call.received)
        state = [None if obj is None else encoder.encode(obj) for obj in call.inputs]
        result = None
        if error is None:
            try:
                result = encoder.encode(returned)
            except WireError as exc:
                error = {"type": "WireError", "message": str(exc)}
        return encoder.packet({"inputs": state, "result": result, "error": error, "printed": text})
    finally:
        if collecting:
            gc.enable()


def describe_error(exc: BaseException) -> str:
    """``message (line N of cell X)`` for an error raised in the student's code."""
    try:
        message = str(exc)
    except Exception:  # noqa: BLE001 - an exception whose str() fails
        message = ""
    place, tb = "", exc.__traceback__
    while tb is not None:
        filename = tb.tb_frame.f_code.co_filename
        if filename.startswith("<cell ") or "ipykernel_" in filename:
            name = filename[6:-1] if filename.startswith("<cell ") else "your cell"
            place = f" (line {tb.tb_lineno} of {name}, in {tb.tb_frame.f_code.co_name})"
        tb = tb.tb_next
    return (message[:2000] + place) if message else place.strip(" ()") or type(exc).__name__


def apply_answer(reply: bytes, inputs: list, name: str):
    """Bring this side's arguments to the state the answer describes and return what the function returned;
    raises StudentCodeError if it raised, WireError if the answer cannot be rebuilt."""
    decoder = Decoder(reply, inputs)
    tree = decoder.tree
    if set(tree) != {"inputs", "result", "error", "printed"} or type(tree["inputs"]) is not list \
            or len(tree["inputs"]) > len(inputs):
        raise WireError("an answer with the wrong fields")
    printed, error = tree["printed"], tree["error"]
    if type(printed) is str and printed:
        sys.stdout.write(printed[:PRINTED_LIMIT + 40])
    if error is not None:
        if type(error) is not dict or type(error.get("type")) is not str or type(error.get("message")) is not str:
            raise WireError("an error report with the wrong fields")
        if error["type"] == "WireError":
            raise StudentCodeError(f"{name} returned something the checks cannot look into: {error['message'][:500]}")
        raise StudentCodeError(f"{name} raised {error['type'][:80]}: {error['message'][:2000]}")
    for number, state in enumerate(tree["inputs"]):
        if state is not None:
            if type(state) is not dict or state.get("input", number) != number:
                raise WireError("an argument's state is out of place")
            decoder.decode(state)
    return decoder.decode(tree["result"])


def call(function, *args, **kwargs):
    """Call a student's function the way the grader does (see the module docstring)."""
    name = getattr(function, "name", None) if isinstance(function, Remote) else getattr(function, "__name__", None)
    name = name if isinstance(name, str) else "your function"
    if not callable(function):
        raise AssertionError(f"{name} is not a function (it is {type(function).__name__})")
    try:
        request, inputs = encode_call(args, kwargs)
        reply = function.run(request) if isinstance(function, Remote) else answer(function, Call(request))
        return apply_answer(reply, inputs, name)
    except WireError as error:
        raise AssertionError(f"what {name} returned or changed cannot be rebuilt by the checks: {error}") from None
