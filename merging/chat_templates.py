"""Built-in chat templates, by the names mergekit's ``chat_template:`` accepts.

Each is a Jinja template in transformers' format (``messages``, ``add_generation_prompt``,
``bos_token`` / ``eos_token``), written for the conversation format its name denotes.
"""

from __future__ import annotations

CHATML = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
ALPACA = (
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}{{ message['content'] + '\\n\\n' }}"
    "{% elif message['role'] == 'user' %}"
    "{{ '### Instruction:\\n' + message['content'] + '\\n\\n' }}"
    "{% elif message['role'] == 'assistant' %}"
    "{{ '### Response:\\n' + message['content'] + eos_token + '\\n\\n' }}"
    "{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ '### Response:\\n' }}{% endif %}"
)
LLAMA3 = (
    "{{ bos_token }}{% for message in messages %}"
    "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' "
    "+ message['content'] | trim + '<|eot_id|>' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}"
    "{% endif %}"
)
MISTRAL = (
    "{{ bos_token }}{% for message in messages %}"
    "{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ message['content'] + eos_token }}"
    "{% elif message['role'] == 'system' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}"
    "{% endif %}{% endfor %}"
)
BUILT_IN = {"chatml": CHATML, "alpaca": ALPACA, "llama3": LLAMA3, "mistral": MISTRAL}


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
