"""Serving repositories: validated exports packaged as a serving system's model repository (``compress export
--triton-repo DIR`` writes Triton's).

**A seam of its own, not an export target.** An export target (:mod:`compressor.export.targets`) turns the traced
graph of one model into one file and validates it against PyTorch. A serving repository starts where the targets
stop: it takes files that are already exported and validated (any precision, several models), folds each one's mask
into its graph for the server's batcher, checks the folded model against its export, and lays the models out with
the server's configuration and versions, keeping or refusing what the folder already holds. So it has its own
registry, :data:`SERVING_REPOSITORIES`, and runs after the export targets, on their files.

Modules: :mod:`~compressor.export.serving.repository` (:class:`RepositoryFormat`, :data:`SERVING_REPOSITORIES` and the
writer every format shares: checks before writing, existing entries, staging), :mod:`~compressor.export.serving.
mask_folding` (the mask folded in, and the check against the export), :mod:`~compressor.export.serving.triton` (the
Triton format: names, layout) and :mod:`~compressor.export.serving.triton_config` (its ``config.pbtxt``). Importing
the package registers the built-in formats.

Adding a repository format (e.g. KServe's): a :class:`RepositoryFormat` subclass (``title``, ``option``,
``model_file``, :meth:`~RepositoryFormat.model_name`, :meth:`~RepositoryFormat.entry_files`) decorated with
``@SERVING_REPOSITORIES.register("name")``, in a module imported here.
"""

from compressor.export.serving import triton
from compressor.export.serving.repository import (
    SERVING_REPOSITORIES,
    PlannedEntry,
    RepositoryEntry,
    RepositoryFormat,
    ServedExport,
)
from compressor.export.serving.triton import TritonRepository, check_planned_entries, write_triton_repository
from compressor.export.serving.triton_config import INSTANCE_KINDS, TritonOptions

__all__ = ["INSTANCE_KINDS", "SERVING_REPOSITORIES", "PlannedEntry", "RepositoryEntry", "RepositoryFormat",
           "ServedExport", "TritonOptions", "TritonRepository", "check_planned_entries", "triton",
           "write_triton_repository"]
