"""Captioning metrics with pycocoevalcap: BLEU-1…4, METEOR, ROUGE-L and CIDEr.

Captions and references are tokenised with the PTB tokenizer first, as the COCO caption
evaluation does. PTB tokenisation and METEOR run Java (17 works); SPICE is left out (it
downloads models at first use).
"""

from __future__ import annotations

import contextlib
import io
import logging
from collections.abc import Sequence

logger = logging.getLogger(__name__)


def caption_metrics(predictions: Sequence[str], references: Sequence[Sequence[str]]
                    ) -> dict[str, float]:
    """Corpus-level caption scores of ``predictions[i]`` against ``references[i]``.

    Returns:
        ``BLEU-1`` … ``BLEU-4``, ``METEOR``, ``ROUGE-L``, ``CIDEr``.
    """
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.meteor.meteor import Meteor
    from pycocoevalcap.rouge.rouge import Rouge
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    if len(predictions) != len(references) or not predictions:
        raise ValueError(f"need one reference list per prediction, got {len(predictions)} "
                         f"predictions and {len(references)} reference lists")
    if any(not refs for refs in references):
        raise ValueError("every prediction needs at least one reference caption")
    tokenizer = PTBTokenizer()
    gts = tokenizer.tokenize({i: [{"caption": r} for r in refs]
                              for i, refs in enumerate(references)})
    res = tokenizer.tokenize({i: [{"caption": p or "."}] for i, p in enumerate(predictions)})
    scores: dict[str, float] = {}
    with contextlib.redirect_stdout(io.StringIO()):  # Bleu prints its length statistics
        bleu, _ = Bleu(4).compute_score(gts, res)
        scores.update({f"BLEU-{n + 1}": float(b) for n, b in enumerate(bleu)})
        scores["METEOR"] = _meteor(Meteor(), gts, res)
        scores["ROUGE-L"] = float(Rouge().compute_score(gts, res)[0])
        scores["CIDEr"] = float(Cider().compute_score(gts, res)[0])
    return scores


def _meteor(meteor, gts: dict, res: dict) -> float:
    """METEOR's corpus score; if its Java process dies mid-way (pycocoevalcap then raises with
    its lock held, and its ``__del__`` waits for that lock forever), the lock is released so
    the process can be cleaned up, and the error says what Java wrote."""
    try:
        return float(meteor.compute_score(gts, res)[0])
    except (ValueError, OSError) as e:
        stderr = b""
        if meteor.meteor_p.poll() is not None:
            stderr = meteor.meteor_p.stderr.read()[-500:]
        raise RuntimeError(f"METEOR's Java process failed ({e}); it wrote: "
                           f"{stderr.decode(errors='replace').strip() or 'nothing'}; check that "
                           "Java 8+ is installed and that 2 GB of memory are free") from e
    finally:
        if meteor.lock.locked():
            meteor.lock.release()
