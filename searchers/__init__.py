"""searchers: generic black-box and multi-fidelity hyperparameter search over a search space.

Knows nothing about autoencoders (or JAX): a space of named dimensions, searchers that ``ask`` for
configs and are ``tell``-ed losses, schedulers that turn any of them into jobs (config, budget)
for a driver that trains trials in slots, and the population-based training policy (``PBT``),
which decides which member of a population copies which.

Example:
    >>> from searchers import Float, Int, Choice, make_scheduler
    >>> space = {"learning_rate": Float(1e-5, 1e-1, log=True), "latent_dim": Int(2, 64, log=True),
    ...          "activation": Choice(["relu", "tanh"])}
    >>> scheduler = make_scheduler("hyperband", space, max_trials=100, max_budget=2000, seed=0)
    >>> while not scheduler.finished:
    ...     for job in scheduler.ask(free_slots()):
    ...         ...   # train job.trial_id to job.budget steps, then
    ...         scheduler.tell(job.trial_id, job.budget, loss)
"""

from searchers.asha import ASHA
from searchers.base import SEARCHERS, Searcher, searcher_from_state_dict
from searchers.cma_es import CMAES, CMAESCore
from searchers.full_budget import FullBudget
from searchers.gp import GP
from searchers.grid import GridSearch, grid_values
from searchers.hyperband import Hyperband
from searchers.pbt import PBT, Decision
from searchers.random_search import RandomSearch
from searchers.registry import (
    MULTI_FIDELITY,
    SAMPLERS,
    SCHEDULERS,
    make_sampler,
    make_scheduler,
    restore_scheduler,
)
from searchers.scheduler import Job, Scheduler
from searchers.space import (
    Choice,
    Float,
    Int,
    dimension_from_dict,
    space_from_dict,
    space_from_unit,
    space_sample,
    space_to_dict,
    space_to_unit,
)
from searchers.successive_halving import SuccessiveHalving
from searchers.tpe import TPE

__all__ = [
    "ASHA",
    "CMAES",
    "GP",
    "MULTI_FIDELITY",
    "PBT",
    "SAMPLERS",
    "SCHEDULERS",
    "SEARCHERS",
    "TPE",
    "CMAESCore",
    "Choice",
    "Decision",
    "Float",
    "FullBudget",
    "GridSearch",
    "Hyperband",
    "Int",
    "Job",
    "RandomSearch",
    "Scheduler",
    "Searcher",
    "SuccessiveHalving",
    "dimension_from_dict",
    "grid_values",
    "make_sampler",
    "make_scheduler",
    "restore_scheduler",
    "searcher_from_state_dict",
    "space_from_dict",
    "space_from_unit",
    "space_sample",
    "space_to_dict",
    "space_to_unit",
]
