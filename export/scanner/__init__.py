"""Scanner-side deployment: exported models reconstructing what a scanner gives (k-space and volume files, ISMRMRD
raw scans, MRD streams) into HDF5 files and the images a scanner, FIRE/OpenRecon and a PACS store.

Modules, from the input to the outputs:

* :mod:`~compressor.export.scanner.input_formats`: every ``--source`` (:class:`~.input_formats.InputFormat`,
  :func:`~.input_formats.input_formats`): how a file is recognised and read into the model's input;
* :mod:`~compressor.export.scanner.scanner_input`: what the model takes (:class:`~.scanner_input.ScannerInput`), what
  it asks of an input (:class:`~.scanner_input.InputRequest`) and the checks every input passes (mask, sampling,
  phase);
* :mod:`~compressor.export.scanner.raw_input`: one assembled ISMRMRD slice -> the single-coil k-space and mask the
  graph takes, for files and streams alike;
* :mod:`~compressor.export.scanner.slice_reconstruction`: one streamed slice through a model
  (:class:`~.slice_reconstruction.SliceReconstructor`), and its zero-filled comparison image;
* :mod:`~compressor.export.scanner.reconstruct`: ``compress reconstruct`` of a file
  (:func:`~.reconstruct.reconstruct_file`): the output HDF5, ISMRMRD images beside it, previews;
* images: :mod:`~compressor.export.scanner.image_formats` (the served-image conventions: 16-bit magnitude with its
  rescale slope, float32, complex), :mod:`~compressor.export.scanner.image_meta` (the MetaContainer: window,
  orientation, series description, the model in ``ImageComment``) and :mod:`~compressor.export.scanner.ismrmrd_images`
  (header, series numbering, the one :func:`~.ismrmrd_images.slice_image` every path uses);
* :mod:`~compressor.export.scanner.mrd_stream`: the MRD v2 stdin-to-stdout filter (``--source mrd``);
* ``compress serve``: :mod:`~compressor.export.scanner.mrd_server` (the server's life: threads, outcomes, shutdown),
  :mod:`~compressor.export.scanner.mrd_connection` (one connection's message flow),
  :mod:`~compressor.export.scanner.mrd_protocol` (messages read within every cap, written whole),
  :mod:`~compressor.export.scanner.served_models` and :mod:`~compressor.export.scanner.model_selection` (the models
  served and which one a scan gets), :mod:`~compressor.export.scanner.stream_parameters` (the config message and JSON
  parameters), :mod:`~compressor.export.scanner.server_limits` (every cap), :mod:`~compressor.export.scanner.
  stream_recorder` (``--save-data``), :mod:`~compressor.export.scanner.server_log` (the rate-limited log) and
  :mod:`~compressor.export.scanner.server_stats` (timings, outcomes, resident memory);
* :mod:`~compressor.export.scanner.mrd_client`: a client sending one scan as a scanner does (tests, benchmarks).

The raw data itself is read in :mod:`compressor.data`: headers (``mrd_header``), readouts (``mrd_readout``), their
assembly into k-space within caps (``mrd_raw``, ``mrd_limits``), ISMRMRD files (``ismrmrd_file``) and MRD v2
(``mrd_v2``). The scanner-side documentation is ``docs/scanner.md``.

Where to add what:

* a scanner input format: an :class:`~.input_formats.InputFormat` subclass in ``input_formats.py`` and one entry in
  :func:`~.input_formats.input_formats` (a volume file format is a reader registered in
  :data:`compressor.data.volume.VOLUME_SOURCES` instead, and becomes an input format by itself);
* a served-image convention: one :class:`~.image_formats.ImageFormat` subclass in ``image_formats.py`` registered with
  ``@IMAGE_FORMATS.register("name")``; ``--image-format`` offers it, and the server, ``--ismrmrd-out`` and the MRD v2
  filter write it;
* a kind of served model source: :func:`~.served_models.find_model_files`;
* a cap: a field of :class:`~.server_limits.ServerLimits`, its option in ``compressor/cli/serve_command.py`` and its
  row in the ``server_limits`` table.
"""
