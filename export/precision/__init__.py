"""Precisions: INT8 and fp16 versions of the traced fp32 scanner graph, with what each costs in image quality.

Modules: :mod:`~compressor.export.precision.options` (the user's choices: calibration, PSNR-loss bound, QAT),
:mod:`~compressor.export.precision.layers` (the graph's convolutions named by the model's layers, which INT8 may take),
:mod:`~compressor.export.precision.quantizer` (ONNX Runtime's static quantization of chosen convolutions, the DF kept
fp32), :mod:`~compressor.export.precision.quality` (image quality of a candidate against the fp32 graph),
:mod:`~compressor.export.precision.sensitivity` (which convolutions INT8 takes, and why),
:mod:`~compressor.export.precision.qat` (quantization-aware fine-tuning), :mod:`~compressor.export.precision.int8`
(the INT8 file and its record), :mod:`~compressor.export.precision.fp16` (the fp16 conversion) and
:mod:`~compressor.export.precision.speed` (whether INT8 pays on this CPU).

The DF projection, the normalisation and the outputs always stay fp32, so the DF keeps the measured lines exact. The
files themselves are written by the export targets (:mod:`compressor.export.targets.precision_targets`), which record
how each was made in its metadata (:class:`compressor.export.exported_file.ExportMetadata`).

Adding a precision: a value of :class:`compressor.export.exported_file.Precision`, a module here that makes its graph
from the fp32 one, and its target class registered in :mod:`compressor.export.targets.precision_targets`.
"""
