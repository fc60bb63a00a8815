"""Cost of the set head's MaskSetLoss: Mask2Former's point sampling against the full grid.

The loss is the one a set-head config trains with (its ``decode_head`` is
built, without checkpoint, for its ``set_loss``, class count and query
count); its mask logits are at ``4 / embed_stride`` of the config's crop
(1/4 for SAM), as the decoder gives them. Each variant runs a forward +
backward of the loss on random logits and on label maps of
``--classes-per-image`` blobs per image:

* ``full_grid``: the config's loss, every pixel of the mask grid in the
  matching and in the loss;
* ``mask2former_points``: the same loss with ``preset='mask2former'`` (the
  config's weights kept), ``num_points`` uniform points for the matching and
  importance-sampled points per matched mask for the loss (the
  ``'autogluon'`` preset samples the same number of points).

Time: median of ``--repeat`` calls, the variants timed in turns. Memory: the
peak of live tensor storages during the call
(:class:`memory_tracker.StorageTracker` on real tensors, in 512-byte CUDA
blocks), inputs included.

Example::

    python tools/analysis_tools/benchmark_loss.py \
        configs/lora/lora_sam-vit-b_1xb4-30e_trans10k-v2-1024x1024.py --out loss.json
"""
import argparse
import copy
import statistics
from collections import OrderedDict
from typing import Callable, List, Optional, Tuple

import torch
import torch.nn.functional as F
from benchmark_models import markdown_table, write_result
from memory_tracker import StorageTracker
from mmengine.config import Config
from mmseg.registry import MODELS
from mmseg.utils import register_all_modules

import mmseg_naslora  # noqa: F401  (registers the modules)
from mmseg_naslora.utils.timing import timed_in_turns

DEFAULT_CONFIG = 'configs/lora/lora_sam-vit-b_1xb4-30e_trans10k-v2-1024x1024.py'


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('config', nargs='?', default=DEFAULT_CONFIG,
                        help='a config with a MaskSetLoss head (default: Trans10K v2, 1024²)')
    parser.add_argument('--batch-size', type=int, default=None,
                        help="default: the config's train_dataloader.batch_size")
    parser.add_argument('--classes-per-image', type=int, default=4,
                        help='classes present in each random label map')
    parser.add_argument('--num-points', type=int, default=None,
                        help="points of the sampled variant (default: the preset's)")
    parser.add_argument('--device', choices=['cpu', 'cuda'], default='cpu')
    parser.add_argument('--repeat', type=int, default=3, help='timed calls per variant')
    parser.add_argument('--threads', type=int, default=None, help='torch CPU threads')
    parser.add_argument('--out', help='write the JSON results here')
    parser.add_argument('--markdown', help='also write the markdown table here')
    args = parser.parse_args(argv)
    if args.device == 'cuda' and not torch.cuda.is_available():
        parser.error('--device cuda: torch sees no CUDA device here; use --device cpu.')
    if args.threads:
        torch.set_num_threads(args.threads)
    return args


def losses(cfg: Config, num_points: Optional[int]) -> Tuple[OrderedDict, torch.nn.Module]:
    """The variants' losses and the head they belong to.

    Args:
        cfg (Config): A config whose ``model.decode_head`` has a ``set_loss``.
        num_points (int, optional): Points of the sampled variant; None for
            the preset's.
    """
    register_all_modules(init_default_scope=True)
    head_cfg = copy.deepcopy(cfg.model.decode_head)
    if 'set_loss' not in head_cfg:
        raise SystemExit(f"{cfg.filename}: model.decode_head has no set_loss (a set head's "
                         'MaskSetLoss); pass a set-head config.')
    head_cfg.checkpoint = None
    head = MODELS.build(head_cfg)
    sampled = dict(head_cfg.set_loss, preset='mask2former', num_classes=head.num_classes,
                   ignore_index=head.ignore_index)
    if num_points is not None:
        sampled['num_points'] = num_points
    variants = OrderedDict(full_grid=head.set_loss, mask2former_points=MODELS.build(sampled))
    return variants, head


def make_inputs(batch: int, queries: int, classes: int, per_image: int, size: Tuple[int, int],
                stride: int, device: str, seed: int = 0) -> Tuple[torch.Tensor, ...]:
    """Random ``(cls_logits, mask_logits at size / stride, labels at size)``.

    Each label map is a 16x16 grid of cells, each one of ``per_image``
    classes of the image, upsampled to ``size``: blobs, as in a scene.
    """
    gen = torch.Generator().manual_seed(seed)
    present = torch.stack([torch.randperm(classes, generator=gen)[:per_image]
                           for _ in range(batch)])
    cells = torch.randint(0, per_image, (batch, 16, 16), generator=gen)
    coarse = torch.gather(present, 1, cells.flatten(1)).view(batch, 1, 16, 16)
    labels = F.interpolate(coarse.float(), size=size, mode='nearest')[:, 0].long()
    grid = (size[0] // stride, size[1] // stride)
    cls_logits = torch.randn(batch, queries, classes + 1, generator=gen)
    mask_logits = torch.randn(batch, queries, *grid, generator=gen)
    return (cls_logits.to(device).requires_grad_(), mask_logits.to(device).requires_grad_(),
            labels.to(device))


def _step(loss: torch.nn.Module, inputs: Tuple[torch.Tensor, ...]) -> Callable[[], None]:
    """A forward + backward of ``loss`` on ``inputs``."""
    cls_logits, mask_logits, labels = inputs

    def step() -> None:
        cls_logits.grad = mask_logits.grad = None
        sum(loss(cls_logits, mask_logits, labels).values()).backward()

    return step


def peak_mib(loss: torch.nn.Module, inputs: Tuple[torch.Tensor, ...]) -> float:
    """Peak MiB of live tensors (inputs included) in one forward + backward."""
    step = _step(loss, inputs)
    step()  # the gradients exist, as in every later call
    with StorageTracker().start(loss, [], inputs) as tracker:
        step()
    return tracker.peak / 2**20


def markdown(result: dict) -> str:
    meta = result['meta']
    caption = (
        f"**MaskSetLoss**, {meta['config']}: {meta['size'][0]}×{meta['size'][1]} labels, "
        f"mask logits {meta['grid'][0]}×{meta['grid'][1]}, batch {meta['batch_size']}, "
        f"{meta['queries']} queries, {meta['classes']} classes "
        f"({meta['classes_per_image']} per image); forward + backward, median of "
        f"{meta['repeat']} in turns on {meta['device']} ({meta['threads']} threads); peak "
        f"of live tensors incl. the {meta['inputs_mib']:.1f} MiB of inputs, MiB in 512-byte "
        'blocks.')
    header = ['variant', 'positions per mask', 'fwd+bwd ms', '× full grid', 'peak MiB',
              '× full grid']
    base = result['rows'][0]
    return markdown_table(caption, header, [
        [row['variant'], f"{row['positions']:,}", f"{row['fwd_bwd_ms']:.1f}",
         f"{row['fwd_bwd_ms'] / base['fwd_bwd_ms']:.2f}", f"{row['peak_mib']:.1f}",
         f"{row['peak_mib'] / base['peak_mib']:.2f}"] for row in result['rows']])


def main(argv: Optional[List[str]] = None) -> None:
    args = parse_args(argv)
    cfg = Config.fromfile(args.config)
    variants, head = losses(cfg, args.num_points)
    queries, classes = head.class_tokens.num_embeddings, head.num_classes
    size = tuple(cfg.crop_size)
    batch = args.batch_size or cfg.train_dataloader.batch_size
    # SAM's decoder upsamples the image embedding 4x.
    inputs = make_inputs(batch, queries, classes, min(args.classes_per_image, classes), size,
                         head.embed_stride // 4, args.device)
    steps = [_step(loss, inputs) for loss in variants.values()]
    times = timed_in_turns(steps, args.repeat, device=args.device)
    grid = tuple(inputs[1].shape[-2:])
    rows = [
        OrderedDict(variant=name, num_points=loss.num_points,
                    positions=loss.num_points or grid[0] * grid[1],
                    fwd_bwd_ms=1e3 * statistics.median(spent),
                    fwd_bwd_ms_all=[round(1e3 * t, 2) for t in spent],
                    peak_mib=peak_mib(loss, inputs))
        for (name, loss), spent in zip(variants.items(), times)]
    meta = OrderedDict(config=args.config, size=size, grid=grid, batch_size=batch,
                       queries=queries, classes=classes,
                       classes_per_image=min(args.classes_per_image, classes),
                       device=args.device, threads=torch.get_num_threads(),
                       repeat=args.repeat, torch=torch.__version__,
                       inputs_mib=sum(t.numel() * t.element_size() for t in inputs) / 2**20)
    result = dict(meta=meta, rows=rows)
    write_result(result, markdown(result), args)


if __name__ == '__main__':
    main()
