#!/usr/bin/env python
"""What can the frozen LLM read in the audio slot? Inference only, no training.

For test ASR rows it puts into the audio positions of the real prompt, in turn:
  tokens   the LLM's own input embeddings of the reference transcript (an ideal audio encoder);
  pieces   the reference cut into the compressor's CTC labels, each label's LLM embedding (exact
           for LLM-token labels, the mean of its tokens for sentencepiece pieces): what
           ``speech_llm.piece_prior`` starts from, with a perfect compressor;
  greedy   the embeddings of the compressor's greedy CTC labels (the piece prior on the real audio);
  soft     the compressor's blank-removed soft posteriors times the label embeddings;
and prints the frozen LLM's greedy transcript for each, next to the compressor's greedy CTC text.

    .venv/bin/python bench/probe_llm_copy.py --run runs/demo --rows 8
"""

import argparse

import torch

from speechllama.audio import fbank, load_audio
from speechllama.data import read_manifest
from speechllama.models.audio_encoder import piece_embeddings
from speechllama.models.build import load_compressor
from speechllama.models.ctc_compressor import ctc_compress
from speechllama.models.decode import DecodingOptions, generate
from speechllama.models.llm import build_prompt, default_llm_path, instruction, load_llm
from speechllama.models.speech_llm import assemble
from speechllama.text import collapse_ctc


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--run", default="runs/demo", help="demo run folder (data/, ctc/)")
    p.add_argument("--llm", help="LLM folder (default: SmolLM2-135M-Instruct)")
    p.add_argument("--rows", type=int, default=8)
    p.add_argument("--system", default="You transcribe and translate speech.")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    llm, tok = load_llm(args.llm or default_llm_path(), lora_rank=0)
    llm.eval()
    bundle = load_compressor(f"{args.run}/ctc")
    embed = llm.get_input_embeddings()
    pieces = piece_embeddings(bundle.tokenizer, tok, embed)  # (V_ctc, H)
    rows = [u for u in read_manifest(f"{args.run}/data/test.jsonl") if u.task == "asr"]
    rows = rows[:: max(1, len(rows) // args.rows)][: args.rows]

    @torch.no_grad()
    def read(u, audio: torch.Tensor) -> str:  # audio (S, H)
        before, after = build_prompt(tok, instruction("asr", u.src_lang, u.src_lang), args.system)
        e, m, v, _ = assemble(embed, audio[None], torch.tensor([audio.shape[0]]), [before], [after],
                              None, False)
        return tok.decode(generate(llm, e, m, v, tok.eos_token_id, DecodingOptions(max_new_tokens=30))[0])

    for u in rows:
        with torch.no_grad():
            ref_tokens = embed(torch.tensor(tok(u.tgt_text, add_special_tokens=False)["input_ids"]))
            ref_pieces = pieces[torch.tensor(bundle.tokenizer.encode(u.tgt_text))]
            f = bundle.cmvn(fbank(load_audio(u.audio)))[None]
            _, logits, n = bundle.model(f, torch.tensor([f.shape[1]]))
            probs, _ = ctc_compress(logits.softmax(-1), logits, n, "remove_blank")
        print(f"ref     {u.tgt_text!r}")
        print(f"tokens  {read(u, ref_tokens)!r}")
        print(f"pieces  {read(u, ref_pieces)!r}")
        greedy = collapse_ctc(logits[0].argmax(-1).tolist())
        print(f"ctc     {bundle.tokenizer.decode(greedy)!r} (greedy CTC)")
        print(f"greedy  {read(u, pieces[torch.tensor(greedy, dtype=torch.long)])!r}")
        print(f"soft    {read(u, probs[0] @ pieces)!r}\n")


if __name__ == "__main__":
    main()
