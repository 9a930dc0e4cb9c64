"""AdaptFormer (riftune/tuning/adaptformer.py): its block against the paper's formula."""

from __future__ import annotations

import torch

from riftune import tuning

from .conftest import (
    _fresh,
)


def test_adaptformer_block_matches_the_paper_formula(pristine):
    """x_out = x' + MLP(LN(x')) + s * ReLU(LN(x') W_down + b_down) W_up + b_up (eqs. 2-3)."""
    model = _fresh(pristine, "vit")
    method = tuning.AdaptFormer(dim=8, scale=0.5)
    method.apply(model)
    block = model.backbone.blocks[0]
    adapter = block.adaptformer
    with torch.no_grad():
        for p in adapter.parameters():
            p.normal_()
    tokens = torch.randn(2, 5, model.backbone.embed_dim, generator=torch.Generator().manual_seed(2))
    block.eval()
    with torch.no_grad():
        out = block(tokens)
        mid = tokens + block.attn(block.norm1(tokens))
        normed = block.norm2(mid)
        mlp = block.mlp.fc2(block.mlp.act(block.mlp.fc1(normed)))
        hidden = torch.relu(normed @ adapter.down.weight.T + adapter.down.bias)
        branch = hidden @ adapter.up.weight.T + adapter.up.bias
    torch.testing.assert_close(out, mid + mlp + 0.5 * branch, rtol=1e-5, atol=1e-5)
    assert branch.abs().max() > 1e-2
