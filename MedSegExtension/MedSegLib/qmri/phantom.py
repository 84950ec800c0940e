"""Sphere ROIs of a relaxometry phantom (e.g. the ISMRM/NIST system phantom) from template sphere centres.

The user gives the sphere centres on any template image (e.g. hazen's), we find the spheres in the actual image
(bright blobs enclosed by their dark shells in an M0-like image) and fit the similarity transform (scale,
rotation, shift) that maps the template constellation onto them, by exhaustive pair hypotheses then least squares.
No image registration to a template file is needed, so any field of view, matrix or in-plane rotation works.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np


@dataclass
class SphereROIs:
    centres_rc: np.ndarray  # (S, 2) row, col on the image
    radius_px: float  # ROI radius used
    sphere_radius_px: float  # median equivalent radius of the detected spheres
    matched: int  # template spheres that landed on a detected blob
    transform: np.ndarray  # 2x3 affine (row, col) template -> image

    def masks(self, shape: tuple[int, int]) -> list[np.ndarray]:
        rows, cols = np.mgrid[: shape[0], : shape[1]]
        return [(rows - r) ** 2 + (cols - c) ** 2 <= self.radius_px**2 for r, c in self.centres_rc]


def detect_blobs(image: np.ndarray, min_area: int = 12) -> tuple[np.ndarray, np.ndarray]:
    """Centroids (row, col) and equivalent radii of compact bright blobs separated by dark rims."""
    from scipy import ndimage

    from MedSegLib.qmri.fitting import otsu_threshold

    image = np.nan_to_num(np.asarray(image, dtype=np.float64))
    positive = image[image > 0]
    if positive.size:  # fit outliers in the background must not set the threshold
        image = np.clip(image, 0.0, np.percentile(positive, 99.0))
    foreground = image > otsu_threshold(image)
    foreground = ndimage.binary_erosion(foreground, iterations=1)
    labels, count = ndimage.label(foreground)
    if count == 0:
        return np.zeros((0, 2)), np.zeros(0)
    index = np.arange(1, count + 1)
    areas = ndimage.sum(np.ones_like(labels), labels, index)
    centres = np.array(ndimage.center_of_mass(np.ones_like(labels), labels, index)).reshape(-1, 2)
    keep = []
    radii = []
    for label_value, area, centre in zip(index, areas, centres):
        if area < min_area:
            continue
        rows, cols = np.nonzero(labels == label_value)
        r_max = np.sqrt(((rows - centre[0]) ** 2 + (cols - centre[1]) ** 2).max()) + 0.5
        if area / (np.pi * r_max**2) < 0.6:  # not compact: the phantom body or a merged region
            continue
        keep.append(centre)
        radii.append(np.sqrt(area / np.pi))
    return np.array(keep).reshape(-1, 2), np.array(radii)


def _similarity(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares similarity transform (Umeyama) as a 2x3 matrix mapping src rows onto dst rows."""
    mu_s, mu_d = src.mean(0), dst.mean(0)
    a, b = src - mu_s, dst - mu_d
    u, sigma, vt = np.linalg.svd(b.T @ a / len(src))
    d = np.diag([1.0, np.sign(np.linalg.det(u @ vt))])
    rotation = u @ d @ vt
    scale = np.trace(np.diag(sigma) @ d) / (a**2).sum(1).mean()
    matrix = np.zeros((2, 3))
    matrix[:, :2] = scale * rotation
    matrix[:, 2] = mu_d - scale * rotation @ mu_s
    return matrix


def locate_spheres(
    image: np.ndarray,
    template_centres_rc: Sequence[Sequence[float]],
    roi_fraction: float = 0.5,
    scale_range: tuple[float, float] = (0.4, 2.5),
    max_rotation_deg: float = 20.0,
) -> SphereROIs:
    """Map template sphere centres onto ``image`` (2D, bright spheres with dark shells, e.g. an M0 map).

    The sphere arrangement is nearly rotation-symmetric, so the in-plane rotation is limited to
    ``max_rotation_deg`` from the template's (raise it for a phantom placed at another angle).
    """
    image = np.nan_to_num(np.asarray(image, dtype=np.float64))
    high = np.percentile(image, 99.0)
    results = []
    for candidate in (image, np.clip(high - image, 0.0, None)):  # spheres brighter or darker than the fluid
        blobs, radii = detect_blobs(candidate)
        if len(blobs) >= 3:
            results.append(
                _place(
                    np.asarray(template_centres_rc, dtype=np.float64),
                    blobs,
                    radii,
                    roi_fraction,
                    scale_range,
                    max_rotation_deg,
                )
            )
    if not results:
        raise ValueError("fewer than 3 sphere-like blobs found; cannot place the template")
    return max(results, key=lambda item: item.matched)


def _place(
    template: np.ndarray,
    blobs: np.ndarray,
    radii: np.ndarray,
    roi_fraction: float,
    scale_range: tuple[float, float],
    max_rotation_deg: float,
) -> SphereROIs:
    tolerance = 0.6 * float(np.median(radii))
    best = (-1, np.inf, None)
    n_t = len(template)
    pairs = [(i, j) for i in range(n_t) for j in range(i + 1, n_t)]
    pairs.sort(key=lambda ij: -np.linalg.norm(template[ij[0]] - template[ij[1]]))
    for i, j in pairs[:12]:
        v_t = template[j] - template[i]
        for a in range(len(blobs)):
            for b in range(len(blobs)):
                if a == b:
                    continue
                v_b = blobs[b] - blobs[a]
                scale = np.linalg.norm(v_b) / np.linalg.norm(v_t)
                if not scale_range[0] <= scale <= scale_range[1]:
                    continue
                angle = np.arctan2(v_b[1], v_b[0]) - np.arctan2(v_t[1], v_t[0])
                angle = (angle + np.pi) % (2 * np.pi) - np.pi
                if abs(np.degrees(angle)) > max_rotation_deg:
                    continue
                c, s = np.cos(angle) * scale, np.sin(angle) * scale
                rot = np.array([[c, -s], [s, c]])
                mapped = (template - template[i]) @ rot.T + blobs[a]
                distance = np.linalg.norm(mapped[:, None, :] - blobs[None, :, :], axis=2).min(axis=1)
                inliers = int(np.count_nonzero(distance < tolerance))
                error = float(distance[distance < tolerance].sum())
                if inliers > best[0] or (inliers == best[0] and error < best[1]):
                    best = (inliers, error, (rot, template[i], blobs[a]))
    rot, origin_t, origin_b = best[2]
    mapped = (template - origin_t) @ rot.T + origin_b
    distances = np.linalg.norm(mapped[:, None, :] - blobs[None, :, :], axis=2)
    nearest = distances.argmin(axis=1)
    matched = distances[np.arange(n_t), nearest] < tolerance
    matrix = _similarity(template[matched], blobs[nearest[matched]])
    centres = template @ matrix[:, :2].T + matrix[:, 2]
    sphere_radius = float(np.median(radii[nearest[matched]]))
    return SphereROIs(centres, roi_fraction * sphere_radius, sphere_radius, int(matched.sum()), matrix)
