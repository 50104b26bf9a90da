"""Keras models as plain data, for ``course.checks.wire``.

A model travels as its Keras config (``get_config``: the layers, their settings and how they connect),
the ``trainable`` flag of every layer inside it, every weight (its bytes and its own ``trainable`` flag)
and, once compiled, its compile settings (optimizer, loss, metrics). Only Keras's built-in layers,
initializers, optimizers, losses and metrics are rebuilt (``allowed``), in Keras's safe mode: a layer class
of your own, a ``Lambda`` or a Python function inside a model is refused with a message.

A model returned by your function may be built on a model it was given (``add_head``): the layers it took
from there are not rebuilt but taken from this side's own copy of that model (``reuse``), so the checks can
see that your model really uses the base they gave you. A model you were given comes back as changes to
this side's copy: flags, weights that moved, and a new compile if you called ``compile``.
"""
from __future__ import annotations

import json
import math

import keras
import numpy
from keras.src.saving import serialization_lib

from course.checks.wire import WireError, shape_of

FORBIDDEN_LAYERS = {"Lambda", "TFSMLayer", "TorchModuleWrapper", "JaxLayer", "FlaxLayer"}
NAMESPACES = {"keras.initializers": keras.initializers, "keras.regularizers": keras.regularizers,
              "keras.constraints": keras.constraints, "keras.optimizers": keras.optimizers,
              "keras.optimizers.schedules": keras.optimizers.schedules, "keras.losses": keras.losses,
              "keras.metrics": keras.metrics}
MODELS = {("keras.src.models.functional", "Functional"), ("keras", "Functional"), ("keras", "Sequential"),
          ("keras.src.models.sequential", "Sequential"), ("keras", "DTypePolicy"), ("keras", "FloatDTypePolicy")}
COMPILE_KEYS = {"optimizer", "loss", "loss_weights", "metrics", "weighted_metrics", "run_eagerly",
                "steps_per_execution", "jit_compile"}


def handles(value) -> bool:
    return isinstance(value, keras.Model)


def allowed(module, class_name, config) -> bool:
    if module == "keras.layers":
        return class_name not in FORBIDDEN_LAYERS and isinstance(getattr(keras.layers, class_name, None), type)
    if module in NAMESPACES:
        return isinstance(getattr(NAMESPACES[module], class_name, None), type)
    if module == "keras.activations" and class_name == "function":
        return isinstance(config, str) and callable(getattr(keras.activations, config, None))
    return (module, class_name) in MODELS


def check_config(config, depth: int = 0) -> None:
    """Refuse any serialized object that is not one of Keras's built-in classes."""
    if depth > 60:
        raise WireError("the model's config is nested too deeply")
    if isinstance(config, dict):
        name = config.get("class_name")
        if name is not None and name != "__keras_tensor__":
            module = config.get("module")
            if config.get("registered_name") not in (None, name, "function") \
                    or not allowed(module, name, config.get("config")):
                raise WireError(f"it uses {name!s:.60} (from {module!s:.60}), which is not one of Keras's built-in "
                                f"layers, initializers, optimizers, losses or metrics: the checks cannot rebuild it")
        for value in config.values():
            check_config(value, depth + 1)
    elif isinstance(config, list):
        for value in config:
            check_config(value, depth + 1)


def as_json(config):
    """A config as plain JSON data (tuples become lists)."""
    return json.loads(json.dumps(config, default=lambda o: str(o)))


# ---- writing ------------------------------------------------------------------------------------------
def layer_paths(model):
    """(path of names, layer) for the model and every layer inside it, parents before their layers."""
    found = [((), model)]

    def walk(layer, path):
        for child in getattr(layer, "layers", None) or []:
            found.append((path + (child.name,), child))
            walk(child, path + (child.name,))

    walk(model, ())
    return found


def variable_bytes(variable) -> tuple[str, list, bytes]:
    array = numpy.ascontiguousarray(keras.ops.convert_to_numpy(variable))
    return str(array.dtype), list(array.shape), array.tobytes()


def compile_state(model):
    if not getattr(model, "compiled", False) or getattr(model, "optimizer", None) is None:
        return None
    config = as_json(model.get_compile_config() or {})
    config["optimizer"] = as_json(serialization_lib.serialize_keras_object(model.optimizer))
    return config


def encode(encoder, model, depth: int):
    node, first = encoder.remember(model)
    if not first:
        return node
    node.update(kind="keras", what="model")
    node["config"] = as_json(serialization_lib.serialize_keras_object(model))
    node["flags"] = [[list(path), bool(layer.trainable)] for path, layer in layer_paths(model)]
    variables = []
    for variable in model.weights:
        entry, first = encoder.remember(variable)
        if first:
            dtype, shape, data = variable_bytes(variable)
            entry.update(trainable=bool(variable.trainable), dtype=dtype, shape=shape)
            if encoder.unchanged(entry, data):
                entry["same"] = True
            else:
                entry["blob"] = encoder.blob(data)
        variables.append(entry)
    node["variables"] = variables
    node["compile"] = compile_state(model)
    if "input" in node:
        baseline = encoder.originals.get(("compiled", node["input"]))
        node["recompiled"] = node["compile"] is not None and id(getattr(model, "_compile_config", None)) != baseline
    else:  # layers it took from a model it was given
        owners = {}
        for number, obj in enumerate(encoder.inputs):
            if isinstance(obj, keras.Model):
                for path, layer in layer_paths(obj):
                    if not isinstance(layer, keras.layers.InputLayer):
                        owners.setdefault(id(layer), [number, list(path)])
        node["reuse"] = {layer.name: owners[id(layer)] for layer in getattr(model, "layers", [])
                         if id(layer) in owners}
    return node


# ---- reading ------------------------------------------------------------------------------------------
def decode(decoder, node: dict, depth: int):
    if node.get("what") != "model":
        raise WireError("unexpected Keras data")
    config, flags, variables = node.get("config"), node.get("flags"), node.get("variables")
    if type(config) is not dict or type(flags) is not list or type(variables) is not list:
        raise WireError("a Keras model without its config, flags or weights")
    check_config(config)
    existing = decoder.existing(node)
    if existing is not None:
        if not isinstance(existing, keras.Model):
            raise WireError("an argument model came back as something else")
        if strip(config) != strip(as_json(serialization_lib.serialize_keras_object(existing))):
            raise WireError("the function changed the layers or settings of the model it was given; only its "
                            "trainable flags, weights and compile settings may change")
        model = existing
    else:
        reuse = node.get("reuse") or {}
        if type(reuse) is not dict:
            raise WireError("bad reuse data")
        model = rebuild(decoder, config, {name: reused_layer(decoder, where) for name, where in reuse.items()})
    decoder.register(node, model)
    set_flags(model, flags)
    set_variables(decoder, model, variables)
    set_compile(decoder, model, node)
    return model


def strip(config):
    """A config without its trainable flags and build records (what may change without a new structure)."""
    if isinstance(config, dict):
        return {k: strip(v) for k, v in config.items() if k not in ("trainable", "build_config", "compile_config")}
    if isinstance(config, list):
        return [strip(v) for v in config]
    return config


def reused_layer(decoder, where):
    if type(where) is not list or len(where) != 2 or type(where[0]) is not int or type(where[1]) is not list:
        raise WireError("bad reuse data")
    owner = decoder.inputs[where[0]] if 0 <= where[0] < len(decoder.inputs) else None
    if not isinstance(owner, keras.Model):
        raise WireError("a reused layer of a model the checks never sent")
    return find(owner, where[1])


def find(model, path):
    layer = model
    for name in path:
        children = {child.name: child for child in getattr(layer, "layers", None) or []}
        if name not in children:
            raise WireError(f"no layer {name!s:.60} in {layer.name}")
        layer = children[name]
    return layer


def deserialize(config, custom_objects=None):
    try:
        return serialization_lib.deserialize_keras_object(config, custom_objects=custom_objects, safe_mode=True)
    except WireError:
        raise
    except Exception as error:  # noqa: BLE001 - Keras raises many kinds for a config it cannot use
        raise WireError(f"Keras could not rebuild it: {type(error).__name__}: {str(error)[:300]}") from None


def rebuild(decoder, config, reuse: dict):
    """A new model from its config; layers named in ``reuse`` are this side's existing objects."""
    if config.get("class_name") == "Functional":
        return rebuild_functional(config, reuse)
    if config.get("class_name") == "Sequential":
        custom = {}
        inner = dict(config.get("config") or {})
        layers = []
        for entry in inner.get("layers") or []:
            name = (entry.get("config") or {}).get("name")
            if name in reuse:
                key = f"FtlabReused{len(custom)}"
                custom[key] = reuse_class(reuse[name])
                entry = {"module": None, "class_name": key, "config": {"name": name}, "registered_name": key}
            layers.append(entry)
        inner["layers"] = layers
        return deserialize({**config, "config": inner}, custom)
    raise WireError(f"a model of class {config.get('class_name')!s:.60}; the checks rebuild Functional and Sequential models")


def reuse_class(layer):
    class Reused:
        @classmethod
        def from_config(cls, config):
            return layer
    return Reused


def rebuild_functional(config, reuse: dict):
    inner = config.get("config") or {}
    entries = inner.get("layers")
    if type(entries) is not list:
        raise WireError("a functional model without layers")
    created, produced, todo = {}, {}, []
    for entry in entries:
        name = entry.get("name") if type(entry) is dict else None
        if type(name) is not str or name in created or type(entry.get("inbound_nodes")) is not list:
            raise WireError("a functional model's layer without a name or connections")
        if name in reuse and entry.get("class_name") != "InputLayer":
            created[name] = reuse[name]
        else:
            created[name] = deserialize({k: v for k, v in entry.items() if k not in ("name", "inbound_nodes")})
        if isinstance(created[name], keras.layers.InputLayer):
            produced[(name, 0)] = [created[name].output]
        else:
            todo += [(name, index, call) for index, call in enumerate(entry["inbound_nodes"])]

    def tensor(history):
        if type(history) is not list or len(history) != 3 or (history[0], history[1]) not in produced:
            raise LookupError
        outputs = produced[(history[0], history[1])]
        if type(history[2]) is not int or not 0 <= history[2] < len(outputs):
            raise WireError("a connection to an output a layer does not have")
        return outputs[history[2]]

    def resolve(value, depth=0):
        if depth > 30:
            raise WireError("a connection nested too deeply")
        if isinstance(value, dict):
            if value.get("class_name") == "__keras_tensor__":
                return tensor((value.get("config") or {}).get("keras_history"))
            if "class_name" in value:
                raise WireError("an object inside a layer call that the checks do not rebuild")
            return {k: resolve(v, depth + 1) for k, v in value.items()}
        if isinstance(value, list):
            return [resolve(v, depth + 1) for v in value]
        return value

    while todo:
        progress = False
        for item in list(todo):
            name, index, call = item
            try:
                args, kwargs = resolve(call.get("args", [])), resolve(call.get("kwargs", {}))
            except LookupError:
                continue
            try:
                output = created[name](*args, **kwargs)
            except Exception as error:  # noqa: BLE001
                raise WireError(f"layer {name} cannot be called as described: {str(error)[:200]}") from None
            produced[(name, index)] = keras.tree.flatten(output)
            todo.remove(item)
            progress = True
        if not progress:
            raise WireError("a functional model whose layers cannot be connected as described")

    def ends(spec):
        if type(spec) is list and len(spec) == 3 and type(spec[0]) is str:
            try:
                return tensor(spec)
            except LookupError:
                raise WireError("a model input or output that no layer produces") from None
        if type(spec) is list:
            return [ends(s) for s in spec]
        raise WireError("bad model inputs or outputs")

    try:
        return keras.Model(inputs=ends(inner.get("input_layers")), outputs=ends(inner.get("output_layers")),
                           name=str(inner.get("name", "model")))
    except WireError:
        raise
    except Exception as error:  # noqa: BLE001
        raise WireError(f"Keras could not rebuild the model: {str(error)[:300]}") from None


def set_flags(model, flags) -> None:
    """Each layer's trainable flag, parents first (a model's flag is copied down to its layers)."""
    entries = []
    for entry in flags:
        if type(entry) is not list or len(entry) != 2 or type(entry[0]) is not list or type(entry[1]) is not bool:
            raise WireError("bad trainable flags")
        entries.append(entry)
    for path, trainable in sorted(entries, key=lambda e: len(e[0])):
        find(model, path).trainable = trainable


def set_variables(decoder, model, variables) -> None:
    mine = model.weights
    if len(mine) != len(variables):
        raise WireError(f"the model has {len(mine)} weights here and {len(variables)} were described")
    for variable, node in zip(mine, variables):
        if type(node) is not dict:
            raise WireError("a bad weight")
        if "ref" in node:
            if decoder.remembered(node) is not variable:
                raise WireError("a weight that should be shared with another model is not")
            continue
        existing = decoder.existing(node)
        if existing is not None and existing is not variable:
            raise WireError("a weight of a model the checks sent is not where it was")
        dtype, shape, trainable = node.get("dtype"), shape_of(node.get("shape")), node.get("trainable")
        if type(trainable) is not bool or list(variable.shape) != shape or dtype != variable.dtype:
            raise WireError(f"weight {variable.path} does not match its description")
        if node.get("same") is not True:
            raw = decoder.blob(node.get("blob"))
            if math.prod(shape) * numpy.dtype(dtype).itemsize != len(raw):
                raise WireError(f"weight {variable.path}'s data has the wrong size")
            if decoder.creating and "input" in node:
                decoder.received[node["input"]] = bytes(raw)
            variable.assign(numpy.frombuffer(raw, dtype=dtype).reshape(shape))
        elif existing is None:
            raise WireError("a weight said to be unchanged that was never sent")
        variable.trainable = trainable
        decoder.register(node, variable)


def objects(value):
    """Serialized losses and metrics (alone, in lists or dicts) as objects; names stay names."""
    if isinstance(value, dict) and "class_name" in value:
        return deserialize(value)
    if isinstance(value, list):
        return [objects(v) for v in value]
    if isinstance(value, dict):
        return {k: objects(v) for k, v in value.items()}
    return value


def set_compile(decoder, model, node) -> None:
    state = node.get("compile")
    if state is None:
        return
    if type(state) is not dict or not set(state) <= COMPILE_KEYS or type(state.get("optimizer")) is not dict:
        raise WireError("bad compile settings")
    check_config(state)
    fresh = decoder.existing(node) is None
    if fresh or node.get("recompiled") is True or not getattr(model, "compiled", False):
        optimizer = deserialize(state["optimizer"])
        extra = {key: objects(state[key]) for key in ("loss", "metrics", "loss_weights", "weighted_metrics")
                 if state.get(key) is not None}
        flags = {key: state[key] for key in ("run_eagerly", "jit_compile", "steps_per_execution")
                 if type(state.get(key)) in (bool, int)}
        try:
            model.compile(optimizer=optimizer, **extra, **flags)
        except Exception as error:  # noqa: BLE001
            raise WireError(f"the model could not be compiled as described: {str(error)[:300]}") from None
        if decoder.creating and "input" in node:
            decoder.received[("compiled", node["input"])] = id(model._compile_config)
        return
    # compiled before, not compiled again: only the optimizer's settings may have been changed in place
    config = (state["optimizer"].get("config") or {})
    rate = config.get("learning_rate")
    if type(rate) in (int, float) and getattr(model, "optimizer", None) is not None:
        model.optimizer.learning_rate = float(rate)
