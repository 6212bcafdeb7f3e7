"""Training: fine-tuning on a user's own masks, generated scenes, and the script that trains ``demo``.

* :mod:`sam_core.train.finetune`: ``finetune(model, images, labels, ...)`` and ``load_pairs(dirs)``.
* :mod:`sam_core.train.synthetic`: procedurally generated scenes with instance labels.
* :mod:`sam_core.train.prompts`, :mod:`~sam_core.train.losses`, :mod:`~sam_core.train.interactive`:
  SAM's prompt simulation and losses, shared by fine-tuning and the demo training.
* :mod:`sam_core.train.train_demo`: ``python -m sam_core.train.train_demo --out sam_core/data/demo.pt``.
* :mod:`sam_core.train.quality`: click, box and automatic-mask quality on scenes with known objects.
"""
