"""Scoring trained models on manifests: metrics (WER/CER, BLEU/chrF), the evaluation of a model,
its compressor and Whisper-base on the same rows, the statistics behind every verdict, and the
Markdown reports."""
