"""``python -m medrecon.priors.synthetic OUT.png [SEED ...]``: the held-out heads' preview;
``python -m medrecon.priors.synthetic --patches OUT.png [SEED]``: training patches."""

import sys

from medrecon.priors.synthetic.dataset import SPLITS, preview_figure, preview_patches

args = sys.argv[1:]
if not args or (args[0] == "--patches" and len(args) < 2):
    raise SystemExit("usage: python -m medrecon.priors.synthetic [--patches] OUT.png [SEED ...]")
if args[0] == "--patches":
    preview_patches(args[1], int(args[2]) if len(args) > 2 else 1)
else:
    preview_figure(args[0], [int(a) for a in args[1:]] or SPLITS["test"][:2])
