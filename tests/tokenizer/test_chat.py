"""Chat templates run sandboxed: HF conventions work, escapes are refused and nothing runs."""

from __future__ import annotations

import pytest

from phijax.errors import TokenizerError
from phijax.tokenizer import chat

MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]


def test_hf_conventions():
    template = (
        "{{ bos_token }}{% for m in messages %}[{{ m['role'] }}] {{ m['content'] | tojson }}\n{% endfor %}"
        "{% if add_generation_prompt %}[assistant]{% else %}{{ eos_token }}{% endif %}"
    )
    out = chat.render(template, MESSAGES, bos_token="<s>", eos_token="</s>")
    assert out == '<s>[system] "Be brief."\n[user] "Hi"\n[assistant]'
    assert chat.render(template, MESSAGES, add_generation_prompt=False).endswith('[user] "Hi"\n')


def test_phi3_template_renders_the_seed_prompt():
    out = chat.render(
        chat.PHI3_TEMPLATE, [{"role": "user", "content": "Write a haiku about ice hockey"}]
    )
    assert out == "<|user|>\nWrite a haiku about ice hockey<|end|>\n<|assistant|>\n"


def test_raise_exception_becomes_a_tokenizer_error():
    template = "{% if messages[0]['role'] != 'user' %}{{ raise_exception('first must be user') }}{% endif %}"
    with pytest.raises(TokenizerError, match="first must be user"):
        chat.render(template, MESSAGES)


@pytest.mark.parametrize(
    "template",
    [
        "{{ ''.__class__.__mro__[1].__subclasses__() }}",
        "{{ messages.__class__.__init__.__globals__ }}",
        "{{ raise_exception.__globals__['__builtins__'] }}",
        "{{ cycler.__init__.__globals__.os.system('touch {marker}') }}",
        "{{ self.__init__.__globals__.__builtins__.__import__('os').system('touch {marker}') }}",
        "{{ lipsum.__globals__['os'].popen('touch {marker}').read() }}",
        "{% set x = messages.append({{'role': 'user', 'content': 'injected'}}) %}{{ x }}",
        "{{ messages[0].update({{'content': 'mutated'}}) }}",
        "{{ ().__class__.__base__.__subclasses__() }}",
        "{% for c in [].__class__.__base__.__subclasses__() %}{{ c }}{% endfor %}",
    ],
)
def test_escapes_are_refused_and_nothing_runs(tmp_path, template):
    marker = tmp_path / "pwned"
    messages = [dict(m) for m in MESSAGES]
    with pytest.raises(TokenizerError):
        chat.render(template.replace("{marker}", str(marker)), messages)
    assert not marker.exists()
    assert messages == MESSAGES


def test_file_access_is_impossible():
    with pytest.raises(TokenizerError):
        chat.render("{% include '/etc/passwd' %}", MESSAGES)
    with pytest.raises(TokenizerError):
        chat.render("{{ open('/etc/passwd').read() }}", MESSAGES)


@pytest.mark.parametrize(
    ("template", "messages", "message"),
    [
        ("{% for %}", MESSAGES, "syntax error"),
        ("{{ messages }}", "hello", "must be a list"),
        ("{{ messages }}", [{"role": "user"}], r"messages\[0\]"),
        ("{{ messages[5]['content'] }}", MESSAGES, "failed to render"),
    ],
)
def test_bad_templates_and_messages(template, messages, message):
    with pytest.raises(TokenizerError, match=message):
        chat.render(template, messages)


def test_output_is_bounded():
    with pytest.raises(TokenizerError, match="refusing more than"):
        chat.render("{% for i in range(99999) %}{{ 'x' * 99 }}{% endfor %}", MESSAGES)
