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

__all__ = [
    "DTYPE_BYTES", "OP_KINDS", "SYMBOLS", "Collective", "Decl", "DimSize", "Einsum", "Elementwise",
    "Gather", "Graph", "Op", "Reduce", "Repeat", "Source", "TensorType", "Value", "eval_size",
]
