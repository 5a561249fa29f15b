"""pertattack: adversarial examples for classification and regression models.

The perturbation-analysis framework of Balda, Behboodi and Mathar (2018): every attack is an
objective x a constraint x a solver x a schedule. Start with :func:`get_attack` and
:func:`list_attacks`.
"""

from .attacks import Attack, AttackResult, get_attack, list_attacks
from .constraints import Box, LpBall, Partition
from .metrics import (
    UndefinedMetricWarning,
    eps_for_psnr,
    evaluate,
    fooling_curve,
    fooling_ratio,
    operator_norm,
    predict,
    psnr,
    psnr_curve,
    rho2,
    robustness,
)
from .modelcall import ModelCall, eval_mode

__version__ = "0.1.0"

__all__ = [
    "Attack",
    "AttackResult",
    "Box",
    "LpBall",
    "ModelCall",
    "Partition",
    "UndefinedMetricWarning",
    "eps_for_psnr",
    "eval_mode",
    "evaluate",
    "fooling_curve",
    "fooling_ratio",
    "get_attack",
    "list_attacks",
    "operator_norm",
    "predict",
    "psnr",
    "psnr_curve",
    "rho2",
    "robustness",
]
