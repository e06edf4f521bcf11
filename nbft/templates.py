"""Prompt templates: an instruction (Jinja2, sandboxed) that turns a labelled example into a prompt → completion pair.

Templates are data. The built-in library has several phrasings per task (instruction diversity, as in FLAN), and a
single registry finds them by id ("sentiment/2") or by task.

Example:
    >>> t = get_template("sentiment/1")
    >>> t.render({"text": "I loved it"}).splitlines()[-1]
    'Sentiment:'
    >>> t.completion({"text": "I loved it", "label": "positive"})
    'positive'
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Any

import jinja2
from jinja2 import meta
from jinja2.sandbox import SandboxedEnvironment

from nbft._utils import did_you_mean, unknown


class _BadValue(Exception):
    """A value that would be printed into a prompt as something other than the text it stands for."""


def _finalize(value: Any) -> Any:
    """Every ``{{ value }}`` a template prints passes here: missing values and containers are refused, so a prompt
    never says "None", "nan" or "{'a': 1}" where the data meant a text."""
    if value is None:
        raise _BadValue("is missing (None)")
    if isinstance(value, float) and value != value:
        raise _BadValue("is missing (NaN)")
    if isinstance(value, Mapping):
        raise _BadValue(
            f"is a nested record {str(value)[:60]!r}, which would be printed as a Python dict; flatten the column "
            "(dataset.flatten()) or use its parts in the template, e.g. {{ field.key }}"
        )
    if isinstance(value, list | tuple | set | bytes):
        raise _BadValue(
            f"is a {type(value).__name__} {str(value)[:60]!r}, which would be printed as a Python "
            f"{type(value).__name__}; join it into text first, e.g. {{{{ field | join(' ') }}}}"
        )
    return value


MAX_RENDERED_CHARS = 1_000_000
"""The most characters one rendered prompt may hold: far beyond any context window (a long paper is ~100k), so a
template that renders more is a mistake (``{{ text * 10**6 }}``, a runaway loop), refused before it fills memory."""


class _TooLarge(Exception):
    """A template renders (or builds a value) longer than :data:`MAX_RENDERED_CHARS`."""


class _Environment(SandboxedEnvironment):
    """The sandbox, plus a size cap on ``*``, ``**`` and string widths: ``'x' * 10**8`` is refused before it builds
    100 MB (the sandbox itself caps ``range()``; the rendered text is capped as it streams)."""

    intercepted_binops = frozenset(["*", "**"])

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        if operator == "*":
            for seq, times in ((left, right), (right, left)):
                if (
                    isinstance(seq, str | list | tuple)
                    and isinstance(times, int)
                    and len(seq) * times > MAX_RENDERED_CHARS
                ):
                    raise _TooLarge(f"a value of {len(seq)} x {times:,} items")
        powers = operator == "**" and isinstance(left, int) and isinstance(right, int) and abs(left) > 1
        if powers and right * math.log10(abs(left)) > MAX_RENDERED_CHARS:  # its digits alone would pass the cap
            raise _TooLarge(f"the number {left}**{right}")
        return super().call_binop(context, operator, left, right)

    def call(__self, __context: Any, __obj: Any, *args: Any, **kwargs: Any) -> Any:
        # 'x'.ljust(10**8), .center(), .zfill(): a width beyond the cap is refused before the string is built
        if isinstance(getattr(__obj, "__self__", None), str):
            widths = [a for a in (*args, *kwargs.values()) if isinstance(a, int) and a > MAX_RENDERED_CHARS]
            if widths:
                raise _TooLarge(f"{__obj.__name__}({widths[0]:,})")
        return super().call(__context, __obj, *args, **kwargs)


_ENV = _Environment(undefined=jinja2.StrictUndefined, autoescape=False, finalize=_finalize)


def _render_capped(compiled: jinja2.Template, values: Mapping[str, Any]) -> str:
    """Render chunk by chunk, stopping as soon as the text passes :data:`MAX_RENDERED_CHARS` (a loop over a long
    range would otherwise build it all first)."""
    parts, size = [], 0
    for chunk in compiled.generate(**values):
        size += len(chunk)
        if size > MAX_RENDERED_CHARS:
            raise _TooLarge(f"{size:,} characters so far")
        parts.append(chunk)
    return "".join(parts)


class TemplateError(ValueError):
    """A template is malformed, or does not fit the data it is applied to."""


@dataclasses.dataclass(frozen=True)
class PromptTemplate:
    """One phrasing of one task.

    Args:
        id: unique name, by convention ``"task/n"``.
        task: the task it belongs to (``"sentiment"``, ``"summarize"``...).
        instruction: Jinja2 text of the prompt; it names the input fields, e.g. ``"Summarize:\\n{{ dialogue }}"``.
        target: the field whose value becomes the completion.
        fields: the input fields; inferred from ``instruction`` when omitted.
        choices: for classification, the allowed completion texts.
        label_map: for classification, label value -> completion text (for example ``{0: "negative"}``).
        description: one line for people choosing a template.
        verbatim: render the instruction exactly as it comes out (no trailing-newline rule); for data that already
            holds finished prompts (the ``prompt-completion/1`` template).
    """

    id: str
    task: str
    instruction: str
    target: str
    fields: tuple[str, ...] = ()
    choices: tuple[str, ...] | None = None
    label_map: Mapping[Any, str] | None = None
    description: str = ""
    verbatim: bool = False

    def __post_init__(self) -> None:
        for name in ("id", "task", "instruction", "target"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value.strip():
                raise TemplateError(
                    f"PromptTemplate.{name} must be a non-empty text, got {value!r}; e.g. PromptTemplate('qa/9', 'qa', "
                    "'Answer: {{ question }}', target='answer')"
                )
        for name in ("choices", "fields"):
            value = getattr(self, name)
            if isinstance(value, str):
                raise TemplateError(
                    f"template {self.id!r}: {name} must be a list of texts, not one text {value!r}; e.g. "
                    f"{name}=[{value!r}]"
                )
        if self.label_map is not None and not isinstance(self.label_map, Mapping):
            raise TemplateError(f"template {self.id!r}: label_map must be a dict of label -> text, e.g. {{0: 'no'}}")
        try:
            ast = _ENV.parse(self.instruction)
        except jinja2.TemplateSyntaxError as exc:
            raise TemplateError(
                f"template {self.id!r} has a Jinja2 syntax error on line {exc.lineno}: {exc.message}. "
                f"Line {exc.lineno} reads: {_line(self.instruction, exc.lineno)!r}"
            ) from None
        try:
            used = tuple(sorted(meta.find_undeclared_variables(ast)))
        except jinja2.TemplateError as exc:  # e.g. an unknown filter, found when the template is compiled
            raise TemplateError(f"template {self.id!r} does not compile: {str(exc).splitlines()[0]}") from None
        if not self.fields:
            object.__setattr__(self, "fields", used)
        else:
            object.__setattr__(self, "fields", tuple(self.fields))
            extra = sorted(set(used) - set(self.fields))
            if extra:
                raise TemplateError(
                    f"template {self.id!r} uses {extra} but declares fields={list(self.fields)}; "
                    "add them to fields (or leave fields empty to infer them)"
                )
        if self.target in self.fields:
            raise TemplateError(
                f"template {self.id!r} shows its target field {self.target!r} in the prompt; "
                "the completion would be given away"
            )
        if self.choices is not None:
            object.__setattr__(self, "choices", tuple(self.choices))
        if self.label_map is not None:
            object.__setattr__(self, "label_map", dict(self.label_map))
            if self.choices is None:
                object.__setattr__(self, "choices", tuple(dict.fromkeys(self.label_map.values())))
            bad = sorted({str(v) for v in self.label_map.values()} - set(self.choices or ()))
            if bad:
                raise TemplateError(f"template {self.id!r}: label_map maps to {bad}, which are not in choices")
        try:
            object.__setattr__(self, "_compiled", _ENV.from_string(self.instruction))
        except jinja2.TemplateError as exc:  # e.g. an unknown filter, found when compiling
            raise TemplateError(f"template {self.id!r} does not compile: {exc}") from None

    @property
    def is_classification(self) -> bool:
        return self.choices is not None

    def check_columns(self, columns: Sequence[str]) -> None:
        """Raise a clear error when the data lacks a field this template needs."""
        for name in (*self.fields, self.target):
            if name not in columns:
                raise TemplateError(
                    f"template {self.id!r} needs the field {name!r}, but the data has columns {list(columns)}."
                    f"{did_you_mean(name, columns)} Rename the column (e.g. dataset.rename_column) "
                    f"or pass columns={{{name!r}: 'your_column'}}"
                )

    def render(self, example: Mapping[str, Any]) -> str:
        """The prompt for one example. It always ends with one newline (unless ``verbatim``); the completion
        follows directly."""
        missing = [f for f in self.fields if f not in example]
        if missing:
            self.check_columns(list(example))
        try:
            text = _render_capped(self._compiled, {f: example[f] for f in self.fields})  # type: ignore[attr-defined]
        except _TooLarge as exc:
            raise TemplateError(
                f"template {self.id!r} renders more than {MAX_RENDERED_CHARS:,} characters for one example ({exc}), "
                "the limit nbft.templates.MAX_RENDERED_CHARS; a prompt that long is a template mistake (e.g. "
                "{{ text * 1000 }} or a loop) or an input that needs cutting first (e.g. {{ text[:20000] }})"
            ) from None
        except _BadValue as exc:
            bad = [f for f in self.fields if _is_bad(example[f])]
            where = f"field {bad[0]!r}" if bad else "a value the template prints"
            fix = ""
            if "missing" in str(exc):
                column = (bad or ["field"])[0]
                fix = f". Drop or fill such examples first, e.g. dataset.filter(lambda x: x[{column!r}] is not None)"
            raise TemplateError(f"template {self.id!r}: {where} {exc}{fix}") from None
        except jinja2.TemplateError as exc:
            raise TemplateError(f"template {self.id!r} failed to render: {exc}") from None
        if not text.strip():
            raise TemplateError(
                f"template {self.id!r} renders an empty prompt for this example (fields "
                f"{ {f: example[f] for f in self.fields} }); fill the field(s) or drop the example"
            )
        if self.fields and all(isinstance(example[f], str) and not example[f].strip() for f in self.fields):
            raise TemplateError(
                f"template {self.id!r}: every input field is empty for this example "
                f"({ {f: example[f] for f in self.fields} }), so its prompt holds only the instruction; fill or drop it"
            )
        return text if self.verbatim else text.rstrip("\n") + "\n"

    def completion(self, example: Mapping[str, Any]) -> str:
        """The completion text for one example (the target, mapped through ``label_map`` for classification)."""
        if self.target not in example:
            self.check_columns(list(example))
        value = example[self.target]
        if value is None or (isinstance(value, float) and value != value):
            raise TemplateError(
                f"target field {self.target!r} is missing ({value!r}); drop or fill such examples first, e.g. "
                f"dataset.filter(lambda x: x[{self.target!r}] is not None)"
            )
        if self.label_map is not None:
            if value not in self.label_map:
                raise TemplateError(
                    f"label value {value!r} of field {self.target!r} is not in template {self.id!r}'s label_map "
                    f"keys {list(self.label_map)}; add it to label_map or filter those examples out"
                )
            value = self.label_map[value]
        if not isinstance(value, str):
            raise TemplateError(
                f"target field {self.target!r} holds {type(value).__name__} values (e.g. {value!r}), not text. "
                f"Map them to text with template.with_labels({{{value!r}: '...'}}) or convert the column to str"
            )
        if self.choices is not None and value not in self.choices:
            raise TemplateError(
                f"label {value!r} of field {self.target!r} is not one of template {self.id!r}'s choices "
                f"{list(self.choices)}.{did_you_mean(value, self.choices)} Fix the data or use "
                "template.with_labels({...}) to map label values to choices"
            )
        return value

    def with_labels(self, label_map: Mapping[Any, str], choices: Sequence[str] | None = None) -> PromptTemplate:
        """A copy that maps raw label values (e.g. ``0``/``1``) to completion texts.

        Example:
            >>> t = get_template("sentiment/1").with_labels({0: "negative", 1: "positive"})
            >>> t.completion({"text": "x", "label": 1})
            'positive'
        """
        choices = tuple(choices) if choices is not None else tuple(dict.fromkeys(label_map.values()))
        return dataclasses.replace(self, label_map=dict(label_map), choices=choices)


def _is_bad(value: Any) -> bool:
    try:
        _finalize(value)
    except _BadValue:
        return True
    return False


def _line(text: str, lineno: int | None) -> str:
    lines = text.splitlines()
    return lines[lineno - 1] if lineno and 0 < lineno <= len(lines) else ""


# ----------------------------------------------------------------------------------------------------------------
# The registry.

_REGISTRY: dict[str, PromptTemplate] = {}


def register_template(template: PromptTemplate, *, overwrite: bool = False) -> PromptTemplate:
    """Add a template to the registry so it can be found by id.

    Example:
        >>> register_template(PromptTemplate("shout/1", "shout", "Shout this:\\n{{ text }}", target="loud"))
        PromptTemplate(id='shout/1', ...)
    """
    if template.id in _REGISTRY and not overwrite:
        raise TemplateError(f"a template with id {template.id!r} is already registered; pass overwrite=True")
    _REGISTRY[template.id] = template
    return template


def get_template(name: str | PromptTemplate) -> PromptTemplate:
    """Find a template by id (``"summarize/1"``); unknown ids raise an error with suggestions."""
    if isinstance(name, PromptTemplate):
        return name
    try:
        return _REGISTRY[name]
    except KeyError:
        raise unknown("template", name, _REGISTRY) from None


def list_templates(task: str | None = None) -> list[PromptTemplate]:
    """All registered templates, or those of one task.

    Example:
        >>> [t.id for t in list_templates("qa")][:2]
        ['qa/1', 'qa/2']
    """
    if task is None:
        return list(_REGISTRY.values())
    found = [t for t in _REGISTRY.values() if t.task == task]
    if not found:
        raise unknown("task", task, {t.task for t in _REGISTRY.values()})
    return found


def phrasings(template: str | PromptTemplate) -> list[PromptTemplate]:
    """``template`` and every other registered phrasing of its task with the same fields and target.

    A training set built from a task mixes these phrasings; the overlap check renders test examples with each.

    Example:
        >>> [t.id for t in phrasings("qa/1")]
        ['qa/1', 'qa/2', 'qa/3']
    """
    template = get_template(template)
    same = [
        t
        for t in _REGISTRY.values()
        if t.task == template.task and t.target == template.target and set(t.fields) == set(template.fields)
    ]
    return [template, *[t for t in same if t.id != template.id]]


def resolve_templates(spec: str | PromptTemplate | Sequence[str | PromptTemplate]) -> list[PromptTemplate]:
    """Turn a template id, a task name (all its phrasings), a template or a list of those into templates."""
    items = [spec] if isinstance(spec, (str, PromptTemplate)) else list(spec)
    if not items:
        raise TemplateError("no templates given; pass a task name such as 'sentiment' or ids like 'sentiment/1'")
    out: list[PromptTemplate] = []
    tasks = {t.task for t in _REGISTRY.values()}
    for item in items:
        if isinstance(item, str) and "/" not in item and item in tasks:
            out.extend(list_templates(item))
        else:
            out.append(get_template(item))
    return out


SENTIMENT = ("negative", "neutral", "positive")

_BUILTIN: list[tuple[str, str, str, dict[str, Any]]] = [
    # (id, instruction, target, extra)
    ("summarize/1", "Summarize the following conversation.\n\n{{ dialogue }}\n\nSummary:", "summary", {}),
    (
        "summarize/2",
        "Read the dialogue below and write a short summary of it.\n\n{{ dialogue }}\n\nSummary:",
        "summary",
        {},
    ),
    (
        "summarize/3",
        "Dialogue:\n{{ dialogue }}\n\nWhat was going on in this conversation? Answer in one or two sentences.",
        "summary",
        {},
    ),
    ("summarize/4", "Briefly summarize this chat:\n{{ dialogue }}", "summary", {}),
    (
        "sentiment/1",
        "Classify the sentiment of this text as negative, neutral or positive.\n\nText: {{ text }}\nSentiment:",
        "label",
        {"choices": SENTIMENT},
    ),
    (
        "sentiment/2",
        "Is the following tweet negative, neutral or positive?\n\n{{ text }}\n\nAnswer with one word:",
        "label",
        {"choices": SENTIMENT},
    ),
    (
        "sentiment/3",
        "{{ text }}\n\nWhat is the sentiment of the text above? Choose one of: negative, neutral, positive.",
        "label",
        {"choices": SENTIMENT},
    ),
    (
        "sentiment/4",
        "Text: {{ text }}\nDoes the writer feel negative, neutral or positive about the subject?",
        "label",
        {"choices": SENTIMENT},
    ),
    ("translate/1", "Translate this sentence to German.\n\n{{ source }}\n\nGerman:", "target", {}),
    (
        "translate/2",
        "Translate the following English text into German.\n\nEnglish: {{ source }}\nGerman:",
        "target",
        {},
    ),
    ("translate/3", "{{ source }}\n\nHow would you say the sentence above in German?", "target", {}),
    (
        "entities/1",
        "List the named entities in this sentence as TYPE: name pairs separated by semicolons "
        "(types: PER, LOC, ORG).\n\nSentence: {{ text }}\nEntities:",
        "entities",
        {},
    ),
    (
        "entities/2",
        "Extract every person (PER), location (LOC) and organisation (ORG) mentioned in the text below. "
        "Write them as 'TYPE: name; TYPE: name'.\n\n{{ text }}",
        "entities",
        {},
    ),
    (
        "entities/3",
        "Text: {{ text }}\n\nWhich people, places and organisations does this text name? "
        "Format: PER: x; LOC: y; ORG: z.",
        "entities",
        {},
    ),
    (
        "ner/1",
        "Sentence: {{ text }}\n\nList the {{ entity_type }} named in this sentence, separated by semicolons.\nAnswer:",
        "names",
        {},
    ),
    (
        "ner/2",
        "Which {{ entity_type }} are mentioned in the following sentence? Write only their names, separated by "
        "semicolons.\n\nSentence: {{ text }}",
        "names",
        {},
    ),
    (
        "ner/3",
        "{{ text }}\n\nName the {{ entity_type }} in the text above (names only, separated by semicolons).",
        "names",
        {},
    ),
    (
        "summarize-paper/1",
        "Read the abstract of a research paper and summarize its {{ aspect }} in one sentence.\n\n"
        "Abstract: {{ abstract }}\n\nSummary of the {{ aspect }}:",
        "summary",
        {},
    ),
    (
        "summarize-paper/2",
        "{{ abstract }}\n\nIn one sentence, what is the {{ aspect }} of the paper described above?",
        "summary",
        {},
    ),
    (
        "summarize-paper/3",
        "Summarize the {{ aspect }} of this paper in a single sentence.\n\n{{ abstract }}",
        "summary",
        {},
    ),
    ("qa/1", "Answer the question.\n\nQuestion: {{ question }}\nAnswer:", "answer", {}),
    ("qa/2", "{{ question }}\n\nGive a short answer.", "answer", {}),
    ("qa/3", "Please answer the following question in one or two sentences.\n\n{{ question }}", "answer", {}),
    ("reply/1", "Continue the conversation with the next reply.\n\n{{ context }}\n\nReply:", "reply", {}),
    ("reply/2", "Here is a chat so far:\n{{ context }}\n\nWrite the next message.", "reply", {}),
    ("reply/3", "{{ context }}\n\nWhat would the other person say next? Write one short message.", "reply", {}),
]

for _id, _text, _target, _extra in _BUILTIN:
    register_template(PromptTemplate(_id, _id.split("/")[0], _text, target=_target, **_extra))

#: Rows that already are prompt -> completion pairs: the prompt is used exactly as given, in training and evaluation.
PROMPT_COMPLETION = register_template(
    PromptTemplate(
        "prompt-completion/1",
        "prompt-completion",
        "{{ prompt }}",
        target="completion",
        description="data that already holds finished prompts: used exactly as given",
        verbatim=True,
    )
)

BUILTIN_TASKS = tuple(dict.fromkeys(t.split("/")[0] for t, *_ in _BUILTIN))
