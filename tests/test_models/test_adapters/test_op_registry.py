"""Candidate ops by registry: a user op from outside the package is searched like a DARTS op."""
import sys
import textwrap

import pytest
import torch
import torch.nn as nn
from mmengine.config import Config
from mmseg.registry import MODELS

from mmseg_naslora.models.adapters.conv_bottleneck_lora import ConvBottleneckLoRA
from mmseg_naslora.models.adapters.ops import (CANDIDATE_OPS, PRIMITIVES, CandidateOp,
                                               registered_ops)

USER_OPS = '''
import torch
import torch.nn.functional as F

from mmseg_naslora.models.adapters.ops import CANDIDATE_OPS, CandidateOp, apply_mask


@CANDIDATE_OPS.register_module(name='shift_right', force=True)
class ShiftRight(CandidateOp):
    """Each token takes its left neighbour's value: a 3x3 kernel with one tap."""

    is_linear = True

    @property
    def kernel_size(self):
        return 3

    def forward(self, x, mask=None):
        shifted = F.pad(apply_mask(x, mask), (1, 0))[..., :-1]
        return apply_mask(shifted, mask)

    def dense_kernel(self):
        kernel = torch.zeros(self.channels, self.channels, 3, 3)
        kernel[range(self.channels), range(self.channels), 1, 0] = 1.
        return kernel
'''


@pytest.fixture(scope='module')
def user_module(tmp_path_factory):
    """The op module of a user project, imported through a config's custom_imports."""
    folder = tmp_path_factory.mktemp('user_project')
    (folder / 'naslora_user_ops.py').write_text(USER_OPS)
    config = folder / 'cfg.py'
    config.write_text(textwrap.dedent('''
        custom_imports = dict(imports=['naslora_user_ops'], allow_failed_imports=False)
        adapter = dict(type='NASLoRA', rank=3, op_variant='linear',
                       primitives=['skip_connect', 'shift_right'])
    '''))
    sys.path.insert(0, str(folder))
    try:
        yield Config.fromfile(str(config))
    finally:
        sys.path.remove(str(folder))


def test_user_op_is_registered_next_to_the_darts_ops(user_module):
    assert registered_ops()[:8] == PRIMITIVES
    assert 'shift_right' in registered_ops()
    layer = MODELS.build(dict(user_module.adapter, base_layer=nn.Linear(8, 24)))
    assert layer.primitives == ['skip_connect', 'shift_right']
    assert type(layer.ops[1]).__name__ == 'ShiftRight'


def test_search_finds_the_user_op(user_module):
    """Target: the update B*·shift(A*·x). The search must put its weight on the user op."""
    torch.manual_seed(0)
    layer = MODELS.build(dict(user_module.adapter, base_layer=nn.Linear(8, 24)))
    teacher_a, teacher_b = torch.randn(3, 8), torch.randn(24, 3) * 0.3
    shift = layer.ops[1]
    x = torch.randn(16, 6, 6, 8)
    with torch.no_grad():
        z = (x @ teacher_a.t()).permute(0, 3, 1, 2)
        target = layer.base_layer(x) + shift(z).permute(0, 2, 3, 1) @ teacher_b.t()
    alpha = [layer.nas_alpha]
    weights = [p for p in layer.parameters() if p.requires_grad and p is not layer.nas_alpha]
    opt_w, opt_a = torch.optim.Adam(weights, lr=1e-2), torch.optim.Adam(alpha, lr=5e-2)
    for _ in range(300):
        opt_w.zero_grad(), opt_a.zero_grad()
        (layer(x) - target).square().mean().backward()
        opt_w.step(), opt_a.step()
    assert layer.arch_weights()[1] > 0.8, layer.arch_weights()


def test_linear_user_op_collapses_exactly(user_module):
    torch.manual_seed(0)
    layer = MODELS.build(dict(user_module.adapter, base_layer=nn.Linear(8, 24))).eval()
    with torch.no_grad():
        layer.lora_B.weight.normal_()
        layer.nas_alpha.normal_()
    conv = ConvBottleneckLoRA.from_adapter(layer)
    x = torch.randn(2, 5, 7, 8)
    assert (conv(x) - layer(x)).abs().max() < 1e-5


class _WrongShape(CandidateOp):
    def forward(self, x, mask=None):
        return x[..., 1:]


class _WrongKernel(CandidateOp):
    is_linear = True

    def forward(self, x, mask=None):
        return 2 * x

    def dense_kernel(self):
        return torch.eye(self.channels)[:, :, None, None]


def _not_an_op(channels, variant):
    return nn.Identity()


def _no_mask(channels, variant):
    class NoMask(CandidateOp):
        def forward(self, x):
            return x
    return NoMask(channels)


@pytest.mark.parametrize('name,entry,error,match', [
    ('test_wrong_shape', _WrongShape, ValueError, 'same shape'),
    ('test_wrong_kernel', _WrongKernel, ValueError, 'does not reproduce'),
    ('test_not_an_op', _not_an_op, TypeError, 'subclass of'),
    ('test_no_mask', _no_mask, RuntimeError, 'failed on a'),
])
def test_ops_that_break_the_contract_are_named(name, entry, error, match):
    CANDIDATE_OPS.register_module(name=name, module=entry, force=True)
    try:
        with pytest.raises(error, match=match) as info:
            MODELS.build(dict(type='NASLoRA', rank=3, primitives=['skip_connect', name],
                              base_layer=nn.Linear(8, 24)))
        assert repr(name) in str(info.value)
    finally:
        CANDIDATE_OPS.module_dict.pop(name)


def test_unknown_op_lists_the_registered_ones():
    with pytest.raises(KeyError, match='register your own op') as info:
        MODELS.build(dict(type='NASLoRA', rank=3, primitives=['conv_7x7'],
                          base_layer=nn.Linear(8, 24)))
    assert 'dil_conv_5x5' in str(info.value)
