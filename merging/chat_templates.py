"""Built-in chat templates, by the names mergekit's ``chat_template:`` accepts.

mergekit 0.1.5 ships five (``mergekit/_data/chat_templates/``: ``alpaca``, ``chatml``,
``exaone``, ``llama3``, ``mistral``) and writes the chosen file's text as the output
tokenizer's ``chat_template``. The templates here are hubmerge's own Jinja, written so that
transformers' ``apply_chat_template`` (which compiles with ``trim_blocks`` and
``lstrip_blocks``) renders every conversation exactly as it renders mergekit's file, quirks
included: a merged model gets the same prompts whichever tool made it. Each constant's comment
says what it renders.
"""

from __future__ import annotations

# <|im_start|>{role}\n{content}<|im_end|>\n per message; then <|im_start|>assistant\n.
CHATML = (
    "{%- for message in messages -%}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}"
)

# The last system message (trimmed; '' without one), a blank line, then the user / assistant /
# user_context turns as "### Instruction:" / "### Response:" / "### Input:" + "\n" + the
# trimmed content, separated by a blank line (none after the conversation's last message, and
# other roles print nothing); then "### Response:\n" unless the last message is the assistant's.
ALPACA = (
    "{%- set systems = messages | selectattr('role', 'equalto', 'system') | list -%}"
    "{{- (systems | last)['content'] | trim if systems else '' -}}"
    "{{- '\\n\\n' -}}"
    "{%- set headings = {'user': '### Instruction:', 'assistant': '### Response:', "
    "'user_context': '### Input:'} -%}"
    "{%- for message in messages -%}"
    "{%- if message['role'] in headings -%}"
    "{{- headings[message['role']] + '\\n' + (message['content'] | trim) -}}"
    "{%- if not loop.last -%}{{- '\\n\\n' -}}{%- endif -%}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt and messages[-1]['role'] != 'assistant' -%}"
    "{{- '### Response:\\n' -}}"
    "{%- endif -%}"
)

# EXAONE's turns as mergekit's file renders them, its indentation included: each message is
# "    [|{role}|]{content}\n" and then "        \n\n" after a user's, else
# "        [|endofturn|]\n\n"; an empty system turn "        [|system|][|endofturn|]\n\n"
# comes first when the conversation does not open with a system message; the generation
# prompt is "    [|assistant|]\n".
EXAONE = (
    "{%- for message in messages -%}"
    "{%- if loop.first and message['role'] != 'system' -%}"
    "{{- '        [|system|][|endofturn|]\\n\\n' -}}"
    "{%- endif -%}"
    "{{- '    [|' + message['role'] + '|]' + message['content'] + '\\n' -}}"
    "{%- if message['role'] == 'user' -%}{{- '        \\n\\n' -}}"
    "{%- else -%}{{- '        [|endofturn|]\\n\\n' -}}{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '    [|assistant|]\\n' -}}{%- endif -%}"
)

# bos_token before the first message; per message
# <|start_header_id|>{role}<|end_header_id|>\n\n{trimmed content}<|eot_id|>\n; then the
# assistant header (no newline after it).
LLAMA3 = (
    "{%- for message in messages -%}"
    "{%- if loop.first -%}{{- bos_token -}}{%- endif -%}"
    "{{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' -}}"
    "{{- (message['content'] | trim) + '<|eot_id|>\\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}"
    "{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' -}}"
    "{%- endif -%}"
)

# bos_token, then " [INST] {user} [/INST]" and " {assistant}" + eos_token, alternating from a
# user turn; a leading system message joins the first user turn as "{system}\n\n{user}". Any
# other order or role raises (transformers' raise_exception). No generation prompt.
MISTRAL = (
    "{%- set opening = messages[0] -%}"
    "{%- set system = opening['content'] if opening['role'] == 'system' else none -%}"
    "{%- set turns = messages[1:] if opening['role'] == 'system' else messages -%}"
    "{{- bos_token -}}"
    "{%- for message in turns -%}"
    "{%- set expected = 'user' if loop.index0 is even else 'assistant' -%}"
    "{%- if message['role'] not in ('user', 'assistant') -%}"
    "{{- raise_exception('mistral: only user and assistant turns, after an optional "
    "system message') -}}"
    "{%- elif message['role'] != expected -%}"
    "{{- raise_exception('mistral: turns must alternate user, assistant, user, ...') -}}"
    "{%- elif expected == 'user' -%}"
    "{%- set prefix = system + '\\n\\n' if loop.first and system is not none else '' -%}"
    "{{- ' [INST] ' + prefix + message['content'] + ' [/INST]' -}}"
    "{%- else -%}"
    "{{- ' ' + message['content'] + eos_token -}}"
    "{%- endif -%}"
    "{%- endfor -%}"
)

BUILT_IN = {
    "alpaca": ALPACA,
    "chatml": CHATML,
    "exaone": EXAONE,
    "llama3": LLAMA3,
    "mistral": MISTRAL,
}


def check_chat_template(value: str) -> str:
    """``auto``, a built-in name, or a Jinja template (mergekit's rule: at least 20 characters
    and a ``{``); anything else is refused."""
    if value == "auto" or value in BUILT_IN:
        return value
    if len(value) < 20 or "{" not in value:
        raise ValueError(
            f"chat_template {value!r} is neither 'auto', a built-in name "
            f"({', '.join(sorted(BUILT_IN))}) nor a Jinja template"
        )
    return value


__all__ = ["BUILT_IN", "check_chat_template"]
