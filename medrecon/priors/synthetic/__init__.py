"""Procedural synthetic heads (MRI magnitude and CT in HU) for training and testing priors.

Why: the shipped default prior must be trained on data we may redistribute. The heads are built
from the MNI ICBM152 2009a template (package data, MNI licence) and procedural anatomy.

* :mod:`.anatomy`: the template canvas and the deterministic tissue-fraction evaluator.
* :mod:`.body`: procedural trunks (chest, abdomen, spine) for training patches.
* :mod:`.randomisation`: every random draw (intensity tables, geometry, scans, voxel sizes,
  SynthSeg-style domain randomisation).
* :mod:`.rendering`: :func:`render_patches`, training patches rendered directly at any voxel
  size (the GPU training path), with :func:`sample_spacings` the voxel-size distribution.
* :mod:`.volumes`: :func:`generate_head`, the whole held-out heads of benchmarks and demos.
* :mod:`.dataset`: seed :data:`SPLITS`, :class:`SyntheticHeadDataset`, the previews
  :func:`preview_figure` (held-out heads) and :func:`preview_patches` (training patches).

The data card is ``data_cards/synthetic_heads.md``.
"""

from medrecon.priors.synthetic.anatomy import TISSUES, load_atlas
from medrecon.priors.synthetic.dataset import (
    SPLITS,
    SyntheticHeadDataset,
    preview_figure,
    preview_patches,
    split_seeds,
)
from medrecon.priors.synthetic.randomisation import (
    CONTRASTS,
    CT_HU,
    LESION_INTENSITIES,
    MODALITY_IDS,
    MR_INTENSITIES,
    sample_spacings,
)
from medrecon.priors.synthetic.rendering import RenderedPatches, render_patches
from medrecon.priors.synthetic.volumes import generate_head, generate_head_tensor, head_affine

__all__ = [
    "CONTRASTS",
    "CT_HU",
    "LESION_INTENSITIES",
    "MODALITY_IDS",
    "MR_INTENSITIES",
    "SPLITS",
    "TISSUES",
    "RenderedPatches",
    "SyntheticHeadDataset",
    "generate_head",
    "generate_head_tensor",
    "head_affine",
    "load_atlas",
    "preview_figure",
    "preview_patches",
    "render_patches",
    "sample_spacings",
    "split_seeds",
]
