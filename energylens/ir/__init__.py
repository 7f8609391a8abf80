"""The einsum IR (see ``core``), its text form (``text``) and verifier (``verify``)."""

from energylens.ir.core import (
    DTYPE_BYTES,
    OP_KINDS,
    SYMBOLS,
    Collective,
    Decl,
    DimSize,
    Einsum,
    Elementwise,
    Gather,
    Graph,
    Op,
    Reduce,
    Repeat,
    Source,
    TensorType,
    Value,
    eval_size,
)
from energylens.ir.text import parse_graph, print_graph, print_op, print_type
from energylens.ir.verify import verify_graph

__all__ = [
    "DTYPE_BYTES", "OP_KINDS", "SYMBOLS", "Collective", "Decl", "DimSize", "Einsum", "Elementwise",
    "Gather", "Graph", "Op", "Reduce", "Repeat", "Source", "TensorType", "Value", "eval_size",
    "parse_graph", "print_graph", "print_op", "print_type", "verify_graph",
]
