"""Scanner-side deployment of the SFT-KD-Recon models: ONNX export with the data-fidelity layers, validation,
ONNX Runtime sessions, a reconstruct tool and latency benchmarks.

Modules: :mod:`compressor.export.graph.scanner_graph` (the exportable DF formulations and the scanner graph),
:mod:`compressor.export.targets.registry` (export targets, one class each: fp32, INT8 and fp16 ONNX),
:mod:`compressor.export.precision` (INT8 quantization with its per-block sensitivity analysis, fp16
conversion), :mod:`compressor.export.exported_file` (what an exported file holds: its inputs, outputs and metadata),
:mod:`compressor.export.runtimes.cpu` (the CPU and the instruction sets every figure names),
:mod:`compressor.export.targets.export` (the export driver shared by every target),
:mod:`compressor.export.graph.validate` (checker, parity against PyTorch, second runtime),
:mod:`compressor.export.runtimes`
(ONNX Runtime's providers, OpenVINO, sessions; no PyTorch), :mod:`compressor.export.run_models` (a run's trained
models, masks and validation slices), :mod:`compressor.export.scanner.reconstruct` (k-space files in, HDF5
reconstructions
out), :mod:`compressor.export.scanner.raw_input` and :mod:`compressor.export.scanner.ismrmrd_images` (ISMRMRD raw
scans in,
ISMRMRD images out), :mod:`compressor.export.scanner.mrd_server` (``compress serve``, the MRD streaming server) and
:mod:`compressor.export.scanner.mrd_stream` (MRD v2 streams),
:mod:`compressor.export.serving`
(serving repositories of the validated exports, a seam of their own after the export targets: Triton Inference
Server's), :mod:`compressor.export.benchmark` (ORT vs PyTorch latency and precision tables).

The folder ``export/`` is installed as ``compressor.export`` (``package-dir`` in ``pyproject.toml``): a PyPI
distribution called ``export`` cannot shadow it, nor it that one. It imports from the physics, models and data of
:mod:`compressor`; those never import it.
"""
