"""Start-up hook for tests: make every distribution listed in $VLIC_BLOCKED_JSON uninstalled.

Each meta-path finder is wrapped so that the blocked top-level modules are not found (``import``
raises ModuleNotFoundError, ``importlib.util.find_spec`` returns None) and their distributions'
metadata is hidden, as in an environment where they were never installed.
"""

import json
import os
import sys

_spec = os.environ.get("VLIC_BLOCKED_JSON")
if _spec:
    with open(_spec, encoding="utf-8") as _f:
        _blocked = json.load(_f)
    _MODULES = frozenset(_blocked["modules"])
    _DISTS = frozenset(_blocked["distributions"])

    def _norm(name):
        return name.lower().replace("_", "-").replace(".", "-")

    class _Hidden:
        def __init__(self, finder):
            self._finder = finder

        def find_spec(self, fullname, path=None, target=None):
            if fullname.split(".")[0] in _MODULES:
                return None
            find = getattr(self._finder, "find_spec", None)
            return None if find is None else find(fullname, path, target)

        def find_distributions(self, context=None, *args, **kwargs):
            find = getattr(self._finder, "find_distributions", None)
            if find is None:
                return iter(())
            name = getattr(context, "name", None)
            if name is not None and _norm(name) in _DISTS:
                return iter(())
            found = find(*([] if context is None else [context]), *args, **kwargs)
            if name is not None:
                return found
            # all distributions (entry points): filter on the folder's name, no metadata parsing
            return (d for d in found if _norm(getattr(d, "_normalized_name", "")) not in _DISTS)

        def invalidate_caches(self):
            invalidate = getattr(self._finder, "invalidate_caches", None)
            if invalidate is not None:
                invalidate()

        def __getattr__(self, name):
            return getattr(self._finder, name)

    for _name in list(sys.modules):
        if _name.split(".")[0] in _MODULES:
            del sys.modules[_name]
    sys.meta_path[:] = [_Hidden(f) for f in sys.meta_path]
