"""Evaluation of a finished run: per-slice metrics, significance tests, the paper's tables and figures.

Modules: :mod:`evaluate.metrics` (PSNR, SSIM, NMSE, HFN, VIF; pure array functions), :mod:`evaluate.stats`
(mean ± std, Wilcoxon signed-rank), :mod:`evaluate.rundir` (reading a run directory), :mod:`evaluate.tables`
(Tables 1/9, 2/4, 3, 5, 8, the warm-start numbers and the headline gap), :mod:`evaluate.figures` (Figs. 3, 4, 7,
8 and the latency trade-off), :mod:`evaluate.attention` (Fig. 6) and :mod:`evaluate.report` (everything at once,
what ``compress report`` runs).

The package name is generic (Hugging Face ships one called ``evaluate``); the CLI checks the marker below so a
shadowing package fails loudly instead of running someone else's code.
"""

__sft_kd_recon__ = True
