"""The eval parts, one module each; importing this package registers every module in it by name."""

import importlib
import pkgutil

# Discovery instead of a hand-kept list: a new part is one file in this folder.
for _info in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_info.name}")
