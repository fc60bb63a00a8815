"""S-measure, weighted F-measure, E-measure and MAE of soft foreground maps.

The salient/camouflaged object and polyp benchmarks (CAMO, COD10K, Kvasir,
CVC-ClinicDB, ...) score the *soft* prediction map, not the argmax mask. The
four measures are computed by the ``pysodmetrics`` package (import name
``py_sod_metrics``, Pang et al.), a Python port of the MATLAB toolboxes the
field uses. AutoGluon's Conv-LoRA evaluation embeds a copy of the same code but
calls it differently (float maps, weighted F-measure with beta^2 = 0.3); the
``convention`` argument of :class:`SODMetric` selects either recipe.
"""
from collections import OrderedDict
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch
from mmengine.evaluator import BaseMetric
from mmengine.logging import print_log
from mmseg.registry import METRICS

try:
    import py_sod_metrics
except ImportError:  # reported when the metric is built
    py_sod_metrics = None

ACTIVATIONS = ('auto', 'sigmoid', 'softmax', 'none')

# How each reference turns a foreground probability map into the scored map
# and which beta^2 its weighted F-measure uses.
SOD_CONVENTIONS = {
    # PraNet's test script min-max normalises with +1e-8 (a constant map
    # becomes 0) and saves 8-bit PNGs; its MATLAB toolbox, like pysodmetrics'
    # default, uses beta^2 = 1.
    'pranet': dict(wfm_beta2=1.0, quantize=True, keep_constant=False),
    # AutoGluon (optim/metrics/semantic_seg_metrics.py): float maps, min-max
    # only when the map is not constant, WeightedFmeasure(beta=0.3), where its
    # ``beta`` is beta^2 as in pysodmetrics.
    'autogluon': dict(wfm_beta2=0.3, quantize=False, keep_constant=True),
}


def resolve_convention(name: str, convention: Optional[str], table: dict,
                       **explicit) -> dict:
    """Options of ``convention`` in ``table``, overridden by explicit ones.

    Args:
        name (str): Metric name, for the error message.
        convention (str, optional): Key of ``table``, or None for the
            metric's own defaults (``table[None]``).
        table (dict): Convention name (or None) -> dict of option values.
        **explicit: Options given by the user; None means "not given".

    Returns:
        dict: The value of every option of ``table[None]``.
    """
    if convention not in table:
        choices = [k for k in table if k is not None]
        raise ValueError(f'{name} convention must be None or one of '
                         f'{choices}, got {convention!r}.')
    values = dict(table[None])
    values.update(table[convention])
    values.update({k: v for k, v in explicit.items() if v is not None})
    return values


def foreground_probability(seg_logits: torch.Tensor, activation: str = 'auto',
                           foreground_index: int = 1) -> torch.Tensor:
    """The per-pixel foreground score of one image's ``seg_logits``.

    mmseg's ``EncoderDecoder.postprocess_result`` stores ``seg_logits`` as
    ``(C, H, W)`` at the original image size: raw logits when ``C > 1``, but
    already passed through a sigmoid when ``C == 1`` (binary head with
    ``out_channels=1``). ``'auto'`` follows that: softmax over channels for
    ``C > 1``, the stored probability as is for ``C == 1``.

    Args:
        seg_logits (Tensor): ``(C, H, W)`` scores of one image.
        activation (str): ``'auto'``, ``'sigmoid'`` (raw single-channel
            logits), ``'softmax'`` (raw multi-channel logits) or ``'none'``
            (the channel is already a probability or score).
        foreground_index (int): Foreground class; the channel taken when
            ``C > 1``. A single channel is the score of class 1.

    Returns:
        Tensor: ``(H, W)`` float scores.
    """
    if activation not in ACTIVATIONS:
        raise ValueError(f'activation must be one of {ACTIVATIONS}, got '
                         f'{activation!r}.')
    if seg_logits.dim() == 2:
        seg_logits = seg_logits[None]
    num_channels = seg_logits.shape[0]
    x = seg_logits.detach().float()
    act = activation
    if act == 'auto':
        act = 'none' if num_channels == 1 else 'softmax'
    if act == 'softmax':
        if num_channels == 1:
            raise ValueError('activation="softmax" needs seg_logits with 2 '
                             'or more channels; a single-channel (sigmoid) '
                             'head needs "sigmoid", "none" or "auto".')
        x = x.softmax(dim=0)
    elif act == 'sigmoid':
        x = x.sigmoid()
    if num_channels == 1:
        if foreground_index != 1:
            raise ValueError(
                'A single-channel seg_logits is the score of class 1; '
                f'foreground_index={foreground_index} cannot be read from it.')
        if activation == 'auto' and (x.min() < 0 or x.max() > 1):
            raise ValueError(
                'Single-channel seg_logits outside [0, 1]: mmseg\'s '
                'EncoderDecoder stores sigmoid probabilities there, but this '
                'model stored raw logits; set activation="sigmoid".')
        return x[0]
    if not 0 <= foreground_index < num_channels:
        raise ValueError(f'foreground_index={foreground_index} is not a '
                         f'channel of seg_logits ({num_channels} channels).')
    return x[foreground_index]


@METRICS.register_module()
class SODMetric(BaseMetric):
    """Structure/enhanced-alignment measures of soft binary predictions.

    Computes, per image and then averaged over images (the field's
    convention):

    - ``Smeasure``: S-measure, alpha 0.5 (Fan et al., ICCV 2017);
    - ``wFmeasure``: weighted F-measure (Margolin et al., CVPR 2014),
      beta^2 = ``wfm_beta2``: 1 in PraNet's MATLAB toolbox and pysodmetrics'
      default, 0.3 in AutoGluon's Conv-LoRA evaluation;
    - ``meanEmeasure``: E-measure (Fan et al., IJCAI 2018) at the 256
      thresholds 0..255, averaged; ``maxEmeasure`` (the maximum of the
      dataset-mean curve) and ``adpEmeasure`` (adaptive threshold) can be
      asked for;
    - ``MAE``: mean absolute error between the map and the binary GT.

    Each map is the foreground probability (see
    :func:`foreground_probability`), min-max normalised per image to [0, 1].
    ``convention`` selects the reference recipe for the rest:

    - ``'pranet'`` (the same as None, the default): PraNet's test script,
      then its MATLAB toolbox or ``pysodmetrics``: normalised with
      ``+1e-8`` in the denominator (a constant map becomes 0), quantised to
      8 bits as when the maps are saved as PNG, beta^2 = 1;
    - ``'autogluon'``: AutoGluon's Conv-LoRA evaluation: float maps,
      normalised only when not constant (a constant map keeps its value, as
      pysodmetrics' ``prepare_data``), beta^2 = 0.3.

    ``wfm_beta2`` and ``quantize`` given explicitly override the convention.

    The measures need the whole image, so ``ignore_index`` pixels of the GT
    cannot be dropped: they are counted as background, with a warning the
    first time.

    Values are multiplied by ``scale`` (100 by default, the convention of
    mmseg and of the Conv-LoRA tables; use 1 for PraNet-style 0.xxx tables).

    Args:
        foreground_index (int): Foreground class in the GT (and channel of
            multi-channel ``seg_logits``). Defaults to 1.
        activation (str): How ``seg_logits`` become probabilities:
            ``'auto'``, ``'sigmoid'``, ``'softmax'`` or ``'none'``. Defaults
            to ``'auto'``.
        normalize (bool): Min-max normalise each map. Defaults to True.
        quantize (bool, optional): Quantise maps to 0..255. None (default):
            as ``convention`` says (True for ``'pranet'``, False for
            ``'autogluon'``).
        wfm_beta2 (float, optional): beta^2 of the weighted F-measure
            (pysodmetrics' ``WeightedFmeasure(beta=...)`` is beta^2 too).
            None (default): as ``convention`` says (1 or 0.3).
        ignore_index (int): GT value counted as background. Defaults to 255.
        scale (float): Multiplier of the reported values. Defaults to 100.
        metrics (Sequence[str]): Measures to report. Defaults to
            ``('Smeasure', 'wFmeasure', 'meanEmeasure', 'MAE')``.
        convention (str, optional): ``'pranet'`` or ``'autogluon'``; None
            (default) is ``'pranet'``.
        collect_device (str): Device for collecting results across ranks.
        prefix (str, optional): Prefix of the metric names.
    """
    ALL_METRICS = ('Smeasure', 'wFmeasure', 'meanEmeasure', 'maxEmeasure',
                   'adpEmeasure', 'MAE')

    def __init__(self,
                 foreground_index: int = 1,
                 activation: str = 'auto',
                 normalize: bool = True,
                 quantize: Optional[bool] = None,
                 ignore_index: int = 255,
                 scale: float = 100.,
                 metrics: Sequence[str] = ('Smeasure', 'wFmeasure',
                                           'meanEmeasure', 'MAE'),
                 wfm_beta2: Optional[float] = None,
                 convention: Optional[str] = None,
                 collect_device: str = 'cpu',
                 prefix: Optional[str] = None) -> None:
        super().__init__(collect_device=collect_device, prefix=prefix)
        if py_sod_metrics is None:
            raise ImportError('SODMetric needs the pysodmetrics package: '
                              'pip install pysodmetrics')
        if activation not in ACTIVATIONS:
            raise ValueError(f'activation must be one of {ACTIVATIONS}, got '
                             f'{activation!r}.')
        unknown = [m for m in metrics if m not in self.ALL_METRICS]
        if unknown or not metrics:
            raise ValueError(f'Unknown SODMetric metrics {unknown}; choose '
                             f'from {self.ALL_METRICS}.')
        opts = resolve_convention(
            'SODMetric', convention,
            {None: SOD_CONVENTIONS['pranet'], **SOD_CONVENTIONS},
            wfm_beta2=wfm_beta2, quantize=quantize)
        if opts['wfm_beta2'] <= 0:
            raise ValueError(f'wfm_beta2 must be > 0, got {opts["wfm_beta2"]}.')
        self.convention = convention or 'pranet'
        self.foreground_index = foreground_index
        self.activation = activation
        self.normalize = normalize
        self.quantize = bool(opts['quantize'])
        self.wfm_beta2 = float(opts['wfm_beta2'])
        self.keep_constant = opts['keep_constant']
        self.ignore_index = ignore_index
        self.scale = float(scale)
        self.metrics = tuple(metrics)
        self._warned_ignore = False

    def prediction_map(self, seg_logits: torch.Tensor) -> np.ndarray:
        """The ``float64`` map in [0, 1] that is scored for one image."""
        pred = foreground_probability(seg_logits, self.activation,
                                      self.foreground_index)
        pred = pred.cpu().double().numpy()
        if self.normalize and self.keep_constant:
            # pysodmetrics' / AutoGluon's mapminmax: constant maps unchanged.
            if pred.max() != pred.min():
                pred = (pred - pred.min()) / (pred.max() - pred.min())
        elif self.normalize:
            # PraNet's eval convention: the epsilon sends constant maps to 0.
            pred = (pred - pred.min()) / (pred.max() - pred.min() + 1e-8)
        elif pred.min() < 0 or pred.max() > 1:
            raise ValueError('With normalize=False the foreground scores must '
                             'lie in [0, 1]; check activation.')
        if self.quantize:
            pred = np.round(pred * 255) / 255
        return pred

    def gt_mask(self, gt: torch.Tensor) -> np.ndarray:
        """Boolean foreground mask; ignored pixels count as background."""
        gt = gt.squeeze(0).cpu().numpy() if gt.dim() == 3 else gt.cpu().numpy()
        ignored = int((gt == self.ignore_index).sum())
        if ignored and not self._warned_ignore:
            print_log(
                f'SODMetric: {ignored} GT pixels at ignore_index='
                f'{self.ignore_index} are counted as background (S-, E- and '
                'weighted F-measure need every pixel); warned once.',
                logger='current', level=30)
            self._warned_ignore = True
        return gt == self.foreground_index

    def process(self, data_batch: dict, data_samples: Sequence[dict]) -> None:
        """Score each image's soft map against its GT."""
        for sample in data_samples:
            if 'seg_logits' not in sample:
                raise KeyError('SODMetric needs the soft predictions in '
                               '"seg_logits" of each data sample.')
            pred = self.prediction_map(sample['seg_logits']['data'])
            gt = self.gt_mask(sample['gt_sem_seg']['data'])
            if pred.shape != gt.shape:
                raise ValueError(
                    f'seg_logits is {pred.shape} but gt_sem_seg is '
                    f'{gt.shape} for {sample.get("img_path", "an image")}; '
                    'evaluate at the original size (keep LoadAnnotations '
                    'after Resize in the test pipeline).')
            self.results.append(self.score_map(pred, gt, self.wfm_beta2))

    @staticmethod
    def score_map(pred: np.ndarray, gt: np.ndarray,
                  wfm_beta2: float = 1.) -> Dict[str, np.ndarray]:
        """The per-image measures of a [0, 1] map and a boolean GT.

        Args:
            pred (np.ndarray): ``float64`` map in [0, 1].
            gt (np.ndarray): Boolean foreground mask.
            wfm_beta2 (float): beta^2 of the weighted F-measure.

        Returns:
            dict: ``sm``, ``wfm``, ``em_curve`` (256 values), ``em_adp`` and
            ``mae`` of the image.
        """
        sm = py_sod_metrics.Smeasure()
        wfm = py_sod_metrics.WeightedFmeasure(beta=wfm_beta2)
        em = py_sod_metrics.Emeasure()
        mae = py_sod_metrics.MAE()
        for m in (sm, wfm, em, mae):
            m.step(pred, gt, normalize=False)
        em_res = em.get_results()['em']
        return dict(
            sm=float(sm.get_results()['sm']),
            wfm=float(wfm.get_results()['wfm']),
            em_curve=np.asarray(em_res['curve'], np.float64),
            em_adp=float(em_res['adp']),
            mae=float(mae.get_results()['mae']))

    def compute_metrics(self, results: List[dict]) -> Dict[str, float]:
        """Average the per-image measures and scale them."""
        curve = np.mean([r['em_curve'] for r in results], axis=0)
        values = dict(
            Smeasure=np.mean([r['sm'] for r in results]),
            wFmeasure=np.mean([r['wfm'] for r in results]),
            meanEmeasure=curve.mean(),
            maxEmeasure=curve.max(),
            adpEmeasure=np.mean([r['em_adp'] for r in results]),
            MAE=np.mean([r['mae'] for r in results]))
        out = OrderedDict(
            (k, float(values[k]) * self.scale) for k in self.metrics)
        print_log(
            f'SOD measures ({self.convention} convention, wF beta^2 '
            f'{self.wfm_beta2:g}) over {len(results)} images '
            f'(x{self.scale:g}): ' +
            ', '.join(f'{k} {v:.2f}' for k, v in out.items()),
            logger='current')
        return out
