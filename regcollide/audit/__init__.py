"""The weight-spectrum audit (Ozbulak et al., "Exact Feature Collisions in Neural Networks", Table 1).

``matrices`` turns layers into weight matrices, ``rank`` is the certified rank engine (``decide`` its
staged pipeline, ``certify`` the Grams with rigorous error bounds, Cholesky certificates and Lanczos
estimates, ``deflate`` the certificate of rank deficiency, ``cosines`` the row cosines), ``spectrum``
computes ν, μ and nullity, and ``noise`` what random weights of the same shapes would give. The package
namespace stays light (names resolve on first use) because the
regularizers and the Null-space search import ``regcollide.audit.matrices`` on their own.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {"audit": "spectrum", "AuditResult": "spectrum", "LayerAudit": "spectrum",
            "expected_random_count": "noise", "SENSITIVITY_FACTORS": "noise", "NonFiniteWeightsError": "rank"}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'regcollide.audit' has no attribute {name!r}")
    return getattr(importlib.import_module(f"regcollide.audit.{_EXPORTS[name]}"), name)
