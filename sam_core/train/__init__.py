"""Training: fine-tuning on a user's own masks, generated scenes, and the script that trains ``demo``.

* :mod:`sam_core.train.finetune`: ``finetune(model, images, labels, ...)`` and ``load_pairs(dirs)``.
* :mod:`sam_core.train.synthetic`: procedurally generated scenes with instance labels.
* :mod:`sam_core.train.prompts`, :mod:`~sam_core.train.losses`, :mod:`~sam_core.train.interactive`:
  SAM's prompt simulation and losses, shared by fine-tuning and the demo training.
* :mod:`sam_core.train.train_demo`: ``python -m sam_core.train.train_demo --out sam_core/data/demo.pt``.
* :mod:`sam_core.train.run`: what the training scripts share (options, learning-rate schedule, saving and
  resuming a run).
* :mod:`sam_core.train.quality`: click, box and automatic-mask quality on scenes with known objects, and
  concept (text and exemplar) recall and precision on scenes with named objects.
* :mod:`sam_core.train.concept_scenes`, :mod:`~sam_core.train.detection`,
  :mod:`~sam_core.train.train_demo_concepts`: scenes of named shapes, DETR set losses, and the script that
  trains ``demo-concepts`` (SAM 3 at a small size): ``python -m sam_core.train.train_demo_concepts``.
* :mod:`sam_core.train.sequences`, :mod:`~sam_core.train.train_demo2`: generated clips (movies, slices
  through 3D blobs) and the script that trains ``demo2`` (SAM 2.1 at a small size):
  ``python -m sam_core.train.train_demo2``; ``quality.propagation_quality`` measures it.
"""
