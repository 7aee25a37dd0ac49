"""What a command does, as library functions with typed inputs: the commands in :mod:`compressor.cli` parse
options into these and print what they return; nothing here imports click.

Modules:
    console:    :class:`~compressor.workflow.console.Console`, where a flow writes (the command injects it).
    outputs:    output paths checked before any work (:func:`~compressor.workflow.outputs.require_writable`).
    run:        ``compress``: check → train → deploy (export, benchmark) → report, under one or many processes.
    export_job: ``compress export``: an :class:`~compressor.workflow.export_job.ExportRequest` planned (every
                output, the run lock, Triton entries, precision options checked) before anything is exported,
                then run.

Where to add what: a new command's work goes into a module here (a request record, a plan checked before any
work, a run that returns or echoes its results); the command in ``compressor/cli`` stays a short function.
Errors are :class:`compressor.errors.InputError` (bad input: one line, exit code 2) or a typed library error.
"""
