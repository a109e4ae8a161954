"""What a width-parameterised network is, derived from the module itself: the user writes `build(width)`.

`derive` builds the module at several widths (on the meta device, so a large network costs nothing) and
reads off which tensors follow the width and along which axes, checked to be affine in the width. It finds
the coupled channel groups with torch-pruning's dependency graph (a layer's outputs, the BatchNorm after it,
the next layer's inputs, every tensor across a residual add), keeps only the groups whose permutation
provably leaves the logits unchanged, and exports the ONNX graph with `torch.onnx.export`, BatchNorm folded
into the convolution before it, verified against torch at several widths. The result is plain data: the
checkpoint stores it, and the service synthesises and exports from it without importing the user's module.

Training-side only: the service never imports this file (it imports torch-pruning and the exporter).
"""

from __future__ import annotations

import importlib
import importlib.util
import io
import math
import sys
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import torch
import torch_pruning as tp
from torch import nn

from neumeta_core import export, permute
from neumeta_core.errors import InputError
from neumeta_core.export import Fold, Graph
from neumeta_core.network import Group, Rule, Shape, Structure

Builder = Callable[[int], nn.Module]
TOLERANCE = 1e-5  # of a permutation: the logits before and after, relative to their scale


def load_builder(ref: str) -> Builder:
    """`FILE.py:FUNCTION` or `package.module:FUNCTION` -> the function; InputError (one line) otherwise."""
    where, sep, name = ref.rpartition(":")
    if not sep or not where or not name:
        raise InputError(f"--model must be FILE.py:FUNCTION or package.module:FUNCTION, not {ref!r}")
    if where.endswith(".py"):
        path = Path(where)
        if not path.is_file():
            raise InputError(f"{path}: no such file (from --model {ref})")
        module_name = f"neumeta_user_{abs(hash(str(path.resolve())))}"
        spec = importlib.util.spec_from_file_location(module_name, path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[module_name] = module  # dataclasses and pickling look modules up by name
        try:
            spec.loader.exec_module(module)
        except SyntaxError as exc:
            raise InputError(f"{path}:{exc.lineno}: syntax error: {exc.msg}") from None
    else:
        try:
            module = importlib.import_module(where)
        except ModuleNotFoundError as exc:
            raise InputError(f"--model {ref}: no module named {exc.name!r}") from None
    fn = getattr(module, name, None)
    if not callable(fn):
        raise InputError(f"--model {ref}: {where} defines no function {name!r}")
    return fn  # type: ignore[no-any-return]


def build_at(build: Builder, width: int, device: str | torch.device = "cpu") -> nn.Module:
    with torch.device(device):
        model = build(width)
    if not isinstance(model, nn.Module):
        raise InputError(f"build({width}) returned {type(model).__name__}, not a torch.nn.Module")
    return model


def _state_shapes(build: Builder, width: int) -> dict[str, Shape]:
    model = build_at(build, width, "meta")
    return {n: tuple(t.shape) for n, t in model.state_dict().items()}


def rules(build: Builder, widths: tuple[int, int, int]) -> dict[str, Rule]:
    """Affine shape rules from two widths, checked at a third: InputError where a tensor appears at one
    width only, or its size is not slope * width + offset."""
    a, b, c = widths
    sa, sb, sc = (_state_shapes(build, w) for w in widths)
    if list(sa) != list(sb) or list(sa) != list(sc):
        only = sorted(set(sa) ^ set(sb) | set(sa) ^ set(sc))
        raise InputError(f"build(width) makes different tensors at widths {a}, {b}, {c} (e.g. {only[:3]})")
    out: dict[str, Rule] = {}
    for name in sa:
        if len(sa[name]) != len(sb[name]):
            raise InputError(f"{name} has {len(sa[name])} dimensions at width {a} but {len(sb[name])} at {b}")
        slope, offset = [], []
        for da, db in zip(sa[name], sb[name], strict=True):
            s, rest = divmod(da - db, a - b)
            slope.append(s if not rest else 0)
            offset.append(da - s * a)
            if rest:
                raise InputError(f"{name}: sizes {da} at width {a} and {db} at {b} are not an integer multiple of it")
        rule = Rule(tuple(slope), tuple(offset))
        if rule.at(c) != sc[name] or any(d <= 0 for d in rule.at(min(widths))):
            raise InputError(f"{name}: shape {sc[name]} at width {c} does not follow slope * width + offset")
        out[name] = rule
    if not any(r.axes for r in out.values()):
        raise InputError(
            f"build(width) makes the same tensors at widths {a} and {b}: nothing follows the width, so there "
            "is nothing for the hypernetwork to generate"
        )
    return out


def is_batchnorm(module: nn.Module) -> bool:
    return isinstance(module, nn.BatchNorm1d | nn.BatchNorm2d | nn.BatchNorm3d)


def generated_set(model: nn.Module, width_rules: dict[str, Rule], prefixes: tuple[str, ...]) -> list[str]:
    """Every parameter of each module that has one following the width (or, with `prefixes`, of the modules
    named), in state-dict order; scalars are never generated."""
    params = {n for n, p in model.named_parameters() if p.dim() >= 1}
    if prefixes:
        chosen = {n for n in params if any(n == p or n.startswith(p + ".") for p in prefixes)}
        for p in prefixes:
            if not any(n == p or n.startswith(p + ".") for n in params):
                modules = sorted({n.rpartition(".")[0] for n in params})
                raise InputError(f"--generate {p}: no such module with parameters; known: {', '.join(modules)}")
    else:
        owners = {n.rpartition(".")[0] for n in params if width_rules[n].axes}
        chosen = {n for n in params if n.rpartition(".")[0] in owners}
    return [n for n in width_rules if n in chosen]


def _randomise(model: nn.Module, seed: int) -> nn.Module:
    """Distinct random values in every float tensor (the exporter merges equal initialisers), variances
    positive; eval mode."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if t.is_floating_point():
                values = torch.rand(t.shape, generator=gen) * 0.8 + 0.2
                t.copy_(values if name.endswith("running_var") else values - 0.5)
    return model.eval()


def export_graph(model: nn.Module, input_shape: Shape) -> tuple[bytes, list[Fold]]:
    """The model's graph without its weights (torch.onnx.export, legacy tracer), BatchNorm folded into the
    convolution or linear layer before it: (template bytes, folds)."""
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the legacy exporter's deprecation notice
        try:
            torch.onnx.export(
                model,
                (torch.zeros(1, *input_shape),),
                buffer,  # type: ignore[arg-type]  # a file-like object is documented
                dynamo=False,
                input_names=[export.INPUT],
                output_names=[export.OUTPUT],
                dynamic_axes={export.INPUT: {0: "batch"}, export.OUTPUT: {0: "batch"}},
                do_constant_folding=False,
                opset_version=export.OPSET,
            )
        except Exception as exc:  # the tracer raises many types; its first line says what it could not follow
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise InputError(f"torch.onnx.export cannot follow build(width)'s forward(): {first}") from None
    proto = onnx.load_from_string(buffer.getvalue())
    state = set(model.state_dict())
    graph = proto.graph
    aliases = [n for n in graph.node if n.op_type == "Identity" and n.input[0] in state]
    if aliases:
        raise InputError(f"the exported graph aliases weights ({aliases[0].output[0]}): tensors share values")
    folds = _fold_batchnorm(graph, state)
    kept = [t for t in graph.initializer if t.name not in state]
    del graph.initializer[:]
    graph.initializer.extend(kept)
    del graph.value_info[:]
    proto.doc_string = ""
    proto.producer_name, proto.producer_version = "neumeta-serve", ""
    return proto.SerializeToString(deterministic=True), folds


def _fold_batchnorm(graph: onnx.GraphProto, state: set[str]) -> list[Fold]:
    """Each BatchNormalization whose input is a Conv or Gemm output read by nothing else is removed and
    folded into that layer's weight and bias (computed per width at serve time, `export.fold`)."""
    producer = {o: n for n in graph.node for o in n.output}
    readers: dict[str, int] = {}
    for n in graph.node:
        for i in n.input:
            readers[i] = readers.get(i, 0) + 1
    folds, removed = [], []
    for node in graph.node:
        if node.op_type != "BatchNormalization" or len(node.output) != 1 or not set(node.input[1:]) <= state:
            continue
        layer = producer.get(node.input[0])
        if layer is None or layer.op_type not in ("Conv", "Gemm") or readers[node.input[0]] != 1:
            continue
        if layer.op_type == "Gemm" and any(a.name == "transB" and a.i != 1 for a in layer.attribute):
            continue
        if layer.input[1] not in state or (len(layer.input) > 2 and layer.input[2] not in state):
            continue
        eps = next((a.f for a in node.attribute if a.name == "epsilon"), 1e-5)
        weight = layer.input[1]
        bias = layer.input[2] if len(layer.input) > 2 and layer.input[2] else ""
        out_bias = bias or (weight.removesuffix(".weight") + ".bias" if weight.endswith(".weight") else weight + ".b")
        scale, shift, mean, var = node.input[1:5]
        folds.append(Fold(weight, bias, scale, shift, mean, var, float(eps), out_bias))
        if len(layer.input) > 2:
            layer.input[2] = out_bias
        else:
            layer.input.append(out_bias)
        layer.output[0] = node.output[0]
        removed.append(node)
    for node in removed:
        graph.node.remove(node)
    return folds


def state_of(model: nn.Module) -> dict[str, np.ndarray]:
    return {n: t.detach().cpu().float().numpy() for n, t in model.state_dict().items() if t.is_floating_point()}


def verify_graph(graph: Graph, model: nn.Module, input_shape: Shape) -> float:
    """onnxruntime on the template filled with `model`'s weights against torch: the relative difference."""
    probe = torch.rand(4, *input_shape, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = model.eval()(probe).numpy()
    return export.verify(export.to_onnx(graph, state_of(model)), expected, probe.numpy())


def graphs(build: Builder, widths: list[int], input_shape: Shape) -> tuple[dict[int, Graph], list[Fold]]:
    """One exported graph per width, shared where the bytes are equal (a graph holds a width only where an
    operator's attribute does, a depthwise convolution's group count for one): exported at the smallest, a
    middle and the largest width, and at every width when those differ; each verified against torch."""
    probes = sorted({min(widths), widths[len(widths) // 2], max(widths)})
    made: dict[int, Graph] = {}
    folds: list[Fold] | None = None

    def one(width: int) -> Graph:
        nonlocal folds
        model = _randomise(build_at(build, width), width)
        template, f = export_graph(model, input_shape)
        if folds is None:
            folds = f
        elif f != folds:
            raise InputError(f"the BatchNorm layers fold differently at width {width} than at {probes[0]}")
        graph = Graph(template, f)
        error = verify_graph(graph, model, input_shape)
        if not error <= export.TOLERANCE:
            raise InputError(
                f"the graph torch.onnx.export traced at width {width} computes something else than build({width}) "
                f"(relative difference {error:.1e}): forward() takes a path the tracer cannot follow"
            )
        return graph

    for w in probes:
        made[w] = one(w)
    if len({g.template for g in made.values()}) == 1:
        shared = made[probes[0]]
        return dict.fromkeys(widths, shared), folds or []
    for w in widths:
        if w not in made:
            made[w] = one(w)
    unique: dict[bytes, Graph] = {}
    return {w: unique.setdefault(made[w].template, made[w]) for w in widths}, folds or []


def _classifier(model: nn.Module, input_shape: Shape) -> nn.Module:
    """The last Conv or Linear layer forward() runs: its outputs are the classes, which never move."""
    order: list[nn.Module] = []
    hooks = [
        m.register_forward_hook(lambda mod, _i, _o: order.append(mod))
        for m in model.modules()
        if isinstance(m, nn.Conv1d | nn.Conv2d | nn.Conv3d | nn.Linear)
    ]
    try:
        with torch.no_grad():
            model.eval()(torch.zeros(2, *input_shape))
    finally:
        for h in hooks:
            h.remove()
    if not order:
        raise InputError("build(width)'s forward() runs no Conv or Linear layer: there is nothing to generate")
    return order[-1]


def channel_groups(model: nn.Module, input_shape: Shape) -> dict[str, Group]:
    """torch-pruning's coupled channel groups as {tensor: (axis, factor)}, each named after its first
    member; groups with a grouped (not depthwise) convolution are left out."""
    names = {id(m): n for n, m in model.named_modules()}
    classifier = _classifier(model, input_shape)
    graph = tp.DependencyGraph().build_dependency(model, example_inputs=torch.zeros(1, *input_shape))
    out: dict[str, Group] = {}
    for group in graph.get_all_groups(ignored_layers=[classifier], root_module_types=(nn.Conv2d, nn.Linear)):
        channels = len(group[0].idxs)
        members: dict[tuple[str, int], int] = {}  # (tensor, axis) -> factor
        usable = True
        for item in group:
            module, handler = item.dep.target.module, getattr(item.dep.handler, "__name__", "")
            if id(module) not in names or not isinstance(module, nn.Module):
                continue  # an operator (add, reshape): no tensors of its own
            prefix = names[id(module)] + "." if names[id(module)] else ""
            factor = len(item.idxs) // channels
            if isinstance(module, nn.Conv1d | nn.Conv2d | nn.Conv3d) and module.groups > 1:
                depthwise = module.groups == module.in_channels
                if not depthwise:
                    usable = False
                    break
                if handler == "prune_in_channels":
                    continue  # a depthwise weight's input axis has size 1
            if handler == "prune_out_channels":
                size = len(item.idxs)
                for n, t in [*module.named_parameters(recurse=False), *module.named_buffers(recurse=False)]:
                    if t.dim() >= 1 and t.shape[0] == size:
                        members[(prefix + n, 0)] = factor
            elif handler == "prune_in_channels" and isinstance(getattr(module, "weight", None), torch.Tensor):
                members[(prefix + "weight", 1)] = factor
        if usable and members:
            out[next(iter(members))[0] + "/channels"] = [(n, a, f) for (n, a), f in members.items()]
    return out


def safe_groups(model: nn.Module, groups: dict[str, Group], input_shape: Shape) -> tuple[dict[str, Group], list[str]]:
    """The groups whose random permutation leaves the logits of `model` (random weights) unchanged to
    TOLERANCE, and the names of those dropped."""
    model = _randomise(model, 7)
    state = dict(model.state_dict())
    probe = torch.rand(4, *input_shape, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        expected = model(probe)
    kept: dict[str, Group] = {}
    dropped: list[str] = []
    gen = torch.Generator().manual_seed(3)
    for name, group in groups.items():
        first, axis, factor = group[0]
        channels = state[first].shape[axis] // factor
        trial = permute.apply_order(state, group, torch.randperm(channels, generator=gen).tolist())
        with torch.no_grad():
            got = torch.func.functional_call(model, trial, (probe,))
        error = float((got - expected).abs().max() / expected.abs().max().clamp_min(1.0))
        if error <= TOLERANCE:
            kept[name] = group
        else:
            dropped.append(name)
    return kept, dropped


def derive(
    build: Builder,
    builder: str,
    max_width: int,
    widths: list[int],
    input_shape: Shape,
    classes: int,
    generate: tuple[str, ...] = (),
) -> tuple[Structure, dict[int, Graph], list[str]]:
    """The structure of `build` and its graph at each of `widths`; InputError (one line) for a module the
    service cannot serve. Also the names of channel groups left unpermuted (their permutation would change
    the function)."""
    low = min(widths)
    if low >= max_width:
        raise InputError(f"the served widths must span at least two widths, not only {max_width}")
    third = (max_width + low) // 2 if max_width - low > 1 else max_width + 1
    width_rules = rules(build, (max_width, low, third))
    model = build_at(build, max_width)
    try:
        with torch.no_grad():
            out = model.eval()(torch.zeros(2, *input_shape))
    except RuntimeError as exc:  # shapes that do not fit the data (channels, sizes): torch says which
        first = str(exc).strip().splitlines()[0]
        raise InputError(
            f"build({max_width}) cannot run on the data set's inputs of shape {input_shape}: {first}"
        ) from None
    if tuple(out.shape) != (2, classes):
        raise InputError(
            f"build({max_width}) returns {tuple(out.shape)} for a batch of 2 inputs of {input_shape}: "
            f"the data set has {classes} classes, so (2, {classes}) was expected"
        )
    generated = generated_set(model, width_rules, generate)
    too_big = [n for n in generated if len(width_rules[n].offset) > 4]
    if too_big:
        raise InputError(f"{too_big[0]} has more than 4 dimensions: only Linear and 1-3D kernels are generated")
    statistics = [
        f"{m}.{b}" if m else b
        for m, mod in model.named_modules()
        if is_batchnorm(mod)
        for b, t in mod.named_buffers(recurse=False)
        if t.is_floating_point()
    ]
    groups, dropped = safe_groups(build_at(build, max_width), channel_groups(model, input_shape), input_shape)
    per_width, folds = graphs(build, widths, input_shape)
    structure = Structure(builder, input_shape, classes, width_rules, generated, statistics, groups, folds)
    return structure, per_width, dropped


def kernel_size(structure: Structure, width: int) -> int:
    """The most values one (output, input) query must return: the largest kernel of a generated tensor."""
    return max(math.prod(s[2:]) if len(s) > 2 else 1 for s in structure.shapes(width).values())
