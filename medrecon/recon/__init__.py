"""Classical reconstruction methods: MRI (:mod:`~medrecon.recon.mri`: zero-filled, CG-SENSE,
L1-wavelet, TV) and CT (:mod:`~medrecon.recon.ct`: FBP, FDK, SIRT, CGLS, TV), each a function
``fn(measurement, options, device) -> ReconOutput`` (:mod:`~medrecon.recon.base`) that starts
from :func:`medrecon.problem.measurement_problem` and solves with :mod:`medrecon.solvers`
(CT's analytic FBP and FDK: :mod:`~medrecon.recon.ct_analytic`).

The registry with every method's metadata is :mod:`medrecon.methods`; this package never
imports :mod:`medrecon.sampling`.
"""
