"""The category-specific prompt space of a trained run, in a faiss index: ``space`` (the vectors and
their conditions), ``index`` (faiss kinds, CPU/GPU), ``store`` (saved beside the checkpoint),
``queries`` and ``clips`` (the questions), ``plots`` (the 2-D map), ``tables``; ``anim-clip analyze``
is :mod:`anim_clip.cli.analyze`."""
