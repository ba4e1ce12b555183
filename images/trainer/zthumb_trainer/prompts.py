"""The ``{trigger}`` prompt convention, shared by the validation samples (train) and the eval."""

from __future__ import annotations


def expand_prompt(prompt: str, trigger_word: str) -> str:
    """Prompts may say ``{trigger}``; a prompt without it gets the trigger word in front."""
    if "{trigger}" in prompt:
        return prompt.replace("{trigger}", trigger_word)
    if trigger_word and trigger_word.lower() not in prompt.lower().split():
        return f"{trigger_word}, {prompt}"
    return prompt
