"""Procedural trunk anatomy (chest and abdomen) for training patches beyond the head.

Real scans are not all heads: CT of the spine, chest or abdomen and MR of the abdomen need a
prior that has seen vertebrae, ribs, lungs and organs. This module renders a trunk as tissue
fractions from analytic signed distances (mm), in a body frame centred on the trunk's axis
(x lateral towards the patient's right, y anterior, z superior), batched like
:func:`.anatomy.head_fractions`:

* outline: an ellipse (half-width ``a``, half-depth ``b``) with a few random harmonics that
  vary slowly along z; skin, subcutaneous fat and muscle layers of random thickness;
* spine: vertebral bodies (cortical shell, marrow) with intervertebral discs, the spinal canal
  (CSF around the cord), lamina, spinous and transverse processes, paraspinal muscles;
* chest (``kind`` 0): ribs (tubes with a cortical shell and marrow, descending anteriorly, one
  every ``rib_pitch`` mm), sternum, lungs, heart and mediastinal fat, descending aorta;
* abdomen (``kind`` 1): liver, kidneys, psoas muscles, aorta, bowel (soft tissue, fat and gas
  pockets from a smooth random field).

Every boundary is a ramp one voxel wide, as in the head. Tissue classes are those of the head
plus ``lung``, ``liver`` and ``organ`` (heart, kidneys, bowel wall); vessels are ``vessel``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from medrecon.priors.synthetic.anatomy import Detail, step

__all__ = ["BODY_TISSUES", "BodyParams", "body_fractions"]

#: Tissue classes of a trunk (``vessel`` holds blood).
BODY_TISSUES: tuple[str, ...] = ("skin", "fat", "muscle", "cortical_bone", "diploe", "csf", "wm",
                                 "lung", "liver", "organ", "vessel")  # fmt: skip


@dataclass
class BodyParams:
    """Per-trunk parameters, (n, 1) each unless stated; lengths in mm.

    Attributes:
        kind: 0 chest, 1 abdomen. a, b: half-width and half-depth of the outline.
        harm: (n, 6) relative amplitudes and phases of the outline's 2nd-4th harmonics.
        t_skin, t_fat, t_muscle: layer thicknesses. z0: phase of vertebrae and ribs along z.
        vert_pitch, disc: vertebral period and disc height; vert_depth: skin-to-vertebral-body
        centre distance at the back; rib_pitch, rib_drop, rib_r: rib spacing, anterior descent
        and radius; heart_x: lateral heart centre (negative: patient's left); aorta_r: radius.
        gas: bowel gas threshold of the smooth field (higher: less gas).
        vox: partial-volume ramp width.
    """

    kind: torch.Tensor
    a: torch.Tensor
    b: torch.Tensor
    harm: torch.Tensor
    t_skin: torch.Tensor
    t_fat: torch.Tensor
    t_muscle: torch.Tensor
    z0: torch.Tensor
    vert_pitch: torch.Tensor
    disc: torch.Tensor
    vert_depth: torch.Tensor
    rib_pitch: torch.Tensor
    rib_drop: torch.Tensor
    rib_r: torch.Tensor
    heart_x: torch.Tensor
    aorta_r: torch.Tensor
    gas: torch.Tensor
    vox: torch.Tensor


def _ellipse_sd(x: torch.Tensor, y: torch.Tensor, a: torch.Tensor | float,
                b: torch.Tensor | float) -> torch.Tensor:
    """Approximate signed distance (mm) to an axis-aligned ellipse centred at the origin."""
    r = torch.sqrt((x / a) ** 2 + (y / b) ** 2).clamp_min(1e-6)
    return torch.sqrt(x**2 + y**2) * (1.0 - 1.0 / r)


def _box_sd(x: torch.Tensor, y: torch.Tensor, hx: float | torch.Tensor,
            hy: float | torch.Tensor) -> torch.Tensor:
    """Signed distance to an axis-aligned rectangle of half-sizes (hx, hy) at the origin."""
    return torch.maximum(x.abs() - hx, y.abs() - hy)


def body_fractions(x: torch.Tensor, prm: BodyParams, field: torch.Tensor,
                   detail: Detail) -> dict[str, torch.Tensor]:
    """Tissue fractions of n trunks at body-frame points x (n, M, 3) mm.

    ``field`` (n, M): a smooth unit-variance random field (bowel content, fat islands);
    ``detail``: sub-millimetre detail (trabeculae in marrow, vessels in lung and soft tissue).
    Returns fractions of :data:`BODY_TISSUES`, (n, M) each, summing to at most 1 (rest: air).
    """
    px, py, pz = x.unbind(-1)
    vox = prm.vox
    theta = torch.atan2(py, px)
    h = prm.harm
    wobble = 1.0 + sum(h[:, k, None] * torch.cos((k + 2) * theta + h[:, k + 3, None])
                       for k in range(3))  # fmt: skip
    wobble = wobble * (1.0 + 0.04 * torch.sin(2 * math.pi * pz / 400.0 + h[:, 3:4]))
    a, b = prm.a * wobble, prm.b * wobble
    sd_body = _ellipse_sd(px, py, a, b)
    body = step(sd_body, vox)
    depth = -sd_body  # mm below the skin
    skin = body * step(depth - prm.t_skin, vox)
    fat = (body - skin) * step(depth - prm.t_skin - prm.t_fat, vox)
    inner = (body - skin - fat).clamp_min(0.0)
    wall = prm.t_skin + prm.t_fat + prm.t_muscle  # muscle layer inside the fat
    muscle_layer = inner * step(depth - wall, vox)
    cavity = (inner - muscle_layer).clamp_min(0.0)
    fr = {t: torch.zeros_like(px) for t in BODY_TISSUES}
    fr["skin"], fr["fat"], fr["muscle"] = skin, fat, muscle_layer

    def paint(name: str, mask: torch.Tensor, within: torch.Tensor | None = None) -> None:
        """Move the fraction ``mask`` of every tissue (of ``within`` only, if given) to
        ``name`` ("air" removes it)."""
        if within is not None:
            mask = mask * within
        for t in BODY_TISSUES:
            if t == name:
                continue
            moved = fr[t] * mask
            fr[t] = fr[t] - moved
            if name != "air":
                fr[name] = fr[name] + moved

    chest = (prm.kind == 0).to(x.dtype)
    # Cavity contents: lungs (chest) or abdominal soft tissue with fat and gas (abdomen).
    fr["lung"] = cavity * chest
    fr["organ"] = cavity * (1.0 - chest) * (0.5 + 0.5 * torch.tanh(2.0 * field))
    fr["fat"] = fr["fat"] + cavity * (1.0 - chest) * (0.5 - 0.5 * torch.tanh(2.0 * field))
    gas = step(prm.gas - field, 0.15) * (1.0 - chest)  # thresholded field: bowel gas pockets
    paint("air", gas, cavity)

    # Spine: vertebral body centre vert_depth in front of the back skin.
    yv = -prm.b + prm.vert_depth
    rx, ry = 0.17 * prm.vert_depth + 8.0, 0.13 * prm.vert_depth + 6.0
    u = (pz - prm.z0) / prm.vert_pitch
    dz = (u - torch.round(u)) * prm.vert_pitch  # mm from the nearest disc centre
    disc = step(dz.abs() - prm.disc / 2, vox)
    sd_vb = _ellipse_sd(px, py - yv, rx, ry)
    canal_y = yv - ry - 9.0
    sd_canal = _ellipse_sd(px, py - canal_y, 8.0, 7.0)
    arch = step(sd_canal - 5.0, vox) * (1.0 - disc)
    spinous = step(_box_sd(px, py - (canal_y - 25.0), 4.0, 18.0), vox) * (1.0 - disc)
    transverse = step(_box_sd(px, py - canal_y - 2.0, 32.0, 4.0), vox) * (1.0 - disc)
    paraspinal = step(_ellipse_sd(px.abs() - 32.0, py - (canal_y - 15.0), 28.0, 22.0), vox)
    paint("muscle", paraspinal, inner)
    posterior = torch.maximum(torch.maximum(arch, spinous), transverse)
    paint("cortical_bone", posterior, body)
    paint("diploe", step(sd_canal - 5.0 + 1.5, vox) * posterior, body)
    paint("cortical_bone", step(sd_vb, vox) * (1.0 - disc), body)
    paint("diploe", step(sd_vb + 1.5, vox) * (1.0 - disc), body)
    paint("muscle", step(sd_vb, vox) * disc, body)  # disc: fibrocartilage
    paint("csf", step(sd_canal, vox), body)
    paint("wm", step(_ellipse_sd(px, py - canal_y, 5.0, 4.0), vox), body)  # spinal cord

    # Descending aorta, left-anterior of the vertebral body.
    aorta = step(_ellipse_sd(px + 18.0, py - (yv + ry + prm.aorta_r), prm.aorta_r,
                             prm.aorta_r), vox)  # fmt: skip
    paint("vessel", aorta, body)
    # Chest: heart and mediastinal fat, sternum, ribs.
    heart = step(_ellipse_sd(px - prm.heart_x, py - 0.2 * prm.b, 0.35 * prm.a, 0.45 * prm.b), vox)
    media = step(_box_sd(px - 0.3 * prm.heart_x, py - 0.1 * prm.b, 0.18 * prm.a, 0.6 * prm.b),
                 vox)  # fmt: skip
    paint("fat", media * chest, cavity)
    paint("organ", heart * chest, cavity)
    y_st = prm.b - wall - 6.0
    sternum = step(_box_sd(px, py - y_st, 14.0, 6.0), vox) * chest
    paint("cortical_bone", sternum, body)
    paint("diploe", step(_box_sd(px, py - y_st, 12.5, 4.5), vox) * chest, body)
    a_r, b_r = prm.a - wall + prm.rib_r, prm.b - wall + prm.rib_r
    ur = (pz - prm.z0 + prm.rib_drop * (py + prm.b) / (2 * prm.b)) / prm.rib_pitch
    dzr = (ur - torch.round(ur)) * prm.rib_pitch
    rib_sd = torch.sqrt(_ellipse_sd(px, py, a_r, b_r) ** 2 + dzr**2) - prm.rib_r
    lateral = step(30.0 - px.abs(), vox) * chest  # no ribs at the sternum and the spine
    paint("cortical_bone", step(rib_sd, vox) * lateral, body)
    paint("diploe", step(rib_sd + 1.2, vox) * lateral, body)
    # Abdomen: liver (patient's right), kidneys, psoas muscles.
    abdo = 1.0 - chest
    liver = step(_ellipse_sd(px - 0.35 * prm.a, py - 0.05 * prm.b, 0.5 * prm.a, 0.6 * prm.b), vox)
    paint("liver", liver * abdo, cavity)
    kidneys = step(_ellipse_sd(px.abs() - 55.0, py - yv - 5.0, 28.0, 22.0), vox)
    paint("organ", kidneys * abdo, cavity)
    psoas = step(_ellipse_sd(px.abs() - 35.0, py - yv - 5.0, 18.0, 16.0), vox)
    paint("muscle", psoas * abdo, cavity)

    # Sub-millimetre detail: trabeculae in marrow; vessels in lung and soft tissue.
    moved = fr["diploe"] * detail.trabecular
    fr["diploe"] = fr["diploe"] - moved
    fr["cortical_bone"] = fr["cortical_bone"] + moved
    for t, share in (("lung", 3.0), ("liver", 1.0), ("organ", 1.0), ("muscle", 0.5)):
        moved = fr[t] * (detail.vessel * share).clamp(0.0, 1.0)
        fr[t] = fr[t] - moved
        fr["vessel"] = fr["vessel"] + moved
    return fr
