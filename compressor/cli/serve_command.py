"""``compress serve``: the MRD streaming server (Siemens FIRE / OpenRecon, python-ismrmrd-server's clients)."""

from __future__ import annotations

from pathlib import Path

import click

from compressor.cli.choices import PROVIDER_HELP, PROVIDERS, SHOW_DEFAULTS
from compressor.cli.common import OneLineCommand, handles_input_errors, option_group, require_writable
from compressor.cli.scanner_choices import IMAGE_FORMAT_HELP, IMAGE_FORMATS

MIB = 1 << 20
POSITIVE = click.FloatRange(min=0, min_open=True)
AT_LEAST_ONE = click.IntRange(min=1)
SERVE_GROUPS = ("Models and images", "Network", "Recording", "Limits", "Logging")
"""The ``--help`` sections of ``compress serve``'s options, in order."""
models_option, network_option, recording_option, limits_option, logging_option = map(option_group, SERVE_GROUPS)


@click.command("serve", cls=OneLineCommand, context_settings=SHOW_DEFAULTS, option_groups=SERVE_GROUPS)
@click.argument("models", metavar="MODEL...", nargs=-1, required=True, type=click.Path(path_type=Path))
@models_option("--default-model", metavar="NAME",
               help="The served name chosen when several models fit a scan and the scan names none.")
@models_option("--image-format", type=IMAGE_FORMATS, default="magnitude16", help=IMAGE_FORMAT_HELP)
@models_option("--provider", type=PROVIDERS, default="auto", help=PROVIDER_HELP)
@models_option("--threads", type=AT_LEAST_ONE,
               help="Inference threads per slice (default: all cores, slices take turns; 1: one slice per core at "
                    "once, for many concurrent scans).")
@models_option("--take-real-part", is_flag=True, default=False,
               help="1-channel models: reconstruct the real part of complex-valued images instead of refusing them.")
@network_option("--host", default="127.0.0.1", help="Address to listen on (0.0.0.0: every interface).")
@network_option("--port", type=click.IntRange(0, 65535), default=9002,
                help="TCP port (9002 as python-ismrmrd-server's; 0 picks a free one, named in the log).")
@recording_option("--save-data", type=click.Path(path_type=Path, file_okay=False),
                  help="Record each incoming stream as an ISMRMRD file (.h5) in this folder (created if missing) for "
                       "replay with compress reconstruct --source ismrmrd or python-ismrmrd-server's client.py.")
@recording_option("--save-data-cap", type=AT_LEAST_ONE, default=2048, metavar="MiB",
                  help="Largest stream recorded; a longer one is not saved (one log line).")
@limits_option("--max-connections", type=AT_LEAST_ONE, default=16, help="Scans served at once; one more is told busy.")
@limits_option("--idle-timeout", type=POSITIVE, default=300.0, help="Seconds a connection may send nothing.")
@limits_option("--message-timeout", type=POSITIVE, default=30.0,
               help="Seconds one message may take to arrive once begun (a client dripping bytes).")
@limits_option("--connection-timeout", type=POSITIVE, default=3600.0, help="Seconds one connection may last.")
@limits_option("--max-coils", type=AT_LEAST_ONE, default=128, help="Coils per acquisition.")
@limits_option("--max-samples", type=AT_LEAST_ONE, default=16384,
               help="Samples per readout and in the header's encoded readout.")
@limits_option("--max-open-slices", type=AT_LEAST_ONE, default=64, help="Slices being assembled at once per scan.")
@limits_option("--connection-memory", type=AT_LEAST_ONE, default=1024, metavar="MiB",
               help="Memory one connection may hold (slices being assembled, noise covariance, the message read).")
@limits_option("--memory-budget", type=AT_LEAST_ONE, default=4096, metavar="MiB",
               help="Memory all connections together may hold.")
@logging_option("--log", "log_path", type=click.Path(path_type=Path, dir_okay=False),
                help="Log file, appended to (default: standard error); its folder must exist. The server writes "
                     "nothing else.")
@logging_option("--verbose", is_flag=True, default=False, help="Also log every slice's latency.")
@handles_input_errors
def serve_command(models: tuple[Path, ...], default_model: str | None, image_format: str, provider: str,
                  threads: int | None, take_real_part: bool, host: str, port: int, save_data: Path | None,
                  save_data_cap: int, max_connections: int, idle_timeout: float, message_timeout: float,
                  connection_timeout: float, max_coils: int, max_samples: int, max_open_slices: int,
                  connection_memory: int, memory_budget: int, log_path: Path | None, verbose: bool) -> None:
    """Serve exported models over the MRD streaming protocol (Siemens FIRE / OpenRecon, python-ismrmrd-server's
    clients): per connection config, XML header, JSON parameters, acquisitions, close in; one image per slice out,
    sent as soon as the slice's lines have arrived, then close. Ctrl-C stops it.

    MODEL...: exported .onnx files, a run's exports folder (or the run), or a Triton repository. A scan selects its
    model by name (JSON parameters customconfig, then config, then the config message): a file's stem, an fp32
    export's results name, a Triton model's name; any other name (default, openrecon, invertcontrast, a Gadgetron XML
    config) selects the one model that fits the scan (grid, lines, coils). JSON parameter zerofilled: true also
    returns the zero-filled image as a comparison series.

    Fixed caps: config, header and text messages 4 MiB; waveforms 4 MiB; trajectories of 3 dimensions; at most 20
    log lines of one kind per minute (the rest counted). Example: compress serve runs/quick/exports --port 9002
    --log serve.log
    """
    import signal

    from compressor.export.scanner.mrd_server import ReconstructionServer, ServeOptions
    from compressor.export.scanner.server_limits import ServerLimits
    from compressor.export.scanner.server_log import check_log_path, server_logger

    if log_path is not None:
        check_log_path(log_path)
    if save_data is not None:
        require_writable(save_data)
    limits = ServerLimits(max_connections, max_coils, max_samples, max_open_slices, connection_memory * MIB,
                          memory_budget * MIB, idle_timeout=idle_timeout, message_timeout=message_timeout,
                          connection_timeout=connection_timeout)
    options = ServeOptions(provider, threads, default_model, image_format, take_real_part, save_data,
                           save_data_cap * MIB, limits)
    server = ReconstructionServer(list(models), host, port, options)
    server_logger(log_path, verbose)  # the server's logger, set up once the models have opened and the port is bound
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # a service manager's stop is a Ctrl-C too
    server.serve_forever()
