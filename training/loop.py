"""The training loop of the fidelity fixtures, and its command line.

``train`` fits a fixture (``vlmzip.eval.fixtures.build``) on in-memory synthetic batches (word answers and option
letters from the first step, loss on the answer tokens only) with JSONL curves, validation accuracy and resumable
checkpoints; ``--init`` continues a saved fixture as it was saved, or grown deeper or narrowed (``training.grow``).

CLI (from the repository root): ``python -m training train --family llava --steps N --batch-size B --out DIR
[--resume] [--workers W] [--device cuda] [--init FIXTURE] [--spec FIELD=N ...]``; ``training/README.md`` has the
commands that made the shipped fixtures, ``training/launch.sh`` runs them.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, fields
from pathlib import Path

import torch
from transformers import PreTrainedModel, ProcessorMixin
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface
from transformers.modeling_utils import AttentionInterface

from training.data import Stream, TrainConfig, scene_side, step_examples
from training.grow import check_continuation, deepen, mlp_neuron_scores, narrow
from training.inputs import QwenIndex, pixels
from vlmzip.eval import synthetic
from vlmzip.eval.fixtures import (
    FAMILIES,
    SMALL,
    SPECS,
    FixtureSpec,
    build,
    load,
    param_count,
    save,
    saved_spec,
    spec_with,
)
from vlmzip.eval.processing import encode, image_side
from vlmzip.eval.tokenizer import chat_prompt
from vlmzip.registry import adapter_for

__all__ = ["evaluate", "main", "packed_sdpa", "train"]

# batch: ~1.5 s a step on an H200); a backend whose name contains "flash" gets the whole packed sequence and
# ``cu_seqlens`` instead. Training registers this one, which runs every equal-length chunk in one sdpa call.
_PACKED_ATTENTION = "vlmzip_fixture_flash_packed_sdpa"


def packed_sdpa(module, query, key, value, attention_mask=None, scaling=None, dropout=0.0, **kwargs):
    """Block-diagonal attention over a packed ``[1, H, S, D]`` sequence split by ``cu_seq_lens_q``; returns
    ``[1, S, H, D]`` as flash-attention backends do. Equal chunks (same-size images, frames, windows) run as
    one batch, found without a host synchronisation when ``max_length_q`` is given; otherwise chunk by chunk."""
    bounds = kwargs["cu_seq_lens_q"]
    _, heads, total, dim = query.shape
    sdpa = torch.nn.functional.scaled_dot_product_attention
    n, longest = len(bounds) - 1, kwargs.get("max_length_q")
    if longest is None or n * longest != total:  # n chunks of at most `longest` filling `total`: all equal
        lengths = bounds.diff().tolist()
        longest = lengths[0] if len(set(lengths)) == 1 else None
    if longest is not None:
        q, k, v = (t.reshape(heads, n, longest, dim).transpose(0, 1) for t in (query, key, value))
        out = sdpa(q, k, v, scale=scaling, dropout_p=dropout).transpose(1, 2).reshape(1, total, heads, dim)
        return out, None
    chunks = [
        sdpa(q, k, v, scale=scaling, dropout_p=dropout)
        for q, k, v in zip(*(t.split(lengths, dim=2) for t in (query, key, value)))
    ]
    return torch.cat(chunks, dim=2).transpose(1, 2), None


@contextlib.contextmanager
def _packed_vision_attention(model: PreTrainedModel):
    """Qwen fixtures train with ``packed_sdpa`` in the vision tower; the saved model keeps its own backend."""
    if model.config.model_type != "qwen2_5_vl":
        yield
        return
    backend = model.config.vision_config._attn_implementation
    AttentionInterface.register(_PACKED_ATTENTION, packed_sdpa)
    AttentionMaskInterface.register(_PACKED_ATTENTION, ALL_MASK_ATTENTION_FUNCTIONS["sdpa"])
    model.set_attn_implementation({"vision_config": _PACKED_ATTENTION})
    try:
        yield
    finally:
        model.set_attn_implementation({"vision_config": backend})


def _loss(model: PreTrainedModel, inputs: dict, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Answer-token cross-entropy averaged per example, then over the batch (a caption weighs as much as a
    one-word answer), and the fraction of examples whose answer tokens are all argmax-right."""
    inputs = dict(inputs)
    labels = inputs.pop("labels")[:, 1:]
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
        logits = model(**inputs).logits[:, :-1].float()
    mask = labels != -100
    token_loss = torch.nn.functional.cross_entropy(logits.transpose(1, 2), labels, ignore_index=-100, reduction="none")
    loss = ((token_loss * mask).sum(1) / mask.sum(1).clamp(min=1)).mean()
    exact = ((logits.argmax(-1) == labels) | ~mask).all(1).float().mean()  # a tensor, read only when logged
    return loss, exact


@torch.no_grad()
def evaluate(
    model: PreTrainedModel,
    processor: ProcessorMixin,
    n: int,
    seed: int = 0,
    level: int = -1,
    split: str = "validation",
    size: int | None = None,
    medium: str = "image",
    batch_size: int = 32,
) -> dict[str, float]:
    """Greedy accuracy on ``n`` fixed ``split`` questions of ``IMAGE_CURRICULUM[level]`` (or the video
    curriculum): ``letter`` for the official prompt (first generated token), ``word`` for the bare question
    (whole decoded answer)."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    size = size or image_side(processor)
    rng = synthetic.split_rng(seed, medium, split)
    letter = word = 0
    for start in range(0, n, batch_size):
        k = min(batch_size, n - start)
        if medium == "video":
            vb = synthetic.video_batch(k, rng, synthetic.VIDEO_CURRICULUM[level], split=split, size=size)
            questions, visual = [qs[0] for qs in vb.questions], {"videos": vb.videos}
        else:
            ib = synthetic.image_batch(k, rng, synthetic.IMAGE_CURRICULUM[level], split=split, size=size)
            questions, visual = list(ib.questions), {"images": ib.images}
        for kind in ("letter", "word"):
            texts = [
                chat_prompt(processor, synthetic.mc_prompt(q, medium) if kind == "letter" else q.text, medium)
                for q in questions
            ]
            inputs = encode(processor, texts, **visual).to(device)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
                out = model.generate(**inputs, max_new_tokens=1 if kind == "letter" else 6, do_sample=False)
            new = out[:, inputs["input_ids"].shape[1] :]
            decoded = processor.tokenizer.batch_decode(new, skip_special_tokens=True)
            for q, d in zip(questions, decoded, strict=True):
                if kind == "letter":
                    letter += d.strip() == q.answer
                else:
                    word += " ".join(d.split()) == q.answer_word
    model.train(was_training)
    return {"letter": letter / n, "word": word / n}


def _lr(step: int, cfg: TrainConfig) -> float:
    """Linear warm-up, then cosine decay to 10%."""
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    t = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return cfg.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, t))))


def _param_groups(model: PreTrainedModel, cfg: TrainConfig) -> list[dict]:
    """The vision tower (as vlmzip's adapter names it) and everything else, each with its share of the learning
    rate: Qwen2.5-VL leaves its text-only optimum sooner with a faster vision tower (``training/README.md``)."""
    tower = {id(p) for p in adapter_for(model).vision_tower.parameters()}
    vision = [p for p in model.parameters() if id(p) in tower]
    rest = [p for p in model.parameters() if id(p) not in tower]
    return [{"params": vision, "scale": (cfg.vision_lr or cfg.lr) / cfg.lr}, {"params": rest, "scale": 1.0}]


def _checkpoint(out_dir: Path) -> Path:
    return out_dir / "checkpoint.pt"


def train(
    family: str,
    steps: int,
    batch_size: int = 32,
    lr: float = 1e-3,
    device: str | torch.device = "cpu",
    out_dir: str | Path = "fixture",
    resume: bool = False,
    spec: FixtureSpec | None = None,
    **options,
) -> PreTrainedModel:
    """Train a fixture of ``family`` for ``steps`` optimizer steps (total, counting resumed ones).

    ``out_dir`` receives ``log.jsonl`` (one line per ``log_every`` steps and per evaluation: greedy accuracy
    on the validation split at the last curriculum level, images and, for Qwen, videos), ``checkpoint.pt``
    (model, optimizer and step, every ``checkpoint_every`` steps and at the end: ``resume=True`` continues from
    it) and, at the end, the fixture itself (``save``) in ``out_dir/model``. ``spec`` defaults to the one the
    ``init`` fixture was saved with, else ``SPECS[family]``. ``options`` are further ``TrainConfig`` fields.
    Returns the trained model (fp32).
    """
    cfg = TrainConfig(family, steps, batch_size, lr, **options)
    return _fit(cfg, _run_spec(cfg, spec), device, out_dir, resume)


def _run_spec(cfg: TrainConfig, spec: FixtureSpec | None = None, changes: Sequence[str] = ()) -> FixtureSpec:
    """The spec a run of ``cfg`` trains: ``spec`` (default: the one its ``init`` fixture was saved with, else the
    family's) with ``changes`` (``FIELD=N``, see ``spec_with``). A continuation ``check_continuation`` refuses
    raises ``ValueError`` here, before anything is built."""
    saved = saved_spec(cfg.init) if cfg.init else None
    spec = spec_with(cfg.family, spec or saved or SPECS[cfg.family], changes)
    if saved:
        check_continuation(cfg.family, saved, spec, cfg.init)
    return spec


def _fit(
    cfg: TrainConfig, spec: FixtureSpec, device: str | torch.device, out_dir: str | Path, resume: bool = False
) -> PreTrainedModel:
    """``train``'s run of ``cfg`` on a model of ``spec``, which ``_run_spec`` returned for it."""
    family = cfg.family
    device = torch.device(device)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model, processor = build(family, cfg.seed, spec)
    if cfg.init:
        model.load_state_dict(_init_state(cfg, model, device))
    model.to(device).train()
    groups = _param_groups(model, cfg)
    fused = device.type == "cuda"
    optimizer = torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.98), fused=fused)
    step = 0
    if resume and _checkpoint(out_dir).exists():
        state = torch.load(_checkpoint(out_dir), map_location=device, weights_only=False)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        step = state["step"]
        if 0 < cfg.stop_at <= step:
            raise ValueError(
                f"stop_at={cfg.stop_at}: the checkpoint in {out_dir} is at step {step} already; resume with a "
                f"later stop_at, or none (0) to run on to steps={cfg.steps}"
            )
    (out_dir / "config.json").write_text(json.dumps({"train": asdict(cfg), "spec": asdict(spec)}, indent=2) + "\n")
    scenes = scene_side(processor, cfg)  # validation scenes, as the loader's training scenes
    loader = torch.utils.data.DataLoader(
        Stream(processor, cfg, step, QwenIndex(model.config) if family == "qwen2_5_vl" else None),
        batch_size=None,
        num_workers=cfg.workers,
        pin_memory=device.type == "cuda",
        prefetch_factor=4 if cfg.workers else None,
    )
    started = time.time()
    # Qwen logs `video_every` consecutive steps each time, so image and video losses both appear.
    logged_run = cfg.video_every if family == "qwen2_5_vl" and cfg.video_every > 1 else 1
    mode = "a" if step else "w"  # a resumed run continues its log; a new one in an old directory starts afresh
    with (out_dir / "log.jsonl").open(mode, encoding="utf-8") as log, _packed_vision_attention(model):
        for step, batch in loader:
            for group in optimizer.param_groups:
                group["lr"] = _lr(step, cfg) * group["scale"]
            loss, exact = _loss(model, _on_device(processor, batch, device), device)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            if torch.isfinite(norm):  # a non-finite gradient would turn every weight into NaN: skip the batch
                optimizer.step()
            else:
                _write(log, {"step": step + 1, "skipped": f"non-finite gradient norm {norm.item()}"})
            done = step + 1
            elapsed = time.time() - started
            stopped = ""  # why the run ends before `steps`; a time limit is not reproducible, a step is
            if cfg.max_minutes > 0 and elapsed > 60 * cfg.max_minutes:
                stopped = f"max_minutes={cfg.max_minutes} reached"
            elif done == cfg.stop_at:
                stopped = f"stop_at={cfg.stop_at} reached"
            last = done == cfg.steps or bool(stopped)
            if done % cfg.log_every < logged_run or last:
                kind = "video" if "videos" in batch else "image"
                record = {"step": done, "loss": round(loss.item(), 5), "exact": exact.item(), "lr": _lr(step, cfg)}
                _write(log, {**record, "kind": kind, "elapsed_s": round(elapsed, 2)})
            if cfg.eval_every and (done % cfg.eval_every == 0 or last):
                for medium in ("image", "video") if family == "qwen2_5_vl" and cfg.video_every else ("image",):
                    levels = cfg.levels(medium)
                    where = {"level": levels[1], "size": scenes, "medium": medium, "batch_size": 128}
                    try:
                        acc = evaluate(model, processor, cfg.eval_size, cfg.seed, **where)
                    except Exception as error:  # an evaluation bug must not throw away the training run
                        acc = {"error": f"{type(error).__name__}: {error}"}
                    _write(log, {"step": done, "eval": medium, "level": levels[1], **acc})
            if done % cfg.checkpoint_every == 0 or last:
                state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "step": done}
                torch.save(state, _checkpoint(out_dir))
            if stopped:
                _write(log, {"step": done, "stopped": stopped})
                break
    save(model, processor, out_dir / "model", spec)
    return model


def _init_state(cfg: TrainConfig, model: PreTrainedModel, device: torch.device) -> dict[str, torch.Tensor]:
    """The weights of the fixture ``cfg.init`` for ``model``: narrowed where its MLPs are narrower, scored on the
    run's first batch, and grown where it is deeper (``_run_spec`` checked both)."""
    weights, processor = load(cfg.init)
    state = {k: v.float() for k, v in weights.state_dict().items()}
    width = model.config.get_text_config().intermediate_size
    if width < weights.config.get_text_config().intermediate_size:
        inputs = _on_device(processor, step_examples(processor, cfg, 0), device)
        inputs.pop("labels")
        state = narrow(state, mlp_neuron_scores(weights.float().to(device), inputs), width)
    return deepen(state, model)


def _on_device(processor: ProcessorMixin, batch: dict, device: torch.device) -> dict[str, torch.Tensor]:
    """A loader batch on ``device`` with its pixels made there."""
    tensors = {
        k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v
        for k, v in batch.items()
        if k not in ("images", "videos")
    }
    if "videos" in batch:
        return {**tensors, **pixels(processor, videos=[v.to(device, non_blocking=True) for v in batch["videos"]])}
    return {**tensors, **pixels(processor, images=batch["images"].to(device, non_blocking=True))}


def _write(log, record: dict) -> None:
    log.write(json.dumps(record) + "\n")
    log.flush()
    print(json.dumps(record), file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------------------------- CLI


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train", help="train a fixture on synthetic data")
    t.add_argument("--family", required=True, choices=FAMILIES)
    t.add_argument("--steps", type=int, required=True)
    t.add_argument("--batch-size", type=int, default=32)
    t.add_argument("--lr", type=float, default=1e-3, help="peak (training/rounds.tsv: each round's)")
    t.add_argument("--vision-lr", type=float, default=0.0, help="the vision tower's peak learning rate (default: --lr)")
    t.add_argument("--out", type=Path, required=True)
    t.add_argument("--resume", action="store_true")
    t.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    t.add_argument("--eval-every", type=int, default=TrainConfig.eval_every)
    t.add_argument("--eval-size", type=int, default=TrainConfig.eval_size)
    t.add_argument("--video-batch-size", type=int, default=0, help="Qwen video batches (0: batch size / 4)")
    t.add_argument("--video-every", type=int, default=TrainConfig.video_every, help="Qwen: every n-th step (0: none)")
    t.add_argument("--workers", type=int, default=0, help="data-loader processes")
    t.add_argument("--max-minutes", type=float, default=0.0, help="stop early, saving everything, after this long")
    t.add_argument(
        "--stop-at",
        type=int,
        default=0,
        help="stop early, saving everything, after this step (on the schedule of --steps)",
    )
    t.add_argument("--seed", type=int, default=0)
    t.add_argument(
        "--scene-size",
        type=int,
        default=0,
        help="render the scenes at this side and resize them as the processor does (default: the image size)",
    )
    t.add_argument(
        "--init",
        default="",
        help="start from this saved fixture (new optimizer and schedule) and the spec it was saved with",
    )
    t.add_argument("--image-levels", type=int, nargs=2, default=TrainConfig.image_levels, metavar=("LO", "HI"))
    t.add_argument("--video-levels", type=int, nargs=2, default=TrainConfig.video_levels, metavar=("LO", "HI"))
    t.add_argument("--curriculum-fraction", type=float, default=TrainConfig.curriculum_fraction)
    t.add_argument("--caption-fraction", type=float, default=TrainConfig.caption_fraction)
    t.add_argument("--word-fraction", type=float, default=TrainConfig.word_fraction)
    t.add_argument(
        "--lookup-fraction",
        type=float,
        default=TrainConfig.lookup_fraction,
        help="multiple-choice prompts asking which option is the answer (teaches matching an answer to its option)",
    )
    t.add_argument(
        "--focus-families",
        nargs="+",
        default=[],
        metavar="FAMILY",
        help="question families (image, or Qwen's video) that --focus-fraction of each batch's top-level half "
        "asks alone",
    )
    t.add_argument("--focus-fraction", type=float, default=TrainConfig.focus_fraction)
    t.add_argument("--warmup", type=int, default=TrainConfig.warmup)
    t.add_argument("--small", action="store_true", help="use the SMALL spec (CPU smoke runs)")
    t.add_argument(
        "--spec",
        nargs="+",
        default=[],
        metavar="FIELD=N",
        help="change fields of the run's FixtureSpec (the default, SMALL or --init's): sizes, LLaVA's "
        "feature_layer, Qwen's rope_theta; e.g. --spec vision_layers=6 (with --init: grown, the new layers "
        "starting as the identity)",
    )
    b = sub.add_parser("build", help="save an untrained fixture")
    b.add_argument("--family", required=True, choices=FAMILIES)
    b.add_argument("--out", type=Path, required=True)
    b.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.command == "build":
        model, processor = build(args.family, args.seed)
        save(model, processor, args.out, SPECS[args.family])
        print(json.dumps({"family": args.family, "params": param_count(model), "out": str(args.out)}))
        return 0
    if args.init and args.small:
        parser.error(
            "--small and --init: a continued fixture keeps the spec it was saved with (change fields with --spec)"
        )
    try:  # every error the arguments can cause, as a usage error before anything is built
        # every TrainConfig field the command line has, by name (nargs lists as the tuples TrainConfig holds)
        given = {f.name: getattr(args, f.name) for f in fields(TrainConfig) if hasattr(args, f.name)}
        cfg = TrainConfig(**{name: tuple(v) if isinstance(v, list) else v for name, v in given.items()})
        spec = _run_spec(cfg, SMALL if args.small else None, args.spec)
    except (ValueError, FileNotFoundError) as e:
        parser.error(str(e))
    _fit(cfg, spec, args.device, args.out, args.resume)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
