"""Mask precision: masks pasted as the inverse of their training targets (lpr.models.paste), the pixel mask head."""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F
from conftest import tiny_model
from torchvision.models.detection.roi_heads import paste_masks_in_image, project_masks_on_boxes
from torchvision.ops import roi_align

from lpr.models.backbones import IMAGE_KEY
from lpr.models.heads import PixelMaskHead, PixelMaskRoIPool
from lpr.models.paste import paste_masks
from lpr.models.transform import DetectionTransform


def training_target(mask: torch.Tensor, box: torch.Tensor, scale: float, m: int = 28) -> tuple[torch.Tensor, tuple]:
    """``mask`` as Mask R-CNN's loss sees it: resized with the image (lpr's soft targets), projected on ``box``."""
    resized = F.interpolate(
        mask[None, None].float(), scale_factor=scale, mode="bilinear", recompute_scale_factor=True, align_corners=False
    )
    sy, sx = resized.shape[-2] / mask.shape[0], resized.shape[-1] / mask.shape[1]
    rois = torch.cat([torch.zeros(len(box), 1), box * torch.tensor([sx, sy, sx, sy])], dim=1)
    return roi_align(resized, rois, (m, m), 1.0), (sy, sx)  # torchvision's project_masks_on_boxes


def test_paste_masks_is_bilinear_sampling_of_each_mask_over_its_box():
    g = torch.Generator().manual_seed(0)
    masks = torch.rand(5, 1, 28, 28, generator=g)
    xy = torch.rand(5, 2, generator=g) * torch.tensor([60.0, 40.0])
    boxes = torch.cat([xy, xy + 3 + torch.rand(5, 2, generator=g) * 30], dim=1)
    h, w, scale = 50, 70, (1.5, 1.25)
    pasted = paste_masks(masks, boxes, (h, w), scale)
    # the same with grid_sample: pixel j reads the mask where the target projection put it
    ys = (torch.arange(h) + 0.5 - 0.5 / scale[0])[None, :] - boxes[:, 1:2]
    xs = (torch.arange(w) + 0.5 - 0.5 / scale[1])[None, :] - boxes[:, 0:1]
    gy = 2 * ys / (boxes[:, 3:4] - boxes[:, 1:2]) - 1
    gx = 2 * xs / (boxes[:, 2:3] - boxes[:, 0:1]) - 1
    grid = torch.stack(torch.broadcast_tensors(gx[:, None, :], gy[:, :, None]), dim=-1)
    expected = F.grid_sample(masks, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    assert pasted.shape == (5, 1, h, w)
    torch.testing.assert_close(pasted, expected, atol=1e-5, rtol=0)
    assert paste_masks(masks[:0], boxes[:0], (h, w)).shape == (0, 1, h, w)


def test_a_mask_projected_for_training_and_pasted_back_is_the_mask_again():
    g = torch.Generator().manual_seed(1)
    exact_misses = torchvision_misses = 0
    for _ in range(20):
        x0, y0 = (int(v) for v in torch.randint(0, 40, (2,), generator=g))
        bw, bh = (int(v) for v in torch.randint(6, 30, (2,), generator=g))  # characters are 6-11 px wide
        mask = torch.zeros(80, 90)
        mask[y0 : y0 + bh, x0 : x0 + bw] = 1
        box = torch.tensor([[x0, y0, x0 + bw, y0 + bh]], dtype=torch.float32)
        target, scale = training_target(mask, box, 1.5)
        misses = int((paste_masks(target, box, mask.shape, scale)[0, 0] >= 0.5).ne(mask.bool()).sum())
        assert misses <= 4, (x0, y0, bw, bh)  # at most the corners, which bilinear sampling rounds
        exact_misses += misses
        torchvision_misses += int((paste_masks_in_image(target, box, mask.shape)[0, 0] >= 0.5).ne(mask.bool()).sum())
    assert torchvision_misses > 100 and torchvision_misses > 10 * exact_misses  # whole-pixel boxes: edges off by one


def test_a_model_pastes_its_masks_as_float32_in_the_image_under_bf16():
    image = torch.rand(3, 96, 128, generator=torch.Generator().manual_seed(2))
    torch.manual_seed(0)
    model = tiny_model(3).eval()
    with torch.no_grad():
        out = model([image])[0]
    assert len(out["boxes"]) > 0
    assert out["masks"].shape == (len(out["boxes"]), 1, 96, 128)
    assert out["masks"].min() >= 0 and out["masks"].max() <= 1
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        masks = model([image])[0]["masks"]
    assert masks.dtype == torch.float32


@pytest.mark.parametrize(("fusion", "soft"), [(None, False), ([8, 8], True)])
def test_the_pixel_mask_head_sees_each_rois_pixels_on_its_targets_grid_and_learns_from_them(fusion, soft):
    g = torch.Generator().manual_seed(3)
    image = torch.rand(1, 3, 96, 128, generator=g)
    boxes = torch.tensor([[30.0, 20.0, 41.5, 50.0], [60.2, 10.0, 90.0, 33.3]])
    pool = PixelMaskRoIPool(["0"])
    features = {"0": torch.rand(1, 8, 12, 16, generator=g), IMAGE_KEY: image}
    fpn, pixels = pool(features, [boxes], [(96, 128)])
    assert fpn.shape == (2, 8, 14, 14) and pixels.shape == (2, 3, 28, 28)
    targets = project_masks_on_boxes(image[0], boxes, torch.zeros(2, dtype=torch.long), 28)  # channels as masks
    torch.testing.assert_close(pixels[:, 0], targets)

    torch.manual_seed(0)
    pixel_branch = {"_target_": "lpr.models.heads.pixel_mask_branch", "pixel_channels": [8, 8]}
    model = tiny_model(3, mask_head={**pixel_branch, "fusion_channels": fusion}, transform={"soft_masks": soft})
    assert isinstance(model.roi_heads.mask_head, PixelMaskHead)
    predictor = model.roi_heads.mask_predictor
    assert len(predictor.fusion) == 2 * len(fusion or [])
    assert predictor.mask_fcn_logits.in_channels == (fusion[-1] if fusion else 16 + 8)
    masks = torch.zeros(1, 96, 128, dtype=torch.uint8)
    masks[0, 20:50, 30:42] = 1
    target = {"boxes": torch.tensor([[30.0, 20.0, 42.0, 50.0]]), "labels": torch.tensor([2]), "masks": masks}
    losses = model.train()([image[0]], [target])
    losses["loss_mask"].backward()
    assert model.roi_heads.mask_head.pixels[0].weight.grad.abs().sum() > 0
    for conv in predictor.fusion[::2]:
        assert conv.weight.grad.abs().sum() > 0
    with torch.no_grad():
        out = model.eval()([image[0]])[0]
    assert out["masks"].shape == (len(out["boxes"]), 1, 96, 128)


def test_soft_mask_targets_are_resized_as_the_image_is():
    g = torch.Generator().manual_seed(5)
    binary = (torch.rand(37, 53, generator=g) > 0.5).float()
    image = binary.expand(3, -1, -1).clone()
    target = {"boxes": torch.tensor([[3.0, 4.0, 20.0, 30.0]]), "labels": torch.tensor([1]), "masks": binary[None]}
    transforms = {
        soft: DetectionTransform(56, 80, [0.0] * 3, [1.0] * 3, size_divisible=1, soft_masks=soft).train()
        for soft in (False, True)
    }
    (nearest, t_nearest), (bilinear, t_bilinear) = (transforms[s].resize(image, dict(target)) for s in (False, True))
    torch.testing.assert_close(bilinear, nearest)  # the image and boxes do not change
    torch.testing.assert_close(t_bilinear["boxes"], t_nearest["boxes"])
    assert t_nearest["masks"].dtype == torch.uint8 and t_bilinear["masks"].dtype == torch.float32
    torch.testing.assert_close(t_bilinear["masks"][0], bilinear[0])  # the mask is the image's own resampling
    assert not torch.equal(t_nearest["masks"][0].float(), bilinear[0])
    soft = t_bilinear["masks"]
    assert soft.min() >= 0 and soft.max() <= 1 and ((soft > 0) & (soft < 1)).any()  # edges between 0 and 1


def test_soft_mask_targets_stay_where_the_image_has_them_and_torchvision_s_move_a_sixth_of_a_pixel():
    # one source pixel at a time, at both parities of each axis, through a 1.5x resize (40x60 -> 60x90)
    transforms = {
        soft: DetectionTransform(60, 90, [0.0] * 3, [1.0] * 3, size_divisible=1, soft_masks=soft).train()
        for soft in (False, True)
    }
    ys, xs = torch.meshgrid(torch.arange(60.0), torch.arange(90.0), indexing="ij")  # resized pixel indices
    offsets = {False: [], True: []}
    for y, x in itertools.product(range(10, 14), range(20, 24)):
        mask = torch.zeros(1, 40, 60, dtype=torch.uint8)
        mask[0, y, x] = 1
        target = {"boxes": torch.tensor([[x, y, x + 1.0, y + 1.0]]), "labels": torch.tensor([1]), "masks": mask}
        for soft, transform in transforms.items():
            resized = transform.resize(mask.float().expand(3, -1, -1), dict(target))[1]["masks"][0].float()
            assert resized.shape == (60, 90)
            at = torch.stack([(resized * xs).sum(), (resized * ys).sum()]) / resized.sum()
            # source pixel j's centre j + 0.5 is resized pixel coordinate 1.5 (j + 0.5), index 1.5 (j + 0.5) - 0.5
            offsets[soft].append(at - 1.5 * (torch.tensor([x, y]) + 0.5) + 0.5)
    soft, nearest = torch.stack(offsets[True]), torch.stack(offsets[False])
    assert soft.abs().max() < 0.03  # bilinear weights: +-1/36 by parity, none on average
    torch.testing.assert_close(soft.mean(0), torch.zeros(2), atol=1e-4, rtol=0)
    # torchvision's nearest: every pixel a quarter of a resized pixel (a sixth of a source pixel) right and down
    torch.testing.assert_close(nearest, torch.full_like(nearest, 0.25), atol=1e-4, rtol=0)
