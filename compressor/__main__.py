"""``python -m compressor`` is ``compress``; ``torchrun --nproc-per-node N -m compressor ...`` trains every stage with
DistributedDataParallel (:mod:`compressor.training.distributed`)."""

from compressor.cli import main

if __name__ == "__main__":
    main(prog_name="compress")
