"""Seed splits, the patch dataset of held-out-style heads, and the preview figure.

:data:`SPLITS` reserves disjoint seed ranges for training, validation and held-out test
volumes; benchmarks and demos use ``"test"`` seeds only. :class:`SyntheticHeadDataset` cuts
patches from whole 2 mm-style volumes (``generate_head_tensor``); training at any voxel size
uses :func:`medrecon.priors.synthetic.render_patches` instead.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Sequence

import numpy as np
import torch

from medrecon.errors import ConfigError
from medrecon.priors.synthetic.randomisation import MODALITY_IDS
from medrecon.priors.synthetic.volumes import check_args, generate_head, generate_head_tensor, rng

__all__ = ["SPLITS", "SyntheticHeadDataset", "preview_figure", "preview_patches", "split_seeds"]

#: Disjoint seed ranges: train on "train", select models on "val", report on "test" only.
SPLITS: dict[str, range] = {
    "train": range(0, 1_000_000),
    "val": range(1_000_000, 1_010_000),
    "test": range(2_000_000, 2_010_000),
}


def split_seeds(split: str) -> range:
    """The seed range reserved for a split: "train", "val" or "test"."""
    if split not in SPLITS:
        raise ConfigError(f"split must be one of {sorted(SPLITS)}, got {split!r}.")
    return SPLITS[split]


class SyntheticHeadDataset(torch.utils.data.Dataset):
    """Random 3D patches of synthetic heads, deterministic per index.

    Item ``idx`` comes from the volume with seed ``seeds[idx // patches_per_volume]`` and patch
    number ``idx % patches_per_volume``; its modality cycles with the seed over ``modalities``
    (balanced), its MR contrast is ``contrast`` ("random": chosen by the seed). Recently used
    volumes are kept in a small in-memory cache, so iterate in order (``shuffle=False``; the seeds
    themselves are random heads) or with a sampler that keeps a volume's patches together. With
    ``DataLoader(num_workers > 0)`` each worker has its own cache and receives whole batches, so
    use a ``batch_size`` that is a multiple of ``patches_per_volume`` to generate each volume once.

    Each item is a dict:
        ``image``: float32 tensor (1, P, P, P) in the volume's units (MR a.u., CT HU), passed
            through ``transform(image, modality)`` when given (e.g. the prior's normalisation);
        ``position``: float32 tensor (3,), the patch centre in normalised volume coordinates,
            ``2 * centre_index / (shape - 1) - 1`` per axis, in [-1, 1];
        ``modality``: int64 scalar tensor, :data:`MODALITY_IDS` of the volume;
        ``seed``: int64 scalar tensor, the volume's seed.

    Args:
        seeds: "train", "val", "test" (the :data:`SPLITS` ranges) or an explicit sequence.
        n_volumes: use only the first ``n_volumes`` seeds (None: all).
        patch_size: edge P of the cubic patches (<= every entry of ``shape``).
        patches_per_volume: patches drawn from each generated volume.
        shape, spacing_mm, contrast, lesions, noise: passed to :func:`generate_head_tensor`.
        modalities: modalities to cycle through ("MR", "CT").
        cache_size: number of generated volumes kept in memory (per worker process).
        transform: optional callable ``(image (1, P, P, P), modality) -> image``.
    """

    def __init__(
        self,
        seeds: str | Sequence[int] = "train",
        n_volumes: int | None = None,
        patch_size: int = 64,
        patches_per_volume: int = 8,
        shape: Sequence[int] = (96, 96, 96),
        spacing_mm: float = 2.0,
        modalities: Sequence[str] = ("MR", "CT"),
        contrast: str = "random",
        lesions: bool = True,
        noise: bool = True,
        cache_size: int = 2,
        transform: Callable[[torch.Tensor, str], torch.Tensor] | None = None,
    ) -> None:
        self.seeds: Sequence[int] = split_seeds(seeds) if isinstance(seeds, str) else seeds
        if n_volumes is not None:
            self.seeds = self.seeds[:n_volumes]
        if len(self.seeds) == 0:
            raise ConfigError("SyntheticHeadDataset needs at least one seed.")
        self.shape = tuple(int(s) for s in shape)
        if patch_size < 1 or any(patch_size > s for s in self.shape):
            raise ConfigError(f"patch_size {patch_size} must fit inside the volume {self.shape}.")
        if patches_per_volume < 1:
            raise ConfigError("patches_per_volume must be at least 1.")
        for m in modalities:
            check_args(self.shape, spacing_mm, m, contrast)
        if not modalities:
            raise ConfigError("modalities must name at least one of MR, CT.")
        self.patch_size = int(patch_size)
        self.patches_per_volume = int(patches_per_volume)
        self.spacing_mm = float(spacing_mm)
        self.modalities = tuple(modalities)
        self.contrast = contrast
        self.lesions = lesions
        self.noise = noise
        self.cache_size = max(0, int(cache_size))
        self.transform = transform
        self._cache: OrderedDict[int, torch.Tensor] = OrderedDict()

    def __len__(self) -> int:
        return len(self.seeds) * self.patches_per_volume

    def modality_of(self, seed: int) -> str:
        """The modality rendered for a volume seed (cycles over ``modalities``)."""
        return self.modalities[int(seed) % len(self.modalities)]

    def volume(self, seed: int) -> torch.Tensor:
        """The full generated volume (I, J, K) for a seed, from the cache when present."""
        seed = int(seed)
        if seed in self._cache:
            self._cache.move_to_end(seed)
            return self._cache[seed]
        img, _ = generate_head_tensor(
            self.shape, self.spacing_mm, self.modality_of(seed), self.contrast, seed,
            self.lesions, self.noise,
        )  # fmt: skip
        if self.cache_size:
            self._cache[seed] = img
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
        return img

    def __getitem__(self, idx: int) -> dict[str, torch.Tensor]:
        if not -len(self) <= idx < len(self):
            raise IndexError(idx)
        idx = idx % len(self)
        seed = int(self.seeds[idx // self.patches_per_volume])
        k = idx % self.patches_per_volume
        img = self.volume(seed)
        gen = rng(seed, 2, k)
        corner = [int(gen.integers(0, s - self.patch_size + 1)) for s in self.shape]
        sl = tuple(slice(c0, c0 + self.patch_size) for c0 in corner)
        patch = img[sl].unsqueeze(0).clone()
        modality = self.modality_of(seed)
        if self.transform is not None:
            patch = self.transform(patch, modality)
        centre = np.asarray(corner, dtype=np.float64) + (self.patch_size - 1) / 2.0
        extent = np.maximum(np.asarray(self.shape, dtype=np.float64) - 1.0, 1.0)
        position = torch.tensor(2.0 * centre / extent - 1.0, dtype=torch.float32)
        return {
            "image": patch,
            "position": position,
            "modality": torch.tensor(MODALITY_IDS[modality], dtype=torch.int64),
            "seed": torch.tensor(seed, dtype=torch.int64),
        }


# --------------------------------------------------------------------------------------------
# Preview figure
# --------------------------------------------------------------------------------------------


def preview_figure(
    path: str,
    seeds: Sequence[int] = (SPLITS["test"].start, SPLITS["test"].start + 1),
    shape: Sequence[int] = (96, 96, 96),
    spacing_mm: float = 2.0,
    dpi: int = 60,
) -> None:
    """Write a PNG of central orthogonal slices (sagittal, coronal, axial) of T1, T2, PD and CT
    renderings of each seed (CT in a brain window, W 120 / L 40, and a bone window, W 2500 /
    L 250)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from medrecon.io.atomic import atomic_file

    panels: list[tuple[str, np.ndarray, tuple[float, float]]] = []
    for seed in seeds:
        for modality, contrast in (("MR", "T1"), ("MR", "T2"), ("MR", "PD"), ("CT", "T1")):
            vol = generate_head(shape, spacing_mm, modality, contrast, seed)
            if modality == "MR":
                panels.append((f"seed {seed} MR {contrast}", vol.data, (0.0, 1.0)))
            else:
                panels.append((f"seed {seed} CT brain", vol.data, (-20.0, 100.0)))
                panels.append((f"seed {seed} CT bone", vol.data, (-1000.0, 1500.0)))
    fig, axes = plt.subplots(3, len(panels), figsize=(1.25 * len(panels), 4.0))
    for col, (title, data, (lo, hi)) in enumerate(panels):
        ci, cj, ck = (s // 2 for s in data.shape)
        views = (data[ci].T, data[:, cj].T, data[:, :, ck].T)  # sagittal, coronal, axial
        for row, view in enumerate(views):
            ax = axes[row, col]
            ax.imshow(view, cmap="gray", vmin=lo, vmax=hi, origin="lower", interpolation="none")
            ax.set_axis_off()
        axes[0, col].set_title(title, fontsize=6)
    fig.subplots_adjust(left=0.0, right=1.0, bottom=0.0, top=0.93, wspace=0.02, hspace=0.02)
    with atomic_file(path) as tmp:
        fig.savefig(tmp, dpi=dpi, format="png")
    plt.close(fig)


def preview_patches(path: str, seed: int = 1, size: int = 112, dpi: int = 60) -> None:
    """Write a PNG of training patches (:func:`render_patches`): rows MR head, MR trunk, CT
    head, CT trunk; columns voxel sizes 0.5 mm, 1 x 1 x 3 mm, 2 mm and 4 x 4 x 6 mm (slice
    axis k). Each panel is one in-plane slice of ``size`` x ``size`` voxels (MR 0..1.1, CT
    window W 500 / L 50), reflected where the scan is smaller, as the tiling pads."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from medrecon.io.atomic import atomic_file
    from medrecon.priors.synthetic.rendering import render_patches

    spacings = ((0.5, 0.5, 0.5), (1.0, 1.0, 3.0), (2.0, 2.0, 2.0), (4.0, 4.0, 6.0))
    rows = (("MR", 0.0), ("MR", 1.0), ("CT", 0.0), ("CT", 1.0))
    fig, axes = plt.subplots(len(rows), len(spacings), figsize=(1.6 * len(spacings), 6.6))
    for r, (modality, body) in enumerate(rows):
        gen = torch.Generator().manual_seed(seed + r)
        sp = torch.tensor(spacings, dtype=torch.float32)
        # Slice axis k: the isotropic rows get a last size a hair larger.
        sp[:, 2] *= 1.0001
        res = render_patches(modality, len(spacings), sp, (size, size, 1), gen,
                             body_fraction=body, noise_prob=0.5)  # fmt: skip
        for c in range(len(spacings)):
            img = res.image[c, :, :, 0].cpu().numpy().T
            lo, hi = (0.0, 1.1) if modality == "MR" else (-200.0, 300.0)
            ax = axes[r, c]
            ax.imshow(img, cmap="gray", vmin=lo, vmax=hi, origin="lower", interpolation="none")
            ax.set_axis_off()
            what = "trunk" if body else "head"
            ax.set_title(f"{modality} {what} {'x'.join(f'{v:g}' for v in spacings[c])} mm",
                         fontsize=6)  # fmt: skip
    fig.subplots_adjust(left=0.0, right=1.0, bottom=0.0, top=0.96, wspace=0.02, hspace=0.12)
    with atomic_file(path) as tmp:
        fig.savefig(tmp, dpi=dpi, format="png")
    plt.close(fig)
