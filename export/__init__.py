"""Scanner-side deployment of the SFT-KD-Recon models: ONNX export with the data-fidelity layers, validation,
ONNX Runtime sessions, a reconstruct tool and latency benchmarks.

Modules: :mod:`export.graph` (the exportable DF formulations and the scanner graph), :mod:`export.onnx_export`
(export + metadata), :mod:`export.validate` (checker, parity against PyTorch, second runtime),
:mod:`export.runtime` (providers, sessions, metadata; ONNX Runtime and NumPy only), :mod:`export.reconstruct`
(k-space files in, HDF5 reconstructions out), :mod:`export.benchmark` (ORT vs PyTorch latency tables).

``export`` imports from :mod:`compressor`, never the other way round. Because ``export`` is a generic top-level
name, the CLI checks the marker below so that another installed package called ``export`` fails loudly.
"""

__sft_kd_recon__ = True
