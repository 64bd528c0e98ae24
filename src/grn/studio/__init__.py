"""The GRN studio: a local web page (Gradio) on the project's own pipelines — class-to-image grids, sketch and
revise (regenerate a painted region; every token outside it stays exactly as it was), the refinement step by
step (filled / kept / erased tokens and the entropy, paper Fig. 1) and, for text checkpoints, text-to-image,
text-to-video and image-to-video. Start it with ``python -m grn.studio ckpt=<generator.ckpt>``, ``grn studio
ckpt=...`` or ``make studio`` (docs/studio.md).

* :mod:`grn.studio.images`: pictures <-> tensors, uploads, the editor's mask, the token grid overlay;
* :mod:`grn.studio.steps`: the per-step token states and their drawing;
* :mod:`grn.studio.engine`: :class:`~grn.studio.engine.Studio`, the tabs' calls without the page;
* :mod:`grn.studio.app`: the Gradio page (imports gradio: ``pip install -e '.[studio]'``).
"""
