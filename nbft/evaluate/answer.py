"""Try a prompt on several models side by side: the text each model sees, and its answer, streamed as it generates.

:func:`answer` is the one way in for :class:`nbft.widgets.TryPanel` and for scripts. A prompt is either typed text
(optionally put into a task's training template, the way training phrased its examples) or a test example of a
task; ``chat=True`` wraps it in the tokenizer's chat template (:func:`nbft.prompting.format_prompt`, the function
training uses). Greedy answers are the same tokens :func:`nbft.evaluate.generation.generate` gives (the same prompt
encoding, stop strings and greedy settings); ``sample=True`` draws them (temperature, top-p, seed).

Example::

    from nbft.evaluate.answer import answer
    outs = answer({"base": (base, tok), "tuned": "runs/sentiment-1"}, "The film was a waste of time.",
                  task="sentiment", chat=False, max_new_tokens=8)
    outs["tuned"]     # 'negative'
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Callable, Iterator, Mapping
from typing import Any

__all__ = ["Prompt", "answer", "load_models", "make_prompt", "stream_answer"]


@dataclasses.dataclass(frozen=True)
class Prompt:
    """What a model is asked: the ``text`` it sees (template and chat format applied), and how to read its answer.

    ``stop`` strings end the answer and are cut off; ``halt`` strings end it and stay (a task's labels);
    ``reference`` is the example's expected answer when the prompt came from a test example.
    """

    text: str
    chat: bool = False
    stop: tuple[str, ...] = ()
    halt: tuple[str, ...] = ()
    max_new_tokens: int | None = None
    reference: str | None = None


def make_prompt(
    prompt: str | Mapping[str, Any],
    tokenizer: Any = None,
    *,
    task: Any = None,
    template: bool = True,
    chat: bool = False,
) -> Prompt:
    """The :class:`Prompt` for typed text or a task's example.

    * an example (a dict of the task's fields): the task's training template renders it (``task.prompt``), and its
      reference answer comes along;
    * text with a ``task`` and ``template=True``: the text fills the template's one input field (e.g. the tweet of
      ``sentiment``), so the model sees the instruction it was trained with;
    * text otherwise: used as typed.

    ``chat=True`` wraps the result as a user turn of the tokenizer's chat template (as training with
    ``chat_template=True`` did). With a task, its stop strings, label halts and ``max_new_tokens`` apply.

    Example::

        make_prompt("I loved it", tok, task="sentiment").text.splitlines()[-1]     # 'Sentiment:'
    """
    from nbft.evaluate.tasks import get_task
    from nbft.prompting import format_prompt

    task = get_task(task) if task is not None else None
    reference = None
    if isinstance(prompt, Mapping):
        if task is None:
            raise ValueError("a test example needs its task: make_prompt(example, tok, task='sentiment')")
        rendered = task.template.render(prompt)
        reference = task.reference(prompt)
    elif isinstance(prompt, str):
        if not prompt.strip():
            raise ValueError("the prompt is empty: type a prompt, or pick a test example of a task")
        rendered = prompt
        if task is not None and template:
            fields = task.template.fields
            if len(fields) != 1:
                raise ValueError(
                    f"task {task.name!r}'s template {task.template.id!r} takes {len(fields)} fields {list(fields)}, "
                    "so typed text cannot fill it: pick a test example, or pass template=False to send the text "
                    "as typed"
                )
            rendered = task.template.render({fields[0]: prompt})
    else:
        raise TypeError(f"prompt must be text or a task's example (a dict), not {type(prompt).__name__}")
    text = format_prompt(tokenizer, rendered, chat)
    if task is None:
        return Prompt(text, chat=chat)
    return Prompt(text, chat=chat, stop=tuple(task.stop), halt=tuple(task.halt),
                  max_new_tokens=task.max_new_tokens, reference=reference)  # fmt: skip


def load_models(models: Mapping[str, Any], tokenizer: Any = None) -> dict[str, tuple[Any, Any]]:
    """``{name: (model, tokenizer)}`` from what :func:`nbft.compare` accepts as a model: a loaded model, a
    ``(model, tokenizer)`` pair, a folder or Hub name, a run directory (its final model), a checkpoint folder or
    a training ``Run``. Loads each path once (keep the result to ask many prompts).

    Example::

        loaded = load_models({"base": "HuggingFaceTB/SmolLM2-135M-Instruct", "tuned": "runs/sentiment-1"})
    """
    from nbft.evaluate.runner import _materialize

    out: dict[str, tuple[Any, Any]] = {}
    for name, spec in models.items():
        model, tok, _ = _materialize(spec, tokenizer)
        if tok is None:
            raise ValueError(f"model {name!r} was given without a tokenizer: pass tokenizer=..., or (model, tokenizer)")
        out[name] = (model, tok)
    return out


def _generation_config(
    model: Any, tokenizer: Any, prompt: Prompt, max_new_tokens: int, sample: bool, temperature: float, top_p: float
) -> Any:
    from transformers import GenerationConfig

    from nbft.evaluate.generation import _eos_ids, _pad_id, is_seq2seq

    stop_strings = list(dict.fromkeys(s for s in (*prompt.stop, *prompt.halt) if s))
    config = GenerationConfig(
        max_new_tokens=max_new_tokens,
        do_sample=sample,  # explicit: an Instruct model's generation_config may default to sampling
        num_beams=1,
        temperature=temperature if sample else None,
        top_p=top_p if sample else None,
        top_k=None,
        use_cache=True,
        pad_token_id=_pad_id(tokenizer),
        eos_token_id=_eos_ids(model, tokenizer) or None,
        stop_strings=stop_strings or None,
    )
    if is_seq2seq(model):
        config.decoder_start_token_id = getattr(model.config, "decoder_start_token_id", None)
    return config


def stream_answer(
    model: Any,
    tokenizer: Any,
    prompt: Prompt | str,
    *,
    max_new_tokens: int | None = None,
    sample: bool = False,
    temperature: float = 0.7,
    top_p: float = 0.95,
    seed: int = 0,
) -> Iterator[str]:
    """Yield one model's answer as it grows (the whole answer so far, each time), via transformers'
    ``TextIteratorStreamer`` with ``model.generate`` in a helper thread. The last value is the answer, cut at the
    prompt's stop strings, as :func:`nbft.evaluate.generation.generate` returns it when greedy.

    Example::

        for text in stream_answer(model, tok, make_prompt("Hi!", tok, chat=True)):
            print(text)
    """
    import torch
    from transformers import TextIteratorStreamer

    from nbft.evaluate.generation import _cut_at_stop, _device, _eval_mode, is_seq2seq
    from nbft.prompting import encode_prompt

    prompt = Prompt(prompt) if isinstance(prompt, str) else prompt
    budget = max_new_tokens or prompt.max_new_tokens or 64
    if sample and not (temperature > 0 and 0 < top_p <= 1):
        raise ValueError(f"sampling needs temperature > 0 and 0 < top_p <= 1, got {temperature}, {top_p}")
    ids = encode_prompt(tokenizer, prompt.text, chat=prompt.chat, seq2seq=is_seq2seq(model))
    device = _device(model)
    input_ids = torch.tensor([ids], device=device)
    config = _generation_config(model, tokenizer, prompt, budget, sample, temperature, top_p)
    streamer = TextIteratorStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
    failure: list[BaseException] = []
    from nbft import _quiet

    scope = _quiet.current_scope()  # the caller's quiet scope (a panel's log area) hears the helper thread too

    def work() -> None:
        if scope is not None:
            scope.claim_thread()
        try:
            with _eval_mode(model):
                if sample:
                    torch.manual_seed(seed)  # the same seed gives the same sampled answer
                model.generate(
                    input_ids=input_ids,
                    attention_mask=torch.ones_like(input_ids),
                    generation_config=config,
                    streamer=streamer,
                    tokenizer=tokenizer if config.stop_strings else None,
                )
        except BaseException as exc:
            failure.append(exc)
            streamer.end()  # the reading side must not wait forever for text that never comes
        finally:
            if scope is not None:
                scope.release_thread()

    thread = threading.Thread(target=work, name="nbft-answer", daemon=True)
    thread.start()
    text = ""
    for chunk in streamer:
        text += chunk
        yield _cut_at_stop(text, prompt.stop).strip()
    thread.join()
    if failure:
        raise failure[0]
    yield _cut_at_stop(text, prompt.stop).strip()


def answer(
    models: Mapping[str, Any],
    prompt: str | Mapping[str, Any],
    *,
    task: Any = None,
    template: bool = True,
    chat: bool = False,
    tokenizer: Any = None,
    max_new_tokens: int | None = None,
    sample: bool = False,
    temperature: float = 0.7,
    top_p: float = 0.95,
    seed: int = 0,
    on_text: Callable[[str, str], None] | None = None,
) -> dict[str, str]:
    """Ask every model the same prompt; ``{name: answer}`` in the models' order.

    ``models`` as :func:`nbft.compare` takes them (see :func:`load_models`; paths are loaded for this call only:
    call :func:`load_models` once to ask several prompts). The prompt is built per model with
    :func:`make_prompt` (each model's own tokenizer applies the chat format). Greedy unless ``sample=True``.
    ``on_text(name, text_so_far)`` is called as each answer grows (a panel's streaming view).

    Example::

        answer({"base": (base, tok), "tuned": run}, {"text": "Great film!", "label": "positive"}, task="sentiment")
    """
    from nbft import _quiet

    with _quiet.call_scope():  # no library bars; each warning once
        loaded = load_models(models, tokenizer)
        out: dict[str, str] = {}
        for name, (model, tok) in loaded.items():
            p = make_prompt(prompt, tok, task=task, template=template, chat=chat)
            text = ""
            for text in stream_answer(model, tok, p, max_new_tokens=max_new_tokens, sample=sample,
                                      temperature=temperature, top_p=top_p, seed=seed):  # fmt: skip
                if on_text is not None:
                    on_text(name, text)
            out[name] = text
        return out
