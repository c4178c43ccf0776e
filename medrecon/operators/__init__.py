"""Measurement physics: linear operators with matched adjoints, and what builds them.

:mod:`~medrecon.operators.base` (the LinearOperator interface), :mod:`~medrecon.operators.mri`
(FFT and SENSE), :mod:`~medrecon.operators.masks` (Cartesian sampling masks),
:mod:`~medrecon.operators.coils` (coil-map simulation and ESPIRiT / low-resolution estimation),
:mod:`~medrecon.operators.noise` (MR noise), :mod:`~medrecon.operators.ct_geometry` (CT
geometries and rays), :mod:`~medrecon.operators.ct_projector` (the CT projector),
:mod:`~medrecon.operators.ct_memory` (the sparse CT matrix's memory budget) and
:mod:`~medrecon.operators.functional` (the pure kernels). Every operator's adjoint is checked by
one test whose cases are ``tests/operators/adjoint_cases.py``.
"""
