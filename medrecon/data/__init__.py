"""Package data: the compact MNI ICBM152-derived head atlas (``head_atlas_2mm.npz``) and its
licence notice (``ATLAS_LICENSE.txt``), built by ``scripts/make_atlas.py``."""
