"""A lower-cased word-level tokenizer over a caption corpus, for models trained from scratch
(the world CLIP's text tower, the caption decoder's small GPT-2)."""

from __future__ import annotations

from collections import Counter

SPECIAL_TOKENS = {"pad": "[PAD]", "unk": "[UNK]", "bos": "[BOS]", "eos": "[EOS]"}
# Token ids 0..3 in this order. The eos id must not be 2: transformers' CLIP treats
# eos_token_id == 2 as a legacy config and pools at the highest token id instead.


def build_tokenizer(captions: list[str]):
    """A lower-cased word-level tokenizer over the words of ``captions``.

    Returns:
        A ``PreTrainedTokenizerFast`` that adds ``[BOS]``/``[EOS]`` around every text.
    """
    from tokenizers import Tokenizer, normalizers, pre_tokenizers, processors
    from tokenizers.models import WordLevel
    from transformers import PreTrainedTokenizerFast

    counts: Counter[str] = Counter()
    normalizer = normalizers.Lowercase()
    pre = pre_tokenizers.Whitespace()
    for caption in captions:
        counts.update(w for w, _ in pre.pre_tokenize_str(normalizer.normalize_str(caption)))
    words = sorted(counts, key=lambda w: (-counts[w], w))
    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS.values())}
    vocab.update({w: i + len(vocab) for i, w in enumerate(words)})
    tok = Tokenizer(WordLevel(vocab, unk_token=SPECIAL_TOKENS["unk"]))
    tok.normalizer = normalizer
    tok.pre_tokenizer = pre
    bos, eos = SPECIAL_TOKENS["bos"], SPECIAL_TOKENS["eos"]
    tok.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A {eos}", special_tokens=[(bos, vocab[bos]), (eos, vocab[eos])]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token=SPECIAL_TOKENS["pad"],
        unk_token=SPECIAL_TOKENS["unk"],
        bos_token=bos,
        eos_token=eos,
        model_input_names=["input_ids", "attention_mask"],
    )
