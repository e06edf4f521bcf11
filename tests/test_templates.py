import pytest

from nbft._utils import UnknownNameError
from nbft.templates import (
    BUILTIN_TASKS,
    PromptTemplate,
    TemplateError,
    get_template,
    list_templates,
    register_template,
    resolve_templates,
)


def test_builtin_library_has_five_tasks_with_three_phrasings_each():
    for task in ("summarize", "sentiment", "translate", "entities", "qa"):
        assert task in BUILTIN_TASKS
        phrasings = list_templates(task)
        assert len(phrasings) >= 3
        assert len({t.instruction for t in phrasings}) == len(phrasings)
    assert "Summarize the following conversation." in get_template("summarize/1").instruction


def test_render_puts_fields_in_prompt_and_ends_with_one_newline():
    t = get_template("summarize/1")
    prompt = t.render({"dialogue": "A: hi\nB: hello", "summary": "greeting"})
    assert "A: hi\nB: hello" in prompt
    assert prompt.endswith("Summary:\n") and not prompt.endswith("\n\n")
    assert "greeting" not in prompt
    assert t.completion({"dialogue": "x", "summary": "greeting"}) == "greeting"


def test_fields_are_inferred_from_the_instruction():
    t = PromptTemplate("t/1", "t", "Q: {{ question }} ({{ topic }})", target="answer")
    assert t.fields == ("question", "topic")


def test_sandbox_blocks_attribute_escapes():
    t = PromptTemplate("evil/1", "evil", "{{ text.__class__.__mro__ }}", target="y")
    with pytest.raises(TemplateError, match="failed to render"):
        t.render({"text": "x"})


def test_syntax_error_names_the_line():
    with pytest.raises(TemplateError, match=r"syntax error on line 2.*'\{% if %\}'"):
        PromptTemplate("bad/1", "bad", "fine line\n{% if %}\n", target="y")


def test_missing_field_names_available_columns_and_closest():
    t = get_template("qa/1")
    with pytest.raises(TemplateError) as err:
        t.render({"questoin": "?", "answer": "!"})
    msg = str(err.value)
    assert "'question'" in msg and "['questoin', 'answer']" in msg and "Did you mean 'questoin'" in msg


def test_label_not_in_choices_is_refused_with_suggestion():
    t = get_template("sentiment/1")
    with pytest.raises(TemplateError, match="not one of .*choices.*Did you mean 'positive'"):
        t.completion({"text": "x", "label": "positve"})


def test_non_string_target_is_refused_with_the_fix():
    with pytest.raises(TemplateError, match=r"holds int values.*with_labels"):
        get_template("qa/1").completion({"question": "q", "answer": 3})


def test_label_map_maps_values_and_rejects_unknown_ones():
    t = get_template("sentiment/2").with_labels({0: "negative", 1: "positive"})
    assert t.choices == ("negative", "positive")
    assert t.completion({"text": "x", "label": 0}) == "negative"
    with pytest.raises(TemplateError, match="label value 7 .*label_map"):
        t.completion({"text": "x", "label": 7})


def test_target_shown_in_prompt_is_refused():
    with pytest.raises(TemplateError, match="given away"):
        PromptTemplate("leak/1", "leak", "{{ text }} {{ label }}", target="label")


def test_unknown_template_suggests_close_names():
    with pytest.raises(UnknownNameError, match="Did you mean 'summarize/1'"):
        get_template("sumarize/1")
    with pytest.raises(UnknownNameError, match="unknown task 'sumarize'.*'summarize'"):
        list_templates("sumarize")


def test_registry_and_resolution():
    t = register_template(PromptTemplate("unit/1", "unit", "Say {{ x }}", target="y"), overwrite=True)
    assert get_template("unit/1") is t
    with pytest.raises(TemplateError, match="already registered"):
        register_template(t)
    assert [x.id for x in resolve_templates("qa")] == ["qa/1", "qa/2", "qa/3"]
    assert [x.id for x in resolve_templates(["qa/2", t])] == ["qa/2", "unit/1"]
