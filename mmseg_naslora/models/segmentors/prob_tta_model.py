"""Test-time augmentation that averages probabilities and keeps them for score metrics."""
from typing import List

import torch
from mmengine.structures import PixelData
from mmseg.models.segmentors import SegTTAModel
from mmseg.registry import MODELS
from mmseg.utils import SampleList


@MODELS.register_module()
class ProbTTAModel(SegTTAModel):
    """mmseg's ``SegTTAModel`` with the views' probabilities averaged correctly.

    mmseg's segmentors store ``seg_logits`` as raw logits for a multi-channel
    head but as sigmoid probabilities for a 1-channel (binary) head. mmseg
    1.2's ``SegTTAModel.merge_preds`` applies a sigmoid to those probabilities
    once more, so every mean lies in [0.5, 0.73] and the merged binary mask is
    foreground wherever any view scored above 0: a binary model under
    ``--tta`` predicts (nearly) everything as foreground. It also keeps the
    last view's ``seg_logits``, so a metric that reads the scores (AUC,
    S-measure, score BER) would see one view.

    Here the views' probabilities are averaged (the stored ones for a 1-channel
    head, the softmax for K channels), the mask is thresholded or argmaxed from
    the mean, and the merged sample's ``seg_logits`` hold the mean in the form
    mmseg's segmentors store: the probability itself for 1 channel, its log
    for K channels (so that a softmax gives the mean back).
    """

    def merge_preds(self, data_samples_list: List[SampleList]) -> SampleList:
        predictions = []
        binary = self.module.out_channels == 1
        for views in data_samples_list:
            probs = [view.seg_logits.data for view in views] if binary else [
                view.seg_logits.data.softmax(dim=0) for view in views]
            mean = torch.stack(probs).mean(0)
            if binary:
                pred = (mean > self.module.decode_head.threshold).to(mean)
                scores = mean
            else:
                pred = mean.argmax(dim=0, keepdim=True)
                scores = mean.clamp(min=torch.finfo(mean.dtype).tiny).log()
            merged = views[0]
            merged.set_data(dict(pred_sem_seg=PixelData(data=pred),
                                 seg_logits=PixelData(data=scores)))
            predictions.append(merged)
        return predictions
