"""PyTorch objects as plain data, for ``course.checks.wire``: tensors, standard layers, models, optimizers.

A tensor travels as its dtype, shape, flags (``requires_grad``, whether it is a Parameter) and raw bytes.
A layer travels as its class (one of ``LAYERS``), its settings (``in_features``, ``stride``...), its
train/eval mode, its parameters, buffers and sub-layers; an optimizer as its class (one of ``OPTIMIZERS``),
its settings and its parameter groups. Rebuilding uses PyTorch's own classes, so a rebuilt model computes
what those layers compute, with the parameters it really has registered: a layer that lost its weight, a
class the checks do not know, a tensor that is not a Parameter where one must be, are refused with a
message. An argument that comes back unchanged is not sent again (``"same"``).
"""
from __future__ import annotations

import math
import sys
from collections import OrderedDict

import torch

from course.checks.wire import WireError, shape_of

DTYPES = {name: getattr(torch, name) for name in ("float32", "float64", "float16", "bfloat16", "int64", "int32",
                                                  "int16", "int8", "uint8", "bool")}
# Each layer class the checks can rebuild, with the settings its forward pass reads.
LAYERS = {
    "torch.nn.modules.linear.Linear": ("in_features", "out_features"),
    "torch.nn.modules.linear.Identity": (),
    "torch.nn.modules.conv.Conv2d": ("in_channels", "out_channels", "kernel_size", "stride", "padding", "dilation",
                                     "transposed", "output_padding", "groups", "padding_mode",
                                     "_reversed_padding_repeated_twice"),
    "torch.nn.modules.batchnorm.BatchNorm1d": ("num_features", "eps", "momentum", "affine", "track_running_stats"),
    "torch.nn.modules.batchnorm.BatchNorm2d": ("num_features", "eps", "momentum", "affine", "track_running_stats"),
    "torch.nn.modules.dropout.Dropout": ("p", "inplace"),
    "torch.nn.modules.activation.ReLU": ("inplace",),
    "torch.nn.modules.activation.ReLU6": ("min_val", "max_val", "inplace"),
    "torch.nn.modules.activation.Hardtanh": ("min_val", "max_val", "inplace"),
    "torch.nn.modules.activation.GELU": ("approximate",),
    "torch.nn.modules.activation.SiLU": ("inplace",),
    "torch.nn.modules.activation.Hardswish": ("inplace",),
    "torch.nn.modules.activation.Sigmoid": (),
    "torch.nn.modules.activation.Tanh": (),
    "torch.nn.modules.activation.Softmax": ("dim",),
    "torch.nn.modules.activation.LogSoftmax": ("dim",),
    "torch.nn.modules.pooling.AdaptiveAvgPool2d": ("output_size",),
    "torch.nn.modules.flatten.Flatten": ("start_dim", "end_dim"),
    "torch.nn.modules.container.Sequential": (),
    "torch.nn.modules.container.ModuleList": (),
    "torch.nn.modules.container.ModuleDict": (),
    "torchvision.models.mobilenetv2.MobileNetV2": ("last_channel",),
    "torchvision.models.mobilenetv2.InvertedResidual": ("stride", "use_res_connect", "out_channels", "_is_cn"),
    "torchvision.ops.misc.Conv2dNormActivation": ("out_channels",),
}
OPTIMIZERS = ("SGD", "Adam", "AdamW", "RMSprop", "Adagrad", "Adadelta", "Adamax", "NAdam", "RAdam", "ASGD", "Rprop")


MODULE_INTERNALS = {"training", "_parameters", "_buffers", "_non_persistent_buffers_set", "_backward_pre_hooks",
                    "_backward_hooks", "_is_full_backward_hook", "_forward_hooks", "_forward_hooks_with_kwargs",
                    "_forward_hooks_always_called", "_forward_pre_hooks", "_forward_pre_hooks_with_kwargs",
                    "_state_dict_hooks", "_state_dict_pre_hooks", "_load_state_dict_pre_hooks",
                    "_load_state_dict_post_hooks", "_modules", "_stray_attributes"}


def stray_attributes(obj) -> list[str]:
    """Names of attributes set on a layer or tensor that are not part of it (``model.trainable = False``,
    ``p.require_grad = False``): they travel as names only, so that a check can name the mistake."""
    return list(getattr(obj, "_stray_attributes", []))


# Read through the C-level descriptors, captured at import: a function under test that replaces
# ``torch.Tensor.requires_grad`` or ``Module.__getattr__`` changes nothing in what is written down.
_TensorBase = torch._C.TensorBase
_requires_grad = _TensorBase.__dict__["requires_grad"].__get__
_dtype = _TensorBase.__dict__["dtype"].__get__
_size, _detach, _contiguous, _cpu, _numpy = _TensorBase.size, _TensorBase.detach, _TensorBase.contiguous, \
    _TensorBase.cpu, _TensorBase.numpy
_view = _TensorBase.view
_state_of = object.__getattribute__


def handles(value) -> bool:
    return isinstance(value, (torch.Tensor, torch.nn.Module, torch.optim.Optimizer))


def type_name(cls) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


# ---- writing ------------------------------------------------------------------------------------------
def encode(encoder, value, depth: int):
    if isinstance(value, torch.Tensor):
        return encode_tensor(encoder, value)
    if isinstance(value, torch.nn.Module):
        return encode_module(encoder, value, depth)
    return encode_optimizer(encoder, value, depth)


def tensor_bytes(tensor: torch.Tensor) -> bytes:
    data = _contiguous(_cpu(_detach(tensor)))
    if _dtype(data) == torch.bfloat16:
        data = _view(data, torch.int16)
    return _numpy(data).tobytes()


def encode_tensor(encoder, tensor: torch.Tensor):
    node, first = encoder.remember(tensor)
    if not first:
        return node
    dtype = str(_dtype(tensor)).removeprefix("torch.")
    if dtype not in DTYPES:
        return {**node, "kind": "torch", "what": "unsupported", "type": f"a tensor of dtype {dtype}"}
    data = tensor_bytes(tensor)
    node.update(kind="torch", what="tensor", param=issubclass(type(tensor), torch.nn.Parameter),
                requires_grad=bool(_requires_grad(tensor)), dtype=dtype, shape=list(_size(tensor)),
                stray=sorted(str(k)[:40] for k in _state_of(tensor, "__dict__") if k != "_stray_attributes")[:10])
    if encoder.unchanged(node, data):
        node["same"] = True
    else:
        node["blob"] = encoder.blob(data)
    return node


def encode_module(encoder, module: torch.nn.Module, depth: int):
    node, first = encoder.remember(module)
    if not first:
        return node
    state = _state_of(module, "__dict__")
    name = type_name(type(module))
    node.update(kind="torch", what="module", type=name, training=bool(state.get("training", True)))
    node["config"] = {key: encoder.encode(state[key], depth + 1) for key in LAYERS.get(name, ()) if key in state}
    node["stray"] = sorted(str(k)[:40] for k in state if k not in MODULE_INTERNALS and k not in LAYERS.get(name, ()))[:10]
    parameters, buffers = state.get("_parameters") or {}, state.get("_buffers") or {}
    hidden = state.get("_non_persistent_buffers_set") or set()
    node["parameters"] = [[str(k), None if p is None else encoder.encode(p, depth + 1)] for k, p in parameters.items()]
    node["buffers"] = [[str(k), None if b is None else encoder.encode(b, depth + 1), k not in hidden]
                       for k, b in buffers.items()]
    node["children"] = [[str(k), None if c is None else encoder.encode(c, depth + 1)]
                        for k, c in (state.get("_modules") or {}).items()]
    return node


def encode_optimizer(encoder, optimizer, depth: int):
    node, first = encoder.remember(optimizer)
    if not first:
        return node
    node.update(kind="torch", what="optimizer", type=type_name(type(optimizer)),
                defaults={str(k): encoder.encode(v, depth + 1) for k, v in dict(optimizer.defaults).items()},
                groups=[{"params": [encoder.encode(p, depth + 1) for p in group.get("params", [])],
                         "options": {str(k): encoder.encode(v, depth + 1) for k, v in group.items() if k != "params"}}
                        for group in list(optimizer.param_groups)])
    return node


# ---- reading ------------------------------------------------------------------------------------------
def decode(decoder, node: dict, depth: int):
    what = node.get("what")
    if what == "tensor":
        return decode_tensor(decoder, node)
    if what == "module":
        return decode_module(decoder, node, depth)
    if what == "optimizer":
        return decode_optimizer(decoder, node, depth)
    if what == "unsupported":
        raise WireError(f"{str(node.get('type'))[:100]} cannot be rebuilt")
    raise WireError("unexpected PyTorch data")


def decode_tensor(decoder, node: dict) -> torch.Tensor:
    dtype, shape = DTYPES.get(node.get("dtype")), shape_of(node.get("shape"))
    param, requires_grad = node.get("param"), node.get("requires_grad")
    if dtype is None or type(param) is not bool or type(requires_grad) is not bool:
        raise WireError("a tensor with a bad dtype or flags")
    if requires_grad and not (dtype.is_floating_point or dtype.is_complex):
        raise WireError("an integer tensor cannot require gradients")
    existing = decoder.existing(node)
    if node.get("same") is True:
        if existing is None:
            raise WireError("a tensor said to be unchanged that was never sent")
        data = None
    else:
        raw = decoder.blob(node.get("blob"))
        if math.prod(shape) * dtype.itemsize != len(raw):
            raise WireError("a tensor whose data has the wrong size")
        if decoder.creating and "input" in node:
            decoder.received[node["input"]] = bytes(raw)
        storage = torch.int16 if dtype == torch.bfloat16 else dtype
        data = (torch.frombuffer(bytearray(raw), dtype=storage) if len(raw) else torch.empty(0, dtype=storage))
        data = (data.view(dtype) if dtype == torch.bfloat16 else data).reshape(shape).clone()  # own, aligned memory
    stray = strays(node)
    if existing is not None:  # this side's own tensor: bring it to the state described
        if not isinstance(existing, torch.Tensor) or isinstance(existing, torch.nn.Parameter) != param:
            raise WireError("an argument tensor came back as something else")
        with torch.no_grad():
            if data is not None:
                if data.shape == existing.shape and data.dtype == existing.dtype:
                    existing.copy_(data)
                else:
                    existing.data = data
        if existing.is_leaf:
            existing.requires_grad_(requires_grad)
        existing._stray_attributes = stray
        decoder.register(node, existing)
        return existing
    tensor = torch.nn.Parameter(data, requires_grad=requires_grad) if param else data.requires_grad_(requires_grad)
    tensor._stray_attributes = stray
    decoder.register(node, tensor)
    return tensor


def strays(node) -> list[str]:
    names = node.get("stray", [])
    if type(names) is not list or len(names) > 10 or not all(type(n) is str and len(n) <= 40 for n in names):
        raise WireError("bad attribute names")
    return names


def layer_class(name):
    """The class for an allowed layer name; torchvision's only where importing it is safe."""
    if name not in LAYERS:
        shown = str(name).rsplit(".", 1)[-1][:80]
        raise WireError(f"it holds a layer of class {shown}, which the checks cannot rebuild (they know "
                        f"torch.nn's standard layers and torchvision's MobileNetV2 blocks; define no layer classes "
                        f"of your own here)")
    module_name, _, class_name = name.rpartition(".")
    if module_name.startswith("torchvision") and "torchvision" not in sys.modules and "tensorflow" in sys.modules:
        raise WireError("a torchvision layer cannot be rebuilt in a process that imported TensorFlow")
    __import__(module_name)
    return getattr(sys.modules[module_name], class_name)


def plain(value, depth: int = 0) -> bool:
    if value is None or type(value) in (bool, int, float, str):
        return True
    return type(value) in (tuple, list) and depth < 3 and len(value) <= 16 and all(plain(v, depth + 1) for v in value)


def named_items(entries, width: int) -> list:
    if type(entries) is not list or not all(type(e) is list and len(e) == width for e in entries):
        raise WireError("a layer's parts are not a list of named entries")
    names = [e[0] for e in entries]
    if not all(type(n) is str and 0 < len(n) <= 100 and "." not in n for n in names) or len(set(names)) != len(names):
        raise WireError("a layer part with a bad or repeated name")
    return entries


def located(name: str, error: WireError) -> WireError:
    """The error with the dotted path of the layer part it is about (``features.0.0``)."""
    text = str(error)
    if text.startswith("at ") and ": " in text:
        where, _, rest = text[3:].partition(": ")
        return WireError(f"at {name}.{where}: {rest}")
    return WireError(f"at {name}: {text}")


def decode_part(decoder, name: str, item, depth: int):
    try:
        return None if item is None else decoder.decode(item, depth + 1)
    except WireError as error:
        raise located(name, error) from None


def decode_module(decoder, node: dict, depth: int) -> torch.nn.Module:
    cls = layer_class(node.get("type"))
    keys = LAYERS[node["type"]]
    config, training = node.get("config"), node.get("training")
    if type(config) is not dict or set(config) != set(keys) or type(training) is not bool:
        raise WireError(f"a {cls.__name__} layer without its settings ({', '.join(keys)})")
    module = decoder.existing(node)
    if module is None:
        module = cls.__new__(cls)
        torch.nn.Module.__init__(module)
    elif not isinstance(module, torch.nn.Module):
        raise WireError("an argument layer came back as something else")
    elif type(module) is not cls:
        module.__class__ = cls
    decoder.register(node, module)
    state = vars(module)
    for key in keys:
        value = decoder.decode(config[key], depth + 1)
        if not plain(value):
            raise WireError(f"a {cls.__name__} layer with a bad setting {key}")
        state[key] = value
    state["training"] = training
    parameters = OrderedDict()
    for name, item in named_items(node.get("parameters"), 2):
        value = decode_part(decoder, name, item, depth)
        if value is not None and not isinstance(value, torch.nn.Parameter):
            raise WireError(f"{cls.__name__}.{name} is registered as a parameter but is not a Parameter")
        parameters[name] = value
    buffers, hidden = OrderedDict(), set()
    for name, item, persistent in named_items(node.get("buffers"), 3):
        value = decode_part(decoder, name, item, depth)
        if value is not None and (not isinstance(value, torch.Tensor) or isinstance(value, torch.nn.Parameter)):
            raise WireError(f"{cls.__name__}.{name} is registered as a buffer but is not a plain tensor")
        buffers[name] = value
        if persistent is False:
            hidden.add(name)
    children = OrderedDict()
    for name, item in named_items(node.get("children"), 2):
        value = decode_part(decoder, name, item, depth)
        if value is not None and not isinstance(value, torch.nn.Module):
            raise WireError(f"{cls.__name__}.{name} is registered as a sub-layer but is not a layer")
        children[name] = value
    state["_parameters"], state["_buffers"], state["_modules"] = parameters, buffers, children
    state["_non_persistent_buffers_set"] = hidden
    state["_stray_attributes"] = strays(node)
    check_layer(module)
    return module


def check_layer(module: torch.nn.Module) -> None:
    """The parameters and buffers a standard layer's forward pass needs are there, with the right shapes."""
    kind = type(module).__name__
    params, buffers = vars(module)["_parameters"], vars(module)["_buffers"]

    def need(table, name, shape, optional=False):
        value = table.get(name)
        if value is None:
            if optional:
                return
            raise WireError(f"a {kind} layer has no {name} (its forward pass needs one: a layer's weights must "
                            f"stay registered on it)")
        if list(value.shape) != list(shape):
            raise WireError(f"a {kind} layer's {name} has shape {list(value.shape)}, its settings need {list(shape)}")

    if isinstance(module, torch.nn.Linear):
        need(params, "weight", [module.out_features, module.in_features])
        need(params, "bias", [module.out_features], optional=True)
    elif isinstance(module, torch.nn.Conv2d):
        if type(module.groups) is not int or module.groups < 1 or type(module.in_channels) is not int:
            raise WireError("a Conv2d layer with bad settings")
        need(params, "weight", [module.out_channels, module.in_channels // module.groups, *module.kernel_size])
        need(params, "bias", [module.out_channels], optional=True)
    elif isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
        n = module.num_features
        need(params, "weight", [n], optional=not module.affine)
        need(params, "bias", [n], optional=not module.affine)
        need(buffers, "running_mean", [n], optional=not module.track_running_stats)
        need(buffers, "running_var", [n], optional=not module.track_running_stats)
        need(buffers, "num_batches_tracked", [], optional=not module.track_running_stats)


def decode_optimizer(decoder, node: dict, depth: int):
    name = node.get("type")
    class_name = str(name).rsplit(".", 1)[-1]
    if type(name) is not str or not name.startswith("torch.optim.") or class_name not in OPTIMIZERS:
        raise WireError(f"it is an optimizer of class {class_name[:80]}; the checks rebuild torch.optim's "
                        f"{', '.join(OPTIMIZERS)}")
    cls = getattr(torch.optim, class_name)
    if type_name(cls) != name:
        raise WireError(f"an optimizer class {name[:100]} that is not torch.optim's")
    allowed = set(cls([torch.zeros(1, requires_grad=True)]).defaults)

    def options(raw, where):
        if type(raw) is not dict:
            raise WireError(f"the optimizer's {where} are not a dict")
        values = {key: decoder.decode(item, depth + 1) for key, item in raw.items()}
        bad = [key for key, value in values.items() if key not in allowed or not plain(value)]
        if bad:
            raise WireError(f"the optimizer has settings {bad[:3]} that {class_name} does not take")
        return values

    options(node.get("defaults"), "defaults")  # checked; each group carries its own copy of them
    groups = node.get("groups")
    if type(groups) is not list or not groups:
        raise WireError("an optimizer without parameter groups")
    rebuilt = []
    for group in groups:
        if type(group) is not dict or set(group) != {"params", "options"} or type(group["params"]) is not list:
            raise WireError("a parameter group with the wrong fields")
        params = [decoder.decode(item, depth + 1) for item in group["params"]]
        if not all(isinstance(p, torch.Tensor) for p in params):
            raise WireError("a parameter group holds something that is not a tensor")
        rebuilt.append({"params": params, **options(group["options"], "group settings")})
    try:
        optimizer = cls(rebuilt)  # every group carries all of its settings
    except (TypeError, ValueError, RuntimeError) as error:
        raise WireError(f"the optimizer could not be rebuilt: {error}") from None
    decoder.register(node, optimizer)
    return optimizer
