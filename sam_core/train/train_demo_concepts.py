"""Train the bundled ``demo-concepts`` model (SAM 3 at a small size) from scratch on generated scenes.

    python -m sam_core.train.train_demo_concepts --out sam_core/data/demo_concepts.pt   # 2 CPU cores

The network is the SAM 3 image model (:class:`sam_core.models.sam3.model.Sam3`, the code that runs
the official weights) at :data:`DEMO_CONCEPTS`' size: a 4-block ViT on 128-pixel input with 8-pixel
patches (a 16 x 16 grid; windows of 8, two global blocks), a 2-layer text encoder of width 48 reading
at most 6 tokens, a 2-layer fusion encoder, a 3-layer decoder with 25 queries, one geometry layer.
Every step draws ``--batch`` scenes from :mod:`sam_core.train.concept_scenes` with seeds (``--seed``,
step, i) in a worker process, so step ``n`` sees the same data whether or not the run was resumed.
Each scene gets a text query for every word it shows and for two it does not show (targets: none;
the same image must answer each word differently) and, with probability ``--exemplar``, an exemplar
query (one instance's box, with the placeholder phrase or, one time in four, with its word too) whose
targets are every instance of that word. The loss is DETR's, as SAM 3 trains
(:mod:`sam_core.train.detection`): Hungarian matching, classification and presence cross-entropy, box
L1 + GIoU and mask cross-entropy + Dice for the matched queries, plus cross-entropy + Dice of the
segmentation head's semantic map against all the instances meant, plus a training-only probe
(:func:`_word_probe`): which shape covers each cell of the 1x feature map, scored by the dot product
with each word's text features, so that image and text learn one space (what SAM 3's pretrained
encoders bring). Two stages, each with AdamW, a linear warm-up and a cosine decay: ``--probe-steps``
steps of the image and text encoders on that probe alone (a start for the backbone), then ``--steps``
steps of the whole detector; ``--stop-after`` ends the run earlier (steps count over both). The
weights are written atomically every ``--save-every`` steps as a plain state dict (the keys of the
official detector without ``detector.``); ``OUT.state`` holds the optimizer state and the step for
``--resume``. The loaders read that file as it is; the shipped
``demo_concepts.pt`` holds the same tensors in the official ``sam3.pt`` layout (``{"model":
{"detector.<key>": ...}}``), re-saved once after training.

Status: shipped as ``demo-concepts``; a word and one exemplar box both meet their held-out targets
(``benchmarks/RESULTS.md``). This recipe's defaults (6000 probe steps, then 3000 of the whole detector;
seed 0, one torch thread) are the CPU recipe, about 42 minutes on the project's idle 2-core machine. The
shipped weights come from the longer recipe: the CPU recipe, then four continuations of the whole
detector with ``--init`` (``--probe-steps 0``, 4000, 3000, 2000 and 2000 steps, seeds 1 to 4; commands and
figures in ``benchmarks/RESULTS.md``, measured with ``benchmarks/quality_concepts.py``). The earlier
recipe without the probe stage stayed below 35%, and one word per scene, no semantic map and no probe
never made the scores depend on the word.
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from sam_core.concepts import VISUAL_PHRASE
from sam_core.models.sam3.build import load_sam3_state, read_sam3_state_dict
from sam_core.models.sam3.config import Sam3Config
from sam_core.models.sam3.decoder import inverse_sigmoid
from sam_core.models.sam3.model import ImageFeatures, Sam3, TextFeatures
from sam_core.models.sam3.tokenizer import ClipTokenizer
from sam_core.models.sam3.vision import sam3_input
from sam_core.train.concept_scenes import VOCABULARY, ConceptScene, generate_concept_scene
from sam_core.train.detection import set_loss
from sam_core.train.prompts import mask_box
from sam_core.train.run import (add_run_args, check_run_args, last_step, resume_run, save_run, stage_learning_rate,
                                 state_path_for)
from sam_core.train.train_demo import _as_is

TRAIN_SEED = 0
DEFAULT_STEPS = 3000
DEFAULT_PROBE_STEPS = 6000
DEFAULT_PROBE_LR = 1e-3

DEMO_CONCEPTS = Sam3Config(
    name="demo-concepts",
    image_size=128,
    patch_size=8,
    pretrain_size=128,
    vit_dim=96,
    vit_depth=4,
    vit_heads=3,
    vit_mlp_dim=384,
    window_size=8,
    global_blocks=(1, 3),
    d_model=64,
    heads=4,
    ffn_dim=256,
    text_width=48,
    text_layers=2,
    text_heads=1,
    text_projection_dim=48,
    context_length=8,
    encoder_layers=2,
    decoder_layers=3,
    num_queries=25,
    geometry_layers=1,
    scoring_hidden=128,
    pixel_decoder_stages=2,
)


def build_demo_concepts(seed: int = TRAIN_SEED, config: Sam3Config = DEMO_CONCEPTS) -> Sam3:
    """A fresh ``demo-concepts`` network (train mode) with seeded initial weights; the position
    tables the official builder leaves at zero get small random values, and the queries' reference
    boxes start as the cells of a grid over the image and the decoder's box bias keeps each query's
    attention inside its box (queries localized from the first step, which the matching needs to settle
    quickly: without it every query learnt the same answer). The token table keeps PyTorch's N(0, 1)
    start: with CLIP's 0.02 every word left the small text encoder with nearly the same features (the
    spread across words was a tenth of the features' own), and the scores ignored the text."""
    torch.manual_seed(seed)
    model = Sam3(config)
    text = model.backbone.language_backbone.encoder
    torch.nn.init.normal_(text.positional_embedding, std=0.01)
    torch.nn.init.normal_(text.text_projection, std=text.text_projection.shape[0] ** -0.5)
    torch.nn.init.normal_(model.backbone.vision_backbone.trunk.pos_embed, std=0.02)
    with torch.no_grad():  # each query starts on its own cell of a grid over the image (not a random box)
        side = math.ceil(config.num_queries ** 0.5)
        index = torch.arange(config.num_queries, dtype=torch.float32)
        cells = torch.stack([(index % side + 0.5) / side, (torch.div(index, side, rounding_mode="floor") + 0.5) / side,
                             torch.full_like(index, 1 / side), torch.full_like(index, 1 / side)], dim=1)
        model.transformer.decoder.reference_points.weight.copy_(inverse_sigmoid(cells))
        for bias_mlp in (model.transformer.decoder.boxRPB_embed_x, model.transformer.decoder.boxRPB_embed_y):
            _outside_penalty(bias_mlp, OUTSIDE_PENALTY)
    return model.train()


OUTSIDE_PENALTY = 8.0
SHAPES_WEIGHT = 1.0  # the word-tied probe's loss (which shape covers each feature cell, :func:`_word_probe`)


def _outside_penalty(mlp: torch.nn.Module, strength: float) -> None:
    """Start a box relative-position bias MLP (2 -> hidden -> heads; inputs: the signed, log-scaled
    distances of an image cell to a query box's two edges along one axis) as ``-strength`` times the
    cell's distance outside the box, in every head: two hidden units carry the distances past each edge,
    the others keep their random weights with a tenth of their say. A query then attends to its own box
    from the first step, instead of every query reading the same image average."""
    first, last = mlp.layers[0], mlp.layers[-1]
    first.weight[:2] = torch.tensor([[-1.0, 0.0], [0.0, 1.0]])  # before the top/left edge, past the bottom/right
    first.bias[:2] = 0.0
    last.weight.mul_(0.1)
    last.weight[:, :2] = -strength
    last.bias.zero_()


def scene_box(mask: np.ndarray) -> tuple[float, float, float, float]:
    """The tight box (x0, y0, x1, y1) of ``mask`` in pixel edges (x1, y1 one past the last pixel)."""
    x0, y0, x1, y1 = mask_box(mask)
    return x0, y0, x1 + 1, y1 + 1


def _queries(scene: ConceptScene, rng: np.random.Generator, exemplar: float,
             absent_words: int = 2) -> list[tuple[str, list, list[int]]]:
    """(phrase, exemplar boxes in pixels, label ids meant) of one scene's training queries: a text query
    for every word the scene shows and for ``absent_words`` words it does not show (their targets are
    empty: the same image must answer each word differently, or the scores learn to ignore the text),
    then, with probability ``exemplar``, one instance's box (with the placeholder phrase or, one time in
    four, with its word too) whose targets are every instance of that word."""
    shown = sorted(set(scene.words))
    absent = [w for w in VOCABULARY if w not in shown]
    words = shown + [str(w) for w in rng.choice(absent, size=min(absent_words, len(absent)), replace=False)]
    queries = [(word, [], scene.instances(word)) for word in words]
    if shown and rng.random() < exemplar:
        example = int(rng.integers(1, scene.num_objects + 1))
        word = scene.words[example - 1]
        phrase = word if rng.random() < 0.25 else VISUAL_PHRASE
        queries.append((phrase, [scene_box(scene.labels == example)], scene.instances(word)))
    return queries


def shape_classes(scene: ConceptScene, grid: int) -> np.ndarray:
    """(K + 1, grid, grid) float32: the fraction of each feature cell covered by background (class 0)
    and by each word of :data:`VOCABULARY` (class 1 + its index)."""
    lut = np.array([0] + [1 + VOCABULARY.index(w) for w in scene.words])
    onehot = np.eye(len(VOCABULARY) + 1, dtype=np.float32)[lut[scene.labels]]
    f = scene.labels.shape[0] // grid
    return onehot.reshape(grid, f, grid, f, -1).mean(axis=(1, 3)).transpose(2, 0, 1)


class _Batches(torch.utils.data.Dataset):
    """Step ``n``'s scenes and queries, drawn in a worker process: images (B, S, S, 3) uint8, for
    each query (image index, phrase, exemplar boxes (E, 4) normalized cxcywh, target boxes (N, 4)
    normalized cxcywh, target masks (N, m, m) float on the model's mask grid), and the shape classes
    of each image's feature cells (B, K + 1, g, g) (:func:`shape_classes`)."""

    def __init__(self, seed: int, batch: int, size: int, mask_size: int, exemplar: float, grid: int) -> None:
        self.seed, self.batch, self.size, self.mask_size, self.exemplar = seed, batch, size, mask_size, exemplar
        self.grid = grid

    def __getitem__(self, step: int):
        rng = np.random.default_rng((self.seed, step, 1_000_000))
        images, queries, classes = [], [], []
        factor = self.size // self.mask_size
        for b in range(self.batch):
            scene = generate_concept_scene((self.seed, step, b), size=self.size)
            images.append(scene.image)
            classes.append(shape_classes(scene, self.grid))
            for phrase, exemplars, ids in _queries(scene, rng, self.exemplar):
                masks = np.stack([scene.labels == i for i in ids]) if ids else np.zeros((0, self.size, self.size), bool)
                boxes = [scene_box(m) for m in masks]
                queries.append((b, phrase, _cxcywh(exemplars, self.size), _cxcywh(boxes, self.size),
                                masks.reshape(len(ids), self.mask_size, factor, self.mask_size, factor)
                                .mean(axis=(2, 4)).astype(np.float32)))
        return np.stack(images), queries, np.stack(classes)


def _word_probe(model: Sam3, image: ImageFeatures, vocabulary_ids: torch.Tensor, background: torch.Tensor) -> torch.Tensor:
    """(B, K + 1, g, g) logits of which shape covers each cell of the 1x feature map: the dot product of
    the cell's feature with each word's text features (mean over its tokens) and with ``background``.
    A training-only signal that puts image and text in one space (what SAM 3's pretrained encoders bring;
    trained from scratch, the outputs first ignored the word entirely, although the text features did
    not)."""
    words = model.encode_text(vocabulary_ids)
    valid = (~words.padding).T[..., None].float()
    classifier = torch.cat([background[None], (words.features * valid).sum(0) / valid.sum(0)])
    cells = image.levels[-1]
    return torch.einsum("bchw,kc->bkhw", cells, classifier) / cells.shape[1] ** 0.5


def _find_all(model: Sam3, image: ImageFeatures, text: TextFeatures, queries: list, device: str):
    """(query index, :class:`ConceptOutput`) of every query of a step: the text-only queries in one
    batch (:meth:`Sam3.find_batch`; the same numbers as one by one, in a fraction of the time), the
    exemplar queries one by one."""
    plain = [j for j, q in enumerate(queries) if len(q[2]) == 0]
    if plain:
        at = torch.tensor([queries[j][0] for j in plain], device=device)
        features = ImageFeatures([f[at] for f in image.levels], [p[at] for p in image.positions])
        yield from zip(plain, model.find_batch(features, TextFeatures(text.features[:, plain], text.padding[plain])))
    for j, (b, _, exemplars, _, _) in enumerate(queries):
        if len(exemplars):
            features = ImageFeatures([f[b:b + 1] for f in image.levels], [p[b:b + 1] for p in image.positions])
            yield j, model.find(features, TextFeatures(text.features[:, j:j + 1], text.padding[j:j + 1]),
                                torch.from_numpy(exemplars).to(device),
                                torch.ones(len(exemplars), dtype=torch.long, device=device))


def _cxcywh(boxes: list, size: int) -> np.ndarray:
    """Pixel boxes (x0, y0, x1, y1) -> (N, 4) float32 normalized (cx, cy, w, h)."""
    xyxy = np.asarray(boxes, np.float32).reshape(-1, 4) / size
    return np.concatenate([(xyxy[:, :2] + xyxy[:, 2:]) / 2, xyxy[:, 2:] - xyxy[:, :2]], axis=1)


def train(
    out: Path,
    steps: int = DEFAULT_STEPS,
    probe_steps: int = DEFAULT_PROBE_STEPS,
    probe_lr: float = DEFAULT_PROBE_LR,
    batch: int = 4,
    lr: float = 5e-4,
    warmup: int = 80,
    seed: int = TRAIN_SEED,
    exemplar: float = 1.0,
    save_every: int = 100,
    resume: bool = False,
    device: str = "cpu",
    log_every: int = 10,
    state_path: Optional[Path] = None,
    workers: int = 1,
    stop_after: Optional[int] = None,
    config: Sam3Config = DEMO_CONCEPTS,
    init: Optional[Path] = None,
) -> Sam3:
    """Train ``demo-concepts`` and write it to ``out``; returns the trained model (train mode).

    Two stages, each with its own warm-up and cosine schedule: ``probe_steps`` steps that train the
    image and text encoders on the word-tied probe alone (:func:`_word_probe`, peak ``probe_lr``: a
    start for the backbone, which SAM 3 gets from pretrained encoders), then ``steps`` steps of the
    whole detector (peak ``lr``); ``stop_after`` counts over both.
    ``state_path`` (default ``OUT.state``) holds the optimizer and step for ``resume``; ``exemplar``
    is the probability of an exemplar query per scene; ``workers`` processes draw the scenes ahead of
    the training; ``stop_after`` ends the run at that step of the ``steps``-long schedule; ``config``
    other sizes (tests train a tinier network); ``init`` starts from the weights of that file (a
    training run's output or the shipped layout: a longer recipe continuing the default one).
    """
    last = last_step(probe_steps + steps, stop_after, "probe_steps + steps")
    model = build_demo_concepts(seed, config).to(device)
    if init is not None:
        load_sam3_state(model, read_sam3_state_dict(init))
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.05)
    # a training-only background vector (not saved; it restarts on --resume) for the word-tied probe
    background = torch.nn.Parameter(torch.zeros(config.d_model, device=device))
    probe_optimizer = torch.optim.AdamW([background], lr=lr, weight_decay=0.0)
    state_path = state_path_for(out, state_path)
    first = resume_run(model, optimizer, out, state_path, device) if resume else 0
    tokenizer = ClipTokenizer()
    size, mask_size = config.image_size, 4 * config.grid
    batches = torch.utils.data.DataLoader(
        _Batches(seed, batch, size, mask_size, exemplar, config.grid), batch_size=None, num_workers=workers,
        sampler=range(first, last), collate_fn=_as_is, prefetch_factor=4 if workers else None,
    )
    started, cpu_started = time.time(), time.process_time()
    window: dict[str, list[float]] = {}
    for step, (images, queries, classes) in zip(range(first, last), batches):
        probing = step < probe_steps
        for group in [*optimizer.param_groups, *probe_optimizer.param_groups]:
            group["lr"] = stage_learning_rate(step, probe_steps, probe_lr, steps, lr, warmup)
        x = sam3_input(torch.from_numpy(images).permute(0, 3, 1, 2), size).to(device)
        image = model.encode_image(x)
        text = None if probing else model.encode_text(
            tokenizer([q[1] for q in queries], context_length=config.context_length).to(device))
        shapes = F.cross_entropy(_word_probe(model, image, tokenizer(list(VOCABULARY), context_length=config.context_length)
                                             .to(device), background), torch.from_numpy(classes).to(device))
        window.setdefault("shapes", []).append(shapes.item())
        loss = SHAPES_WEIGHT * shapes
        for j, found in () if probing else _find_all(model, image, text, queries, device):
            boxes, masks = queries[j][3], queries[j][4]
            part = set_loss(found, torch.from_numpy(boxes).to(device), torch.from_numpy(masks).to(device))
            loss = loss + part.total / len(queries)
            for name, value in part.parts.items():
                window.setdefault(name, []).append(value)
        optimizer.zero_grad(set_to_none=True)
        probe_optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 0.5)
        optimizer.step()
        probe_optimizer.step()
        window.setdefault("loss", []).append(loss.item())
        if (step + 1) % log_every == 0:
            summary = " ".join(f"{k}={np.mean(v):.3f}" for k, v in window.items())
            print(f"step {step + 1}/{last} {summary} lr={optimizer.param_groups[0]['lr']:.2e} "
                  f"wall={(time.time() - started) / 60:.1f}min cpu={(time.process_time() - cpu_started) / 60:.1f}min",
                  flush=True)
            window = {}
        if (step + 1) % save_every == 0 and step + 1 < last:
            save_run(model, optimizer, step + 1, out, state_path)
    save_run(model, optimizer, last, out, state_path)
    return model


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_run_args(parser, out="sam_core/data/demo_concepts.pt", steps=DEFAULT_STEPS, lr=5e-4, warmup=80,
                 seed=TRAIN_SEED, save_every=100, threads=1)
    parser.add_argument("--probe-steps", type=int, default=DEFAULT_PROBE_STEPS,
                        help="steps of the first stage, the encoders on the word-tied probe alone (then --steps)")
    parser.add_argument("--probe-lr", type=float, default=DEFAULT_PROBE_LR, help="peak learning rate of the first stage")
    parser.add_argument("--batch", type=int, default=4, help="scenes per step")
    parser.add_argument("--exemplar", type=float, default=1.0, help="probability of an exemplar query per scene")
    args = parser.parse_args(argv)
    check_run_args(parser, args, total=args.probe_steps + args.steps, what="--probe-steps + --steps")
    train(args.out, steps=args.steps, probe_steps=args.probe_steps, probe_lr=args.probe_lr, batch=args.batch,
          lr=args.lr, warmup=args.warmup, seed=args.seed, exemplar=args.exemplar, save_every=args.save_every,
          resume=args.resume, device=args.device, log_every=args.log_every, state_path=args.state,
          workers=args.workers, stop_after=args.stop_after, init=args.init)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
