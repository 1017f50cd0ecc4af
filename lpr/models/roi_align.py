"""RoIAlign as a sparse matrix product: torchvision's numbers, with a backward pass that is fast on a CPU.

torchvision's CPU ``roi_align`` backward is one thread that recomputes every sample's
bilinear weights once per channel; in the plate recipe's training step it took 30 %
of the time (``scripts/profile_step.py``, docs/recipe.md). Every RoIAlign output is a
fixed weighted sum of feature-map pixels: with a fixed ``sampling_ratio`` each output
bin averages ``sampling_ratio ** 2`` bilinear samples of 4 pixels each. So the whole
pooling is one sparse matrix ``A`` (rows: RoI bins, columns: pixels of all levels,
``4 * sampling_ratio ** 2`` weights a row) times the features laid out as
``(pixels, channels)``, which a channels-last map already is; the backward pass is
``A^T @ grad``, a multithreaded sparse product. The weights follow torchvision's CPU
kernel exactly (sample positions, the border rules of its bilinear interpolation, the
``aligned`` half-pixel offset, the minimum RoI size of 1 without it), so the results
equal ``torchvision.ops.roi_align`` to float rounding.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import torch
from torch import Tensor
from torchvision.ops import MultiScaleRoIAlign
from torchvision.ops.poolers import _convert_to_roi_format, _filter_input, _setup_scales


def _axis_samples(
    start: Tensor, extent: Tensor, bins: int, sampling_ratio: int, size: int
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Along one axis, for ``R`` RoIs starting at ``start`` (``(R,)``, map pixels) of ``extent``:
    the low and high pixel of each of the ``bins * sampling_ratio`` samples, their bilinear weights
    (``(R, bins * sampling_ratio)`` each) and whether each sample lies on the map at all."""
    steps = (torch.arange(bins * sampling_ratio, device=start.device, dtype=start.dtype) + 0.5) / sampling_ratio
    c = start[:, None] + steps[None] * (extent / bins)[:, None]
    inside = (c >= -1.0) & (c <= size)
    c = c.clamp(min=0)
    low = c.floor().long().clamp(max=size - 1)
    last = low >= size - 1  # on the last row/column both neighbours are that pixel
    c = torch.where(last, low.to(c.dtype), c)
    high = torch.where(last, low, low + 1)
    frac = c - low
    return low, high, frac, inside


def roi_align_matrix(
    rois: Tensor,
    map_size: Sequence[int],
    output_size: Sequence[int],
    spatial_scale: float,
    sampling_ratio: int,
    aligned: bool = False,
) -> tuple[Tensor, Tensor]:
    """The sparse rows of RoIAlign on one feature map of ``map_size`` ``(H, W)``.

    Args:
        rois: ``(R, 5)`` float: batch index, then x1, y1, x2, y2 in image pixels.
        map_size: the map's height and width.
        output_size: ``(Ph, Pw)`` bins per RoI.
        spatial_scale: map pixels per image pixel.
        sampling_ratio: samples per bin along each axis (> 0).
        aligned: shift the boxes by half a pixel (torchvision's ``aligned=True``).

    Returns:
        ``(columns, weights)``, each ``(R * Ph * Pw, 4 * sampling_ratio ** 2)``: the flat pixel
        index ``batch * H * W + y * W + x`` of each term of each bin (RoI-major, then ``ph``,
        ``pw``) and its weight.
    """
    (height, width), (ph, pw), s = map_size, output_size, sampling_ratio
    r = len(rois)
    boxes = rois[:, 1:] * spatial_scale - (0.5 if aligned else 0.0)
    size = boxes[:, 2:] - boxes[:, :2]
    if not aligned:
        size = size.clamp(min=1.0)
    y_lo, y_hi, y_frac, y_in = _axis_samples(boxes[:, 1], size[:, 1], ph, s, height)
    x_lo, x_hi, x_frac, x_in = _axis_samples(boxes[:, 0], size[:, 0], pw, s, width)
    # the four neighbours of every sample (y, x): (lo, lo), (lo, hi), (hi, lo), (hi, hi)
    rows = torch.stack([y_lo, y_lo, y_hi, y_hi], -1)[:, :, None] * width
    cols = torch.stack([x_lo, x_hi, x_lo, x_hi], -1)[:, None]
    w_y = torch.stack([1 - y_frac, 1 - y_frac, y_frac, y_frac], -1)[:, :, None]
    w_x = torch.stack([1 - x_frac, x_frac, 1 - x_frac, x_frac], -1)[:, None]
    inside = (y_in[:, :, None] & x_in[:, None])[..., None]
    columns = rois[:, 0].long()[:, None, None, None] * (height * width) + rows + cols  # (R, Ph*s, Pw*s, 4)
    weights = w_y * w_x * inside / (s * s)

    def per_bin(t: Tensor) -> Tensor:  # (R, Ph*s, Pw*s, 4) -> (R*Ph*Pw, s*s*4)
        return t.reshape(r, ph, s, pw, s, 4).permute(0, 1, 3, 2, 4, 5).reshape(r * ph * pw, s * s * 4)

    return per_bin(columns), per_bin(weights)


def _pixels_by_channels(feature: Tensor) -> Tensor:
    """``(B, C, H, W)`` as ``(B * H * W, C)``: a view of a channels-last map, a copy otherwise."""
    return feature.permute(0, 2, 3, 1).reshape(-1, feature.shape[1])


def _sparse_product(columns: Tensor, weights: Tensor, table: Tensor) -> Tensor:
    """``A @ table`` for the CSR matrix ``A`` whose row ``i`` has ``weights[i]`` at ``columns[i]``."""
    n, k = columns.shape
    crow = torch.arange(0, n * k + 1, k, device=columns.device)
    with warnings.catch_warnings():  # "Sparse CSR tensor support is in beta state": known, and tested here
        warnings.simplefilter("ignore", UserWarning)
        matrix = torch.sparse_csr_tensor(
            crow, columns.reshape(-1), weights.reshape(-1).to(table.dtype), (n, len(table)), check_invariants=False
        )
        return matrix @ table


def sparse_roi_align(
    features: Sequence[Tensor],
    rois: Tensor,
    levels: Tensor,
    scales: Sequence[float],
    output_size: Sequence[int],
    sampling_ratio: int,
    aligned: bool = False,
) -> Tensor:
    """RoIAlign of each RoI on its level of a feature pyramid, as one sparse product.

    Args:
        features: the levels, ``(B, C, H_l, W_l)`` each, of one dtype and channel count.
        rois: ``(R, 5)`` float: batch index, then x1, y1, x2, y2 in image pixels.
        levels: ``(R,)`` int: the index into ``features`` of each RoI's level.
        scales: map pixels per image pixel, per level.
        output_size: ``(Ph, Pw)``.
        sampling_ratio: samples per bin along each axis (> 0).
        aligned: torchvision's ``aligned``.

    Returns:
        ``(R, C, Ph, Pw)`` in the features' dtype (computed in float32, as torchvision's
        RoIAlign is under autocast), channels-last in memory.
    """
    if sampling_ratio <= 0:
        raise ValueError(f"sparse_roi_align needs a fixed sampling_ratio > 0, got {sampling_ratio}")
    ph, pw = output_size
    terms = 4 * sampling_ratio**2
    columns = rois.new_zeros((len(rois), ph * pw, terms), dtype=torch.long)
    weights = rois.new_zeros((len(rois), ph * pw, terms))
    tables, offset = [], 0
    for level, (feature, scale) in enumerate(zip(features, scales, strict=True)):
        chosen = torch.where(levels == level)[0]
        c, w = roi_align_matrix(rois[chosen], feature.shape[-2:], output_size, scale, sampling_ratio, aligned)
        columns[chosen] = c.view(len(chosen), ph * pw, terms) + offset
        weights[chosen] = w.view(len(chosen), ph * pw, terms)
        tables.append(_pixels_by_channels(feature))
        offset += len(tables[-1])
    with torch.autocast(features[0].device.type, enabled=False):
        table = torch.cat(tables).float()
        pooled = _sparse_product(columns.view(-1, terms), weights.view(-1, terms), table)
    channels = table.shape[1]
    return pooled.to(features[0].dtype).view(len(rois), ph, pw, channels).permute(0, 3, 1, 2)


class SparseMultiScaleRoIAlign(MultiScaleRoIAlign):
    """torchvision's ``MultiScaleRoIAlign`` (same levels, scales and outputs) by :func:`sparse_roi_align` on a CPU.

    On other devices torchvision's own kernels run. Needs a fixed ``sampling_ratio`` (> 0).
    """

    def __init__(self, featmap_names: list[str], output_size: int | Sequence[int], sampling_ratio: int, **kwargs):
        if sampling_ratio <= 0:
            raise ValueError(f"SparseMultiScaleRoIAlign needs a fixed sampling_ratio > 0, got {sampling_ratio}")
        super().__init__(featmap_names, output_size, sampling_ratio, **kwargs)

    def forward(self, x: dict[str, Tensor], boxes: list[Tensor], image_shapes: list[tuple[int, int]]) -> Tensor:
        features = _filter_input(x, self.featmap_names)
        if features[0].device.type != "cpu":
            return super().forward(x, boxes, image_shapes)
        if self.scales is None or self.map_levels is None:
            self.scales, self.map_levels = _setup_scales(
                features, image_shapes, self.canonical_scale, self.canonical_level
            )
        rois = _convert_to_roi_format(boxes)
        levels = self.map_levels(boxes) if len(features) > 1 else rois.new_zeros(len(rois), dtype=torch.long)
        return sparse_roi_align(features, rois, levels, self.scales, self.output_size, self.sampling_ratio)
