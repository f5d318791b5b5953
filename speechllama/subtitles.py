"""Old import path: subtitles now live in ``speechllama.inference.subtitles``."""

from .inference.subtitles import *  # noqa: F401,F403
