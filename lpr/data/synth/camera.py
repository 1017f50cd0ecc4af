"""What a camera does to a plate: pose and perspective, then blur, light, noise and JPEG."""

from __future__ import annotations

import cv2
import numpy as np


def _rotation(yaw: float, pitch: float, roll: float) -> np.ndarray:
    """3D rotation (degrees): yaw about the vertical axis, pitch about the horizontal, roll in the image."""
    y, p, r = np.deg2rad([yaw, pitch, roll])
    ry = np.array([[np.cos(y), 0, np.sin(y)], [0, 1, 0], [-np.sin(y), 0, np.cos(y)]])
    rx = np.array([[1, 0, 0], [0, np.cos(p), -np.sin(p)], [0, np.sin(p), np.cos(p)]])
    rz = np.array([[np.cos(r), -np.sin(r), 0], [np.sin(r), np.cos(r), 0], [0, 0, 1]])
    return rz @ rx @ ry


def plate_quad(rng: np.random.Generator, canvas_wh: tuple[int, int], width: float) -> np.ndarray:
    """Image corners ``(4, 2)`` of a plate around the origin, ``width`` px wide.

    The flat plate is turned in 3D (yaw up to 45 degrees, pitch up to 20, roll up to 15) and
    seen through a pinhole from 1.2-5 plate widths away (near is strong perspective).
    """
    cw, ch = canvas_wh
    corners = np.array([[-cw / 2, -ch / 2, 0], [cw / 2, -ch / 2, 0], [cw / 2, ch / 2, 0], [-cw / 2, ch / 2, 0]])
    yaw = rng.uniform(-45, 45) if rng.random() < 0.25 else rng.uniform(-15, 15)
    pitch = rng.uniform(-20, 20) if rng.random() < 0.25 else rng.uniform(-8, 8)
    roll = float(np.clip(rng.normal(0, 5), -15, 15))
    pts = corners @ _rotation(yaw, pitch, roll).T
    distance = cw * rng.uniform(1.2, 5.0)
    projected = pts[:, :2] * distance / (pts[:, 2:] + distance)
    projected *= width / np.ptp(projected[:, 0])
    return projected - projected.mean(0)


def paste(image: np.ndarray, canvas: np.ndarray, quad: np.ndarray, shade: float = 1.0) -> np.ndarray:
    """Warp ``canvas`` onto ``quad`` in ``image`` (float32 BGR, in place); returns the canvas->image homography."""
    h, w = canvas.shape[:2]
    # Shrink first with area interpolation: warping a much larger canvas directly aliases thin strokes.
    target = float(max(np.linalg.norm(quad[1] - quad[0]), np.linalg.norm(quad[2] - quad[3])))
    scale = min(1.0, 1.5 * target / w)
    small = cv2.resize(canvas, (max(2, round(w * scale)), max(2, round(h * scale))), interpolation=cv2.INTER_AREA)
    src = np.array([[0, 0], [w, 0], [w, h], [0, h]], np.float32)
    homography = cv2.getPerspectiveTransform(src, quad.astype(np.float32))
    x0, y0 = np.maximum(np.floor(quad.min(0)).astype(int), 0)
    x1, y1 = np.minimum(np.ceil(quad.max(0)).astype(int), image.shape[1::-1])
    if x1 <= x0 or y1 <= y0:
        return homography
    shift = np.array([[1, 0, -x0], [0, 1, -y0], [0, 0, 1]], np.float64)
    to_roi = shift @ homography @ np.diag([1 / scale, 1 / scale, 1.0])
    size = (int(x1 - x0), int(y1 - y0))
    warped = cv2.warpPerspective(small, to_roi, size, flags=cv2.INTER_LINEAR)
    alpha = cv2.warpPerspective(np.ones(small.shape[:2], np.float32), to_roi, size, flags=cv2.INTER_LINEAR)
    roi = image[y0:y1, x0:x1]
    roi += alpha[..., None] * (warped * shade - roi)
    return homography


def _motion_kernel(rng: np.random.Generator) -> np.ndarray:
    length = int(rng.integers(3, 8))
    kernel = np.zeros((length, length), np.float32)
    kernel[length // 2, :] = 1.0
    rot = cv2.getRotationMatrix2D(((length - 1) / 2, (length - 1) / 2), float(rng.uniform(0, 180)), 1.0)
    kernel = cv2.warpAffine(kernel, rot, (length, length))
    return kernel / kernel.sum()


def expose(rng: np.random.Generator, image: np.ndarray) -> np.ndarray:
    """The camera's view of a float32 scene: light, colour cast, blur, resolution and noise; uint8 out."""
    image = image * rng.uniform(0.6, 1.3) + rng.uniform(-40, 40)  # exposure
    mean = image.mean()
    image = (image - mean) * rng.uniform(0.6, 1.3) + mean  # contrast
    image *= rng.uniform(0.85, 1.15, 3).astype(np.float32)  # white balance
    if rng.random() < 0.2:  # low light: darker mid-tones
        image = 255.0 * (np.clip(image, 0, 255) / 255.0) ** rng.uniform(1.3, 2.2)
    kind = rng.random()
    if kind < 0.3:  # defocus
        image = cv2.GaussianBlur(image, (0, 0), rng.uniform(0.4, 1.4))
    elif kind < 0.5:  # motion
        image = cv2.filter2D(image, -1, _motion_kernel(rng))
    if rng.random() < 0.15:  # a low-resolution sensor, upscaled
        h, w = image.shape[:2]
        f = rng.uniform(1.3, 2.0)
        small = cv2.resize(image, (round(w / f), round(h / f)), interpolation=cv2.INTER_AREA)
        image = cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR)
    image = image + rng.standard_normal(image.shape, dtype=np.float32) * rng.uniform(0, 12)
    return np.clip(image, 0, 255).astype(np.uint8)


def jpeg_quality(rng: np.random.Generator) -> int:
    """JPEG quality of a saved image: 30-95, four in five 60 or better."""
    return int(rng.integers(30, 60)) if rng.random() < 0.2 else int(rng.integers(60, 96))
