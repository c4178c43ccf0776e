#!/usr/bin/env python
"""Build ``medrecon/data/head_atlas_2mm.npz`` from the MNI ICBM152 2009a template in nilearn.

The nilearn wheel ships the MNI ICBM152 2009a nonlinear symmetric template at 1 mm
(``nilearn/datasets/data/mni_icbm152_{t1,gm,wm}_tal_nlin_sym_09a_converted.nii.gz``: a
skull-stripped T1 rescaled to 0..255 and grey/white-matter probability maps scaled to 0..255).
This script reads those three files from a nilearn wheel (``--wheel``) or from an installed
nilearn (the default), derives

* ``brain``: the fraction of each 2 mm voxel inside the skull-stripped brain (T1 > 0),
* ``gm``, ``wm``: grey/white-matter probabilities,
* ``csf``: ``clip(brain - gm - wm, 0, 1)``, the remaining intracerebral fluid (ventricles,
  sulci, cisterns),

each averaged over 2x2x2 blocks (1 mm -> 2 mm), cropped to the brain's bounding box plus a margin,
stored as uint8 (probability * 255), with the 4x4 voxel -> MNI (RAS+ mm) affine, and writes the
MNI licence notice next to it. nilearn is needed only here, never at run time.

Usage::

    pip download --no-deps nilearn -d /tmp/nilearn
    python scripts/make_atlas.py --wheel /tmp/nilearn/nilearn-*.whl
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import importlib.util
import io
import zipfile
from pathlib import Path

import nibabel as nib
import numpy as np

MEMBER = "nilearn/datasets/data/mni_icbm152_{}_tal_nlin_sym_09a_converted.nii.gz"
OUT_DIR = Path(__file__).resolve().parent.parent / "medrecon" / "data"
MARGIN_VOX = 2  # 2 mm voxels kept around the brain's bounding box

LICENSE_TEXT = """\
medrecon/data/head_atlas_2mm.npz is derived from the MNI ICBM152 2009a nonlinear symmetric
template (mni_icbm152_nlin_sym_09a), in the copy shipped by nilearn {version} as
nilearn/datasets/data/mni_icbm152_{{t1,gm,wm}}_tal_nlin_sym_09a_converted.nii.gz.
Derivation (scripts/make_atlas.py): brain-mask fraction, grey/white-matter probabilities and
their complement (CSF) averaged to 2 mm voxels, cropped, stored as uint8.

Source files (SHA-256 of the nilearn copies):
{hashes}
Original distribution: http://nist.mni.mcgill.ca/icbm-152-nonlinear-atlases-2009/

Licence of the MNI ICBM152 2009 templates, as published by the McConnell Brain Imaging Centre:

Copyright (C) 1993-2009 Louis Collins, McConnell Brain Imaging Centre, Montreal Neurological
Institute, McGill University. Permission to use, copy, modify, and distribute this software and
its documentation for any purpose and without fee is hereby granted, provided that the above
copyright notice appear in all copies. The authors and McGill University make no representations
about the suitability of this software for any purpose. It is provided "as is" without express
or implied warranty. The authors are not responsible for any data loss, equipment damage,
property loss, or injury to subjects or patients resulting from the use or misuse of this
software package.

Please cite when using the template:
  VS Fonov, AC Evans, K Botteron, CR Almli, RC McKinstry, DL Collins and BDCG, Unbiased average
  age-appropriate atlases for pediatric studies, NeuroImage 54(1), 2011.
  VS Fonov, AC Evans, RC McKinstry, CR Almli and DL Collins, Unbiased nonlinear average
  age-appropriate brain templates from birth to adulthood, NeuroImage 47, Supplement 1, 2009.
  DL Collins, AP Zijdenbos, WFC Baare and AC Evans, ANIMAL+INSECT: Improved Cortical Structure
  Segmentation, IPMI 1999.
"""


def _read_sources(wheel: Path | None) -> tuple[dict[str, nib.Nifti1Image], dict[str, str], str]:
    """Load the t1/gm/wm NIfTI images, their SHA-256 digests and nilearn's version."""
    images: dict[str, nib.Nifti1Image] = {}
    hashes: dict[str, str] = {}
    if wheel is not None:
        with zipfile.ZipFile(wheel) as zf:
            version = wheel.name.split("-")[1]
            for name in ("t1", "gm", "wm"):
                raw = zf.read(MEMBER.format(name))
                hashes[name] = hashlib.sha256(raw).hexdigest()
                fh = nib.FileHolder(fileobj=io.BytesIO(gzip.decompress(raw)))
                images[name] = nib.Nifti1Image.from_file_map({"header": fh, "image": fh})
        return images, hashes, version
    spec = importlib.util.find_spec("nilearn")
    if spec is None or spec.origin is None:
        raise SystemExit("nilearn is not installed; pass --wheel PATH to a downloaded nilearn wheel")
    root = Path(spec.origin).parent.parent
    from importlib.metadata import version as pkg_version

    for name in ("t1", "gm", "wm"):
        path = root / MEMBER.format(name)
        hashes[name] = hashlib.sha256(path.read_bytes()).hexdigest()
        images[name] = nib.load(path)
    return images, hashes, pkg_version("nilearn")


def _block_mean(a: np.ndarray, f: int = 2) -> np.ndarray:
    """Average over f x f x f blocks, zero-padding odd sizes at the high end."""
    pad = [(0, (-s) % f) for s in a.shape]
    a = np.pad(a, pad)
    i, j, k = (s // f for s in a.shape)
    return a.reshape(i, f, j, f, k, f).mean(axis=(1, 3, 5))


def build(wheel: Path | None, out_dir: Path) -> Path:
    images, hashes, version = _read_sources(wheel)
    affine = images["t1"].affine
    for name in ("gm", "wm"):
        if not np.allclose(images[name].affine, affine) or images[name].shape != images["t1"].shape:
            raise SystemExit(f"{name} map does not share the T1 template's grid")
    t1 = np.asarray(images["t1"].dataobj, dtype=np.float32)
    gm = np.asarray(images["gm"].dataobj, dtype=np.float32) / 255.0
    wm = np.asarray(images["wm"].dataobj, dtype=np.float32) / 255.0
    brain = (t1 > 0).astype(np.float32)
    # Tissue maps are only trusted inside the skull-stripped brain.
    gm *= brain
    wm *= brain
    csf = np.clip(brain - gm - wm, 0.0, 1.0)

    maps = {n: _block_mean(v) for n, v in (("brain", brain), ("gm", gm), ("wm", wm), ("csf", csf))}
    # New voxel (i, j, k) is the centre of old voxels 2i..2i+1: index 2i + 0.5.
    scale = np.diag([2.0, 2.0, 2.0, 1.0])
    scale[:3, 3] = 0.5
    affine2 = affine @ scale

    idx = np.argwhere(maps["brain"] > 0)
    lo = np.maximum(idx.min(0) - MARGIN_VOX, 0)
    hi = np.minimum(idx.max(0) + 1 + MARGIN_VOX, maps["brain"].shape)
    crop = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi, strict=True))
    shift = np.eye(4)
    shift[:3, 3] = lo
    affine2 = affine2 @ shift

    out_dir.mkdir(parents=True, exist_ok=True)
    out = out_dir / "head_atlas_2mm.npz"
    arrays = {n: np.round(np.clip(v[crop], 0, 1) * 255).astype(np.uint8) for n, v in maps.items()}
    np.savez_compressed(
        out,
        affine=affine2.astype(np.float64),
        source=np.array(f"MNI ICBM152 2009a nonlinear symmetric, from nilearn {version}"),
        **arrays,
    )
    hash_lines = "".join(
        f"  {MEMBER.format(n).rsplit('/', 1)[1]}  {h}\n" for n, h in hashes.items()
    )
    (out_dir / "ATLAS_LICENSE.txt").write_text(LICENSE_TEXT.format(version=version, hashes=hash_lines))
    shape = arrays["brain"].shape
    print(f"wrote {out} ({out.stat().st_size / 1e6:.2f} MB), grid {shape} at 2 mm")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--wheel", type=Path, default=None, help="path to a nilearn wheel")
    parser.add_argument("--out-dir", type=Path, default=OUT_DIR)
    args = parser.parse_args()
    build(args.wheel, args.out_dir)


if __name__ == "__main__":
    main()
