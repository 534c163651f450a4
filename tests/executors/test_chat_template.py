"""Chat templates: the model's own or a built-in one, assistant-only loss, tool calls, saved with the tokenizer."""

from __future__ import annotations

import pytest

from executors.chat_template import (
    ALPACA_TEMPLATE,
    CHAT_TEMPLATE,
    TemplateError,
    TemplateSpec,
    choose_template,
)
from executors.formats import Sample, to_sample

pytestmark = pytest.mark.train

#: ChatML (Qwen-style) without {% generation %} tags: the assistant tokens are found by rendering prefixes
CHATML = ("{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\\n' + (m['content'] or '') }}"
          "{% if m['tool_calls'] %}{% for c in m['tool_calls'] %}{{ '<tool_call>' + (c['function'] | tojson) + "
          "'</tool_call>' }}{% endfor %}{% endif %}{{ '<|im_end|>\\n' }}{% endfor %}"
          "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")
#: a template that renders the last message differently from earlier ones (like templates that strip reasoning)
UNSTABLE = ("{% for m in messages %}{{ m['role'] + ': ' + m['content'] }}{% if loop.last %}{{ ' [end]' }}{% endif %}"
            "{{ '\\n' }}{% endfor %}{% if add_generation_prompt %}{{ 'assistant: ' }}{% endif %}")

CHAT = {"messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "u"},
                     {"role": "assistant", "content": "a1"}, {"role": "user", "content": "u2"},
                     {"role": "assistant", "content": "a2"}]}


@pytest.fixture(scope="module")
def tok(tiny_model):
    from executors.modeling import load_tokenizer

    return load_tokenizer(tiny_model)


def spec(text, source="file:test"):
    import hashlib

    return TemplateSpec(source, text, hashlib.sha256(text.encode()).hexdigest())


def render(tok, template, record, fmt="chat"):
    from executors.chat_template import Renderer

    text, spans = Renderer(tok, template).render(to_sample(record, fmt))
    return text, [text[a:b] for a, b in spans]


def test_the_builtin_chat_template_is_the_projects_conversation_format(tok):
    text, trained = render(tok, spec(CHAT_TEMPLATE), CHAT)
    assert text == "<s><|system|>\ns\n<|user|>\nu\n<|assistant|>\na1</s>\n<|user|>\nu2\n<|assistant|>\na2</s>\n"
    assert trained == ["a1</s>", "a2</s>"]


def test_the_builtin_alpaca_template(tok):
    text, trained = render(tok, spec(ALPACA_TEMPLATE), {"instruction": "Spell 7", "input": "", "output": "seven"},
                           "alpaca")
    assert text == "<s>### Instruction:\nSpell 7\n\n### Response:\nseven</s>\n\n"
    assert trained == ["seven</s>"]
    with_input, _ = render(tok, spec(ALPACA_TEMPLATE), {"instruction": "Spell", "input": "7", "output": "seven"},
                           "alpaca")
    assert with_input.startswith("<s>### Instruction:\nSpell\n\n7\n\n### Response:\n")


def test_a_model_template_without_generation_tags_is_masked_by_rendering_prefixes(tok):
    text, trained = render(tok, spec(CHATML, "model"), CHAT)
    assert text.startswith("<|im_start|>system\ns<|im_end|>\n<|im_start|>user\nu<|im_end|>\n")
    assert trained == ["a1<|im_end|>", "a2<|im_end|>"]  # the newline between turns is not trained


def test_a_template_that_is_not_prefix_stable_is_refused(tok):
    with pytest.raises(TemplateError, match="cannot be located"):
        render(tok, spec(UNSTABLE), CHAT)


def test_weight_zero_and_conversational_prompt_completion_train_only_what_they_should(tok):
    weighted = {"messages": [{"role": "user", "content": "u"}, {"role": "assistant", "content": "a1", "weight": 0},
                             {"role": "user", "content": "u2"}, {"role": "assistant", "content": "a2"}]}
    assert render(tok, spec(CHAT_TEMPLATE), weighted)[1] == ["a2</s>"]
    assert render(tok, spec(CHATML), weighted)[1] == ["a2<|im_end|>"]
    pc = {"prompt": [{"role": "user", "content": "u"}, {"role": "assistant", "content": "earlier"},
                     {"role": "user", "content": "u2"}],
          "completion": [{"role": "assistant", "content": "answer"}]}
    assert render(tok, spec(CHAT_TEMPLATE), pc, "prompt_completion")[1] == ["answer</s>"]


def test_raw_prompt_completion_and_text(tok):
    text, trained = render(tok, spec(CHAT_TEMPLATE), {"prompt": "2+2=", "completion": "4"}, "prompt_completion")
    assert text == "<s>2+2=4</s>" and trained == ["4</s>"]
    text, trained = render(tok, spec(CHAT_TEMPLATE), {"text": "plain words"}, "text")
    assert text == "<s>plain words</s>" and trained == ["plain words</s>"]


def test_tool_calls_render_with_arguments_as_objects(tok):
    record = {"tools": [{"type": "function", "function": {"name": "weather", "parameters": {"type": "object"}}}],
              "messages": [{"role": "user", "content": "Weather in Oslo?"},
                           {"role": "assistant", "tool_calls": [{"type": "function", "function": {
                               "name": "weather", "arguments": "{\"city\": \"Oslo\"}"}}]},
                           {"role": "tool", "content": "{\"temp\": 3}"},
                           {"role": "assistant", "content": "It is 3 degrees."}]}
    text, trained = render(tok, spec(CHAT_TEMPLATE), record)
    assert text.startswith('<s><|tools|>\n[{"type": "function"')
    assert trained == ['<tool_call>{"name": "weather", "arguments": {"city": "Oslo"}}</tool_call></s>',
                       "It is 3 degrees.</s>"]
    assert "<|tool|>\n{\"temp\": 3}\n" in text
    _, chatml = render(tok, spec(CHATML), record)
    assert chatml[0] == '<tool_call>{"name": "weather", "arguments": {"city": "Oslo"}}</tool_call><|im_end|>'


def test_labels_cover_exactly_the_assistant_tokens(tok):
    from executors.chat_template import Renderer, tokenize_rendered
    from executors.data import IGNORE_INDEX

    text, spans = Renderer(tok, spec(CHAT_TEMPLATE)).render(to_sample(CHAT, "chat"))
    (ids, labels), = tokenize_rendered(tok, [text], [spans], 512)
    assert tok.decode(ids) == text
    trained = [i for i, label in zip(ids, labels, strict=True) if label != IGNORE_INDEX]
    assert tok.decode(trained) == "a1</s>a2</s>"
    assert ids[0] == tok.bos_token_id and labels[0] == IGNORE_INDEX
    # truncated inside the first prompt: nothing to learn, the example is dropped
    assert tokenize_rendered(tok, [text], [spans], 3) == [None]


def test_the_saved_tokenizer_reproduces_the_training_text(tok, tmp_path):
    from transformers import AutoTokenizer

    template = spec(CHAT_TEMPLATE, "builtin:chat")
    text, _ = render(tok, template, CHAT)
    tok.chat_template = template.text
    tok.save_pretrained(tmp_path / "saved")
    served = AutoTokenizer.from_pretrained(tmp_path / "saved")
    assert served.apply_chat_template(CHAT["messages"], tokenize=False) == text
    prompt = served.apply_chat_template(CHAT["messages"][:4], tokenize=False, add_generation_prompt=True)
    assert text.startswith(prompt) and text[len(prompt):] == "a2</s>\n"


def test_choose_template(tmp_path):
    assert choose_template("auto", None, ["alpaca"]).source == "builtin:alpaca"
    assert choose_template("auto", None, ["alpaca", "chat"]).source == "builtin:chat"
    model = choose_template("auto", CHATML, ["alpaca"])
    assert model.source == "model" and model.text == CHATML and not model.has_generation_tags
    assert choose_template("chat", CHATML, ["chat"]).source == "builtin:chat"
    with pytest.raises(TemplateError, match="no chat_template"):
        choose_template("model", None, ["chat"])
    path = tmp_path / "t.jinja"
    path.write_text(CHATML)
    assert choose_template(str(path), None, ["chat"]).source == f"file:{path}"
    with pytest.raises(TemplateError, match="cannot read"):
        choose_template(str(tmp_path / "missing.jinja"), None, ["chat"])


def test_sample_of_every_format():
    assert to_sample({"conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "yo"}],
                      "system": "be brief"}, "sharegpt") == Sample(
        "chat", [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"},
                 {"role": "assistant", "content": "yo"}], [False, False, True], None)
