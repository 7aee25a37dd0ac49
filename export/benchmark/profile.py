"""The DF share: the fraction of ONNX Runtime's kernel time spent in the DF's nodes, from its per-node profile.

``DF share = sum of the DF nodes' kernel times / sum of every node's kernel time``, in [0, 1] by construction, over
the profiled runs after the dropped warm-up ones (:func:`profile_graph`, a profiling session of its own, after the
timed loop). The DF nodes are those the exporter put in a DF module's scope
(:data:`~compressor.export.graph.scanner_graph.DATA_FIDELITY_SCOPE`: each cascade's ``data_fidelity`` and the line
projection built once from the mask); a node ONNX Runtime fused or re-laid out is traced back to the exported node it
stems from (:func:`source_node`); the nodes it inserts itself (layout reorders around the blocked convolutions) count
with the rest. The share is not ``1 - t(blocks only) / t(graph)``: ONNX Runtime optimises the graph without the DF
otherwise (other layout reorders and fusions between consecutive blocks), so that difference is not the DF's cost.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from compressor.errors import InputError
from compressor.export.graph.scanner_graph import DATA_FIDELITY_SCOPE
from compressor.export.runtimes.onnxruntime_provider import OnnxRuntimeProvider

PROFILE_RUNS = 10
"""Profiled runs per graph for the DF share (after the ``warmup`` ones, which are dropped)."""

NCHWC_SUFFIX = "_nchwc"
"""ONNX Runtime names a node it moved to the channel-blocked layout after its output tensor plus this suffix."""

UNIQUE_SUFFIX = re.compile(r"_token_\d+$")
"""What ONNX Runtime appends to a name it reuses for a node it creates (``node_conv2d_token_18``: the QLinearConv that
replaced ``node_conv2d`` and its Q/DQ pairs; ``ReorderOutput_token_3``)."""


@dataclass(frozen=True)
class NodeTime:
    """One node of ONNX Runtime's per-node profile, summed over the kept runs.

    Attributes:
        name: the node's name in ONNX Runtime's optimised graph (fused nodes ``"<first>/<Fusion>"``, re-laid-out ones
            ``"<output>_nchwc"``).
        op_type: the kernel's operator, e.g. ``"Conv"``, ``"MatMul"``, ``"QLinearConv"``, ``"ReorderOutput"``.
        source: the exported node it stems from, ``None`` for a node ONNX Runtime inserted (layout reorders).
        scope: the DF scope of ``source`` (``"cascades.0.data_fidelity"``, ``"line_projection"``), ``None`` outside.
        microseconds: its kernel time, summed over the kept runs.
    """

    name: str
    op_type: str
    source: str | None
    scope: str | None
    microseconds: float


def node_scopes(node: onnx.NodeProto) -> list[str]:
    """The module scopes the dynamo exporter recorded on ``node`` (``pkg.torch.onnx.name_scopes``), outermost first,
    e.g. ``["", "cascades.0.data_fidelity", "matmul_12"]``; ``[]`` when it recorded none."""
    for entry in node.metadata_props:
        if entry.key == "pkg.torch.onnx.name_scopes":
            return list(ast.literal_eval(entry.value))
    return []


def data_fidelity_scopes(model: onnx.ModelProto) -> dict[str, str]:
    """``{exported node name: its DF scope}`` for the nodes inside a
    :data:`~compressor.export.graph.scanner_graph.DATA_FIDELITY_SCOPE` module: one scope per cascade with a DF
    (``cascades.<i>.data_fidelity``) plus ``line_projection`` for the ``"lines"`` formulation."""
    scopes = {}
    for node in model.graph.node:
        inside = [scope for scope in node_scopes(node) if DATA_FIDELITY_SCOPE.fullmatch(scope)]
        if inside:
            scopes[node.name] = inside[0]
    return scopes


def matched_cascades(model: onnx.ModelProto, scopes: Mapping[str, str]) -> set[str]:
    """The cascades' DF scopes (``cascades.<i>.data_fidelity``) that ``scopes`` (``{node name: DF scope}``, e.g. of
    the fp32 graph, :func:`data_fidelity_scopes`) gives to at least one of ``model``'s nodes."""
    return {scopes[node.name] for node in model.graph.node if scopes.get(node.name, "").startswith("cascades.")}


def require_data_fidelity_scopes(model: onnx.ModelProto, cascades: int) -> None:
    """Raise unless the exported ``model`` has nodes in each of its ``cascades`` DF layers' scopes: without them the
    DF share would read 0 whatever the DF costs."""
    found = matched_cascades(model, data_fidelity_scopes(model))
    if len(found) != cascades:
        raise RuntimeError(f"the exported graph has nodes in {len(found)} DF scopes, expected one per DF layer "
                           f"({cascades}): was the graph exported with ScannerGraph's DF modules?")


def source_node(name: str, node_names: set[str], producers: Mapping[str, str]) -> str | None:
    """The exported node an optimised-graph node ``name`` stems from: itself, the first node of a fusion
    (``"<first>/<Fusion>"``), the producer of the tensor a re-laid-out node is named after (``"<tensor>_nchwc"``), or
    the node whose name ONNX Runtime reused for its replacement (``"<node>_token_<n>"``); ``None`` for nodes ONNX
    Runtime inserted (``ReorderInput``/``ReorderOutput``, ``Transpose``, split helpers)."""
    base = UNIQUE_SUFFIX.sub("", name)
    for candidate in dict.fromkeys((name, base, base.split("/", 1)[0], base.removesuffix(NCHWC_SUFFIX))):
        if candidate in node_names:
            return candidate
        if candidate in producers:
            return producers[candidate]
    return None


def profile_node_times(events: Sequence[Mapping[str, Any]], model: onnx.ModelProto, skip_runs: int,
                       scopes: Mapping[str, str] | None = None) -> list[NodeTime]:
    """Per-node kernel times of an ONNX Runtime profile (the JSON list of ``session.end_profiling()``) of ``model``,
    summed over the runs after the first ``skip_runs``; see :class:`NodeTime`. ``scopes``: ``{node name: DF scope}``
    (default: ``model``'s own, :func:`data_fidelity_scopes`)."""
    runs = sorted((event["ts"], event["ts"] + event["dur"]) for event in events
                  if event.get("cat") == "Session" and event.get("name") == "model_run")
    if len(runs) <= skip_runs:
        raise ValueError(f"the profile has {len(runs)} runs, fewer than the {skip_runs + 1} needed")
    start = runs[skip_runs][0]
    node_names = {node.name for node in model.graph.node}
    producers = {output: node.name for node in model.graph.node for output in node.output}
    scopes = data_fidelity_scopes(model) if scopes is None else scopes
    totals: dict[tuple[str, str], float] = {}
    for event in events:
        if event.get("cat") == "Node" and event["name"].endswith("_kernel_time") and event["ts"] >= start:
            key = (event["name"].removesuffix("_kernel_time"), event["args"]["op_name"])
            totals[key] = totals.get(key, 0.0) + float(event["dur"])
    times = []
    for (name, op_type), microseconds in totals.items():
        source = source_node(name, node_names, producers)
        times.append(NodeTime(name, op_type, source, scopes.get(source) if source else None, microseconds))
    return times


def df_share(times: Sequence[NodeTime]) -> float:
    """The DF nodes' share of the kernel time: ``sum(DF nodes) / sum(all nodes)``, in [0, 1]."""
    total = sum(node.microseconds for node in times)
    if total <= 0:
        raise ValueError("the profile has no node with a positive kernel time")
    return sum(node.microseconds for node in times if node.scope is not None) / total


def time_by_op_type(times: Sequence[NodeTime]) -> dict[str, float]:
    """``{op type: share of the kernel time}``, largest first, with the DF's nodes gathered under ``"DF"``."""
    shares: dict[str, float] = {}
    total = sum(node.microseconds for node in times)
    for node in times:
        key = "DF" if node.scope is not None else node.op_type
        shares[key] = shares.get(key, 0.0) + node.microseconds / total
    return dict(sorted(shares.items(), key=lambda item: -item[1]))


def profile_graph(path: Path, runtime: OnnxRuntimeProvider, threads: int, feed: Mapping[str, np.ndarray],
                  runs: int = PROFILE_RUNS, warmup: int = 5, scopes: Mapping[str, str] | None = None) -> list[NodeTime]:
    """Run the exported graph ``path`` ``warmup + runs`` times on ``feed`` in a profiling session and return its
    per-node kernel times over the last ``runs`` (:func:`profile_node_times`; ``scopes`` as there)."""
    events = runtime.profile(path, feed, warmup + runs, threads)
    return profile_node_times(events, onnx.load(str(path)), warmup, scopes)


def require_matched_data_fidelity(path: Path, scopes: Mapping[str, str], cascades: int, formulation: str) -> None:
    """Raise an :class:`InputError` naming the precision file ``path`` unless its nodes match the DF of each of the
    ``cascades`` in ``scopes`` (the fp32 graph's, traced with ``formulation``): without them its DF share would read
    0 whatever its DF costs (a file of another formulation, or of another version of the exporter)."""
    found = matched_cascades(onnx.load(str(path)), scopes)
    if len(found) != cascades:
        raise InputError(f"its nodes match the DF layers of {len(found)} of the {cascades} cascades of the fp32 graph "
                         f"traced with the {formulation!r} formulation: re-export it with this version's "
                         "`compress export`", path)

