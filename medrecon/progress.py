"""Progress bars: one rule for every loop that shows one (solvers, diffusion, training).

A bar is for a person watching a terminal. When standard error is not one (a log file, a
pipeline, a batch job, captured output), no bar is drawn at all: a bar redrawn into a log,
even rarely, fills it with carriage-return lines, and the loops report their result otherwise
(the CLI's summary line, the training log's JSON lines).
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # tqdm is imported inside the function: this module stays light
    from tqdm import tqdm

__all__ = ["progress_bar", "shows_progress"]


def shows_progress(requested: bool) -> bool:
    """Whether a bar that the caller ``requested`` is drawn: only on a terminal."""
    stream = sys.stderr
    return bool(requested) and stream is not None and bool(getattr(stream, "isatty", bool)())


def progress_bar(total: int, desc: str, requested: bool = True, **options: Any) -> tqdm:
    """A tqdm bar on standard error, disabled (all its methods no-ops) unless
    :func:`shows_progress`; ``options`` go to tqdm (``unit``, ``initial``, ...)."""
    from tqdm.auto import tqdm

    settings: dict[str, Any] = {"leave": False, "dynamic_ncols": True, "mininterval": 0.5}
    settings.update(options)
    return tqdm(total=total, desc=desc, disable=not shows_progress(requested), **settings)
