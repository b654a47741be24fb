"""The computation graph of a model as a flat list of ops, for the receptive-field analysis.

Two frontends describe the same computation: ``torch.fx`` symbolic tracing when that works, and otherwise
one real forward pass recorded with module hooks and a ``TorchFunctionMode`` ("hooks"), so models with
data-dependent control flow are covered too. Either one, run on an input tensor, lists the ops in
execution order (:class:`Op`: torch.nn layers, as fx counts leaves, and torch functions and methods),
each with its arguments (the outputs of earlier ops as :class:`Ref`, non-tensor values inlined) and its
output shape, together with the module paths whose output each op is; and either computes the output of
one op for its input gradient (``feature``). A module from outside torch that declares a window geometry
(:func:`declares_window`) is one op. Under ``torch.fx`` a function wrapped with ``torch.fx.wrap`` is one
opaque op; the hook frontend records the torch calls inside it.
"""

from __future__ import annotations

import operator
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.utils._pytree as pytree
from torch import fx, nn
from torch.overrides import TorchFunctionMode


@dataclass(frozen=True)
class Ref:
    """Reference to the tensor output of another op."""

    name: str


@dataclass
class Op:
    """One node of the graph: a module call, a torch function or method, the input, or a constant tensor."""

    name: str
    kind: str  # "input" | "const" | "module" | "function" | "method"
    target: Any  # nn.Module, callable or method name
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    shape: torch.Size | list[torch.Size]  # a list for ops returning several tensors


def _shape_of(value: Any) -> torch.Size | list[torch.Size] | None:
    if isinstance(value, torch.Tensor):
        return value.shape
    tensors = [v for v in pytree.tree_leaves(value) if isinstance(v, torch.Tensor)]
    return [t.shape for t in tensors] if tensors else None


def _first_tensor(value: Any) -> torch.Tensor:
    return next(v for v in pytree.tree_leaves(value) if isinstance(v, torch.Tensor))


_WINDOW_ATTRIBUTES = ("kernel_size", "stride", "padding", "dilation")
_TORCH_WINDOWS = (nn.modules.conv._ConvNd, nn.modules.pooling._MaxPoolNd, nn.modules.pooling._AvgPoolNd)


def declares_window(m: nn.Module) -> bool:
    """A module from outside torch that implements one window operation itself and says so.

    It carries ``nn.Conv2d``'s geometry attributes (``kernel_size``, ``stride``, ``padding``,
    ``dilation``) and contains no torch window layer (so it is not a block of several): e.g. a locally
    connected layer computed with ``unfold`` and ``einsum``, whose flattened positions cannot be followed
    through the graph. Such modules are treated as a single window with that geometry.
    """
    return (
        not type(m).__module__.startswith("torch.")
        and all(hasattr(m, a) for a in _WINDOW_ATTRIBUTES)
        and not any(isinstance(sub, _TORCH_WINDOWS) for sub in m.modules())
    )


_FX_DEFAULT = fx.Tracer()


def _is_leaf(m: nn.Module, path: str) -> bool:
    """fx's notion of a leaf (torch.nn layers) plus self-declared windows."""
    return _FX_DEFAULT.is_leaf_module(m, path) or declares_window(m)


class _ModuleOutputTracer(fx.Tracer):
    """fx tracer that also remembers which node each module call returned."""

    def __init__(self) -> None:
        super().__init__()
        self.module_outputs: dict[str, str] = {}

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return _is_leaf(m, module_qualified_name)

    def call_module(self, m: nn.Module, forward: Callable[..., Any], args: Any, kwargs: Any) -> Any:
        out = super().call_module(m, forward, args, kwargs)
        path = self.path_of_module(m)
        if path and isinstance(out, fx.Proxy):
            self.module_outputs[path] = out.node.name
        return out


class _ValueRecorder(fx.Interpreter):
    """Shape propagation that also keeps non-tensor results (sizes used in ``view``, slice bounds)."""

    def __init__(self, module: fx.GraphModule) -> None:
        super().__init__(module)
        self.shapes: dict[str, torch.Size | list[torch.Size]] = {}
        self.values: dict[str, Any] = {}

    def run_node(self, n: fx.Node) -> Any:
        result = super().run_node(n)
        shape = _shape_of(result)
        if shape is None:
            self.values[n.name] = result
        else:
            self.shapes[n.name] = shape
        return result


_FX_KIND = {
    "placeholder": "input",
    "get_attr": "const",
    "call_module": "module",
    "call_function": "function",
    "call_method": "method",
}


class _FxGraph:
    method = "fx"

    def __init__(self, model: nn.Module) -> None:
        tracer = _ModuleOutputTracer()
        graph = tracer.trace(model)
        self.gm = fx.GraphModule(tracer.root, graph)
        self.aliases = tracer.module_outputs

    def run(self, x: torch.Tensor) -> tuple[list[Op], dict[str, str]]:
        recorder = _ValueRecorder(self.gm)
        recorder.run(x)
        values = recorder.values

        def resolve(node: fx.Node) -> Any:
            return values[node.name] if node.name in values else Ref(node.name)

        ops: list[Op] = []
        for node in self.gm.graph.nodes:
            if node.op == "output" or node.name not in recorder.shapes:  # non-tensors are inlined as args
                continue
            target = self.gm.get_submodule(node.target) if node.op == "call_module" else node.target
            args = fx.node.map_arg(node.args, resolve)
            kwargs = fx.node.map_arg(node.kwargs, resolve)
            ops.append(Op(node.name, _FX_KIND[node.op], target, args, kwargs, recorder.shapes[node.name]))
        return ops, self.aliases

    def feature(self, name: str) -> Callable[[torch.Tensor], torch.Tensor]:
        """A module computing only the output of node ``name`` (for gradients of that feature map)."""
        graph = fx.Graph()
        env: dict[fx.Node, fx.Node] = {}
        for node in self.gm.graph.nodes:
            if node.op == "output":
                break
            env[node] = graph.node_copy(node, lambda n: env[n])
            if node.name == name:
                graph.output(env[node])
                truncated = fx.GraphModule(self.gm, graph)
                return lambda x: _first_tensor(truncated(x))
        raise KeyError(f"no node named {name!r}")


def op_name(target: Any) -> str:
    """The name by which the analysis knows a function or method (``conv2d``, ``getitem``, ``view``)."""
    name = target if isinstance(target, str) else getattr(target, "__name__", type(target).__name__)
    return name.strip("_")


class _Recorder(TorchFunctionMode):
    """Record one real forward pass as ops: torch.nn layers (fx's notion of leaf) and torch functions."""

    def __init__(self, model: nn.Module, capture: str | None = None) -> None:
        super().__init__()
        self.ops: list[Op] = []
        self.aliases: dict[str, str] = {}
        self.names: dict[int, str] = {}
        self.keep: list[torch.Tensor] = []  # keeps recorded tensors alive so that their ids stay unique
        self.counts: dict[str, int] = {}
        self.depth = 0
        self.capture = capture
        self.captured: torch.Tensor | None = None
        self.paths = {m: p for p, m in model.named_modules()}

    def _unique(self, base: str) -> str:
        base = re.sub(r"\W", "_", base) or "op"  # identifiers, like fx's node names
        n = self.counts.get(base, 0)
        self.counts[base] = n + 1
        return base if n == 0 else f"{base}_{n}"

    def bind(self, tensor: torch.Tensor, name: str) -> None:
        self.names[id(tensor)] = name
        self.keep.append(tensor)
        if name == self.capture:
            self.captured = tensor

    def _ref(self, value: Any) -> Any:
        if not isinstance(value, torch.Tensor):
            return value
        if id(value) not in self.names:
            name = self._unique("const")
            self.ops.append(Op(name, "const", None, (), {}, value.shape))
            self.bind(value, name)
        return Ref(self.names[id(value)])

    def record(self, kind: str, target: Any, base: str, args: Any, kwargs: Any, out: Any) -> None:
        shape = _shape_of(out)
        if shape is None:
            return
        args, kwargs = pytree.tree_map(self._ref, (tuple(args), dict(kwargs)))
        name = self._unique(base)
        self.ops.append(Op(name, kind, target, args, kwargs, shape))
        if isinstance(out, torch.Tensor):
            self.bind(out, name)
            return
        for i, tensor in enumerate(t for t in pytree.tree_leaves(out) if isinstance(t, torch.Tensor)):
            element = self._unique("getitem")
            self.ops.append(Op(element, "function", operator.getitem, (Ref(name), i), {}, tensor.shape))
            self.bind(tensor, element)

    def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if self.depth == 0:
            self.record("function", func, op_name(func), args, kwargs, out)
        return out

    def pre_hook(self, module: nn.Module, args: Any, kwargs: Any) -> None:
        if _is_leaf(module, self.paths.get(module, "")):
            self.depth += 1

    def post_hook(self, module: nn.Module, args: Any, kwargs: Any, out: Any) -> None:
        path = self.paths.get(module, "")
        if _is_leaf(module, path):
            self.depth -= 1
            if self.depth == 0:
                self.record("module", module, path or type(module).__name__.lower(), args, kwargs, out)
        if self.depth == 0 and path and isinstance(out, torch.Tensor) and id(out) in self.names:
            self.aliases[path] = self.names[id(out)]


class _HookGraph:
    method = "hooks"

    def __init__(self, model: nn.Module) -> None:
        self.model = model

    def _forward(self, x: torch.Tensor, capture: str | None = None) -> _Recorder:
        recorder = _Recorder(self.model, capture)
        handles = []
        for module in self.model.modules():
            handles.append(module.register_forward_pre_hook(recorder.pre_hook, with_kwargs=True))
            handles.append(module.register_forward_hook(recorder.post_hook, with_kwargs=True))
        recorder.ops.append(Op("x", "input", None, (), {}, x.shape))
        recorder.bind(x, "x")
        try:
            with recorder:
                out = self.model(x)
        finally:
            for handle in handles:
                handle.remove()
        outputs = [t for t in pytree.tree_leaves(out) if isinstance(t, torch.Tensor)]
        if any(id(t) not in recorder.names for t in outputs):
            raise RuntimeError("the model's output was computed by code the hook tracer cannot see")
        return recorder

    def run(self, x: torch.Tensor) -> tuple[list[Op], dict[str, str]]:
        recorder = self._forward(x)
        return recorder.ops, recorder.aliases

    def feature(self, name: str) -> Callable[[torch.Tensor], torch.Tensor]:
        def compute(x: torch.Tensor) -> torch.Tensor:
            captured = self._forward(x, capture=name).captured
            if captured is None:
                raise KeyError(f"no op named {name!r}")
            return captured

        return compute


Graph = _FxGraph | _HookGraph  # each has ``method``, ``run(x) -> (ops, aliases)`` and ``feature(name)``


def trace(model: nn.Module, x: torch.Tensor, method: str) -> tuple[Graph, list[Op], dict[str, str]]:
    """The graph of ``model`` run on ``x``, its ops and its aliases (module path -> op name).

    ``method``: ``"fx"``, ``"hooks"`` or ``"auto"`` (fx, else hooks when symbolic tracing fails).
    """
    if method not in ("auto", "fx", "hooks"):
        raise ValueError(f"method must be 'auto', 'fx' or 'hooks', got {method!r}")
    if method != "hooks":
        try:
            graph: Graph = _FxGraph(model)
            ops, aliases = graph.run(x)
            return graph, ops, aliases
        except Exception:
            # Symbolic tracing fails in many ways (data-dependent control flow, non-traceable calls);
            # whatever the reason, one recorded real forward pass describes the same computation.
            if method == "fx":
                raise
    graph = _HookGraph(model)
    ops, aliases = graph.run(x)
    return graph, ops, aliases
