"""``compress serve``: the MRD streaming server (Siemens FIRE / OpenRecon, python-ismrmrd-server's clients)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import click

from compressor.cli.choices import PROVIDER_HELP, PROVIDERS, SHOW_DEFAULTS
from compressor.cli.common import OneLineCommand, handles_input_errors, require_writable

if TYPE_CHECKING:

    pass

@click.command("serve", cls=OneLineCommand, context_settings=SHOW_DEFAULTS)
@click.argument("model_path", metavar="MODEL.onnx", type=click.Path(path_type=Path, dir_okay=False))
@click.option("--host", default="127.0.0.1", help="Address to listen on (0.0.0.0: every interface).")
@click.option("--port", type=click.IntRange(0, 65535), default=9002,
              help="TCP port (9002 as python-ismrmrd-server's; 0 picks a free one, named in the log).")
@click.option("--provider", type=PROVIDERS, default="auto", help=PROVIDER_HELP)
@click.option("--threads", type=click.IntRange(min=1),
              help="Inference threads per slice (default: all cores, slices take turns; 1: one slice per "
                   "core at once, for many concurrent scans).")
@click.option("--idle-timeout", type=click.FloatRange(min=0, min_open=True), default=300.0,
              help="Seconds a connection may stay silent before it is closed.")
@click.option("--max-connections", type=click.IntRange(min=1), default=16, help="Scans served at once.")
@click.option("--take-real-part", is_flag=True, default=False,
              help="1-channel models: reconstruct the real part of complex-valued images instead of refusing them.")
@click.option("--log", "log_path", type=click.Path(path_type=Path, dir_okay=False),
              help="Log file, appended to (default: standard error). The server writes nothing else.")
@click.option("--verbose", is_flag=True, default=False, help="Also log every slice's latency.")
@handles_input_errors
def serve_command(model_path: Path, host: str, port: int, provider: str, threads: int | None, idle_timeout: float,
                  max_connections: int, take_real_part: bool, log_path: Path | None, verbose: bool) -> None:
    """Serve an exported model over the MRD streaming protocol (Siemens FIRE / OpenRecon, python-ismrmrd-server's
    clients): per connection config, XML header, acquisitions, close in; one ISMRMRD image per slice out, sent as
    soon as the slice's lines have arrived, then close. Ctrl-C stops it. Example: compress serve d3c5.onnx --port 9002
    --log serve.log
    """
    import signal

    from compressor.export.scanner.mrd_server import ReconstructionServer, server_logger

    if log_path is not None:
        require_writable(log_path)
    server = ReconstructionServer(model_path, host, port, provider=provider, threads=threads,
                                  idle_timeout=idle_timeout, max_connections=max_connections,
                                  take_real_part=take_real_part)
    server_logger(log_path, verbose)  # the server's logger, set up once the model has opened and the port is bound
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # a service manager's stop is a Ctrl-C too
    server.serve_forever()


