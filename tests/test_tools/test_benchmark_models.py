"""tools/analysis_tools/benchmark_models.py: the benchmarks' models come from the real configs."""
import os.path as osp
import sys

import pytest
from conftest import REPO_ROOT
from mmengine.config import Config

sys.path.insert(0, osp.join(REPO_ROOT, 'tools', 'analysis_tools'))
import benchmark_models  # noqa: E402


def args(*argv):
    return benchmark_models.parse_model_args(benchmark_models.model_parser('test'), list(argv))


def test_bad_arch_is_refused():
    with pytest.raises(SystemExit, match='neither one of'):
        benchmark_models.model_config(args('--arch', 'vit-x'), 'lora')


@pytest.mark.parametrize('method', list(benchmark_models.METHODS))
def test_method_is_its_config_with_the_overrides(method):
    spec = benchmark_models.METHODS[method]
    base = Config.fromfile(osp.join(benchmark_models.MODEL_CONFIGS, spec['config'])).model
    cfg, name = benchmark_models.model_config(args('--arch', 'vit-l', '--size', '256'), method)
    assert cfg['type'] == base.type
    if spec.get('sam2'):  # on its own backbone family, whatever --arch says
        assert name == 'sam2-hiera-t' and cfg['backbone']['arch'] == 'hiera-t'
    else:
        assert name == 'vit-l' and cfg['backbone']['arch'] == 'l'
        assert cfg['backbone']['img_size'] == 256 and cfg['backbone']['window_size'] == 14
    assert cfg['backbone']['checkpoint'] is None and cfg['decode_head']['checkpoint'] is None
    assert cfg['data_preprocessor']['size'] == (256, 256)
    adapter = cfg['backbone']['adapter']
    if spec.get('adapter', {}) is None:
        assert adapter is None
    else:  # the config's adapter, with the method's changes
        assert adapter == dict(base.backbone.adapter, **spec.get('adapter', {}))
    assert cfg.get('nas_stage') == spec.get('nas_stage')


def test_other_family_takes_the_method_adapter_and_loss():
    cfg, _ = benchmark_models.model_config(args('--arch', 'litemedsam', '--size', '128'),
                                           'conv_lora')
    convlora = Config.fromfile(osp.join(benchmark_models.MODEL_CONFIGS,
                                        'sam_vit-b_convlora.py')).model
    assert cfg['type'] == 'AdapterEncoderDecoder'
    assert cfg['backbone']['type'] == 'SAMTinyViT' and cfg['backbone']['img_size'] == 128
    assert cfg['backbone']['adapter'] == convlora.backbone.adapter
    assert cfg['decode_head']['embed_stride'] == 4  # LiteMedSAM's head
    assert cfg['decode_head']['loss_decode'] == convlora.decode_head.loss_decode
