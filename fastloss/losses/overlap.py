"""Overlap losses: soft Dice, Jaccard and Tversky on segmentation masks, generalised IoU on boxes.

All are of the rowreduce kind (:mod:`fastloss.kinds.rowsum.host`). A mask loss gives one value per sample
over all of the sample's other axes (``(N, H, W)`` or ``(N, C, H, W)``): the ``map`` stage sums the
soft intersection ``I = sum p t`` and the sizes ``P = sum p``, ``T = sum t``, ``finish`` forms the
loss and its derivatives with respect to ``I`` and ``P``, and ``grad`` writes, per element,
``(dL/dI t + dL/dP) dp/dx`` (``dp/dx = p (1 - p)`` on logits). A box is a row of length 4.
"""

from __future__ import annotations

import math

import numpy as np

from .._api import family
from .._compile import njit
from .._kernels.mathfn import sigmoid
from .._spec import Input, Interval, Param, Properties
from ..kinds.rowsum.host import RowReduce, row_options

_helper = njit(cache=False, error_model="numpy", fastmath=False, forceinline=True)  # strict (see stage_kernel)

LOGITS = Input(
    "logits",
    "Predicted mask logits (probabilities with ``from_logits=False``), shape ``(N, ...)``: one sample per row "
    "of the first axis.",
    differentiable=True,
)
MASK = Input("target", "Target mask in [0, 1] (binary or soft), the shape of ``logits``.", Interval(0.0, 1.0))
SMOOTH = Param("smooth", 1.0, "Added to numerator and denominator (empty masks give a loss of 0)",
               Interval(0.0, math.inf))
FROM_LOGITS = Param("from_logits", True, "Apply the sigmoid to ``logits``; False: they are probabilities",
                    type=bool, special=(False,))


def _mask_domains(params):
    return {} if params["from_logits"] else {"logits": Interval(0.0, 1.0)}


#: the soft-mask losses: logits (or probabilities) against a target mask, one value per sample
_mask = family("rowreduce", inputs=(LOGITS, MASK), options=row_options(rows="first"), domains=_mask_domains)
#: losses of boxes, one row of four coordinates per box
_boxes = family("rowreduce")


def _mask_properties(use: str) -> Properties:
    """The catalogue's properties of a soft-mask loss used for ``use``."""
    return Properties("segmentation", "low (bounded in [0, 1])", "bounded, vanishes on confident pixels", use,
                      "medium (sigmoid)")


@_helper
def _soft_sums(x, t, from_logits):
    p = sigmoid(x) if from_logits != 0.0 else x
    return (p * t, p, t)


@_helper
def _soft_grad(x, t, dl_di, dl_dp, from_logits):
    """``(dL/dI t + dL/dP) dp/dx``."""
    if from_logits != 0.0:
        p = sigmoid(x)
        return (dl_di * t + dl_dp) * (p * (1.0 - p))
    return dl_di * t + dl_dp


# -- Dice ----------------------------------------------------------------------------------------


def _dice_map(j, x, t, smooth, from_logits):
    return _soft_sums(x, t, from_logits)


def _dice_finish(sums, smooth, from_logits):
    i, p, t = sums
    num = 2.0 * i + smooth
    den = p + t + smooth
    return (1.0 - num / den, -2.0 / den, num / (den * den))


def _dice_grad(j, x, t, coefs, smooth, from_logits):
    return (_soft_grad(x, t, coefs[1], coefs[2], from_logits),)


_MASK_EXAMPLE = """
    >>> probs = np.array([[[0.9, 0.2], [0.8, 0.1]]])      # one 2 x 2 mask
    >>> target = np.array([[[1.0, 0.0], [1.0, 0.0]]])
    >>> round(float(fl.{name}(probs, target, from_logits=False)), 6)
    {value}
    >>> round(float(fl.{name}(np.log(probs / (1 - probs)), target)), 6)   # the same on logits
    {value}
"""

dice = _mask(
    "dice", RowReduce(_dice_map, _dice_finish, _dice_grad),
    params=(SMOOTH, FROM_LOGITS),
    summary="Soft Dice loss per sample: one minus the soft Dice coefficient of the predicted and target masks.",
    formula=r"\ell = 1 - \frac{2 \sum_j p_j t_j + s}{\sum_j p_j + \sum_j t_j + s},\quad p = \sigma(x)",
    gradient=r"\partial \ell / \partial x_j = \left(-\frac{2 t_j}{P + T + s} + \frac{2 I + s}{(P + T + s)^2}\right)"
             r" p_j (1 - p_j),\quad I = \textstyle\sum p t,\ P = \sum p,\ T = \sum t",
    reference=("Milletari, F., Navab, N., Ahmadi, S.-A. (2016). V-Net: Fully Convolutional Neural Networks for "
               "Volumetric Medical Image Segmentation. 3DV (with the additive smoothing of common practice)."),
    equivalents={"MONAI": "monai.losses.DiceLoss(sigmoid=True, smooth_nr=smooth, smooth_dr=smooth) "
                          "for one channel"},
    semantics=("One value per sample over *all* its other axes, channels included (MONAI computes one per "
               "channel unless there is a single channel). ``smooth`` is added to the numerator and the "
               "denominator; PyTorch has no Dice loss."),
    properties=_mask_properties("imbalanced foreground / background masks"),
    example=_MASK_EXAMPLE.format(name="dice", value="0.12"),
)


# -- Jaccard -------------------------------------------------------------------------------------


def _jaccard_finish(sums, smooth, from_logits):
    i, p, t = sums
    num = i + smooth
    den = p + t - i + smooth
    q = num / (den * den)
    # d/dI (num / den) = 1/den + num/den^2 (the union shrinks as I grows); d/dP = -num/den^2
    return (1.0 - num / den, -(1.0 / den + q), q)


jaccard = _mask(
    "jaccard", RowReduce(_dice_map, _jaccard_finish, _dice_grad),
    params=(SMOOTH, FROM_LOGITS),
    summary="Soft Jaccard (IoU) loss per sample: one minus the soft intersection over union of the masks.",
    formula=r"\ell = 1 - \frac{I + s}{P + T - I + s},\quad I = \textstyle\sum_j p_j t_j,\ P = \sum_j p_j,\ "
            r"T = \sum_j t_j,\ p = \sigma(x)",
    gradient=r"\partial \ell / \partial x_j = \left(-\frac{t_j}{U} - \frac{(I + s)(t_j - 1)}{U^2}\right) p_j (1 - p_j),"
             r"\quad U = P + T - I + s",
    reference=("Rahman, M. A., Wang, Y. (2016). Optimizing Intersection-Over-Union in Deep Neural Networks for "
               "Image Segmentation. ISVC."),
    equivalents={"segmentation_models_pytorch": "smp.losses.JaccardLoss(mode='binary', smooth=smooth) "
                                                "(which adds smooth to numerator and denominator alike)"},
    semantics=("One value per sample over all its other axes; ``smooth`` is added to the numerator and the "
               "denominator. PyTorch has no Jaccard loss."),
    properties=_mask_properties("IoU-evaluated segmentation"),
    example=_MASK_EXAMPLE.format(name="jaccard", value="0.181818"),
)


# -- Tversky -------------------------------------------------------------------------------------


def _tversky_map(j, x, t, alpha, beta, smooth, from_logits):
    return _soft_sums(x, t, from_logits)


def _tversky_finish(sums, alpha, beta, smooth, from_logits):
    i, p, t = sums
    # FP = P - I, FN = T - I: den = I + alpha FP + beta FN + s
    num = i + smooth
    den = (1.0 - alpha - beta) * i + alpha * p + beta * t + smooth
    q = num / (den * den)
    return (1.0 - num / den, -(1.0 / den) + (1.0 - alpha - beta) * q, alpha * q)


def _tversky_grad(j, x, t, coefs, alpha, beta, smooth, from_logits):
    return (_soft_grad(x, t, coefs[1], coefs[2], from_logits),)


tversky = _mask(
    "tversky", RowReduce(_tversky_map, _tversky_finish, _tversky_grad),
    params=(
        Param("alpha", 0.5, "Weight of false positives", Interval(0.0, math.inf), special=(0.7,)),
        Param("beta", 0.5, "Weight of false negatives", Interval(0.0, math.inf), special=(0.3,)),
        SMOOTH,
        FROM_LOGITS,
    ),
    summary="Tversky loss per sample: a Dice / Jaccard generalisation weighing false positives and negatives.",
    formula=r"\ell = 1 - \frac{I + s}{I + \alpha\,(P - I) + \beta\,(T - I) + s},\quad I = \textstyle\sum p t,\ "
            r"P = \sum p,\ T = \sum t,\ p = \sigma(x)",
    gradient=r"\partial \ell / \partial x_j = \left(\frac{\partial \ell}{\partial I} t_j + "
             r"\frac{\alpha (I + s)}{D^2}\right) p_j (1 - p_j),\quad "
             r"\frac{\partial \ell}{\partial I} = -\frac1D + \frac{(1 - \alpha - \beta)(I + s)}{D^2}",
    reference=("Salehi, S. S. M., Erdogmus, D., Gholipour, A. (2017). Tversky loss function for image segmentation "
               "using 3D fully convolutional deep networks. MLMI."),
    equivalents={"MONAI": "monai.losses.TverskyLoss(sigmoid=True, alpha=alpha, beta=beta, smooth_nr=smooth, "
                          "smooth_dr=smooth) for one channel"},
    semantics=("One value per sample over all its other axes. ``alpha = beta = 1/2`` is Dice with the smoothing "
               "doubled; ``alpha = beta = 1`` is Jaccard."),
    properties=_mask_properties("lesion segmentation, recall-weighted masks"),
    example=_MASK_EXAMPLE.format(name="tversky", value="0.1"),
)


# -- generalised IoU -----------------------------------------------------------------------------


def _box_map(j, p, t, eps):
    # the eight coordinates of the two boxes, summed out of their rows of 4 (selects, not products:
    # a NaN or inf coordinate must not leak into the others)
    return (p if j == 0 else 0.0, p if j == 1 else 0.0, p if j == 2 else 0.0, p if j == 3 else 0.0,
            t if j == 0 else 0.0, t if j == 1 else 0.0, t if j == 2 else 0.0, t if j == 3 else 0.0)


@_helper
def _max_weight(a, b):
    """``d max(a, b) / da``: 1 if ``a`` is larger, 1/2 on a tie (PyTorch splits ties evenly), else 0."""
    return 1.0 if a > b else (0.5 if a == b else 0.0)


@_helper
def _min_weight(a, b):
    return 1.0 if a < b else (0.5 if a == b else 0.0)


def _giou_finish(s, eps):
    x1, y1, x2, y2, a1, b1, a2, b2 = s
    iw = min(x2, a2) - max(x1, a1)
    ih = min(y2, b2) - max(y1, b1)
    overlap = iw > 0.0 and ih > 0.0  # torchvision counts an intersection only where both are positive
    inter = iw * ih if overlap else 0.0
    union = (x2 - x1) * (y2 - y1) + (a2 - a1) * (b2 - b1) - inter
    cw = max(x2, a2) - min(x1, a1)
    ch = max(y2, b2) - min(y1, b1)
    area_c = cw * ch
    ue = union + eps
    ce = area_c + eps
    loss = 1.0 - inter / ue + (area_c - union) / ce
    # loss = 1 - I / (U + eps) + (C - U) / (C + eps), U = A + A_t - I
    dl_di = -(ue + inter) / (ue * ue) + 1.0 / ce
    dl_da = inter / (ue * ue) - 1.0 / ce
    dl_dc = ue / (ce * ce)
    di_w = ih if overlap else 0.0  # d I / d iw
    di_h = iw if overlap else 0.0
    gx1 = -dl_di * di_w * _max_weight(x1, a1) - dl_da * (y2 - y1) - dl_dc * ch * _min_weight(x1, a1)
    gy1 = -dl_di * di_h * _max_weight(y1, b1) - dl_da * (x2 - x1) - dl_dc * cw * _min_weight(y1, b1)
    gx2 = dl_di * di_w * _min_weight(x2, a2) + dl_da * (y2 - y1) + dl_dc * ch * _max_weight(x2, a2)
    gy2 = dl_di * di_h * _min_weight(y2, b2) + dl_da * (x2 - x1) + dl_dc * cw * _max_weight(y2, b2)
    return (loss, gx1, gy1, gx2, gy2)


def _giou_grad(j, p, t, coefs, eps):
    return (coefs[1] if j == 0 else (coefs[2] if j == 1 else (coefs[3] if j == 2 else coefs[4])),)


def _check_boxes(loss: str, arrays: dict) -> None:
    """Degenerate boxes (x2 < x1 or y2 < y1) raise, naming the first one (torchvision asserts)."""
    for name in ("pred_boxes", "target_boxes"):
        b = np.asarray(arrays[name])
        bad = (b[..., 2] < b[..., 0]) | (b[..., 3] < b[..., 1])
        if np.any(bad):
            idx = np.unravel_index(int(np.argmax(bad.reshape(-1))), bad.shape) if bad.ndim else ()
            where = ", ".join(str(int(i)) for i in idx)
            raise ValueError(
                f"{loss}: {name}[{where}] = {b[idx].tolist()} is degenerate; boxes are (x1, y1, x2, y2) "
                "with x1 <= x2 and y1 <= y2"
            )


def _boxes_valid(s, eps):
    """The device form of :func:`_check_boxes` on a row's sums (the eight coordinates): neither box
    degenerate (NaN coordinates pass, as on the host)."""
    return not (s[2] < s[0] or s[3] < s[1] or s[6] < s[4] or s[7] < s[5])


def _sample_boxes(lead, rng):
    """Valid random (pred, target) boxes for ``lead`` rows: corners in [-2, 2], sides in [0.2, 3]."""

    def boxes():
        xy = rng.uniform(-2.0, 2.0, (*lead, 2))
        return np.concatenate([xy, xy + rng.uniform(0.2, 3.0, (*lead, 2))], axis=-1)

    return boxes(), boxes()


def _giou_safe(inputs, params, h):
    """Boxes whose corners are not within a few steps of a corner of the other box (the min/max kinks)."""
    p, t = (np.asarray(x, float) for x in inputs)
    gap = np.abs(p[..., :, None] - t[..., None, :]).min(axis=(-2, -1))
    return gap > 4 * h


giou = _boxes(
    "giou", RowReduce(_box_map, _giou_finish, _giou_grad),
    inputs=(
        Input("pred_boxes", "Predicted boxes ``(x1, y1, x2, y2)``, shape ``(..., 4)``.", differentiable=True),
        Input("target_boxes", "Target boxes ``(x1, y1, x2, y2)``, the shape of ``pred_boxes``."),
    ),
    params=(Param("eps", 1e-7, "Added to the union and the enclosing area", Interval(0.0, math.inf)),),
    summary="Generalised IoU loss of axis-aligned boxes: IoU with a penalty for the empty part of the enclosing box.",
    formula=r"\ell = 1 - \frac{I}{U + \epsilon} + \frac{C - U}{C + \epsilon},\quad "
            r"U = |B| + |B^*| - I,\ C = |\text{smallest box enclosing } B \text{ and } B^*|",
    gradient=r"\frac{\partial \ell}{\partial I} = -\frac{U + \epsilon + I}{(U + \epsilon)^2} + \frac1{C + \epsilon},"
             r"\ \frac{\partial \ell}{\partial |B|} = \frac{I}{(U + \epsilon)^2} - \frac1{C + \epsilon},"
             r"\ \frac{\partial \ell}{\partial C} = \frac{U + \epsilon}{(C + \epsilon)^2},"
             r"\ \text{chained through the corners of } B",
    reference=("Rezatofighi, H., Tsoi, N., Gwak, J., Sadeghian, A., Reid, I., Savarese, S. (2019). Generalized "
               "Intersection over Union: A Metric and A Loss for Bounding Box Regression. CVPR."),
    equivalents={"torchvision": "torchvision.ops.generalized_box_iou_loss"},
    semantics=("Matches ``torchvision.ops.generalized_box_iou_loss`` (``eps = 1e-7``; an intersection counts only "
               "where its width and height are both positive; ties of min / max split the gradient evenly, as "
               "PyTorch's autograd). Degenerate boxes (``x2 < x1`` or ``y2 < y1``) in either input raise "
               "``ValueError``. The default reduction is ``mean`` (torchvision's is ``none``), and the mean of "
               "no boxes is NaN (torchvision: 0)."),
    properties=Properties("object detection (box regression)", "low (bounded in [0, 2])",
                          "bounded, non-zero for disjoint boxes", "DETR-style detectors, anchor-free heads",
                          "low"),
    options=row_options(row_length=4, check_inputs=_check_boxes, row_check=_boxes_valid,
                        sample_inputs=_sample_boxes),
    fd_safe=_giou_safe,
    example="""
    >>> pred = np.array([[0.0, 0.0, 2.0, 2.0], [0.0, 0.0, 1.0, 1.0]])
    >>> target = np.array([[1.0, 1.0, 3.0, 3.0], [2.0, 0.0, 3.0, 1.0]])
    >>> fl.giou(pred, target, reduction="none")
    array([1.07936508, 1.33333332])
    >>> fl.giou.grad(pred, target, reduction="sum")[0]
    array([-0.07785336, -0.07785336, -0.23356009, -0.23356009])
    """,
)
