import copy
import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from mmseg.registry import MODELS

from mmseg_naslora.models.adapters.conv_lora import ConvLoRA, collect_aux_losses
from mmseg_naslora.models.backbones.sam_vit import SAMViT

torch.set_num_threads(1)


def _adapter(in_features=16, out_features=48, **kwargs):
    torch.manual_seed(0)
    return ConvLoRA(nn.Linear(in_features, out_features), rank=3, **kwargs)


def _set_gate(adapter):
    """Known, non-zero gate weights (r=3 x 8 experts)."""
    with torch.no_grad():
        adapter.w_gate.copy_(torch.linspace(-2., 2., 24).view(3, 8))
        adapter.w_noise.copy_(torch.linspace(1., -1., 24).view(8, 3).t())


def test_registered_and_param_count():
    c, r = 768, 3
    adapter = MODELS.build(dict(type='ConvLoRA', rank=r, base_layer=nn.Linear(c, 3 * c)))
    assert isinstance(adapter, ConvLoRA)
    trainable = sum(p.numel() for p in adapter.parameters() if p.requires_grad)
    assert trainable == r * c + 3 * c * r + 8 * (r * r * 9 + r) + 2 * r * 8
    assert not any(p.requires_grad for p in adapter.base_layer.parameters())
    assert adapter.scales == (1, 2, 3, 4, 5, 6, 7, 8)
    assert all(e[0].bias.abs().sum() == 0 for e in adapter.experts)
    assert adapter.w_gate.abs().sum() == 0 and adapter.w_noise.abs().sum() == 0
    assert not adapter.mergeable
    with pytest.raises(RuntimeError, match='cannot be folded'):
        adapter.merge()


@pytest.mark.parametrize('kwargs, match', [
    (dict(scales=(1, 2)), 'scales'),
    (dict(scales=(1, 2, 3, 4, 5, 6, 7, 0)), 'scales'),
    (dict(top_k=0), 'top_k'),
    (dict(top_k=9), 'top_k'),
    (dict(num_experts=0), 'num_experts'),
])
def test_bad_config(kwargs, match):
    with pytest.raises(ValueError, match=match):
        _adapter(**kwargs)


@pytest.mark.parametrize('training', [True, False])
def test_equals_base_layer_at_init(training):
    adapter = _adapter().train(training)
    _set_gate(adapter)
    x = torch.randn(5, 4, 4, 16)
    assert torch.equal(adapter(x), adapter.base_layer(x))
    flat = torch.randn(2, 36, 16)  # flat tokens viewed as a 6x6 grid
    assert torch.equal(adapter(flat), adapter.base_layer(flat))


def test_one_expert_per_sample_and_sparse_dispatch():
    adapter = _adapter().train()
    _set_gate(adapter)
    seen = {}
    for i, expert in enumerate(adapter.experts):
        expert.register_forward_hook(
            lambda m, inp, out, i=i: seen.__setitem__(i, (inp[0].shape, out.shape)))
    x = torch.randn(32, 4, 4, 16)
    for seed in range(3):
        seen.clear()
        torch.manual_seed(seed)
        gates, top, _ = adapter.gate(adapter.lora_A(x).permute(0, 3, 1, 2))
        assert ((gates > 0).sum(1) == 1).all()
        torch.testing.assert_close(gates.sum(1), torch.ones(32))
        assert torch.equal(gates.argmax(1), top[:, 0])
        torch.manual_seed(seed)
        adapter(x)
        counts = (gates > 0).sum(0)
        assert set(seen) == set(counts.nonzero().flatten().tolist())
        assert sum(shape[0] for shape, _ in seen.values()) == 32
        for i, (in_shape, out_shape) in seen.items():
            scale = adapter.scales[i]
            # expert i runs on its own samples, at scale i+1
            assert in_shape == (counts[i].item(), 3, 4 * scale, 4 * scale)
            assert out_shape == in_shape


def test_noise_only_in_training():
    adapter = _adapter()
    _set_gate(adapter)
    x = adapter.lora_A(torch.randn(64, 4, 4, 16)).permute(0, 3, 1, 2).detach()
    clean = x.mean((2, 3)) @ adapter.w_gate

    adapter.eval()
    torch.manual_seed(1)
    g1, top1, _ = adapter.gate(x)
    torch.manual_seed(2)
    g2, top2, _ = adapter.gate(x)
    assert torch.equal(g1, g2)
    assert torch.equal(top1[:, 0], clean.argmax(1))

    adapter.train()
    torch.manual_seed(1)
    t1 = adapter.gate(x)[1]
    torch.manual_seed(1)
    assert torch.equal(adapter.gate(x)[1], t1)  # same noise, same routing
    torch.manual_seed(2)
    assert not torch.equal(adapter.gate(x)[1], t1)
    assert not torch.equal(t1[:, 0], clean.argmax(1))

    adapter.noisy_gating = False
    torch.manual_seed(3)
    assert torch.equal(adapter.gate(x)[1][:, 0], clean.argmax(1))


def test_eval_forward_is_deterministic_and_matches_manual_experts():
    adapter = _adapter().eval()
    torch.manual_seed(0)
    with torch.no_grad():
        adapter.w_gate.normal_(0, 5)
        adapter.lora_B.weight.normal_()
        for expert in adapter.experts:
            expert[0].bias.normal_(0, 0.1)
    x = torch.randn(16, 5, 5, 16)
    torch.manual_seed(1)
    out = adapter(x)
    torch.manual_seed(2)
    assert torch.equal(adapter(x), out)

    z = adapter.lora_A(x).permute(0, 3, 1, 2)
    chosen = (z.mean((2, 3)) @ adapter.w_gate).argmax(1)
    assert len(set(chosen.tolist())) >= 3  # several experts, several scales
    rows = []
    for n, e in enumerate(chosen.tolist()):
        y, s = z[n:n + 1], adapter.scales[e]
        if s != 1:
            y = F.interpolate(y, scale_factor=s, mode='bicubic', align_corners=False)
        y = F.gelu(adapter.experts[e][0](y))
        if s != 1:
            y = F.interpolate(y, size=(5, 5), mode='bicubic', align_corners=False)
        rows.append(z[n] + y[0])
    z_new = torch.stack(rows).permute(0, 2, 3, 1)
    expected = adapter.base_layer(x) + adapter.lora_B(z_new) * adapter.scaling
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)


def test_top2_combines_in_log_space_like_the_reference():
    adapter = _adapter(top_k=2).eval()
    torch.manual_seed(0)
    with torch.no_grad():
        adapter.w_gate.normal_(0, 5)
    z = torch.randn(6, 4, 4, 3)
    out = adapter.bottleneck(z)
    zc = z.permute(0, 3, 1, 2)
    top2 = (zc.mean((2, 3)) @ adapter.w_gate).topk(2, dim=1).indices
    for n in range(6):
        ys = []
        for e in top2[n].tolist():
            y, s = zc[n:n + 1], adapter.scales[e]
            if s != 1:
                y = F.interpolate(y, scale_factor=s, mode='bicubic', align_corners=False)
            y = adapter.experts[e](y)
            if s != 1:
                y = F.interpolate(y, size=(4, 4), mode='bicubic', align_corners=False)
            ys.append(y[0])
        # reference: log(exp(y1) + exp(y2)) with multiply_by_gates=False
        expected = zc[n] + torch.log(torch.exp(ys[0]) + torch.exp(ys[1]))
        torch.testing.assert_close(out[n].permute(2, 0, 1), expected, rtol=1e-5, atol=1e-5)


def _phi(v):
    return 0.5 * (1 + math.erf(v / math.sqrt(2)))


def _cv2(values):
    mean = sum(values) / len(values)
    var = sum((v - mean)**2 for v in values) / (len(values) - 1)  # unbiased
    return var / (mean**2 + 1e-10)


def _hand_gate(z, wg, wn, noise, loss_coef=1e-2, noise_epsilon=1e-2):
    """Shazeer et al.'s noisy top-1 gate, written out element by element."""
    n_samples, r, e = len(z), len(wg), len(wg[0])
    chosen, loads = [], [0.] * e
    for n in range(n_samples):
        zbar = [
            sum(sum(row) for row in z[n][c]) / (len(z[n][c]) * len(z[n][c][0])) for c in range(r)
        ]
        clean = [sum(zbar[c] * wg[c][j] for c in range(r)) for j in range(e)]
        if noise is None:
            chosen.append(max(range(e), key=lambda j: clean[j]))
            continue
        raw = [sum(zbar[c] * wn[c][j] for c in range(r)) for j in range(e)]
        std = [math.log1p(math.exp(v)) + noise_epsilon for v in raw]
        noisy = [clean[j] + noise[n][j] * std[j] for j in range(e)]
        order = sorted(range(e), key=lambda j: -noisy[j])
        first, second = noisy[order[0]], noisy[order[1]]
        chosen.append(order[0])
        for j in range(e):
            # in the top-1 now: must stay above the 2nd; outside: must beat the 1st
            threshold = second if noisy[j] > second else first
            loads[j] += _phi((clean[j] - threshold) / std[j])
    importance = [float(chosen.count(j)) for j in range(e)]
    if noise is None:
        loads = importance
    return chosen, loss_coef * (_cv2(importance) + _cv2(loads))


@pytest.mark.parametrize('training', [True, False])
@pytest.mark.parametrize('coefs', [dict(), dict(loss_coef=0.5, noise_epsilon=0.3)],
                         ids=['defaults', 'loss_coef-noise_epsilon'])
def test_balance_loss_matches_hand_computation(training, coefs):
    adapter = _adapter(**coefs).train(training)
    _set_gate(adapter)
    torch.manual_seed(5)
    z = torch.randn(12, 3, 3, 3)
    torch.manual_seed(7)
    gates, top, aux = adapter.gate(z.permute(0, 3, 1, 2))
    torch.manual_seed(7)
    noise = torch.randn(12, 8).tolist() if training else None
    chosen, expected = _hand_gate(
        z.permute(0, 3, 1, 2).tolist(), adapter.w_gate.tolist(), adapter.w_noise.tolist(), noise,
        **coefs)
    assert top[:, 0].tolist() == chosen
    assert aux.dtype == torch.float32 and aux.dim() == 0
    assert aux.item() == pytest.approx(expected, rel=1e-5)
    # the loss of the last forward is stored, and replaced by the next one
    torch.manual_seed(7)
    adapter.bottleneck(z)
    assert adapter.aux_loss.item() == pytest.approx(expected, rel=1e-5)


def test_only_the_balance_loss_trains_the_gate():
    adapter = _adapter().train()
    _set_gate(adapter)
    with torch.no_grad():
        adapter.lora_B.weight.normal_()
    x = torch.randn(16, 4, 4, 16)
    torch.manual_seed(0)
    adapter(x).square().sum().backward(retain_graph=True)
    # top-1 without gate scaling: the task loss cannot reach the gate
    assert adapter.w_gate.grad is None and adapter.w_noise.grad is None
    assert adapter.lora_A.weight.grad.abs().sum() > 0
    assert any(e[0].weight.grad is not None for e in adapter.experts)

    collect_aux_losses(adapter).backward()
    assert adapter.w_gate.grad.abs().sum() > 0
    assert adapter.w_noise.grad.abs().sum() > 0
    assert torch.isfinite(adapter.w_gate.grad).all()


def _tiny_sam(adapter):
    torch.manual_seed(0)
    return SAMViT(arch=dict(embed_dims=64, depth=4, num_heads=2, global_attn_indexes=(1, 3)),
                  img_size=128,
                  window_size=4,
                  out_channels=32,
                  adapter=adapter)


def test_injection_into_sam_vit_windowed_and_global_blocks():
    model = _tiny_sam(dict(type='ConvLoRA', rank=3)).train()
    adapters = [m for m in model.modules() if isinstance(m, ConvLoRA)]
    assert len(adapters) == 4
    shapes, routed = [], []
    for adapter in adapters:
        adapter.register_forward_pre_hook(lambda m, inp: shapes.append(tuple(inp[0].shape)))
        gate = adapter.gate

        def spy(x, mask=None, gate=gate):
            gates, top, aux = gate(x, mask)
            routed.append(((gates > 0).sum(1) == 1).all().item() and len(gates) == len(x))
            return gates, top, aux

        adapter.gate = spy
    feats = model(torch.randn(2, 3, 128, 128))[0]
    assert feats.shape == (2, 32, 8, 8)
    # 8x8 tokens: windowed blocks see 2 images x 4 windows of 4x4, global ones 2 x 8x8
    assert shapes == [(8, 4, 4, 64), (2, 8, 8, 64), (8, 4, 4, 64), (2, 8, 8, 64)]
    assert routed == [True] * 4

    terms = [a.aux_loss for a in adapters]
    assert all(t is not None and t.dim() == 0 for t in terms)
    total = collect_aux_losses(model)
    torch.testing.assert_close(total, torch.stack(terms).sum())
    assert all(a.aux_loss is None for a in adapters)
    assert collect_aux_losses(model) is None
    (total + feats.sum()).backward()
    assert all(a.w_gate.grad.abs().sum() > 0 for a in adapters)
    copy.deepcopy(model)  # a stored loss with a graph must not break copying

    model.eval()
    with torch.no_grad():
        model(torch.randn(1, 3, 128, 128))
    assert collect_aux_losses(model, reset=False) is not None
    assert all(a.aux_loss is not None for a in adapters)


def test_collect_without_conv_lora_returns_none():
    assert collect_aux_losses(_tiny_sam(dict(type='LoRA', rank=3))) is None


def test_bf16_runs_and_is_finite():
    adapter = _adapter().train()
    _set_gate(adapter)
    with torch.no_grad():
        adapter.lora_B.weight.normal_()
    x = torch.randn(8, 4, 4, 16)
    half = copy.deepcopy(adapter).to(torch.bfloat16)
    out = half(x.to(torch.bfloat16))
    assert out.dtype == torch.bfloat16 and torch.isfinite(out).all()
    assert half.aux_loss.dtype == torch.float32 and torch.isfinite(half.aux_loss)

    with torch.autocast('cpu', dtype=torch.bfloat16):
        out = adapter(x)
    assert torch.isfinite(out).all()
    aux = collect_aux_losses(adapter)
    assert aux.dtype == torch.float32 and torch.isfinite(aux)
    (out.float().sum() + aux).backward()
    assert torch.isfinite(adapter.w_gate.grad).all()
