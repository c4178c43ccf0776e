"""medrecon: 3D reconstruction of undersampled MRI and CT with a learned diffusion prior.

The top-level package stays light: heavy modules (torch, monai, pydicom) are imported by the
subpackages that need them.
"""

__version__ = "0.1.0"
__all__ = ["__version__"]
