"""SFT-KD-Recon: student-friendly teacher knowledge distillation for MRI reconstruction networks.

Subpackages: :mod:`compressor.physics` (Fourier operators, undersampling, data fidelity),
:mod:`compressor.masks`, :mod:`compressor.models` (DC-CNN ``dNcM``), :mod:`compressor.data`,
:mod:`compressor.kd` (distillation losses), :mod:`compressor.training` (stages, SFT, pipeline),
:mod:`compressor.cli` (the ``compress`` command). Physics and models import nothing from training, export or
evaluation.
"""

__version__ = "0.1.0"
