"""The speed paths compute the same function: compiled regions vs eager (CPU), CUDA-graph replay (GPU only)."""

import copy

import pytest
import torch

from conftest import require_cuda, tiny_model
from loss import DFMLoss, FlowMatchingLoss


def loss_and_grads(model, family, x0, y, draws, **kw):
    model.zero_grad(set_to_none=True)
    if family == "DFM-SiT":
        out = DFMLoss(stage_weights=(0.5, 0.5))(model, x0, y, 1, draws=draws)
    else:
        out = FlowMatchingLoss()(model, x0, y, draws=draws, **kw)
    out.loss.mean().backward()
    return out.loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("family,kw", [("SiT", {}), ("ELIT-SiT", {"budget": 0.5}), ("DFM-SiT", {})])
def test_compiled_regions_match_eager(family, kw):
    eager = tiny_model(family, randomize=False).train()            # DiT init: zeroed heads, so perturb them
    with torch.no_grad():
        for p in eager.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    compiled = copy.deepcopy(eager).compile_regions()
    x0 = torch.randn(3, eager.in_channels, eager.input_size, eager.input_size)
    y = torch.randint(0, eager.num_classes, (3,))
    if family == "DFM-SiT":
        from loss import pyramid_shapes
        draws = DFMLoss(stage_weights=(0.5, 0.5)).draw(3, pyramid_shapes(x0.shape[1:], eager.stages))
    else:
        draws = FlowMatchingLoss().draw(3, x0.shape[1:])
    loss_e, grads_e = loss_and_grads(eager, family, x0, y, draws, **kw)
    loss_c, grads_c = loss_and_grads(compiled, family, x0, y, draws, **kw)
    torch.testing.assert_close(loss_c, loss_e, rtol=1e-5, atol=1e-6)
    assert grads_c.keys() == grads_e.keys()
    for name in grads_e:
        torch.testing.assert_close(grads_c[name], grads_e[name], rtol=1e-4, atol=1e-5, msg=name)


@require_cuda()
def test_graph_replay_matches_the_model_on_gpu():
    from models.graphs import GraphedModel
    model = tiny_model("ELIT-SiT").cuda().eval()
    fast = GraphedModel(model)
    for budget in (1.0, 0.25, 1.0):
        x, t, y = model.example_inputs(4, device="cuda")
        with torch.no_grad():
            torch.testing.assert_close(fast(x, t, y, budget=budget), model(x, t, y, budget=budget))
    assert len(fast.graphs) == 2
