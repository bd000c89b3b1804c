"""genctl.policies: generative models (VP-SDE, GVP, I-CFM), samplers, the IQL critic and BC/GMPO/GMPG.

Time convention: t = 0 is noise, t = 1 is data (see ``paths``). No file I/O, no envs, no apps here.
"""

from __future__ import annotations

from .algorithms import BC, GMPG, GMPO, Algorithm, gmpo_weights, make_algorithm
from .critic import ChunkCritic, IQLCritic, expectile_loss
from .ema import EMA
from .generative import GenerativeModel, make_generative_model
from .nets import ResidualMLPBackbone, count_parameters
from .paths import GVPPath, ICFMPath, ProbabilityPath, VPSDEPath
from .solvers import SOLVERS

__all__ = [
    "BC", "EMA", "ChunkCritic", "GMPG", "GMPO", "SOLVERS", "Algorithm", "GVPPath", "GenerativeModel", "ICFMPath", "IQLCritic",
    "ProbabilityPath", "ResidualMLPBackbone", "VPSDEPath", "count_parameters", "expectile_loss", "gmpo_weights",
    "make_algorithm", "make_generative_model",
]
