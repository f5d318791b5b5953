"""CTC prefix scores for joint CTC/LLM beam search (Watanabe et al., 2017, "Hybrid CTC/attention").

With ``compressor.labels=llm_tokens`` every CTC label is one of the LLM's tokens, and with
``speech_llm.asr_target=normalized`` the LLM writes a transcript in exactly those tokens. So a
partial LLM hypothesis is also a CTC label prefix, and its CTC prefix probability
``log P_ctc(prefix... | audio)`` (the probability of all label sequences that start with it) can
rank hypotheses during the search alongside the LLM's own log-probability::

    score(h) = (1 - w) * log P_llm(h) + w * log P_ctc_prefix(h)

This is what ESPnet's ``CTCPrefixScoreTH`` computes; it is written here because no maintained
library exposes the prefix score for an arbitrary search loop (torchaudio's CTC decoder runs its
own search and does not work on this machine). The LLM proposes ``candidates`` tokens per beam
(its best by log-probability); only those, and the end of the sentence, get a CTC score.

Shapes: N flat hypotheses (batch rows x beams, in the KV cache's order), P candidates per
hypothesis, T CTC frames, C CTC labels, V LLM vocabulary. Log-space forward variables of a
hypothesis g are ``r[..., t, 0]`` (its last label emitted at frame t) and ``r[..., t, 1]`` (a
blank at frame t), over its whole label sequence.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

from ..errors import UsageError

NEG = float("-inf")


def llm_to_ctc_map(llm_vocab_size: int, llm_ids: Iterable[int], unk: int = 1, first: int = 2) -> torch.Tensor:
    """(V,) CTC label of each LLM token id: ``first + k`` for the k-th of ``llm_ids``, else ``unk``."""
    table = torch.full((llm_vocab_size,), unk, dtype=torch.long)
    ids = torch.as_tensor(list(llm_ids), dtype=torch.long)
    table[ids] = torch.arange(first, first + len(ids))
    return table


class CTCPrefixScorer:
    """Prefix scores of LLM hypotheses under the frame posteriors of the CTC compressor.

    log_probs (B, T, C) CTC log-posteriors, lengths (B,) valid frames, token_map (V,) the CTC label
    of every LLM token (``llm_to_ctc_map``), weight the w above, blank the blank label.
    """

    def __init__(self, log_probs: torch.Tensor, lengths: torch.Tensor, token_map: torch.Tensor,
                 weight: float, candidates: int = 10, blank: int = 0):
        if not 0.0 < weight <= 1.0:
            raise UsageError(f"ctc_weight must be in (0, 1] for joint decoding, got {weight}")
        if candidates < 1:
            raise UsageError(f"ctc_candidates must be at least 1, got {candidates}")
        B, T, _ = log_probs.shape
        frames = torch.arange(T, device=log_probs.device)[None, :] < lengths.to(log_probs.device)[:, None]
        # frames past a row's end can emit nothing: every path ends at the row's last frame
        self.log_probs = log_probs.float().masked_fill(~frames[..., None], NEG)  # (B, T, C)
        self.lengths = lengths.long().to(log_probs.device)
        self.token_map = token_map.long().to(log_probs.device)
        self.weight, self.candidates, self.blank = weight, candidates, blank

    def rows(self, index: torch.Tensor) -> CTCPrefixScorer:
        """The scorer of a subset of the batch rows."""
        index = index.to(self.log_probs.device)
        return CTCPrefixScorer(self.log_probs[index], self.lengths[index], self.token_map,
                               self.weight, self.candidates, self.blank)

    # --- search state ------------------------------------------------------------------------------

    def start(self, beams: int) -> None:
        """Every row's hypotheses start empty; ``beams`` copies per row, as the KV cache is laid out."""
        B, T, _ = self.log_probs.shape
        dev = self.log_probs.device
        self.batch = torch.arange(B, device=dev).repeat_interleave(beams)  # (N,) batch row of each hypothesis
        r = torch.full((B, T, 2), NEG, device=dev)
        r[:, :, 1] = self.log_probs[:, :, self.blank].cumsum(1)  # the empty prefix: blanks only
        self.r = r[self.batch]  # (N, T, 2)
        self.score = torch.zeros(len(self.batch), device=dev)  # (N,) log P_ctc_prefix of each hypothesis
        self.last = torch.full((len(self.batch),), -1, dtype=torch.long, device=dev)  # its last label; -1: none

    def adjust(self, logprobs: torch.Tensor, eos: Iterable[int]) -> torch.Tensor:
        """(N, V) LLM next-token log-probs -> the joint score increment of each continuation:
        (1 - w) * llm + w * (ctc_prefix(h + token) - ctc_prefix(h)) for the LLM's ``candidates``
        best tokens and the end tokens, -inf for every other token."""
        eos = sorted(set(eos))
        N, V = logprobs.shape
        ranked = logprobs.clone()
        ranked[:, eos] = NEG
        k = min(self.candidates, V - len(eos))
        top = ranked.topk(k, dim=-1).indices  # (N, P)
        psi = self.prefix_scores(self.token_map[top])  # (N, P)
        lengths = self.lengths[self.batch]  # (N,)
        rows = torch.arange(N, device=logprobs.device)
        end = torch.logaddexp(self.r[rows, lengths - 1, 0], self.r[rows, lengths - 1, 1])  # (N,)
        w = self.weight
        out = torch.full_like(logprobs, NEG)
        out.scatter_(1, top, (1 - w) * logprobs.gather(1, top) + w * (psi - self.score[:, None]))
        for e in eos:
            out[:, e] = (1 - w) * logprobs[:, e] + w * (end - self.score)
        self.pending = (top, psi)
        return torch.nan_to_num(out, nan=NEG, neginf=NEG)  # nan: -inf - -inf (dead beams), 0 * -inf

    def prefix_scores(self, labels: torch.Tensor) -> torch.Tensor:
        """(N, P) labels c -> log P_ctc_prefix(g + c) for each hypothesis g, all frames at once."""
        lp_c = self.log_probs[self.batch[:, None], :, labels]  # (N, P, T)
        phi = self._phi(labels)  # (N, P, T)
        start = torch.where(self.last[:, None] < 0, lp_c[..., 0], NEG)  # c emitted at frame 0
        # the prefix g + c is complete once c is first emitted, at some frame t >= 1 after g
        terms = phi[..., :-1] + lp_c[..., 1:]  # (N, P, T - 1)
        return torch.logsumexp(torch.cat([start[..., None], terms], dim=-1), dim=-1)

    def _phi(self, labels: torch.Tensor) -> torch.Tensor:
        """(N, P, T) log-probability that g is complete at frame t and c may start at t + 1: a
        repeated label needs a blank in between."""
        both = torch.logaddexp(self.r[..., 0], self.r[..., 1])[:, None, :]  # (N, 1, T)
        blank = self.r[..., 1][:, None, :]
        return torch.where((labels == self.last[:, None])[..., None], blank, both)

    def select(self, source: torch.Tensor, tokens: torch.Tensor) -> None:
        """Keep hypothesis ``source[m]`` extended by LLM token ``tokens[m]`` (one of the candidates
        it was scored with) as the new hypothesis m; computes its forward variables."""
        top, psi = self.pending
        source, tokens = source.to(top.device), tokens.to(top.device)
        match = top[source] == tokens[:, None]  # (M, P)
        if not bool(match.any(-1).all()):
            raise RuntimeError("CTCPrefixScorer.select: a token that was not scored")
        pick = match.float().argmax(-1)  # (M,)
        labels = self.token_map[tokens]  # (M,)
        self.score = psi[source, pick]
        batch, r_g, last = self.batch[source], self.r[source], self.last[source]
        lp_c = self.log_probs[batch, :, labels]  # (M, T)
        lp_b = self.log_probs[batch, :, self.blank]  # (M, T)
        both = torch.logaddexp(r_g[..., 0], r_g[..., 1])
        phi = torch.where((labels == last)[:, None], r_g[..., 1], both)  # (M, T)
        r = torch.full_like(r_g, NEG)
        r[:, 0, 0] = torch.where(last < 0, lp_c[:, 0], NEG)
        for t in range(1, r.shape[1]):
            r[:, t, 0] = torch.logaddexp(r[:, t - 1, 0], phi[:, t - 1]) + lp_c[:, t]
            r[:, t, 1] = torch.logaddexp(r[:, t - 1, 0], r[:, t - 1, 1]) + lp_b[:, t]
        self.r, self.last, self.batch = r, labels, batch
