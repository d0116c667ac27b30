"""regcollide: measure, attack, regularize and report feature collisions in neural networks.

The public API is exported lazily: ``import regcollide`` costs nothing until a name is used, so the
command line (``regcollide --help``) starts without importing torch. Every name in ``__all__`` resolves
to the module that defines it (see ``_EXPORTS``).
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# public name -> "module:attribute"
_EXPORTS: dict[str, str] = {
    # models and data
    "create_model": "regcollide.models:create_model",
    "list_models": "regcollide.models:list_models",
    "register_model": "regcollide.models.registry:register_model",
    "load_dataset": "regcollide.data:load_dataset",
    "Augmentation": "regcollide.data.augment:Augmentation",
    "DataError": "regcollide.data:DataError",
    "load_weights_file": "regcollide.models.weights:load_weights_file",
    "resolve_device": "regcollide.models.device:resolve_device",
    "load_tensors": "regcollide.data:load_tensors",
    "make_loader": "regcollide.data:make_loader",
    # run folders and safe I/O
    "load_run": "regcollide.runs:load_run",
    "save_weights": "regcollide.io:save_weights",
    "load_weights": "regcollide.io:load_weights",
    # the audit
    "audit_model": "regcollide.audit.spectrum:audit",
    "AuditResult": "regcollide.audit.spectrum:AuditResult",
    "expected_random_count": "regcollide.audit.noise:expected_random_count",
    "NonFiniteWeightsError": "regcollide.audit.rank:NonFiniteWeightsError",
    "Flag": "regcollide.attacks.checks:Flag",
    # evaluators
    "PGD": "regcollide.attacks.pgd.attack:PGD",
    "evaluate_pgd": "regcollide.attacks.pgd.ease:evaluate_pgd",
    "exact_polytope_vertices": "regcollide.attacks.polytope.exact:exact_vertices",
    "evaluate_autoattack": "regcollide.attacks.autoattack:evaluate_autoattack",
    "NullspaceSearch": "regcollide.attacks.nullspace.search:NullspaceSearch",
    "evaluate_nullspace": "regcollide.attacks.nullspace.search:evaluate_nullspace",
    "colliding_adversarial": "regcollide.attacks.nullspace.adversarial:colliding_adversarial",
    "PolytopeSearch": "regcollide.attacks.polytope.search:PolytopeSearch",
    "evaluate_polytope": "regcollide.attacks.polytope.evaluate:evaluate_polytope",
    "polytope_setting": "regcollide.attacks.polytope.presets:get_setting",
    "PolytopeSetting": "regcollide.attacks.polytope.presets:PolytopeSetting",
    # regularizers
    "Regularizer": "regcollide.regularizers.base:Regularizer",
    "build_regularizer": "regcollide.regularizers:build_regularizer",
    "list_regularizers": "regcollide.regularizers:list_regularizers",
    # evaluation and reports
    "EvalSettings": "regcollide.evaluation.settings:EvalSettings",
    "evaluate_run": "regcollide.evaluation.evaluate:evaluate_run",
    "evaluate_model": "regcollide.evaluation.evaluate:evaluate_model",
    "benchmark": "regcollide.evaluation.benchmark:benchmark",
    "write_model_info": "regcollide.reports.robustbench:write_model_info",
    "group_by_threat_model": "regcollide.reports.entries:group_by_threat_model",
    "load_entries": "regcollide.reports.entries:load_entries",
    "write_leaderboard": "regcollide.reports.leaderboard:write_leaderboard",
    "correlate_entries": "regcollide.reports.correlation:correlate_entries",
    "write_correlation_report": "regcollide.reports.correlation_report:write_correlation_report",
    "partial_spearman": "regcollide.reports.study.correlation:partial_spearman",
    "tost_correlation": "regcollide.reports.study.correlation:tost_correlation",
    "hierarchical_bootstrap": "regcollide.reports.study.bootstrap:hierarchical_bootstrap",
    "mixed_effects": "regcollide.reports.study.mixed:mixed_effects",
    "required_n": "regcollide.reports.study.power:required_n",
    # training
    "load_config": "regcollide.training.config:load_config",
    "train": "regcollide.training.loop:train",
    "RunResult": "regcollide.training.loop:RunResult",
    "Callback": "regcollide.training.callbacks:Callback",
    "StopAfterSteps": "regcollide.training.callbacks:StopAfterSteps",
    "Converged": "regcollide.training.callbacks:Converged",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    target = _EXPORTS.get(name)
    if target is None:
        raise AttributeError(f"module 'regcollide' has no attribute {name!r}")
    module, _, attribute = target.partition(":")
    value = getattr(importlib.import_module(module), attribute)
    globals()[name] = value  # resolve once
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
