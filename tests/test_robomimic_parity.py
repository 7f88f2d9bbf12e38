"""Our encoder blocks against robomimic's (what Diffusion Policy builds its encoder from), weights shared."""
import numpy as np
import torch

from robopolicy.models.encoders import SpatialSoftmax, _center_crop, _group_norm, resnet18_trunk


def _robomimic():
    import robomimic.models.base_nets as base_nets
    import robomimic.models.obs_core as obs_core

    return base_nets, obs_core


def _bn_to_gn(module: torch.nn.Module) -> None:
    """Diffusion Policy's replace_bn_with_gn: every BatchNorm2d becomes GroupNorm(C // 16, C)."""
    for name, child in module.named_children():
        if isinstance(child, torch.nn.BatchNorm2d):
            setattr(module, name, torch.nn.GroupNorm(child.num_features // 16, child.num_features))
        else:
            _bn_to_gn(child)


def test_resnet18_trunk_matches_robomimic_with_groupnorm():
    base_nets, _ = _robomimic()
    torch.manual_seed(0)
    theirs = base_nets.ResNet18Conv(input_channel=3, pretrained=False)
    _bn_to_gn(theirs)
    ours, channels = resnet18_trunk()
    assert channels == 512 and _group_norm(64).num_groups == 4
    ours.load_state_dict(theirs.nets.state_dict(), strict=True)  # the same modules, key for key
    x = torch.rand(2, 3, 76, 76)
    with torch.no_grad():
        assert torch.allclose(ours(x), theirs(x), atol=1e-5)
    assert list(theirs.output_shape([3, 76, 76])) == list(ours(x).shape[1:])


def test_spatial_softmax_matches_robomimic():
    base_nets, _ = _robomimic()
    torch.manual_seed(0)
    theirs = base_nets.SpatialSoftmax([64, 10, 12], num_kp=32).eval()
    ours = SpatialSoftmax(64, 32)
    ours.to_maps.load_state_dict(theirs.nets.state_dict())
    x = torch.randn(3, 64, 10, 12)
    with torch.no_grad():
        kp = theirs(x)  # (B, K, 2): x and y per keypoint
        # ours: all x then all y (a fixed permutation, absorbed by the linear layer after it)
        assert torch.allclose(ours(x), torch.cat([kp[..., 0], kp[..., 1]], dim=-1), atol=1e-6)


def test_center_crop_matches_robomimic_crop_randomizer_in_eval():
    _, obs_core = _robomimic()
    crop = obs_core.CropRandomizer(input_shape=[3, 84, 84], crop_height=76, crop_width=76, num_crops=1).eval()
    x = torch.rand(4, 3, 84, 84)
    with torch.no_grad():
        assert torch.equal(_center_crop(x, 76), crop.forward_in(x))
    assert np.array_equal(crop.output_shape_in([3, 84, 84]), [3, 76, 76])
