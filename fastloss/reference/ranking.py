"""References for the ranking losses (``fastloss.losses.ranking``): one loss per pair of scores."""

from __future__ import annotations

import numpy as np

from ._common import Reference, reference


@reference
def margin_ranking(x1, x2, target, *, margin=0.0, xp=np):
    m = margin - target * (x1 - x2)
    slope = xp.where(m > 0, -target, 0.0)
    return Reference(xp.maximum(m, 0.0), lambda cot: (cot * slope, -cot * slope))


@reference
def bpr(pos_scores, neg_scores, *, xp=np):
    d = pos_scores - neg_scores
    s = xp.exp(-xp.logaddexp(0.0, d))  # sigmoid(-d) without overflow
    # the sign joins the cotangent (a scalar for a mean) rather than making a -s array
    return Reference(xp.logaddexp(0.0, -d), lambda cot: ((-cot) * s, cot * s))
