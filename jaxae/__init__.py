"""jaxae: train whole populations of autoencoders at once in JAX while searchers pick their
hyperparameters.

Modules, one idea each: ``data`` (data sets), ``models`` (masked MLP autoencoders),
``objectives`` (a loss per autoencoder kind), ``optimizers``, ``schedules`` (learning-rate
schedules), ``hparams`` (the hyperparameter names), ``population`` (the vmapped trainer),
``sharding`` (devices), ``config`` / ``driver`` / ``store`` / ``checkpoint`` / ``lock`` /
``memory`` / ``sweep`` (the sweep, its durable outputs and its CLI), ``results`` /
``analysis`` / ``importance`` / ``retrain`` / ``downstream`` / ``plotting`` / ``figures`` /
``trial_views`` / ``pages`` / ``report`` (the report), ``export`` (to Optuna), ``runtime``
(process set-up). The search side is the separate package ``searchers``.

Importing the package is cheap: submodules are imported where they are used.
"""

__version__ = "0.1.0"
