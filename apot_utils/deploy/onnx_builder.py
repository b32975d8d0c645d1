"""The ONNX graph under construction: nodes and initializers named after the layer they implement."""
from __future__ import annotations

from contextlib import contextmanager

import numpy as np
import torch


class UnsupportedModel(ValueError):
    """A model the exporter cannot express in the requested variant (the message says why)."""


def _tensor(value, dtype) -> np.ndarray:
    return np.ascontiguousarray(torch.as_tensor(value).detach().cpu().numpy().astype(dtype, copy=False))


class GraphBuilder:
    """Nodes and initializers of one ONNX graph, named after the layer they implement (``scope``)."""

    def __init__(self):
        import onnx.helper
        import onnx.numpy_helper
        self._helper, self._numpy = onnx.helper, onnx.numpy_helper
        self.nodes, self.initializers, self._scope, self._count = [], [], [], 0

    @contextmanager
    def scope(self, name: str):
        self._scope.append(name)
        try:
            yield
        finally:
            self._scope.pop()

    def _name(self, what: str) -> str:
        self._count += 1
        return "/".join(self._scope + [what]) + f"_{self._count}"

    def const(self, array: np.ndarray, what: str = "const") -> str:
        name = self._name(what)
        self.initializers.append(self._numpy.from_array(np.asarray(array), name))
        return name

    def output(self, value: str, name: str) -> None:
        """Make ``value`` the graph output ``name``."""
        self.nodes.append(self._helper.make_node("Identity", [value], [name], name=name))

    def op(self, op_type: str, inputs: list[str], outputs: int = 1, **attributes):
        """Add one node; returns its output name (a list of them when ``outputs`` > 1)."""
        names = [self._name(op_type) for _ in range(outputs)]
        self.nodes.append(self._helper.make_node(op_type, inputs, names, name=self._name(op_type + "_node"),
                                                 **attributes))
        return names[0] if outputs == 1 else names
