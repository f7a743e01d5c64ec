"""End-to-end mode's data: training clips decoded from the raw videos every epoch.

DataLoader workers open each video, draw its view (TSN frames, the release's multi-scale crop at
5 fixed positions, flip; docs/method.md §4.4–4.5) and decode only those frames; the uint8 frames go to
the model's device, where they are resized, cropped and flipped (:func:`render_views`),
colour-jittered frame by frame with p 0.8 and turned grey with p 0.2 (:func:`color_augment`), and
normalised. Pixel mixup / CutMix follows in the training loop.

Every random draw of a clip comes from streams seeded by (run seed, epoch, clip), never from the
order clips are decoded or which rank decodes them: a resumed run, a run with more workers and a
run split over torchrun ranks all see the same augmented clips.

A file the configured decoder fails on is decoded by PyAV, said once per run
(:mod:`anim_clip.data.video`). A video that cannot be decoded costs one error line; its slot in
the batch is filled with a copy of a good clip and left out of the loss
(:class:`~anim_clip.train.mixing.Batch`), so the epoch goes on and every rank keeps the same
batch shape.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from functools import partial
from itertools import accumulate
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from anim_clip.config import Config
from anim_clip.data.dataset import Dataset
from anim_clip.data.sampling import train_views
from anim_clip.data.transforms import Pixels, color_augment, render_views, rendered_pixels
from anim_clip.data.video import FallbackNotice, check_decoder, open_video
from anim_clip.errors import VideoDecodeError
from anim_clip.frames import DecodedClip, decode_views, decoded_batches
from anim_clip.models.features import Batch
from anim_clip.train.plan import EpochPlan
from anim_clip.ui import console

def clip_random(seed: int, epoch: int, index: int) -> tuple[np.random.Generator, torch.Generator]:
    """Independent streams of one clip in one epoch: geometry (numpy) and colour (torch)."""
    geometry, colour = np.random.SeedSequence((seed, epoch, index)).spawn(2)
    return np.random.default_rng(geometry), torch.Generator().manual_seed(int(colour.generate_state(1, np.uint64)[0]))


def decode_train_clip(paths: Sequence[Path], cfg: Config, epoch: int, index: int) -> DecodedClip:
    """Draw clip ``index``'s training view for ``epoch`` and decode its frames; never raises for a bad video."""
    s = cfg.sampling
    rng, _ = clip_random(cfg.train.seed, epoch, index)
    try:
        with open_video(paths[index], s.decoder, s.decode_threads) as video:
            view = train_views(video.num_frames, video.height, video.width, s.num_frames, 1, s.image_size,
                               s.resize, rng)[0]
            return decode_views(video, index, [view])
    except VideoDecodeError as e:
        return DecodedClip(index, error=str(e))


class VideoTrainData:
    """The training clips ``indices`` of a dataset split, as augmented pixel batches on ``device``,
    rendered as the tower (its ``pixels``, with the config's overrides) takes them."""

    def __init__(self, dataset: Dataset, split: str, indices: Tensor, cfg: Config, device: torch.device,
                 pixels: Pixels):
        check_decoder(cfg.sampling.decoder, cfg.train.num_workers)
        self.paths = [dataset.video_path(c) for c in dataset.clips(split)]
        self.all_targets = torch.from_numpy(dataset.targets(split))
        self.all_species = torch.from_numpy(dataset.species_vectors(split))
        self.indices, self.cfg, self.device = indices, cfg, device
        self.reported: set[int] = set()  # clips whose decoding error was printed (once per run, not per epoch)
        self.fallbacks = FallbackNotice()
        self.pixels = rendered_pixels(cfg.sampling, pixels)
        self.mean = torch.tensor(self.pixels.mean, device=device).view(3, 1, 1)
        self.std = torch.tensor(self.pixels.std, device=device).view(3, 1, 1)

    def epoch_batches(self, plan: EpochPlan, generator: torch.Generator) -> Iterator[Batch]:
        """This rank's batches of an epoch, in a random clip order drawn from ``generator``."""
        order = self.indices[torch.randperm(len(self.indices), generator=generator)]
        decode = partial(decode_train_clip, self.paths, self.cfg, plan.epoch)
        for clips in decoded_batches(decode, plan.slices(order), self.cfg.train.num_workers):
            yield self.batch(clips, plan.epoch)

    def render(self, clip: DecodedClip, epoch: int) -> Tensor:
        """One clip's augmented frames ``(T, 3, S, S)`` in [0, 1], rendered on the device."""
        frames = clip.frames.to(self.device, non_blocking=True)
        pixels = render_views(frames, clip.views, clip.positions, self.pixels.size, (0.0,) * 3, (1.0,) * 3,
                              self.pixels.interpolation)
        return color_augment(pixels, clip_random(self.cfg.train.seed, epoch, clip.index)[1])[0]

    def batch(self, clips: list[DecodedClip], epoch: int) -> Batch:
        """Render, augment and normalise decoded clips; a bad clip's slot repeats the first good one, masked."""
        valid = [c.error is None for c in clips]
        good = [c for c in clips if c.error is None]
        for clip in clips:
            self.fallbacks(clip.fallback)
            if clip.error is not None and clip.index not in self.reported:
                self.reported.add(clip.index)
                console.print(f"[bold red]error:[/] {clip.error}; clip skipped in every epoch", soft_wrap=True,
                              highlight=False)
        if good:
            rendered = torch.stack([self.render(c, epoch) for c in good])
            slot = [n - 1 if ok else 0 for ok, n in zip(valid, accumulate(valid))]  # a bad clip's slot: good[0]
            pixels = (rendered[slot] - self.mean) / self.std
            rows = [good[i].index for i in slot]
        else:  # nothing to learn from on this rank: a batch that the loss ignores
            s = self.cfg.sampling
            pixels = torch.zeros(len(clips), s.num_frames, 3, s.image_size, s.image_size, device=self.device)
            rows = [c.index for c in clips]
        return Batch(pixels, self.all_targets[rows].to(self.device), self.all_species[rows].to(self.device),
                     torch.tensor(valid, device=self.device), [c.error for c in clips if c.error is not None])
