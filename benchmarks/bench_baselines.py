"""The linear-probe baseline at Animal Kingdom's shape: what it costs at the end of every cached
training run and `anim-clip eval`, and why it is one L-BFGS over every class at once rather than
scikit-learn's one-vs-rest ``LogisticRegression``.

The training split's real labels (24 003 clips x 140 actions, from the release's lists, no video
needed), 4 cached views per clip, and synthetic probe inputs of a ViT-B/16-sized backbone (2 x 512
temporal statistics per view: a label-dependent signal under anisotropic, correlated noise, as
frozen CLIP features are). Timed, ``--threads`` threads:

- :func:`anim_clip.evaluate.baselines.train_probe`: four fits on 80% of the clips (one per ``C``),
  the choice on the other 20%, and the refit on them all;
- one :func:`~anim_clip.evaluate.baselines.fit_probe` per ``C`` on all the clips, and the same
  problem for ``--sklearn-classes`` classes with scikit-learn (``LogisticRegression``, lbfgs, as
  one-vs-rest fits each class), extrapolated to 140 classes.

    python -m benchmarks.bench_baselines [--threads N] [--clips N] [--sklearn-classes K]   (results/baselines.json)
"""

from __future__ import annotations

import argparse
import os

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

from anim_clip.config import DataConfig
from anim_clip.data.dataset import load_dataset
from anim_clip.evaluate.baselines import PROBE_C, PROBE_MAX_ITER, PROBE_MAX_VIEWS, fit_probe, train_probe
from benchmarks.common import save, seconds_per_call

D, VIEWS = 512, 4


def probe_inputs(targets: np.ndarray, seed: int = 0) -> torch.Tensor:
    """``(N, VIEWS, 2D)``: per view, a mean part and a std part carrying the clip's labels, in noise
    whose spectrum decays (a few directions dominate, as in CLIP embeddings)."""
    gen = np.random.default_rng(seed)
    n, classes = targets.shape
    prototypes = gen.normal(size=(classes, 2 * D)).astype(np.float32)
    signal = targets @ prototypes / np.maximum(targets.sum(1, keepdims=True), 1)
    mixing = (gen.normal(size=(2 * D, 2 * D)) * np.geomspace(1, 0.1, 2 * D)[:, None]).astype(np.float32)
    noise = gen.normal(size=(n, VIEWS, 2 * D)).astype(np.float32) @ mixing
    return torch.from_numpy(0.5 * signal[:, None] + noise)


def seconds(fn) -> float:
    """One call's wall seconds (no warm-up: a fit is long and not repeated)."""
    return seconds_per_call(fn, torch.device("cpu"), repeat=1, warmup=0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--clips", type=int, default=None, help="training clips (default: all of AK's)")
    parser.add_argument("--sklearn-classes", type=int, default=4)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    targets = load_dataset(DataConfig(format="ak")).targets("train")[: args.clips].astype(np.float32)
    x, y = probe_inputs(targets), torch.from_numpy(targets)
    results = {"clips": len(x), "views": VIEWS, "features": x.shape[-1], "classes": y.shape[1],
               "threads": args.threads, "load_average": os.getloadavg()}
    probe = None

    def train() -> None:
        nonlocal probe
        probe = train_probe(x, y, multilabel=True, seed=0)

    results["train_probe_s"] = seconds(train)
    results["chosen_C"] = probe.C
    results["fit_probe_s"] = {str(C): seconds(lambda: fit_probe(x, y, True, C)) for C in PROBE_C}
    keep = torch.randperm(len(x) * VIEWS, generator=torch.Generator().manual_seed(0))[:PROBE_MAX_VIEWS].numpy()
    views = StandardScaler().fit_transform(x.flatten(0, 1).numpy()[keep])
    labels = np.repeat(targets, VIEWS, 0)[keep]
    frequent = np.argsort(-labels.sum(0))[: args.sklearn_classes]
    sklearn = {}
    for C in PROBE_C:
        spent = sum(seconds(lambda: LogisticRegression(C=C, max_iter=PROBE_MAX_ITER).fit(views, labels[:, k]))
                    for k in frequent)
        sklearn[str(C)] = spent / len(frequent) * y.shape[1]
    results["sklearn_one_vs_rest_s_extrapolated"] = sklearn
    print(results)
    save("baselines", results)


if __name__ == "__main__":
    main()
