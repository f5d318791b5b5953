"""Model files shipped in PyPI wheels, assembled once into the cache: the one implementation.

An :class:`Asset` is a file split over one or more wheels (the shipped LLMs' ggufs in
``models/shipped.py``, Kokoro-82M's ONNX model in ``data/kokoro.py``, Whisper-base's CTranslate2
``model.bin`` in ``whisper_peer.py`` and ``models/whisper.py``). Its parts are located inside the
installed packages without importing them (:func:`part_files`), concatenated in order with a sha256
check (:func:`assemble`), and whatever is made from them is built beside its final place in the
cache and renamed into it (:func:`cached_folder`, :func:`cached_file`), so a concurrent process
(another torchrun rank) sees it whole or not at all; an incomplete result is rebuilt.

The cache is ``$SPEECHLLAMA_CACHE`` (default ``~/.cache/speechllama``).
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .errors import UserError

CACHE_DIR = Path(os.environ.get("SPEECHLLAMA_CACHE", "~/.cache/speechllama")).expanduser()
INSTALL_SCRIPT = "bash scripts/install.sh"


@dataclass(frozen=True)
class Asset:
    name: str  # for messages: "the LLM 'gemma3-270m'", "Kokoro-82M", "Whisper-base"
    parts: tuple[tuple[str, str], ...]  # (package, path inside the package folder), concatenated in order
    sha256: str  # of the concatenation
    install: str  # the pip command that installs the wheels


class AssetError(UserError, FileNotFoundError):
    """An asset whose wheel is missing or whose assembled file does not match its sha256."""


def package_file(asset: Asset, package: str, rel: str) -> Path:
    """The file ``rel`` inside the installed ``package`` (located, not imported), which ``asset``
    needs; an :class:`AssetError` naming the install command when it is not there."""
    spec = importlib.util.find_spec(package)
    path = Path(spec.origin).parent / rel if spec is not None and spec.origin else None
    if path is None or not path.is_file():
        raise AssetError(f"{asset.name} needs the wheel of {package} (missing {rel}): {asset.install}, "
                         f"or {INSTALL_SCRIPT}")
    return path


def part_files(asset: Asset) -> list[Path]:
    """The files of ``asset``'s parts, in order."""
    return [package_file(asset, package, rel) for package, rel in asset.parts]


def assemble(asset: Asset, out_file: Path, files: list[Path] | None = None) -> Path:
    """Concatenate ``asset``'s parts (or the given ``files``) into ``out_file``, streaming, and
    check the result's sha256 (an :class:`AssetError` otherwise; ``out_file`` is then removed)."""
    files = part_files(asset) if files is None else files
    digest = hashlib.sha256()
    with open(out_file, "wb") as out:
        for part in files:
            with open(part, "rb") as src:
                while chunk := src.read(1 << 22):
                    digest.update(chunk)
                    out.write(chunk)
    if digest.hexdigest() != asset.sha256:
        Path(out_file).unlink()
        where = files[0].parent if files else "no parts"
        raise AssetError(f"{asset.name}: {Path(out_file).name} assembled from {where} has sha256 "
                         f"{digest.hexdigest()[:16]}..., expected {asset.sha256[:16]}... (a damaged or "
                         f"different wheel: reinstall it: {asset.install}, or {INSTALL_SCRIPT})")
    return Path(out_file)


def _publish(final: Path, build: Callable[[Path], None], ready: Callable[[Path], bool], folder: bool) -> Path:
    """``final`` when ``ready``, else built by ``build`` inside a temporary folder beside it and
    renamed into place (atomic: a process that loses the race keeps the winner's)."""
    final = Path(final)
    if ready(final):
        return final
    if final.is_dir() and not final.is_symlink():  # an incomplete result (interrupted or broken): redo it
        shutil.rmtree(final)
    elif final.exists():
        final.unlink()
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}-", dir=final.parent))
    try:
        target = tmp if folder else tmp / final.name
        build(target)
        os.chmod(target, 0o755 if folder else 0o644)  # mkdtemp's 0700 would hide it from other users
        try:
            os.rename(target, final)  # atomic; a folder fails if another process won the race
        except OSError:
            if not ready(final):
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def cached_folder(final: Path, build: Callable[[Path], None],
                  ready: Callable[[Path], bool] | None = None) -> Path:
    """The folder ``final``, made once by ``build(folder)`` (which fills an empty folder) and kept.
    ``ready(final)`` tells a complete folder (default: it exists and is not empty)."""
    def nonempty(path: Path) -> bool:
        return path.is_dir() and any(path.iterdir())

    return _publish(final, build, ready or nonempty, folder=True)


def cached_file(final: Path, build: Callable[[Path], None]) -> Path:
    """The file ``final``, made once by ``build(path)`` (which writes ``path``) and kept."""
    return _publish(final, build, Path.is_file, folder=False)
