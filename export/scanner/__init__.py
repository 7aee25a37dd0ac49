"""Scanner-side deployment: an exported model reconstructing what a scanner gives (k-space and volume files, ISMRMRD
raw scans, MRD streams) into HDF5 files and ISMRMRD / MRD v2 images.

Modules, from the input to the outputs:

* :mod:`~compressor.export.scanner.input_formats`: every ``--source`` (:class:`~.input_formats.InputFormat`,
  :func:`~.input_formats.input_formats`): how a file is recognised and read into the model's input;
* :mod:`~compressor.export.scanner.scanner_input`: what the model takes (:class:`~.scanner_input.ScannerInput`), what
  it asks of an input (:class:`~.scanner_input.InputRequest`) and the checks every input passes (mask, sampling,
  phase);
* :mod:`~compressor.export.scanner.raw_input`: one assembled ISMRMRD slice -> the single-coil k-space and mask the
  graph takes, for files and streams alike;
* :mod:`~compressor.export.scanner.reconstruct`: ``compress reconstruct`` of a file
  (:func:`~.reconstruct.reconstruct_file`): the output HDF5, ISMRMRD images beside it, previews;
* :mod:`~compressor.export.scanner.ismrmrd_images`: reconstructions as ISMRMRD magnitude images headed by the
  acquisitions;
* :mod:`~compressor.export.scanner.mrd_stream`: slice-by-slice reconstruction of a streamed scan
  (:class:`~.mrd_stream.SliceReconstructor`) and the MRD v2 stdin-to-stdout filter (``--source mrd``);
* :mod:`~compressor.export.scanner.mrd_server`: ``compress serve``, the MRD streaming server, with
  :mod:`~compressor.export.scanner.mrd_protocol` (reading messages off a socket safely) and
  :mod:`~compressor.export.scanner.server_stats` (its per-slice timings and per-connection outcomes);
* :mod:`~compressor.export.scanner.mrd_client`: a client sending one scan as a scanner does (tests, benchmarks).

The raw data itself is read in :mod:`compressor.data`: headers (``mrd_header``), readouts (``mrd_readout``), their
assembly into k-space (``mrd_raw``), ISMRMRD files (``ismrmrd_file``) and MRD v2 (``mrd_v2``).

Adding a scanner input format: an :class:`~.input_formats.InputFormat` subclass in ``input_formats.py`` and one entry
in :func:`~.input_formats.input_formats` (a volume file format is a reader registered in
:data:`compressor.data.volume.VOLUME_SOURCES` instead, and becomes an input format by itself).

Adding a served-image convention: :func:`~.ismrmrd_images.slice_image` is the one function that turns a slice's
reconstruction into its image, the one the server sends, ``--ismrmrd-out`` writes and the MRD v2 filter converts
(:func:`~.mrd_stream.mrd_image`); a new convention goes there (its header :func:`~.ismrmrd_images.image_header`, its
data :func:`~.ismrmrd_images.ismrmrd_image`).
"""
