"""The text around the audio: instructions and prompt layouts, with the LLM contract.

A row is ``[before][audio vectors][after][target tokens][eos]``. :func:`build_prompt` gives
``before`` and ``after`` for a task:

- an LLM with a chat template (an instruction-tuned model such as SmolLM2-Instruct): a user turn
  ``"{instruction}\\n<audio>"`` after an optional system turn, then the assistant prompt;
- a base LLM without one (Gemma-3-270M): the layout it continues best from text, a source line and
  a target label, ``"German:<audio>\\nEnglish:"`` for translation and
  ``"German:<audio>\\nGerman transcript:"`` for transcription (``"Speech:..."`` when the source
  language is not named). The audio vectors stand where the words after "German:" would, whose
  first token carries the word-start marker (the piece prior's labels are word-initial tokens).
  Measured with the frozen Gemma-3-270M translating the demo's test sentences from text: 22.4
  BLEU with this layout, 0.8 with "{instruction}\\nAudio: ...\\nAnswer:" (docs/design.md,
  "The prompt").

Targets start with the tokenizer's word-start marker (``tasks.speech_llm.target_text``), as the
token after ``"English:"`` does in running text.
"""

from __future__ import annotations

from ..errors import UsageError

AUDIO_PLACEHOLDER = "<audio>"
USER_TEMPLATE = "{instruction}\n" + AUDIO_PLACEHOLDER  # the user turn of the chat template

LANGUAGES = {
    "ar": "Arabic", "bg": "Bulgarian", "ca": "Catalan", "cs": "Czech", "cy": "Welsh", "da": "Danish",
    "de": "German", "el": "Greek", "en": "English", "es": "Spanish", "et": "Estonian", "fa": "Persian",
    "fi": "Finnish", "fr": "French", "hi": "Hindi", "hr": "Croatian", "hu": "Hungarian", "id": "Indonesian",
    "it": "Italian", "ja": "Japanese", "ko": "Korean", "lt": "Lithuanian", "lv": "Latvian", "mn": "Mongolian",
    "nl": "Dutch", "pl": "Polish", "pt": "Portuguese", "ro": "Romanian", "ru": "Russian", "sk": "Slovak",
    "sl": "Slovenian", "sv": "Swedish", "ta": "Tamil", "tr": "Turkish", "uk": "Ukrainian", "vi": "Vietnamese",
    "zh": "Chinese",
}
TRANSCRIBE_TASKS = ("asr", "transcribe")
TRANSLATE_TASKS = ("ast", "st", "translate")


def language_name(code: str) -> str:
    """'de' -> 'German'; an unknown code is returned as it is."""
    return LANGUAGES.get(code.lower(), code)


def _check_task(task: str, tgt_lang: str | None) -> None:
    if task not in TRANSCRIBE_TASKS + TRANSLATE_TASKS:
        raise UsageError(f"unknown task {task!r}; expected one of {TRANSCRIBE_TASKS + TRANSLATE_TASKS}")
    if task in TRANSLATE_TASKS and not tgt_lang:
        raise UsageError(f"task {task!r} needs a target language")


def instruction(task: str, src_lang: str | None, tgt_lang: str | None = None) -> str:
    """The instruction for a task: 'asr'/'transcribe', or 'ast'/'st'/'translate' (which needs ``tgt_lang``).
    ``src_lang=None`` leaves the source language unnamed (for audio of unknown language).

    >>> instruction("translate", "de", "en")
    'Translate the German speech into English.'
    >>> instruction("transcribe", None)
    'Transcribe the speech.'
    """
    _check_task(task, tgt_lang)
    source = f"the {language_name(src_lang)} speech" if src_lang else "the speech"
    if task in TRANSCRIBE_TASKS:
        return f"Transcribe {source}."
    return f"Translate {source} into {language_name(tgt_lang)}."


def plain_layout(task: str, src_lang: str | None, tgt_lang: str | None = None) -> str:
    """The base-LLM layout with the audio placeholder.

    >>> plain_layout("st", "de", "en")
    'German:<audio>\\nEnglish:'
    >>> plain_layout("asr", None)
    'Speech:<audio>\\nTranscript:'
    """
    _check_task(task, tgt_lang)
    source = language_name(src_lang) if src_lang else "Speech"
    if task in TRANSLATE_TASKS:
        label = language_name(tgt_lang)
    else:
        label = f"{language_name(src_lang)} transcript" if src_lang else "Transcript"
    return f"{source}:{AUDIO_PLACEHOLDER}\n{label}:"


def build_prompt(tokenizer, task: str, src_lang: str | None, tgt_lang: str | None = None,
                 system: str | None = None) -> tuple[list[int], list[int]]:
    """Token ids of the text before and after the audio vectors (module docstring); the
    tokenizer's BOS comes first where the template does not already add it."""
    if getattr(tokenizer, "chat_template", None):
        messages = [{"role": "system", "content": system}] if system else []
        text = USER_TEMPLATE.format(instruction=instruction(task, src_lang, tgt_lang))
        messages.append({"role": "user", "content": text})
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        bos = []
    else:
        text = plain_layout(task, src_lang, tgt_lang)
        bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    if text.count(AUDIO_PLACEHOLDER) != 1:
        raise UsageError(f"the prompt must contain {AUDIO_PLACEHOLDER!r} exactly once: {text!r}")
    before, after = text.split(AUDIO_PLACEHOLDER)
    before_ids = bos + tokenizer(before, add_special_tokens=False)["input_ids"]
    after_ids = tokenizer(after, add_special_tokens=False)["input_ids"]
    return before_ids, after_ids


class Prompter:
    """:func:`build_prompt` for (task, src_lang or None, tgt_lang), cached."""

    def __init__(self, tokenizer, system: str):
        self.tokenizer, self.system, self.cache = tokenizer, system, {}

    def __call__(self, task: str, src_lang: str | None, tgt_lang: str):
        key = (task, src_lang, tgt_lang)
        if key not in self.cache:
            self.cache[key] = build_prompt(self.tokenizer, task, src_lang, tgt_lang, self.system or None)
        return self.cache[key]


def stop_ids(tokenizer) -> list[int]:
    """Token ids that end a hypothesis: EOS, and the newline where it is one token (a base LLM
    translating from text goes on to a next line; no target holds a newline)."""
    newline = tokenizer("\n", add_special_tokens=False)["input_ids"]
    return [tokenizer.eos_token_id] + (newline if len(newline) == 1 else [])
