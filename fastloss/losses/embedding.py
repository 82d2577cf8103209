"""Metric-learning losses on embeddings: one value per row of ``(N, D)`` arrays.

Contrastive, triplet and cosine-embedding losses are of the rowreduce kind
(:mod:`fastloss.kinds.rowsum.host`): per row, sums over the embedding's elements (``map``), the row's loss
from those sums (``finish``), and per element the gradient (``grad``), fused in one pass.
InfoNCE is of the similarity kind (:mod:`fastloss.kinds.similarity.host`): softmax cross entropy over the
in-batch cosine-similarity matrix.
"""

from __future__ import annotations

import math

from .._api import family
from .._compile import njit
from .._kernels.mathfn import pow
from .._spec import Discrete, Input, Interval, Param, Properties
from ..kinds.rowsum.host import RowReduce, row_options
from .multiclass import cross_entropy

_helper = njit(cache=False, error_model="numpy", fastmath=False, forceinline=True)  # strict (see stage_kernel)

#: Added to each squared norm by PyTorch's ``cosine_embedding_loss``: its ``1e-12`` is a C++
#: ``float``, so the value is float32's nearest, 9.99999996e-13.
COSINE_EPS = 9.999999960041972e-13


def _rows_doc(what: str) -> str:
    return f"{what}, shape ``(N, D)`` (or ``(D,)`` for a single pair); one row per sample."


X1 = Input("x1", _rows_doc("First embeddings"), differentiable=True)
X2 = Input("x2", _rows_doc("Second embeddings, the shape of ``x1``"), differentiable=True)

#: losses of rows of embeddings (the rowreduce kind)
_rows = family("rowreduce")
#: ... of pairs of rows with a per-row target (similar or not)
_pair = family("rowreduce", options=row_options(row_inputs=("target",)))
#: losses over the in-batch similarity matrix of two views
_in_batch = family("similarity")


# -- contrastive ---------------------------------------------------------------------------------


def _contrastive_map(j, x1, x2, margin):
    u = x1 - x2
    return (u * u,)


def _contrastive_finish(sums, y, margin):
    d2 = sums[0]
    d = math.sqrt(d2)
    h = margin - d
    hp = h if h > 0.0 else 0.0
    loss = 0.5 * (y * d2 + (1.0 - y) * hp * hp)
    # d loss / d (x1 - x2) = c (x1 - x2); the hinge's direction (x1 - x2) / d is taken as 0 at d = 0
    c = y - ((1.0 - y) * hp / d if d > 0.0 else 0.0)
    return (loss, c)


def _contrastive_grad(j, x1, x2, coefs, margin):
    g = coefs[1] * (x1 - x2)
    return (g, -g)


contrastive = _pair(
    "contrastive", RowReduce(_contrastive_map, _contrastive_finish, _contrastive_grad),
    inputs=(
        X1,
        X2,
        Input("target", "``1`` for similar pairs, ``0`` for dissimilar ones; one per row.", Discrete((0.0, 1.0))),
    ),
    params=(Param("margin", 1.0, "Distance beyond which dissimilar pairs cost nothing", Interval(0.0, math.inf)),),
    summary="Contrastive loss (Hadsell, Chopra & LeCun): pull similar pairs together, push dissimilar ones past a margin.",
    formula=r"\ell = \tfrac12\, y\, d^2 + \tfrac12\,(1 - y)\,\max(0, m - d)^2,"
            r"\quad d = \lVert x_1 - x_2 \rVert_2,\ y \in \{0, 1\}",
    gradient=r"\partial \ell / \partial x_1 = -\partial \ell / \partial x_2 = "
             r"\left(y - (1 - y)\,\frac{\max(0, m - d)}{d}\right)(x_1 - x_2)",
    reference=("Hadsell, R., Chopra, S., LeCun, Y. (2006). Dimensionality Reduction by Learning an "
               "Invariant Mapping. CVPR."),
    equivalents={"PyTorch": "0.5 * (y * d**2 + (1 - y) * F.relu(margin - d)**2) with "
                            "d = torch.linalg.vector_norm(x1 - x2, dim=-1)"},
    semantics=("The paper's form, with the halves, and ``target = 1`` meaning *similar* (the paper's "
               "Y = 0). The distance has no epsilon; where a dissimilar pair has ``d = 0`` its gradient "
               "is taken as 0 (no direction to push along), as PyTorch's norm backward does."),
    properties=Properties("metric learning (pairs)", "high for similar pairs (quadratic)",
                          "linear in the distance", "siamese networks, verification", "low"),
    fd_safe=lambda inputs, params, h: _distance_away_from(inputs, params["margin"], h),
    example="""
    >>> x1 = np.array([[0.0, 0.0], [1.0, 0.0]])
    >>> x2 = np.array([[3.0, 4.0], [0.6, 0.3]])
    >>> float(fl.contrastive(x1, x2, np.array([1, 0]), margin=1.0))
    6.3125
    >>> g1, g2 = fl.contrastive.grad(x1, x2, np.array([1, 0]))
    >>> g1
    array([[-1.5 , -2.  ],
           [-0.2 ,  0.15]])
    """,
)


def _distance_away_from(inputs, margin, h):
    """Rows whose distance is not within a few finite-difference steps of the margin (the kink).

    (For the rowreduce kind ``fd_safe`` returns one flag per row.)
    """
    import numpy as np

    d = np.linalg.norm(np.asarray(inputs[0], float) - np.asarray(inputs[1], float), axis=-1)
    return np.abs(d - margin) > 4 * h


# -- triplet margin ------------------------------------------------------------------------------


@_helper
def _abs_pow(u, p):
    """``|u|^p`` (the p-norm's summand)."""
    a = abs(u)
    return a * a if p == 2.0 else pow(a, p)


@_helper
def _abs_pow_grad(u, p):
    """``sign(u) |u|^(p-1)``: ``d |u|^p / du`` divided by ``p`` (0 at ``u = 0``, like PyTorch's ``sgn``)."""
    if p == 2.0:
        return u
    a = pow(abs(u), p - 1.0)
    return a if u > 0.0 else (-a if u < 0.0 else u * 0.0)


@_helper
def _norm_coef(s, p):
    """``(s^(1/p), 1 / s^((p-1)/p))``: the norm from its summed powers, and the factor of its gradient.

    The factor is 0 where the norm is 0 (PyTorch's norm backward masks that case).
    """
    d = math.sqrt(s) if p == 2.0 else math.pow(s, 1.0 / p)
    dp1 = d if p == 2.0 else math.pow(d, p - 1.0)
    return d, (0.0 if d == 0.0 else 1.0 / dp1)  # NaN propagates


@_helper
def _min_weight(a, b):
    """``d min(a, b) / da``: 1 if ``a`` is smaller, 1/2 on a tie (PyTorch splits ties evenly), else 0."""
    return 1.0 if a < b else (0.5 if a == b else 0.0)


def _triplet_map(j, a, p, n, margin, pn, eps, swap):
    s_pn = _abs_pow(p - n + eps, pn) if swap != 0.0 else 0.0
    return (_abs_pow(a - p + eps, pn), _abs_pow(a - n + eps, pn), s_pn)


def _triplet_finish(sums, margin, pn, eps, swap):
    d_ap, k_ap = _norm_coef(sums[0], pn)
    d_an, k_an = _norm_coef(sums[1], pn)
    d_pn, k_pn = _norm_coef(sums[2], pn)
    w_an, w_pn, d_neg = 1.0, 0.0, d_an
    if swap != 0.0:  # the negative's distance is the smaller of anchor-negative and positive-negative
        w_an = _min_weight(d_an, d_pn)
        w_pn = _min_weight(d_pn, d_an)
        d_neg = d_an if d_an <= d_pn else (d_pn if d_pn < d_an else d_an + d_pn)  # NaN propagates
    z = margin + d_ap - d_neg
    loss = 0.0 if z < 0.0 else z  # NaN propagates
    c = 1.0 if z >= 0.0 else (0.0 if z < 0.0 else z)  # clamp_min passes the gradient at 0, as PyTorch
    return (loss, c * k_ap, -c * w_an * k_an, -c * w_pn * k_pn)


def _triplet_grad(j, a, p, n, coefs, margin, pn, eps, swap):
    u_ap = _abs_pow_grad(a - p + eps, pn)
    u_an = _abs_pow_grad(a - n + eps, pn)
    u_pn = _abs_pow_grad(p - n + eps, pn) if swap != 0.0 else 0.0
    c_ap, c_an, c_pn = coefs[1], coefs[2], coefs[3]
    return (c_ap * u_ap + c_an * u_an, c_pn * u_pn - c_ap * u_ap, -c_an * u_an - c_pn * u_pn)


# p = 2, the usual case, without pow: a loop that calls pow computes it on every element even
# where a p == 2 test would skip it (the vectorised loop evaluates both arms and selects)
def _triplet_map_l2(j, a, p, n, margin, pn, eps, swap):
    u_ap = a - p + eps
    u_an = a - n + eps
    u_pn = p - n + eps
    return (u_ap * u_ap, u_an * u_an, u_pn * u_pn if swap != 0.0 else 0.0)


def _triplet_grad_l2(j, a, p, n, coefs, margin, pn, eps, swap):
    u_ap = a - p + eps
    u_an = a - n + eps
    u_pn = p - n + eps if swap != 0.0 else 0.0
    c_ap, c_an, c_pn = coefs[1], coefs[2], coefs[3]
    return (c_ap * u_ap + c_an * u_an, c_pn * u_pn - c_ap * u_ap, -c_an * u_an - c_pn * u_pn)


_TRIPLET_L2 = RowReduce(_triplet_map_l2, _triplet_finish, _triplet_grad_l2)


def _triplet_safe(inputs, params, h):
    """Rows away from the hinge's kink and from a tie of the swapped distances (one flag per row)."""
    import numpy as np

    a, p, n = (np.asarray(x, float) for x in inputs)
    pn, eps = params["p"], params["eps"]

    def dist(x, y):
        return np.sum(np.abs(x - y + eps) ** pn, axis=-1) ** (1.0 / pn)

    d_ap, d_an = dist(a, p), dist(a, n)
    tol = 8 * h  # a step of h in one coordinate moves each distance by at most h
    d_neg = d_an
    ok = np.ones(d_ap.shape, bool)
    if params["swap"]:
        d_pn = dist(p, n)
        d_neg = np.minimum(d_an, d_pn)
        ok &= np.abs(d_an - d_pn) > tol
    return ok & (np.abs(params["margin"] + d_ap - d_neg) > tol)


triplet_margin = _rows(
    "triplet_margin", RowReduce(_triplet_map, _triplet_finish, _triplet_grad),
    inputs=(
        Input("anchor", _rows_doc("Anchor embeddings"), differentiable=True),
        Input("positive", _rows_doc("Embeddings of the same class as the anchors"), differentiable=True),
        Input("negative", _rows_doc("Embeddings of another class"), differentiable=True),
    ),
    params=(
        Param("margin", 1.0, "Required gap between the negative and the positive distance (PyTorch: > 0)",
              Interval(0.0, math.inf, (False, True))),
        Param("p", 2.0, "Degree of the distance's norm", Interval(1.0, math.inf, (True, False)), special=(1.0, 3.0)),
        Param("eps", 1e-6, "Added to each coordinate difference (PyTorch's pairwise_distance)", Interval(0.0, math.inf)),
        Param("swap", False, "Use the smaller of d(a, n) and d(p, n) as the negative distance (distance swap)",
              type=bool, special=(True,)),
    ),
    summary="Triplet margin loss: the positive must be closer to the anchor than the negative, by a margin.",
    formula=r"\ell = \max\left(0,\; m + d(a, p) - d(a, n)\right),\quad d(x, y) = \lVert x - y + \epsilon \rVert_p"
            r"\quad (\text{swap: } d(a, n) \to \min(d(a, n), d(p, n)))",
    gradient=r"\partial \ell / \partial a = \frac{\phi(a - p + \epsilon)}{d(a, p)^{p-1}} - "
             r"\frac{\phi(a - n + \epsilon)}{d(a, n)^{p-1}},\quad \phi(u) = \operatorname{sign}(u)\,|u|^{p-1}"
             r"\ \text{(where the hinge is active; likewise for } p, n)",
    reference=("Schroff, F., Kalenichenko, D., Philbin, J. (2015). FaceNet: A Unified Embedding for Face "
               "Recognition and Clustering. CVPR; distance swap: Balntas, V., Riba, E., Ponsa, D., "
               "Mikolajczyk, K. (2016). Learning local feature descriptors with triplets and shallow "
               "convolutional neural networks. BMVC."),
    equivalents={"PyTorch": "torch.nn.functional.triplet_margin_loss"},
    semantics=("Matches ``torch.nn.functional.triplet_margin_loss`` including ``pairwise_distance``'s "
               "``eps`` (added to every coordinate difference, not to the norm), ``swap``, PyTorch's "
               "gradient conventions at the hinge (passed at exactly 0), at a zero distance (0) and on a "
               "swap tie (split evenly). ``p`` is a finite norm degree >= 1."),
    properties=Properties("metric learning (triplets)", "low (linear)", "bounded (unit-norm directions for p = 2)",
                          "face recognition, retrieval embeddings", "low"),
    options=row_options(variant=lambda params: _TRIPLET_L2 if params["p"] == 2.0 else None),
    fd_safe=_triplet_safe,
    example="""
    >>> a = np.array([[0.0, 0.0], [1.0, 1.0]])
    >>> p = np.array([[0.0, 1.0], [1.0, 2.0]])
    >>> n = np.array([[1.5, 0.0], [4.0, 5.0]])
    >>> round(float(fl.triplet_margin(a, p, n, eps=0.0)), 6)
    0.25
    >>> ga, gp, gn = fl.triplet_margin.grad(a, p, n, eps=0.0)
    >>> ga
    array([[ 0.5, -0.5],
           [ 0. ,  0. ]])
    """,
)


# -- cosine embedding ----------------------------------------------------------------------------


def _cosine_map(j, x1, x2, margin):
    return (x1 * x2, x1 * x1, x2 * x2)


def _cosine_finish(sums, y, margin):
    m1 = sums[1] + COSINE_EPS
    m2 = sums[2] + COSINE_EPS
    inv = 1.0 / math.sqrt(m1 * m2)
    cos = sums[0] * inv
    if y > 0.0:
        loss = 1.0 - cos
        dl = -1.0
    else:
        h = cos - margin
        loss = 0.0 if h < 0.0 else h  # NaN propagates
        dl = 1.0 if h >= 0.0 else (0.0 if h < 0.0 else h)  # clamp_min passes the gradient at 0, as PyTorch
    # d cos / d x1 = x2 / sqrt(m1 m2) - cos x1 / m1 (and symmetrically for x2)
    return (loss, dl * inv, dl * cos / m1, dl * cos / m2)


def _cosine_grad(j, x1, x2, coefs, margin):
    return (coefs[1] * x2 - coefs[2] * x1, coefs[1] * x1 - coefs[3] * x2)


def _cosine_safe(inputs, params, h):
    import numpy as np

    x1, x2, y = (np.asarray(x, float) for x in inputs)
    cos = np.sum(x1 * x2, -1) / np.sqrt((np.sum(x1 * x1, -1) + COSINE_EPS) * (np.sum(x2 * x2, -1) + COSINE_EPS))
    return (y > 0) | (np.abs(cos - params["margin"]) > 1e-3)


cosine_embedding = _pair(
    "cosine_embedding", RowReduce(_cosine_map, _cosine_finish, _cosine_grad),
    inputs=(
        X1,
        X2,
        Input("target", "``1`` for similar pairs, ``-1`` for dissimilar ones; one per row.", Discrete((-1.0, 1.0))),
    ),
    params=(Param("margin", 0.0, "Cosine below which dissimilar pairs cost nothing", Interval(-1.0, 1.0)),),
    summary="Cosine embedding loss: align similar pairs, push the cosine of dissimilar pairs below a margin.",
    formula=r"\ell = \begin{cases} 1 - \cos(x_1, x_2) & y = 1 \\ \max(0, \cos(x_1, x_2) - m) & y = -1 \end{cases},"
            r"\quad \cos = \frac{x_1 \cdot x_2}{\sqrt{(\lVert x_1 \rVert^2 + \epsilon)(\lVert x_2 \rVert^2 + \epsilon)}},"
            r"\ \epsilon \approx 10^{-12}",
    gradient=r"\partial \cos / \partial x_1 = \frac{x_2}{\sqrt{(\lVert x_1 \rVert^2 + \epsilon)"
             r"(\lVert x_2 \rVert^2 + \epsilon)}} - \cos \frac{x_1}{\lVert x_1 \rVert^2 + \epsilon},"
             r"\quad \partial \ell / \partial \cos = -1\ (y = 1),\ [\cos \ge m]\ (y = -1)",
    reference="PyTorch documentation, torch.nn.CosineEmbeddingLoss (no single paper).",
    equivalents={"PyTorch": "torch.nn.functional.cosine_embedding_loss"},
    semantics=("Matches ``torch.nn.functional.cosine_embedding_loss``, including its ``1e-12`` (float32's "
               "9.99999996e-13) added to each squared norm: a zero vector has cosine 0 (loss 1 for a similar pair) and a finite, large "
               "gradient. Targets other than 1 and -1 raise ``ValueError`` (PyTorch gives them loss 0)."),
    properties=Properties("metric learning (pairs)", "low (bounded in [0, 2])", "bounded by 1 / |x|",
                          "semantic similarity, retrieval", "low"),
    fd_safe=_cosine_safe,
    example="""
    >>> x1 = np.array([[3.0, 4.0], [1.0, 0.0]])
    >>> x2 = np.array([[4.0, 3.0], [1.0, 1.0]])
    >>> fl.cosine_embedding(x1, x2, np.array([1, -1]), reduction="none")
    array([0.04      , 0.70710678])
    >>> g1, g2 = fl.cosine_embedding.grad(x1, x2, np.array([1, -1]), reduction="sum")
    >>> g1.round(6)
    array([[-0.0448  ,  0.0336  ],
           [ 0.      ,  0.707107]])
    """,
)


# -- InfoNCE -------------------------------------------------------------------------------------


info_nce = _in_batch(
    "info_nce", cross_entropy,
    inputs=(
        Input("z1", "Embeddings of the first view, shape ``(N, D)``; row ``i`` pairs with row ``i`` of ``z2``.",
              differentiable=True),
        Input("z2", "Embeddings of the second view (or the other modality), the shape of ``z1``.",
              differentiable=True),
    ),
    params=(
        Param("temperature", 0.1, "Softmax temperature of the cosine similarities",
              Interval(0.0, math.inf, (False, False))),
        Param("symmetric", True, "Average the z1-to-z2 and the z2-to-z1 losses (CLIP); False: z1-to-z2 only",
              type=bool, special=(False,)),
    ),
    summary="InfoNCE with in-batch negatives: each pair's cosine similarity against all others in the batch.",
    formula=r"\ell_i = -\tfrac12 \left[\log \frac{e^{s_{ii}}}{\sum_j e^{s_{ij}}} + "
            r"\log \frac{e^{s_{ii}}}{\sum_j e^{s_{ji}}}\right],\quad "
            r"s_{ij} = \frac{\hat z_{1i} \cdot \hat z_{2j}}{\tau},\ \hat z = \frac{z}{\max(\lVert z \rVert, 10^{-12})}"
            r"\quad (\text{not symmetric: the first term only, undivided})",
    gradient=r"\partial \ell / \partial S = \tfrac12 \left[(\operatorname{softmax}_{\text{rows}}(S) - I)"
             r" + (\operatorname{softmax}_{\text{cols}}(S) - I)\right] / \tau,\quad "
             r"\partial \ell / \partial \hat Z_1 = G \hat Z_2,\ \partial \ell / \partial \hat Z_2 = G^\top \hat Z_1,"
             r"\ \partial \ell / \partial z = (I - \hat z \hat z^\top)\, \partial \ell / \partial \hat z\, / \lVert z \rVert",
    reference=("van den Oord, A., Li, Y., Vinyals, O. (2018). Representation Learning with Contrastive "
               "Predictive Coding. arXiv:1807.03748; Radford, A. et al. (2021). Learning Transferable Visual "
               "Models From Natural Language Supervision (CLIP). ICML."),
    equivalents={"PyTorch": "logits = F.normalize(z1) @ F.normalize(z2).T / temperature; "
                            "(F.cross_entropy(logits, arange(N)) + F.cross_entropy(logits.T, arange(N))) / 2"},
    semantics=("CLIP's symmetric loss over the N x N similarity matrix of the two views: the negatives of a "
               "pair are the other rows of the *other* view (SimCLR's NT-Xent also counts the same view's "
               "other rows, 2N - 2 negatives). Normalisation as ``torch.nn.functional.normalize`` "
               "(``eps = 1e-12``). The matrix products run in BLAS; the softmax cross entropy of its rows "
               "(and columns) is :func:`fastloss.cross_entropy`'s fused kernel. ``reduction='none'`` gives "
               "one loss per pair; ``weight`` weighs pairs."),
    properties=Properties("self-supervised / contrastive representation learning", "low",
                          "bounded (softmax minus one-hot, through the normalisation)",
                          "SimCLR / CLIP-style training with in-batch negatives", "high (N x N matrix, BLAS)"),
    options={
        "weight_doc": "weight : array_like, optional\n    Non-negative per-pair weights, shape ``(N,)``.",
        "reduction_doc": ("reduction : {\"mean\", \"sum\", \"none\"}, default \"mean\"\n"
                          "    ``\"mean\"``: the (weighted) mean over pairs; ``\"sum\"``: the sum; ``\"none\"``: "
                          "one loss per pair.\n    Gradients are those of the reduced loss (of the sum for "
                          "``\"none\"``)."),
    },
    example="""
    >>> z1 = np.array([[1.0, 0.0], [0.0, 1.0]])
    >>> z2 = np.array([[2.0, 0.0], [1.0, 1.0]])
    >>> round(float(fl.info_nce(z1, z2, temperature=0.5)), 6)
    0.370061
    """,
)
