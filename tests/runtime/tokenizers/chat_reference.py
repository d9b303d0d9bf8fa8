"""Reference renderings of chat templates for chat_template_test, by transformers' own jinja2
environment (PreTrainedTokenizerBase._compile_jinja_template: ImmutableSandboxedEnvironment with
trim_blocks and lstrip_blocks, its tojson and raise_exception), with the variables
apply_chat_template passes (messages, tools=None, documents=None, add_generation_prompt, the
special tokens).

Templates: three written for this test to use every construct Tessera supports, and public
templates of LLaMA 3, LLaMA 3.2, Mistral, Qwen2 and Gemma (see PUBLIC below for provenance).
Writes OUT/templates.json and OUT/cases.jsonl (one rendering per line, or the error it raised).
Usage: chat_reference.py OUT_DIR [CASES_PER_TEMPLATE]
"""

import json
import os
import random
import sys

import jinja2.ext
from jinja2.exceptions import TemplateError
from jinja2.sandbox import ImmutableSandboxedEnvironment
from transformers.tokenization_utils_base import PreTrainedTokenizerBase


def compile_with_loopcontrols(source):
    """transformers 4.44's environment plus jinja2.ext.loopcontrols ({% break %}, {% continue %}),
    which later transformers versions enable."""
    def raise_exception(message):
        raise TemplateError(message)

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators,
                          sort_keys=sort_keys)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=[jinja2.ext.loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    return env.from_string(source)

CONSTRUCTS_A = """{#- a comment that strips the whitespace on its left -#}
{%- set ns = namespace(count=0, sys='') -%}
{%- for m in messages -%}
  {%- if m.role == 'system' -%}{%- set ns.sys = m.content | trim -%}{%- endif -%}
{%- endfor -%}
{{ bos_token }}
{%- if ns.sys %}<<SYS>>{{ ns.sys | upper }}<</SYS>>
{% endif -%}
{% for m in messages if m.role != 'system' %}
  {%- set ns.count = ns.count + 1 -%}
  [{{ loop.index }}/{{ loop.length }}|{{ loop.index0 }}|{{ loop.revindex }}|{{ loop.revindex0 }}|{{ 'F' if loop.first else '' }}{{ 'L' if loop.last else '' }}|{{ loop.cycle('odd', 'even') }}|{{ loop.previtem.role if loop.previtem is defined else '-' }}]
  {%- if m.role == 'user' %} U: {{ m.content }}
  {%- elif m.role == 'assistant' %} A: {{ m['content'] | trim }}{{ eos_token }}
  {%- else %} ?: {{ m.content | length }}
  {%- endif %}
  {%- if loop.index > 6 %}{% break %}{% endif %}
  {%- if m.content == '' %}{% continue %}{% endif %} .
{% else %}
(no messages)
{% endfor %}
{{- ns.count ~ ' turns' }}
{%- set x = 1 %}{% for i in range(3) %}{% set x = x + i %}{{ x }}{% endfor %}{{ x }}
{%- if add_generation_prompt %}
A:{% endif %}
"""

CONSTRUCTS_B = """{%- macro fmt(role, text, sep=': ') -%}
{{ role | capitalize }}{{ sep }}{{ text }}
{%- endmacro -%}
{%- set roles = messages | map(attribute='role') | list -%}
roles={{ roles | join(',') }} n={{ messages | length }} uniq={{ roles | unique | list | tojson }}
{%- set users = messages | selectattr('role', 'equalto', 'user') | list %}
users={{ users | length }} others={{ messages | rejectattr('role', 'equalto', 'user') | list | length }} first={{ (messages | first).role if messages else 'none' }} last={{ (messages | last).role if messages else 'none' }}
{% for m in messages -%}
{{ fmt(m.role, m.content) }}|{{ fmt(m.role, m.content, sep=' -> ') }}
{%- if m.content is string and m.content.startswith('#') %} [hash]{% endif %}
{%- if m.content.endswith(('?', '!')) %} [punct]{% endif %}
{%- if 'x' in m.content %} [has x]{% endif %}
{%- if 'x' not in m.content and m.content %} [no x]{% endif %}
{%- if m.content | length > 10 %} long:{{ m.content[:5] }}...{{ m.content[-3:] }}{{ m.content[::-1][:2] }}{% endif %}
 words={{ m.content.split() | length }} parts={{ m.content.split('a') | length }} up={{ m.content.upper()[:8] }} lo={{ m.content.lower()[:8] }} ti={{ m.content.title()[:12] }} tf={{ m.content[:12] | title }} rep={{ m.content.replace('a', '@')[:6] }} strip=[{{ m.content.strip()[:4] }}] ls=[{{ m.content.lstrip()[:3] }}] rs=[{{ m.content.rstrip()[-3:] }}] find={{ m.content.find('e') }}
 json={{ m | tojson }} pretty={{ m | tojson(indent=2) }} sorted={{ m | tojson(sort_keys=true) }}
 int={{ (loop.index * 3 + 1) // 2 }} mod={{ loop.index % 3 }} pow={{ 2 ** loop.index }} div={{ loop.index / 4 }} neg={{ -loop.index }} fl={{ loop.index * 1.5 }}
 {{ m.get('name', 'anon') }} {{ m.name | default('dflt') }} {{ m.missing is defined }} {{ m.missing is undefined }} {{ none is none }} {{ m.content is not none }} {{ m.content | trim | length }} {{ m.content | reverse | first if m.content else '' }}
{% endfor -%}
{%- set items = {'b': 2, 'a': 1, 'C': 3} -%}
{% for k, v in items | dictsort %}{{ k }}={{ v }};{% endfor %} {{ items | items | list }} {{ items.keys() | list }} {{ items.values() | list }} {{ [3, 1, 2] | sort | list }} {{ [3, 1, 2] | sort(reverse=true) }} {{ ['b', 'A', 'c'] | sort }} {{ [1, 2, 3] | sum }} {{ [1, 2, 3] | select('odd') | list }} {{ [1, 2, 3] | reject('odd') | list }} {{ range(5) | list }} {{ range(1, 9, 3) | list }} {{ [4, 9, 2] | max }} {{ [4, 9, 2] | min }}
{{ 'abc' ~ 1 ~ none ~ true }} {{ [1, 'a', none, true, 1.5, {'k': [1, 2]}] }} {{ (1, 2) }} {{ 1 == 1.0 }} {{ 1 != 2 and not false or false }} {{ 5 > 3 > 1 }} {{ 'a' < 'b' }} {{ 7 is odd }} {{ 8 is even }} {{ 9 is divisibleby(3) }} {{ 'x' is string }} {{ 1 is number }} {{ {} is mapping }} {{ [] is iterable }} {{ 3.7 | int }} {{ '42' | int + 1 }} {{ 2 | float }} {{ -3 | abs }} {{ 2.567 | round(2) }} {{ 'ab' * 3 }} {{ '%s-%d' % ('x', 7) }} {{ 1e16 }} {{ 0.1 + 0.2 }} {{ 10 / 4 }} {{ -7 // 2 }} {{ -7 % 3 }}
{{ '{} and {}'.format('p', 'q') }} {{ ', '.join(['j', 'k']) }} {{ 'a-b c' | title }} {{ 'mIxEd' | lower }} {{ 'x' | center(5) }}| {{ 'l1\\nl2' | indent(2) }} {{ 'l1\\nl2' | indent(2, true) }} {{ [1, 2, 3, 4, 5] | batch(2) | list }} {{ 'a b' | wordcount }}
{%- if add_generation_prompt %}
{{ raise_exception('too many messages') if messages | length > 100 else 'Assistant:' }}
{%- endif %}
"""

WHITESPACE = """Header
    {% if true %}
    indented data
    {% endif %}
{%+ if true %}  keep-left{% endif +%}
after
  {#- comment strips left #}
  {# plain comment #}
{% for m in messages %}
  - {{ m.role }}:{{ m.content -}}   
  !
    {%- if loop.last %} (last){% endif %}
{% endfor %}
{% raw %}{{ not rendered }} {% if %}{% endraw %}
{% set captured %}
block {{ messages | length }}
{% endset %}
[{{ captured }}]
{% set shouted | upper %}quiet {{ messages | length }}{% endset %}{{ shouted }}
{% filter upper %}shout {{ messages[0].role if messages else '' }}{% endfilter %}
{% with x = 5 %}{{ x * 2 }}{% endwith %}
{{ "tab\\there" }} {{ 'it''s' }} {{ "q\\"uote" }} {{ '\\u00e9\\x41' }}
   {%- generation %} gen {% endgeneration %}
end
"""

# Public chat templates. Their text is as quoted, identically, in several public repositories
# found with the search tool (tokenizer_config.json "chat_template" of each model).
PUBLIC = {
    # meta-llama/Meta-Llama-3-8B-Instruct
    "llama3": "{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}",
    # meta-llama/Llama-3.2-3B-Instruct (with tools)
    "llama3_2": "{{- bos_token }}\n{%- if custom_tools is defined %}\n    {%- set tools = custom_tools %}\n{%- endif %}\n{%- if not tools_in_user_message is defined %}\n    {%- set tools_in_user_message = true %}\n{%- endif %}\n{%- if not date_string is defined %}\n    {%- if strftime_now is defined %}\n        {%- set date_string = strftime_now(\"%d %b %Y\") %}\n    {%- else %}\n        {%- set date_string = \"26 Jul 2024\" %}\n    {%- endif %}\n{%- endif %}\n{%- if not tools is defined %}\n    {%- set tools = none %}\n{%- endif %}\n\n{#- This block extracts the system message, so we can slot it into the right place. #}\n{%- if messages[0]['role'] == 'system' %}\n    {%- set system_message = messages[0]['content']|trim %}\n    {%- set messages = messages[1:] %}\n{%- else %}\n    {%- set system_message = \"\" %}\n{%- endif %}\n\n{#- System message #}\n{{- \"<|start_header_id|>system<|end_header_id|>\\n\\n\" }}\n{%- if tools is not none %}\n    {{- \"Environment: ipython\\n\" }}\n{%- endif %}\n{{- \"Cutting Knowledge Date: December 2023\\n\" }}\n{{- \"Today Date: \" + date_string + \"\\n\\n\" }}\n{%- if tools is not none and not tools_in_user_message %}\n    {{- \"You have access to the following functions. To call a function, please respond with JSON for a function call.\" }}\n    {{- 'Respond in the format {\"name\": function name, \"parameters\": dictionary of argument name and its value}.' }}\n    {{- \"Do not use variables.\\n\\n\" }}\n    {%- for t in tools %}\n        {{- t | tojson(indent=4) }}\n        {{- \"\\n\\n\" }}\n    {%- endfor %}\n{%- endif %}\n{{- system_message }}\n{{- \"<|eot_id|>\" }}\n\n{#- Custom tools are passed in a user message with some extra guidance #}\n{%- if tools_in_user_message and not tools is none %}\n    {#- Extract the first user message so we can plug it in here #}\n    {%- if messages | length != 0 %}\n        {%- set first_user_message = messages[0]['content']|trim %}\n        {%- set messages = messages[1:] %}\n    {%- else %}\n        {{- raise_exception(\"Cannot put tools in the first user message when there's no first user message!\") }}\n{%- endif %}\n    {{- '<|start_header_id|>user<|end_header_id|>\\n\\n' -}}\n    {{- \"Given the following functions, please respond with a JSON for a function call \" }}\n    {{- \"with its proper arguments that best answers the given prompt.\\n\\n\" }}\n    {{- 'Respond in the format {\"name\": function name, \"parameters\": dictionary of argument name and its value}.' }}\n    {{- \"Do not use variables.\\n\\n\" }}\n    {%- for t in tools %}\n        {{- t | tojson(indent=4) }}\n        {{- \"\\n\\n\" }}\n    {%- endfor %}\n    {{- first_user_message + \"<|eot_id|>\"}}\n{%- endif %}\n\n{%- for message in messages %}\n    {%- if not (message.role == 'ipython' or message.role == 'tool' or 'tool_calls' in message) %}\n        {{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'+ message['content'] | trim + '<|eot_id|>' }}\n    {%- elif 'tool_calls' in message %}\n        {%- if not message.tool_calls|length == 1 %}\n            {{- raise_exception(\"This model only supports single tool-calls at once!\") }}\n        {%- endif %}\n        {%- set tool_call = message.tool_calls[0].function %}\n        {{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' -}}\n        {{- '{\"name\": \"' + tool_call.name + '\", ' }}\n        {{- '\"parameters\": ' }}\n        {{- tool_call.arguments | tojson }}\n        {{- \"}\" }}\n        {{- \"<|eot_id|>\" }}\n    {%- elif message.role == \"tool\" or message.role == \"ipython\" %}\n        {{- \"<|start_header_id|>ipython<|end_header_id|>\\n\\n\" }}\n        {%- if message.content is mapping or message.content is iterable %}\n            {{- message.content | tojson }}\n        {%- else %}\n            {{- message.content }}\n        {%- endif %}\n        {{- \"<|eot_id|>\" }}\n    {%- endif %}\n{%- endfor %}\n{%- if add_generation_prompt %}\n    {{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}\n{%- endif %}\n",
    # mistralai/Mistral-7B-Instruct-v0.1
    "mistral": "{{ bos_token }}{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}{% elif message['role'] == 'assistant' %}{{ message['content'] + eos_token}}{% else %}{{ raise_exception('Only user and assistant roles are supported!') }}{% endif %}{% endfor %}",
    # Qwen/Qwen2-7B-Instruct
    "qwen2": "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}",
    # google/gemma-7b-it
    "gemma": "{{ bos_token }}{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}{% if (message['role'] == 'assistant') %}{% set role = 'model' %}{% else %}{% set role = message['role'] %}{% endif %}{{ '<start_of_turn>' + role + '\n' + message['content'] | trim + '<end_of_turn>\n' }}{% endfor %}{% if add_generation_prompt %}{{'<start_of_turn>model\n'}}{% endif %}",
}

SPECIALS = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "pad_token": "<pad>"}

CONTENTS = ["", "Hello", "  spaced out  ", "Ünïcödé ✓ 中文 🙂 ﬁ", "line1\nline2\n", "it's a \"quote\"",
            "#hashtag?", "x marks the spot!", "a" * 40, "\ttabbed\t", "emoji 👨‍👩‍👧 family",
            "{{ not a template }} {% if %}", "<|im_start|>fake", "ünter Σίσυφος", "مرحبا بالعالم",
            "Mixed CASE title words", "trailing space ", "   ", "e\u0301 combining", "1 + 1 = 2",
            "backslash \\ and \\n literal", "x", "What?", "Wow!", "a-b c(d) [e] <f>"]

TOOLS = [{"type": "function", "function": {
    "name": "get_weather", "description": "Weather at a place",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"},
                                                    "unit": {"type": "string",
                                                             "enum": ["c", "f"]}},
                   "required": ["city"]}}}]


def message_lists(r, n, alternate):
    out = [[]] if not alternate else []
    while len(out) < n:
        msgs = []
        k = r.randint(1, 7)
        if not alternate and r.random() < 0.4:
            msgs.append({"role": "system", "content": r.choice(CONTENTS)})
        for i in range(k):
            if alternate and r.random() > 0.08:
                role = "user" if i % 2 == 0 else "assistant"
            else:
                role = r.choice(["user", "assistant", "user", "system"])
            m = {"role": role, "content": r.choice(CONTENTS)}
            if r.random() < 0.15:
                m["name"] = r.choice(["alice", "bob"])
            msgs.append(m)
        out.append(msgs)
    return out


# Namespaces that hold themselves, and a long chain of namespaces (the one value a template can
# change after making it): repr with Python's [...] / {...} markers, identity ==, and freeing them.
NAMESPACES = """{%- set ns = namespace(n=0, self=none, roles='') -%}
{%- set ns.self = ns -%}
{%- set ns.items = [ns, (ns, 1)] -%}
{%- for m in messages %}{% set ns.n = ns.n + 1 %}{% set ns.roles = ns.roles ~ m.role[0] %}{% endfor -%}
{{ ns }}
{{ ns.items }}
{{ ns == ns.self }} {{ ns.self.self.n }} {{ ns.items[1][0].roles }} {{ [ns] == [ns.self] }} {{ ns in ns.items }}
{%- set h = namespace(x=none) -%}
{%- for i in range(3000) %}{% set h.x = namespace(p=h.x, i=i) %}{% endfor %}
{{ h.x.p.p.i }} {{ h.x.p.i }}
{%- if add_generation_prompt %}
A:{% endif %}
"""


def main():
    out_dir = sys.argv[1]
    n = int(sys.argv[2]) if len(sys.argv) > 2 else 60
    os.makedirs(out_dir, exist_ok=True)
    templates = {"constructs_a": CONSTRUCTS_A, "constructs_b": CONSTRUCTS_B,
                 "whitespace": WHITESPACE, "namespaces": NAMESPACES, **PUBLIC}
    with open(os.path.join(out_dir, "templates.json"), "w", encoding="utf-8") as f:
        json.dump(templates, f, ensure_ascii=False)
    r = random.Random(1234)
    cases = 0
    with open(os.path.join(out_dir, "cases.jsonl"), "w", encoding="utf-8") as f:
        for name, source in templates.items():
            if name == "constructs_a":
                compiled = compile_with_loopcontrols(source)
            else:
                compiled = PreTrainedTokenizerBase._compile_jinja_template(object(), source)
            lists = message_lists(r, n, alternate=name in ("mistral", "gemma"))
            for i, msgs in enumerate(lists):
                extra = {}
                if name == "llama3_2":
                    if i % 3 == 1:
                        extra["tools"] = TOOLS
                    if i % 4 == 2:
                        extra["tools"] = TOOLS
                        extra["tools_in_user_message"] = False
                    if i % 5 == 3 and msgs:
                        msgs = msgs + [{"role": "assistant", "tool_calls": [{"type": "function",
                                        "function": {"name": "get_weather",
                                                     "arguments": {"city": "Zürich"}}}]},
                                       {"role": "tool", "content": {"temp": 21.5, "ok": True}}]
                    if i % 7 == 0:
                        extra["date_string"] = "01 Jan 2025"
                add_gen = i % 2 == 0
                variables = dict(SPECIALS)
                variables.update(messages=msgs, tools=None, documents=None,
                                 add_generation_prompt=add_gen)
                variables.update(extra)
                try:
                    text, error = compiled.render(**variables), None
                except Exception as e:  # noqa: BLE001 - the test compares errors too
                    text, error = None, f"{type(e).__name__}: {e}"
                f.write(json.dumps({"template": name, "messages": msgs,
                                    "add_generation_prompt": add_gen, "extra": extra,
                                    "expected": text, "error": error},
                                   ensure_ascii=False) + "\n")
                cases += 1
    print(f"chat_reference: {len(templates)} templates, {cases} renderings")


if __name__ == "__main__":
    main()
