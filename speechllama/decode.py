"""Old import path: the decoding loop now lives in ``speechllama.models.decode``."""

from .models.decode import *  # noqa: F401,F403
