"""The latency benchmark (``compress benchmark``; ``compress`` runs it after its export): ONNX Runtime with the
exported graph against PyTorch eager, across model sizes and precisions, in the shape of the paper's Table 8.

Modules: :mod:`~compressor.export.benchmark.run` (the driver: which models, :func:`benchmark_models`,
:func:`benchmark_run` for a run directory and its exports), :mod:`~compressor.export.benchmark.timing` (one
architecture's graphs and PyTorch in one interleaved loop: latency, throughput, parity), :mod:`~compressor.export.
benchmark.profile` (ONNX Runtime's per-node profile and the DF share), :mod:`~compressor.export.benchmark.
precision_files` (the int8/fp16 files timed: a run's exports or files made for timing) and
:mod:`~compressor.export.benchmark.report` (the printed table; ``benchmark.json`` and ``benchmark.csv`` through
:mod:`compressor.rundir`). The research comparisons (every DF formulation side by side, ONNX's ``DFT`` operator
against the matrix-product DFT) live with the benchmark scripts, in ``benchmarks/dft_formulations.py``.

Adding a column: a field of :class:`~compressor.rundir.ModelTiming` (``benchmark.json``/``benchmark.csv``), filled in
:func:`~compressor.export.benchmark.timing.time_architecture`, and its header and format in
:data:`~compressor.export.benchmark.report.TABLE_COLUMNS`.
"""

from compressor.export.benchmark.precision_files import parse_precisions
from compressor.export.benchmark.report import format_table, write_benchmark
from compressor.export.benchmark.run import DEFAULT_STUDENTS, benchmark_models, benchmark_run

__all__ = ["DEFAULT_STUDENTS", "benchmark_models", "benchmark_run", "format_table", "parse_precisions",
           "write_benchmark"]
