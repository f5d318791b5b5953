"""Corpora and manifests: the JSONL manifest format, the Fish Fillets / espeak demo
corpus, the Fillets human voice acting, and CoVoST-2 / LibriSpeech importers.

See docs/data.md for the manifest format, the split rule and how to build each corpus.
"""

from .demo import build_demo
from .fillets import DEFAULT_ROOT, build_fillets_speech, read_dialogues
from .importers import import_covost2, import_librispeech
from .manifest import (
    CorpusError,
    ManifestError,
    Utterance,
    check_manifest,
    read_manifest,
    split_of,
    write_manifest,
)

__all__ = [
    "Utterance",
    "ManifestError",
    "CorpusError",
    "read_manifest",
    "write_manifest",
    "check_manifest",
    "split_of",
    "build_demo",
    "build_fillets_speech",
    "read_dialogues",
    "import_covost2",
    "import_librispeech",
    "DEFAULT_ROOT",
]
