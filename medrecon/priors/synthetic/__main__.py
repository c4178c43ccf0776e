"""``python -m medrecon.priors.synthetic OUT.png [SEED ...]``: write the preview figure."""

import sys

from medrecon.priors.synthetic.dataset import SPLITS, preview_figure

if len(sys.argv) < 2:
    raise SystemExit("usage: python -m medrecon.priors.synthetic OUT.png [SEED ...]")
preview_figure(sys.argv[1], [int(a) for a in sys.argv[2:]] or SPLITS["test"][:2])
