"""StartupCheckHook: Conv-LoRA under a segmentor that drops its balance loss."""
from types import SimpleNamespace

import pytest
from conftest import TINY_ARCH, TINY_DECODER, TINY_WINDOW
from mmseg.registry import MODELS

import mmseg_naslora  # noqa: F401
from mmseg_naslora.engine.hooks import startup_check_hook
from mmseg_naslora.engine.hooks.startup_check_hook import StartupCheckHook


def segmentor(seg_type, adapter_type):
    return MODELS.build(dict(
        type=seg_type, data_preprocessor=dict(type='SegDataPreProcessor', size=(64, 64)),
        backbone=dict(type='SAMViT', arch=dict(TINY_ARCH), img_size=64,
                      window_size=TINY_WINDOW, out_channels=32,
                      adapter=dict(type=adapter_type, rank=3, lora_alpha=32)),
        decode_head=dict(type='SAMMaskDecoderHead', num_classes=2, out_channels=1,
                         loss_decode=dict(type='CrossEntropyLoss', use_sigmoid=True),
                         **TINY_DECODER)))


@pytest.mark.parametrize('seg_type,adapter_type,warns', [
    ('EncoderDecoder', 'ConvLoRA', True),
    ('AdapterEncoderDecoder', 'ConvLoRA', False),
    ('EncoderDecoder', 'LoRA', False),
])
def test_convlora_under_plain_encoder_decoder_warns(monkeypatch, seg_type, adapter_type, warns):
    logged = []
    monkeypatch.setattr(startup_check_hook, 'print_log', lambda msg, **kw: logged.append(msg))
    runner = SimpleNamespace(model=segmentor(seg_type, adapter_type))
    StartupCheckHook()._check_aux_losses(runner)
    assert bool(logged) == warns
    if warns:
        assert 'AdapterEncoderDecoder' in logged[0] and 'loss_moe' in logged[0]
