"""Evaluation of a finished run: per-slice metrics, significance tests, the paper's tables and figures.

Modules: :mod:`compressor.evaluate.metrics` (PSNR, SSIM, NMSE, HFN, VIF; pure array functions),
:mod:`compressor.evaluate.stats` (mean ± std, Wilcoxon signed-rank), :mod:`compressor.evaluate.run_data` (a run
directory's results, per-slice values, histories and latency, read through :mod:`compressor.rundir`),
:mod:`compressor.evaluate.tables` (Tables 1/9, 2/4, 3, 5, 8, the warm-start numbers and the headline gap; their
cells, notes and rendering in :mod:`compressor.evaluate.table_text`),
:mod:`compressor.evaluate.figures` (Figs. 3, 4, 7, 8 and the latency trade-off), :mod:`compressor.evaluate.attention`
(Fig. 6) and :mod:`compressor.evaluate.report` (everything at once, what ``compress report`` runs).

The folder ``evaluate/`` is installed as ``compressor.evaluate`` (``package-dir`` in ``pyproject.toml``), so
Hugging Face's ``evaluate`` and this package install side by side without touching each other.
"""
