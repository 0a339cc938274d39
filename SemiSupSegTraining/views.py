"""Intensity views of the unlabeled crops: each network sees its own randomly perturbed copy.

With the same input, the two networks soon agree with high confidence on the unlabeled crops; the pseudo
label then equals each network's own argmax and L_u has nothing left to teach (measured on the phantoms:
L_u below 0.001 after 300 of 600 iterations). Giving each network its own view of the same crop makes the
pseudo label a prediction on a *different* input, so L_u, L_reg and L_c carry a consistency signal. The
perturbations change intensities only, so every voxel stays where it is and predictions on the two
views compare voxel by voxel (Eq. 4-5 need that).
"""

import torch
import torch.nn.functional as F

CONTRAST = (0.8, 1.2)      # global intensity scale
BRIGHTNESS = (-0.2, 0.2)   # global shift, in units of the normalised intensity
FIELD = 0.3                # peak of the smooth multiplicative (log) and additive fields
FIELD_GRID = 3             # control points per axis of the smooth fields
NOISE_SIGMA = (0.0, 0.15)  # Gaussian noise, sigma drawn per crop


def _uniform(low: float, high: float, shape, generator: torch.Generator, device: torch.device) -> torch.Tensor:
    return (low + (high - low) * torch.rand(shape, generator=generator, device=generator.device)).to(device)


def intensity_view(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """A random intensity perturbation of each crop: contrast, brightness, a smooth bias field (multiplicative
    and additive, like an MRI coil's), and Gaussian noise.

    Args:
        images: (B, 1, D, H, W) normalised crops (z-score or CT window).
        generator: draws every random number (its device), so a seeded training repeats exactly.

    Returns:
        (B, 1, D, H, W) tensor of ``images``' dtype and device.
    """
    b, device = images.shape[0], images.device
    scale = _uniform(*CONTRAST, (b, 1, 1, 1, 1), generator, device)
    shift = _uniform(*BRIGHTNESS, (b, 1, 1, 1, 1), generator, device)
    coarse = _uniform(-FIELD, FIELD, (b, 2) + (FIELD_GRID,) * (images.dim() - 2), generator, device)
    fields = F.interpolate(coarse, size=images.shape[2:], mode="trilinear", align_corners=True)
    sigma = _uniform(*NOISE_SIGMA, (b, 1, 1, 1, 1), generator, device)
    noise = torch.randn(images.shape, generator=generator, device=generator.device).to(device)
    view = images.float() * scale * torch.exp(fields[:, :1]) + shift + fields[:, 1:] + sigma * noise
    return view.to(images.dtype)
