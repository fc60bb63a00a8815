"""ProbTTAModel against mmseg's SegTTAModel on views whose merged answer is known."""
import types

import pytest
import torch
import torch.nn as nn
from mmengine.structures import PixelData
from mmseg.models.segmentors import SegTTAModel
from mmseg.structures import SegDataSample

from mmseg_naslora.models.segmentors import ProbTTAModel


class Segmentor(nn.Module):
    """What merge_preds reads of the wrapped segmentor."""

    def __init__(self, out_channels: int) -> None:
        super().__init__()
        self.out_channels = out_channels
        self.decode_head = types.SimpleNamespace(threshold=0.5)

    def test_step(self, data):  # BaseTTAModel requires it; merge_preds never calls it
        raise NotImplementedError


def view(seg_logits: torch.Tensor) -> SegDataSample:
    sample = SegDataSample(seg_logits=PixelData(data=seg_logits),
                           gt_sem_seg=PixelData(data=torch.zeros(1, *seg_logits.shape[-2:]).long()))
    sample.set_metainfo(dict(img_path='a.png'))
    return sample


def test_binary_views_are_averaged_as_probabilities():
    # A 1-channel segmentor stores sigmoid probabilities (mmseg's postprocess_result).
    p1 = torch.tensor([[[0.1, 0.4], [0.8, 0.6]]])
    p2 = torch.tensor([[[0.2, 0.7], [0.9, 0.2]]])
    mean = (p1 + p2) / 2  # 0.15 0.55 / 0.85 0.40
    ours = ProbTTAModel(module=Segmentor(1)).merge_preds([[view(p1), view(p2)]])[0]
    assert torch.equal(ours.pred_sem_seg.data, (mean > 0.5).float())
    assert torch.allclose(ours.seg_logits.data, mean)
    assert ours.gt_sem_seg.data.shape == (1, 2, 2) and ours.img_path == 'a.png'
    # mmseg 1.2's merge takes the sigmoid of the probabilities: all foreground.
    theirs = SegTTAModel(module=Segmentor(1)).merge_preds([[view(p1), view(p2)]])[0]
    assert theirs.pred_sem_seg.data.bool().all()


def test_multiclass_views_average_the_softmax_and_keep_it():
    torch.manual_seed(0)
    logits = [torch.randn(4, 3, 5) * 3 for _ in range(3)]
    mean = torch.stack([x.softmax(0) for x in logits]).mean(0)
    ours = ProbTTAModel(module=Segmentor(4)).merge_preds([[view(x) for x in logits]])[0]
    assert torch.equal(ours.pred_sem_seg.data[0], mean.argmax(0))
    assert torch.allclose(ours.seg_logits.data.softmax(0), mean, atol=1e-6)
    theirs = SegTTAModel(module=Segmentor(4)).merge_preds([[view(x) for x in logits]])[0]
    assert torch.equal(theirs.pred_sem_seg.data, ours.pred_sem_seg.data)  # agrees here
    assert not torch.allclose(theirs.seg_logits.data.softmax(0), mean)  # but keeps one view


@pytest.mark.parametrize('out_channels', [1, 3])
def test_every_image_of_a_batch_is_merged_on_its_own(out_channels):
    a, b = torch.rand(out_channels, 2, 2), torch.rand(out_channels, 2, 2)
    merged = ProbTTAModel(module=Segmentor(out_channels)).merge_preds([[view(a)], [view(b)]])
    first = a if out_channels == 1 else a.softmax(0).log()
    assert torch.allclose(merged[0].seg_logits.data, first, atol=1e-6)
