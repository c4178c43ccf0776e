"""``medrecon demo``: simulate, reconstruct (classical and diffusion) and evaluate a held-out head.

All the work is done by :func:`medrecon.demo.run_demo`; this module only parses options.
"""

from __future__ import annotations

from pathlib import Path

import typer

from medrecon.cli.common import user_errors


def register(app: typer.Typer) -> None:
    app.command("demo", short_help="Run the whole pipeline on a held-out synthetic head.")(demo)


@user_errors
def demo(
    out: Path = typer.Option(
        Path("medrecon-demo"), "--out",
        help="Output folder (created). Only the demo's own files in it are replaced."),
    modality: str = typer.Option("both", "--modality", help="mri, ct or both."),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda or cuda:N."),
    samples: int = typer.Option(
        3, "--samples", help="Posterior samples K; their mean is the reconstruction and their "
                             "standard deviation the uncertainty map (at least 2)."),
    steps: int = typer.Option(
        None, "--steps", show_default=False,
        help="Diffusion steps (at least 2). Default: 8 on a CPU (the demo then takes under 5 minutes on "
             "2 cores), 50 on a GPU."),
    seed: int = typer.Option(
        0, "--seed", help="Which held-out test head (0 or more), and the seed of mask, noise "
                          "and sampler."),
    size: int = typer.Option(
        None, "--size", show_default=False,
        help="Voxels along each axis of the test volume (8 to 512). Default: 64 on a CPU (a 128 mm cube "
             "through the head), 96 x 112 x 112 on a GPU (the whole head)."),
    prior: str = typer.Option(
        "default", "--prior", help="Prior name (see `medrecon priors`) or path."),
    sampler: str = typer.Option("dds", "--sampler", help="dds, dps, pc or diffpir."),
    progress: bool = typer.Option(True, "--progress/--no-progress",
                                  help="Show progress bars."),
) -> None:
    """Run the whole job on a held-out synthetic head and compare with the best classical method.

    For each modality: generate a test head the prior never saw, simulate an undersampled
    measurement (MRI: 8-coil 3D Poisson-disc R = 8; CT: 30 parallel-beam views), reconstruct it
    with the tuned classical baseline (MRI L1-wavelet, CT TV) and with diffusion posterior
    sampling (K samples: mean and std), evaluate both against the reference, and write NIfTI
    volumes, the measurement file, one PNG figure per modality and metrics.json.
    """
    from medrecon.demo import run_demo

    run_demo(out=out, modality=modality, device=device, samples=samples, steps=steps,
             seed=seed, prior=prior, size=size, sampler=sampler.strip().lower(),
             progress=progress, echo=typer.echo)
