"""What the recipes train: the demo's stage settings (sized to 15 minutes on 2 cores), its ear,
its evaluation sizes, and the named presets of ``speechllama demo --preset``."""

from __future__ import annotations

from dataclasses import dataclass

# Demo settings: sized so the whole demo, installation and the zero-audio control included, fits
# 15 minutes on 2 cores (docs/design.md, "The demo's budget"). Steps and minutes are both set: the
# step count (what the cosine schedule decays over) is what fits the time on this machine; the cap
# keeps a slower machine within the budget. Dropout is off in stage 1: at this budget the
# compressor underfits, and CPU dropout costs ~20% of a step. The CTC labels are characters (the
# config default), which learn fastest here.
STAGE1 = ["train.max_steps=1000", "train.max_minutes=3.0", "train.bf16=true", "compressor.dropout=0.0",
          "features.spec_augment=false", "train.checkpoint_every=250"]


# The demo's ear (docs/design.md, "A pretrained ear"): the Whisper-base encoder, frozen, its output
# computed once for a 1.25-hour sample of the training recordings (both stages train on that sample)
# and cached; on top, frames stacked to 25 a second, a CTC head of 2 Transformer layers on
# character labels, ~30 s of audio a batch. The settings are the best of a sweep on dev at this
# budget (docs/design.md). `compressor.backbone=scratch` gives the paper's from-scratch compressor
# with the settings above instead.
WHISPER = ["compressor.backbone=whisper-base", "data.max_hours=1.25", "speech_llm.spans=llm_tokens"]


WHISPER_STAGE1 = ["compressor.d_model=256", "compressor.n_layers=2", "compressor.n_heads=4",
                  "compressor.ff_dim=1024", "compressor.char_layer=0", "compressor.backbone_stack=2",
                  "data.max_frames=1500", "train.lr=3e-3", "train.warmup_steps=30",
                  "train.max_steps=600", "train.max_minutes=2.0"]


# stage 2 on the ear: its features are 50 a second (fbank's 100), so the same ~32 s of audio a batch
WHISPER_STAGE2 = ["data.max_frames=1600"]


STAGE2 = ["train.max_steps=80", "train.max_minutes=2.2", "train.bf16=true", "train.lr=1.5e-3",
          "train.warmup_steps=20", "features.spec_augment=false", "data.max_frames=3200",
          "train.checkpoint_every=40", "train.log_every=10"]


EVAL_PER_GROUP = 10  # test rows per (task, language pair, numbers/sentences): ~240 rows


HELDOUT = ("kokoro", "real")  # the held-out sets the corpus writes (heldout-<name>.jsonl)


HELDOUT_PER_GROUP = 8  # the model's rows per group on each held-out set


CTC_PER_GROUP = 20  # the compressor's recordings per group (task, language pair, subset) on each set


@dataclass(frozen=True)
class Preset:
    """A named recipe of ``speechllama demo --preset NAME``: settings that come after the demo's
    own (and before the user's overrides, which still win)."""

    about: str
    corpus: tuple[str, ...] = ()  # corpus.* settings
    both: tuple[str, ...] = ()  # both training stages
    stage1: tuple[str, ...] = ()
    stage2: tuple[str, ...] = ()  # Speech-LLaMA and its zero-audio control alike
    whisper: bool = False  # score Whisper-base on the same rows of the test split and held-out sets


PRESETS = {
    "demo": Preset("the 15-minute demo (scripts/demo.sh)"),
    # The longer recipe (docs/design.md, "The quality preset"): at most 2 hours here. More voices
    # (Kokoro's training voices, 100 lines a language), a 4-hour training sample for both stages
    # (the ear's features ~7 min), the ear's best head on dev at a longer budget (4 CTC layers,
    # docs/design.md "A pretrained ear"), 15x the demo's stage-2 steps for the model and its
    # control, and Whisper-base scored on the same rows.
    "quality": Preset("the longer recipe, at most 2 hours on 2 cores",
                      corpus=("corpus.kokoro_per_lang=100",),
                      both=("data.max_hours=4",),
                      stage1=("compressor.n_layers=4", "train.max_steps=1500", "train.max_minutes=12"),
                      stage2=("train.max_steps=1200", "train.max_minutes=32", "train.checkpoint_every=100",
                              "train.log_every=50"),
                      whisper=True),
}
