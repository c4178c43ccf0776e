"""Importing MONAI without the optional packages it never needs here (command line only).

MONAI's package import runs every submodule, and their module-level ``optional_import`` calls
load whatever optional packages are installed. medrecon uses only MONAI's U-Net, so in a
process it owns (the command line, :func:`medrecon.cli.main.main`) it imports MONAI with those
packages marked absent. This module imports nothing heavy, so the command line can switch it on
before anything else is loaded.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator

__all__ = ["MONAI_UNUSED_OPTIONAL", "lean_monai_import", "monai_import_context"]

#: Packages that importing MONAI loads when they are installed (its package import runs every
#: submodule, whose module-level ``optional_import`` calls import them) and that medrecon never
#: uses: GPU array libraries, other model zoos, data-frame and logging stacks.
MONAI_UNUSED_OPTIONAL: frozenset[str] = frozenset({
    "apex", "clearml", "cucim", "cupy", "cupyx", "cv2", "fire", "huggingface_hub", "ignite",
    "itk", "jax", "kvikio", "lightning", "lpips", "mlflow", "nni", "nrrd", "numba", "onnx",
    "onnxruntime", "pandas", "polygraphy", "pynvml", "pytorch_lightning", "sklearn",
    "tensorboard", "tensorboardX", "tensorflow", "tensorrt", "torch_tensorrt", "torchio",
    "torchvision", "transformers", "zarr"})
_lean_monai = False


def lean_monai_import(enabled: bool = True) -> None:
    """Import MONAI, when first needed, without :data:`MONAI_UNUSED_OPTIONAL`.

    For processes medrecon owns (the command line): there MONAI serves only the U-Net, and
    its package import would spend seconds loading optional packages for features never
    called: 12.1-14.3 s against 4.5 s lean on the GPU machine, whose image holds torchvision,
    transformers, cupy and pandas (``benchmarks/RESULTS_sampling.md`` 3d). During that one import the
    packages are marked absent (``sys.modules[name] = None``, Python's own way to block an
    import), so MONAI records them as not installed; afterwards they import normally again.
    Not for library use: a pipeline that uses MONAI's other features in the same process
    needs MONAI's full import, which it gets when this is never called.
    """
    global _lean_monai
    _lean_monai = enabled


@contextlib.contextmanager
def monai_import_context() -> Iterator[None]:
    """Block :data:`MONAI_UNUSED_OPTIONAL` while MONAI is first imported, if asked to."""
    if not _lean_monai or "monai" in sys.modules:
        yield
        return
    blocked = [name for name in sorted(MONAI_UNUSED_OPTIONAL) if name not in sys.modules]
    for name in blocked:
        sys.modules[name] = None  # type: ignore[assignment]
    try:
        yield
    finally:
        for name in blocked:
            if name in sys.modules and sys.modules[name] is None:
                del sys.modules[name]
