"""Graph-rewriting passes: shard, fuse, overlap, moe; the pass manager runs them as pipelines.

>>> from energylens.passes import run_pipeline
>>> from energylens.ir.text import EXAMPLE, parse_graph
>>> g = run_pipeline(parse_graph(EXAMPLE), "shard{tp=2},fuse")
"""

from energylens.passes.fuse import Fuse, Kernel, fused_hbm_bytes, kernels, on_chip_values
from energylens.passes.manager import (
    Pass,
    PassManager,
    PassVerificationError,
    get_pass,
    list_passes,
    make_pass,
    parse_pipeline,
    register_pass,
    run_pipeline,
)
from energylens.passes.moe import ExpertLoad, Moe, expert_load, expert_ops, graph_expert_load, routing_of
from energylens.passes.shard import (
    MESH_AXES,
    Shard,
    check_parallel,
    collective_bytes,
    local_dim_sizes,
    mesh_of,
    mesh_sizes,
    replication,
    valid_ep_values,
    valid_tp_values,
)

__all__ = [
    "Pass", "PassManager", "PassVerificationError", "get_pass", "list_passes", "make_pass", "parse_pipeline",
    "register_pass", "run_pipeline",
    "Shard", "MESH_AXES", "check_parallel", "collective_bytes", "local_dim_sizes", "mesh_of", "mesh_sizes",
    "replication", "valid_ep_values", "valid_tp_values",
    "Fuse", "Kernel", "fused_hbm_bytes", "kernels", "on_chip_values",
    "Moe", "ExpertLoad", "expert_load", "expert_ops", "graph_expert_load", "routing_of",
]
