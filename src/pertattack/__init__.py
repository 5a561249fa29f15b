"""pertattack: adversarial examples for classification and regression models.

The perturbation-analysis framework of Balda, Behboodi and Mathar (2018): every attack is an
objective x a constraint x a solver x a schedule. Start with :func:`get_attack` and
:func:`list_attacks`.
"""

from . import checks, targets
from .attacks import Attack, AttackResult
from .cascade import Cascade
from .constraints import Box, Constraint, LpBall, Partition
from .data import load_cifar10, load_digits, load_mnist
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
from .modelcall import Model, ModelCall, eval_mode
from .objectives import Objective
from .presets import cascade, get_attack, list_attacks
from .schedule import Schedule
from .solvers import Solver
from .training import adversarial_training

__version__ = "0.1.0"

__all__ = [
    "Attack",
    "AttackResult",
    "Box",
    "Cascade",
    "Constraint",
    "LpBall",
    "Model",
    "ModelCall",
    "Objective",
    "Schedule",
    "Solver",
    "cascade",
    "checks",
    "targets",
    "Partition",
    "UndefinedMetricWarning",
    "adversarial_training",
    "eps_for_psnr",
    "eval_mode",
    "evaluate",
    "fooling_curve",
    "fooling_ratio",
    "get_attack",
    "list_attacks",
    "load_cifar10",
    "load_digits",
    "load_mnist",
    "operator_norm",
    "predict",
    "psnr",
    "psnr_curve",
    "rho2",
    "robustness",
]
