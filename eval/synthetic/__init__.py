"""Deterministic synthetic visual question answering data: images and short videos of coloured shapes.

Everything is a pure function of a seed (no downloads, no global random state): the same seed gives
the same scenes, the same questions and the same bytes on disk. Two ways to use it:

* **In memory, for training** — ``image_batch(n, rng, difficulty)`` / ``video_batch(...)`` sample scenes
  and questions on the host (plain Python) and render them with batched integer torch ops on any
  device to ``uint8`` tensors ``[B, 3, H, W]``. ``IMAGE_CURRICULUM`` / ``VIDEO_CURRICULUM`` are
  difficulty levels (objects per scene, question families) for a curriculum.
* **On disk, for evaluation** — ``write_image_set`` (JSONL + PNG) and ``write_video_set`` (the Video-MME
  Hugging Face layout), or the CLI ``python -m vlmzip.eval.synthetic --out DIR --images N --videos N
  --seed S``, which writes all three splits.

Scene model
-----------
A scene is a ``grid x grid`` board (3x3 by default; cells named "top left" ... "bottom right") with at
most one object per cell. An object has a shape (``SHAPES``), a colour (``COLOURS``, 8 well separated
named colours on a dark grey background), a size (small: 10/24 of a cell across, large: 18/24) and an
integer position in sub-cell units (``SUB`` = 24 per cell), jittered inside its cell. Positions are
integers and the renderer tests pixel centres against each shape with exact integer inequalities: no
floating point is involved, so the pixels cannot depend on the device (CPU-tested; the GPU path runs the
same integer ops).

A video is a ``Timeline``: ``n_frames`` (8-32) and tracks; each track has a unique shape (its identity
in questions), appears at some frame (0 = from the start), may disappear, may move once to the
neighbouring cell (taking 1-3 frames), may change colour once. Some clips hold a *brief* object that
is visible for only 1-2 frames, and one of the clip's questions is then about it: dropping frames
loses that answer. ``timeline_frames`` gives the per-frame scenes, ``timeline_events`` the events.

Questions
---------
Every question family is a function ``(scene or timeline, rng) -> Question | None`` (``None``: this
scene does not support the family). A ``Question`` has four options formatted as Video-MME's
(``"A. red"``), the answer letter, ``answer_word`` (the option's text, for word-answer training) and
``params`` naming what it asks about. Distractors come from the scene where possible (other objects'
colours, shapes, positions), then from the full vocabulary; options are shuffled, so letters are
uniform. See ``IMAGE_FAMILIES`` and ``VIDEO_FAMILIES``.

Splits
------
Train, validation and test are disjoint *by content*: a scene (or timeline) belongs to the split its
content hash names (``content_split``: 80 / 10 / 10 buckets), and a sampler for one split rejects
content of the others. No scene — hence no (scene, question) pair — is shared between splits, whatever
the seeds or sizes. Each split also draws from its own random stream (``split_rng``).

On disk
-------
``write_image_set(root, n, split, seed)``: ``root/{split}.jsonl`` (one question per image; id, image
path, question, options, answer, answer_word, family, params and the scene itself) and
``root/images/{split}/{id}.png``.

``write_video_set(root, n_videos, split, seed)`` writes ONE split per root, in the Video-MME Hugging
Face layout whose file name is fixed: ``root/videomme/test-00000-of-00001.parquet`` (exactly
Video-MME's columns ``VIDEOMME_COLUMNS``, 3 questions per video), ``root/data/{videoID}.mp4`` (H.264
lossless, ``yuv444p``, qp 0: decoded colours are within 1 level of the rendered ones) and
``root/subtitle/{videoID}.srt`` (one cue per event frame, cue text wrapped in the same ``<font>`` tag as
Video-MME's; none for clips without events). Column values: ``video_id`` "001", ``videoID``
"syntr00000" / "synva00000" / "synte00000" (unique across splits), ``question_id`` "001-1",
``duration`` short (< 16 frames) / medium (16-23) / long (24-32), ``domain`` "Synthetic shapes",
``sub_category`` the clip's event kinds ("appear, move"; "static" if none), ``task_type`` the question
family, ``url`` a ``synthetic://`` record of split, seed and index. The CLI writes
``OUT/image/...`` and ``OUT/video/{train,validation,test}/...``.

Subtitles narrate the events, so they give answers away: evaluate visual-token methods without them.

The package's modules: ``scenes`` (vocabulary, geometry, scene model, seeds and splits), ``questions`` (the
question form and its distractors), ``images`` (image question families, difficulty, scene sampling),
``renderer``, ``video`` (timelines, video question families), ``datasets`` (batches, writers, the CLI). Every
public name is importable from the package itself.
"""

from vlmzip.eval.synthetic import datasets, images, questions, renderer, scenes, video
from vlmzip.eval.synthetic.datasets import (
    VIDEOMME_COLUMNS,
    VIDEOMME_PARQUET,
    ImageBatch,
    ImageRecord,
    VideoBatch,
    encode_mp4,
    image_batch,
    load_image_set,
    main,
    split_counts,
    srt_text,
    video_batch,
    write_all,
    write_image_set,
    write_video_set,
)
from vlmzip.eval.synthetic.images import (
    IMAGE_CURRICULUM,
    IMAGE_FAMILIES,
    ImageDifficulty,
    caption,
    sample_image_item,
    sample_scene,
)
from vlmzip.eval.synthetic.questions import Question, mc_prompt, option_lookup
from vlmzip.eval.synthetic.renderer import (
    ObjectArrays,
    classify_colours,
    render,
    render_arrays,
    scene_arrays,
    shape_mask,
)
from vlmzip.eval.synthetic.scenes import (
    BACKGROUND,
    COLOUR_NAMES,
    COLOURS,
    DIRECTIONS,
    LETTERS,
    PLURALS,
    RADIUS,
    RELATIONS,
    SHAPES,
    SIZES,
    SPLITS,
    SUB,
    Obj,
    Scene,
    content_split,
    position_name,
    split_rng,
)
from vlmzip.eval.synthetic.video import (
    BRIEF_FAMILIES,
    VIDEO_CURRICULUM,
    VIDEO_FAMILIES,
    Event,
    Move,
    Recolour,
    Timeline,
    Track,
    VideoDifficulty,
    render_timeline,
    sample_timeline,
    sample_video_item,
    timeline_events,
    timeline_frames,
    video_caption,
)

__all__ = [
    "BACKGROUND",
    "BRIEF_FAMILIES",
    "COLOURS",
    "COLOUR_NAMES",
    "DIRECTIONS",
    "IMAGE_CURRICULUM",
    "IMAGE_FAMILIES",
    "LETTERS",
    "PLURALS",
    "RADIUS",
    "RELATIONS",
    "SHAPES",
    "SIZES",
    "SPLITS",
    "SUB",
    "VIDEOMME_COLUMNS",
    "VIDEOMME_PARQUET",
    "VIDEO_CURRICULUM",
    "VIDEO_FAMILIES",
    "Event",
    "ImageBatch",
    "ImageDifficulty",
    "ImageRecord",
    "Move",
    "Obj",
    "ObjectArrays",
    "Question",
    "Recolour",
    "Scene",
    "Timeline",
    "Track",
    "VideoBatch",
    "VideoDifficulty",
    "caption",
    "classify_colours",
    "content_split",
    "encode_mp4",
    "image_batch",
    "load_image_set",
    "main",
    "mc_prompt",
    "option_lookup",
    "position_name",
    "render",
    "render_arrays",
    "render_timeline",
    "sample_image_item",
    "sample_scene",
    "sample_timeline",
    "sample_video_item",
    "scene_arrays",
    "shape_mask",
    "split_counts",
    "split_rng",
    "srt_text",
    "timeline_events",
    "timeline_frames",
    "video_batch",
    "video_caption",
    "write_all",
    "write_image_set",
    "write_video_set",
]

MODULES = (scenes, questions, images, renderer, video, datasets)
"""The package's modules: ``fixtures.vocabulary`` reads the question words out of their source."""
