"""Visual prompt tuning (riftune/tuning/vpt.py): the token layout and what learns."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from riftune import tuning

from .conftest import (
    _batch,
    _fresh,
)


@pytest.mark.parametrize("mode", ["shallow", "deep"])
def test_vpt_token_layout_and_gradients(pristine, mode):
    model = _fresh(pristine, "vit")
    vit = model.backbone
    tokens = 3
    plain_len = vit.num_prefix_tokens + vit.patch_embed.num_patches  # 1 + 4
    method = tuning.VPT(tokens=tokens, mode=mode)
    method.apply(model)
    prompts = vit.vpt.prompts
    assert prompts.shape == (len(vit.blocks) if mode == "deep" else 1, tokens, vit.embed_dim)

    block_inputs: list[torch.Tensor] = []
    norm_inputs: list[torch.Tensor] = []
    for block in vit.blocks:
        block.register_forward_pre_hook(lambda m, a: block_inputs.append(a[0].detach()))
    vit.norm.register_forward_pre_hook(lambda m, a: norm_inputs.append(a[0].detach()))

    images, labels = _batch()
    model.train()
    method.configure(model, 0, 1)
    F.cross_entropy(model(images).logits, labels).backward()

    assert [x.shape[1] for x in block_inputs] == [plain_len + tokens] * len(vit.blocks)
    assert norm_inputs[0].shape[1] == plain_len
    prompt_slot = slice(vit.num_prefix_tokens, vit.num_prefix_tokens + tokens)
    for i, x in enumerate(block_inputs):
        expected = prompts[i if mode == "deep" else 0].detach().expand_as(x[:, prompt_slot])
        if mode == "deep" or i == 0:
            torch.testing.assert_close(x[:, prompt_slot], expected, rtol=0, atol=0)
        else:  # shallow: later blocks see the prompts' outputs of the block before
            assert not torch.allclose(x[:, prompt_slot], expected)

    assert prompts.grad is not None
    assert (prompts.grad.flatten(1).abs().sum(1) > 0).all()  # every block's prompts learn
    others = [n for n, p in vit.named_parameters() if p is not prompts and p.grad is not None]
    assert others == []

    block_inputs.clear()
    with method.pretrained_forward(model), torch.no_grad():
        model.backbone(images)
    assert [x.shape[1] for x in block_inputs] == [plain_len] * len(vit.blocks)
