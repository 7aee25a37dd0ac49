"""Evaluation of a finished run: per-slice metrics, significance tests, the paper's tables and figures.

Modules: :mod:`compressor.evaluate.metrics` (PSNR, SSIM, NMSE, HFN, VIF; pure array functions),
:mod:`compressor.evaluate.stats` (mean ± std, Wilcoxon signed-rank), :mod:`compressor.evaluate.run_data` (reading a run
directory), :mod:`compressor.evaluate.tables` (Tables 1/9, 2/4, 3, 5, 8, the warm-start numbers and the headline gap),
:mod:`compressor.evaluate.figures` (Figs. 3, 4, 7, 8 and the latency trade-off), :mod:`compressor.evaluate.attention`
(Fig. 6) and :mod:`compressor.evaluate.report` (everything at once, what ``compress report`` runs).

The folder ``evaluate/`` is installed as ``compressor.evaluate`` (``package-dir`` in ``pyproject.toml``), so
Hugging Face's ``evaluate`` and this package install side by side without touching each other.
"""
