"""The ONNX graph: the exportable scanner graph of a trained model, its trace to ONNX, and the validation every
exported file goes through.

Modules: :mod:`~compressor.export.graph.scanner_graph` (:class:`ScannerGraph`: raw undersampled k-space and mask in,
normalised reconstruction out, with the data-fidelity layers in an exportable formulation registered in
``FORMULATIONS``), :mod:`~compressor.export.graph.trace` (the dynamo exporter, the formulation a mask takes, phantom
data when no real slices are at hand) and :mod:`~compressor.export.graph.validate` (checker, declared inputs and
outputs, the chosen runtime and ``onnx.reference`` against PyTorch; a precision file in image terms against the fp32
export). The inputs and outputs themselves are named in :mod:`compressor.export.exported_file`.

Adding a DF formulation: a ``FormulationSpec`` registered in ``FORMULATIONS`` and its layers built in
:class:`~compressor.export.graph.scanner_graph.ScannerGraph`, proven equal to the training DF by a test.
"""
