"""Export targets: what ``compress export`` writes from a trained model, each one registered class, and the driver
that traces, writes, validates and renames every target's files the same way.

Modules: :mod:`~compressor.export.targets.registry` (:class:`ExportTarget`, :class:`ExportRequest`,
:data:`EXPORT_TARGETS`, the ``--precision`` list), :mod:`~compressor.export.targets.onnx_file` (the fp32 ONNX
file), :mod:`~compressor.export.targets.precision_targets` (the INT8 and fp16 files) and
:mod:`~compressor.export.targets.export` (the driver: :func:`export_model`, the metadata it records, a run's models
with :func:`export_run`). Importing the package registers the built-in targets.

Adding a target: an :class:`ExportTarget` subclass (its ``write``, and ``output_name``/``staging``/``validate`` where
the defaults do not fit) decorated with ``@EXPORT_TARGETS.register("name")``, in a module imported here.
"""

from compressor.export.targets import onnx_file, precision_targets
from compressor.export.targets.registry import EXPORT_TARGETS, ExportRequest, ExportTarget

__all__ = ["EXPORT_TARGETS", "ExportRequest", "ExportTarget", "onnx_file", "precision_targets"]
