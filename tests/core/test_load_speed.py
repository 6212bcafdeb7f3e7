"""Loading a checkpoint does only what it must (issue 21 item 2): no random initialization of parameters
the checkpoint replaces, no copy of the tensors just read; the loaded model is the checkpoint's."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from helpers.checkpoints import SMALL_VIT
from sam_core import zoo
from sam_core.models.build import build_sam, load_checkpoint, read_state_dict, skip_parameter_init


def test_building_under_skip_parameter_init_draws_no_random_numbers():
    torch.manual_seed(0)
    before = torch.random.get_rng_state()
    with skip_parameter_init():
        network = nn.Sequential(nn.Linear(8, 4), nn.Conv2d(3, 4, 3), nn.LayerNorm(4), nn.Embedding(5, 4),
                                nn.ConvTranspose2d(4, 2, 2))
    assert torch.equal(torch.random.get_rng_state(), before)
    assert [tuple(p.shape) for p in network.parameters()][:2] == [(4, 8), (4,)]
    # the mode applies to construction only: afterwards random fills work again
    nn.init.normal_(network[0].weight)
    assert not torch.equal(torch.random.get_rng_state(), before)


def test_skip_parameter_init_keeps_buffers_and_explicit_values():
    with skip_parameter_init():
        sam = build_sam(SMALL_VIT)
    reference = build_sam(SMALL_VIT)
    # non-persistent buffers (pixel statistics) are computed as usual
    assert torch.equal(sam.pixel_mean, reference.pixel_mean) and torch.equal(sam.pixel_std, reference.pixel_std)
    assert {k for k, _ in sam.named_parameters()} == {k for k, _ in reference.named_parameters()}


@pytest.mark.parametrize("config_name", ["small_vit", "small_tiny_vit"])
def test_load_model_holds_exactly_the_checkpoint(config_name, small_vit_checkpoint, small_tiny_vit_checkpoint):
    path = small_vit_checkpoint if config_name == "small_vit" else small_tiny_vit_checkpoint
    state = read_state_dict(path)
    model = zoo.load_model(None, path)
    loaded = model.state_dict()
    for key, value in state.items():
        assert loaded[key].dtype == value.dtype and torch.equal(loaded[key], value), key
    # and it computes what a model built with random values and then copied into computes
    reference = load_checkpoint(build_sam(model.config), read_state_dict(path))
    image = torch.rand(1, 3, model.config.image_size, model.config.image_size) * 255
    with torch.no_grad():
        assert torch.equal(model.image_encoder(model.preprocess(image)),
                           reference.image_encoder(reference.preprocess(image)))
    assert all(p.requires_grad for p in model.parameters())


def test_a_state_dict_passed_in_is_copied_unless_taken(small_vit_checkpoint):
    state = read_state_dict(small_vit_checkpoint)
    key = "mask_decoder.iou_token.weight"
    copied = load_checkpoint(build_sam(SMALL_VIT), state)
    taken = load_checkpoint(build_sam(SMALL_VIT), dict(state), take=True)
    with torch.no_grad():
        state[key].add_(1.0)
    assert not torch.equal(copied.state_dict()[key], state[key])  # the caller's tensors stay the caller's
    assert torch.equal(taken.state_dict()[key], state[key])  # taken over: no second copy in memory


def test_taking_a_state_dict_keeps_the_model_dtype(small_vit_checkpoint):
    state = {k: v.half() for k, v in read_state_dict(small_vit_checkpoint).items()}
    model = load_checkpoint(build_sam(SMALL_VIT), state, take=True)
    assert {p.dtype for p in model.parameters()} == {torch.float32}


def test_skip_parameter_init_leaves_other_threads_alone():
    import threading

    drawn = {}

    def build_elsewhere():
        torch.manual_seed(1)
        before = torch.random.get_rng_state()
        nn.Linear(4, 4)
        drawn["other thread"] = not torch.equal(torch.random.get_rng_state(), before)

    with skip_parameter_init():
        thread = threading.Thread(target=build_elsewhere)
        thread.start()
        thread.join()
    assert drawn == {"other thread": True}  # it initialized its parameters randomly, as usual
