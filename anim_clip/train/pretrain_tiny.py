"""Contrastive pretraining of the tiny CLIP on rendered demo-world frames (``anim-clip pretrain-tiny``).

Why: per-frame features of a random-init ViT carry no usable signal, so a head trained on them
classifies demo motion at chance. A few minutes of CLIP training (open_clip's own ``ClipLoss``) on
single frames captioned with species, colour, size, position, facing and pose words gives
embeddings that encode where the animal is and what it looks like, which is what a temporal head
needs, and makes zero-shot species prediction work on demo clips. The weights ship in the
package; this script reproduces them (seeded).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from anim_clip.config import BackboneConfig
from anim_clip.data.demo_world import SPECIES, render_captioned_frames
from anim_clip.io import atomic_write
from anim_clip.models.backbone import TINY_MODEL, TINY_PREPROCESS, create_clip, shipped_weights
from anim_clip.ui import progress_bar

RENDER_SIZE = 73  # the demo pipeline resizes the short side to 73 and crops 64 (= 64 * 8/7)


@dataclass
class PretrainResult:
    path: Path
    steps: int
    final_loss: float
    species_zero_shot_accuracy: float  # on held-out frames, prompts = species names
    retrieval_top1: float  # image -> caption among a held-out batch


def _augment(images: torch.Tensor, size: int, generator: torch.Generator) -> torch.Tensor:
    """A random square crop (52..73 px, anywhere) resized to ``size``: the scale range of the
    cached training views. No flips: they would contradict the left/right words of the caption."""
    n, _, h, _ = images.shape
    side = int(torch.randint(52, h + 1, (1,), generator=generator))
    x0, y0 = (int(v) for v in torch.randint(0, h - side + 1, (2,), generator=generator))
    crop = images[:, :, y0 : y0 + side, x0 : x0 + side]
    return F.interpolate(crop, size=(size, size), mode=TINY_PREPROCESS["interpolation"], antialias=True,
                         align_corners=False)


def _center(images: torch.Tensor, size: int) -> torch.Tensor:
    off = (images.shape[-1] - size) // 2
    return images[:, :, off : off + size, off : off + size]


def _normalise(images: torch.Tensor) -> torch.Tensor:
    mean, std = (torch.tensor(TINY_PREPROCESS[k]).view(1, 3, 1, 1) for k in ("mean", "std"))
    return (images - mean) / std


@torch.no_grad()
def _evaluate(model, tokenizer, images: torch.Tensor, captions: list[str], size: int) -> tuple[float, float]:
    model.eval()
    x = _normalise(_center(images, size))
    image = F.normalize(model.encode_image(x), dim=-1)
    species_text = F.normalize(model.encode_text(tokenizer([s.name for s in SPECIES])), dim=-1)
    truth = torch.tensor([[s.name.lower() in c for s in SPECIES].index(True) for c in captions])
    species_acc = float(((image @ species_text.T).argmax(1) == truth).float().mean())
    text = F.normalize(model.encode_text(tokenizer(captions[:256])), dim=-1)
    retrieval = float(((image[:256] @ text.T).argmax(1) == torch.arange(len(text))).float().mean())
    model.train()
    return species_acc, retrieval


def pretrain_tiny(
    out: str | Path | None = None,
    *,
    frames: int = 12000,
    steps: int = 500,
    batch_size: int = 192,
    lr: float = 1e-3,
    seed: int = 0,
    progress: bool = True,
) -> PretrainResult:
    """Train ``anim-clip-tiny`` from scratch and save its weights (fp16 safetensors) to ``out``."""
    import open_clip
    from safetensors.torch import save_file

    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    out = Path(out) if out is not None else shipped_weights(TINY_MODEL)
    model, _ = create_clip(BackboneConfig(model=TINY_MODEL, pretrained=None))
    size = model.visual.image_size[0]
    tokenizer = open_clip.get_tokenizer(TINY_MODEL)

    held_out = 1024
    with progress_bar("frames", disable=not progress) as bar:
        task = bar.add_task("rendering captioned frames", total=frames + held_out)
        chunks, captions = [], []
        for start in range(0, frames + held_out, 500):
            n = min(500, frames + held_out - start)
            images, caps = render_captioned_frames(n, size=RENDER_SIZE, seed=seed * 100003 + start)
            chunks.append(images)
            captions += caps
            bar.advance(task, n)
    pixels = torch.from_numpy(np.concatenate(chunks)).permute(0, 3, 1, 2).float().div_(255)
    tokens = tokenizer(captions)
    train_pixels, eval_pixels = pixels[:frames], pixels[frames:]
    train_tokens, eval_captions = tokens[:frames], captions[frames:]

    loss_fn = open_clip.ClipLoss()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.1, betas=(0.9, 0.98))
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=steps, pct_start=0.1)
    model.train()
    loss = torch.tensor(0.0)
    with progress_bar("steps", disable=not progress) as bar:
        task = bar.add_task("contrastive training", total=steps)
        for _ in range(steps):
            idx = torch.randint(0, frames, (batch_size,), generator=generator)
            x = _normalise(_augment(train_pixels[idx], size, generator))
            image_features, text_features, logit_scale = model(x, train_tokens[idx])
            loss = loss_fn(image_features, text_features, logit_scale)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            with torch.no_grad():
                model.logit_scale.clamp_(0, np.log(100))
            bar.update(task, advance=1, description=f"contrastive training (loss {loss.item():.3f})")

    species_acc, retrieval = _evaluate(model, tokenizer, eval_pixels, eval_captions, size)
    state = {k: v.detach().to(torch.float16).contiguous() for k, v in model.state_dict().items()}
    atomic_write(out, lambda tmp: save_file(state, str(tmp), metadata={"seed": str(seed), "steps": str(steps)}))
    return PretrainResult(out, steps, loss.item(), species_acc, retrieval)
