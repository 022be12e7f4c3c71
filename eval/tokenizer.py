"""The fixtures' word-level tokenizers and chat templates.

A fixture's tokenizer knows exactly the words ``vlmzip.eval.synthetic`` can ask and answer (``vocabulary``), plus
its family's turn markers and placeholders as special tokens; its chat template lays out ``<|role|>`` turns and
writes the family's image or video marker, which the processor expands.
"""

from __future__ import annotations

import ast
import inspect
import re

from tokenizers import Regex, Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast, ProcessorMixin

from vlmzip.eval import synthetic
from vlmzip.eval.families import fixture_family

__all__ = ["build_tokenizer", "chat_prompt", "special_tokens", "vocabulary"]

# Every turn marker and placeholder is an added (special) token: never split, never an unknown word.
_COMMON_SPECIALS: tuple[str, ...] = ("<pad>", "<unk>", "<bos>", "<eos>", "<|system|>", "<|user|>", "<|assistant|>")
# Words: runs of letters/digits/underscores; every other visible character alone; newlines kept (they are
# part of the official prompt's layout); other whitespace dropped.
_WORD_PATTERN = r"\w+|[^\w\s]|\n"
_SYNTHETIC_SOURCES = ("mc_prompt", "option_lookup", "position_name", "Event", "caption", "video_caption")


def _literal_strings(tree: ast.AST) -> list[str]:
    """String literals (and the literal parts of f-strings) in ``tree``, docstrings excluded."""
    docstrings = {
        id(node.body[0].value)
        for node in ast.walk(tree)
        if isinstance(node, (ast.FunctionDef, ast.ClassDef))
        and node.body
        and isinstance(node.body[0], ast.Expr)
        and isinstance(node.body[0].value, ast.Constant)
    }
    return [
        node.value
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings
    ]


def vocabulary() -> tuple[str, ...]:
    """Every word synthetic questions, options, answers and the official prompt can contain, sorted.

    Derived rather than listed: the literals of the question families (``q_*``, ``vq_*``), the prompt,
    event phrases and position names, plus the vocabulary constants; so a new question template in
    ``synthetic`` extends the vocabulary by itself (``test_fixtures`` checks a large sample has no unknown).
    """
    source = ast.parse("\n".join(map(inspect.getsource, synthetic.MODULES)))
    texts: list[str] = []
    for node in source.body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)) and (
            node.name.startswith(("q_", "vq_")) or node.name in _SYNTHETIC_SOURCES
        ):
            texts += _literal_strings(node)
    texts += [*synthetic.SHAPES, *synthetic.PLURALS.values(), *synthetic.COLOUR_NAMES, *synthetic.SIZES]
    texts += [*synthetic.DIRECTIONS, *synthetic.RELATIONS, *synthetic.LETTERS, "row column"]
    texts += [synthetic.position_name(r, c) for r in range(3) for c in range(3)]
    texts += [str(i) for i in range(100)]  # counts, grid rows/columns
    texts += [*"0123456789", *".,:;?!()'\"-/", "\n", "user assistant system answer question image video"]
    words = {w for text in texts for w in re.findall(_WORD_PATTERN, text)}
    return tuple(sorted(words))


def build_tokenizer(family: str) -> PreTrainedTokenizerFast:
    """A word-level ``PreTrainedTokenizerFast``: special tokens first (ids 0..), then ``vocabulary()``.

    No post-processor: BOS (LLaVA, Gemma-3) comes from the chat template, so tokenising a rendered prompt
    never doubles it.
    """
    specials = [*_COMMON_SPECIALS, *fixture_family(family).special_tokens.values()]
    vocab = {token: i for i, token in enumerate(specials)}
    for word in vocabulary():
        vocab.setdefault(word, len(vocab))
    core = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(r"[^\S\n]+"), behavior="removed"),
            pre_tokenizers.Split(Regex(_WORD_PATTERN), behavior="isolated"),
        ]
    )
    core.add_special_tokens(specials)  # existing ids; marks them unsplittable and skipped when decoding
    tok = PreTrainedTokenizerFast(
        tokenizer_object=core,
        pad_token="<pad>",
        unk_token="<unk>",
        bos_token="<bos>",
        eos_token="<eos>",
        extra_special_tokens=dict(fixture_family(family).special_tokens),
        padding_side="left",
        model_max_length=8192,
    )
    tok.chat_template = _chat_template(family)
    return tok


def _chat_template(family: str) -> str:
    """Jinja chat template: ``<|role|>\\n content`` turns; assistant turns end with EOS; images and
    videos become the family's placeholder (which the processor expands)."""
    fixture = fixture_family(family)
    image = fixture.image_marker
    video = fixture.video_marker or image
    bos = "{{ bos_token }}" if fixture.bos else ""
    return (
        bos + "{% for m in messages %}{{ '<|' + m['role'] + '|>' }}\n"
        "{% if m['content'] is string %}{{ m['content'] }}{% else %}{% for c in m['content'] %}"
        f"{{% if c['type'] == 'image' %}}{image}{{% elif c['type'] == 'video' %}}{video}"
        "{% elif c['type'] == 'text' %}{{ c['text'] }}{% endif %}{% endfor %}{% endif %}"
        "{% if m['role'] == 'assistant' %}{{ eos_token }}{% endif %}\n{% endfor %}"
        "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
    )


def special_tokens(family: str) -> dict[str, str]:
    """Every special token a ``family`` fixture's config must agree on, by key: pad, bos, eos and the
    family's placeholders (by the attribute name its processor knows them by)."""
    return {"pad": "<pad>", "bos": "<bos>", "eos": "<eos>", **fixture_family(family).special_tokens}


def chat_prompt(processor: ProcessorMixin, text: str, medium: str = "image") -> str:
    """The generation prompt for one image (or video) and ``text``, through the processor's chat template."""
    messages = [{"role": "user", "content": [{"type": medium}, {"type": "text", "text": text}]}]
    return processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
