"""Start-up hook (loaded from compressai_vlic_startup.pth) that registers CompressAI plugins.

It makes ``python -m compressai.utils.eval_model ... -a vlic`` work: right after ``compressai.zoo``
is first imported, the entry-point plugins are added to CompressAI's model dictionaries.
It imports nothing heavy, never raises, and is off when COMPRESSAI_PLUGINS=0.
"""

import os
import sys

_TARGET = "compressai.zoo"


class _CompressAIPluginFinder:
    """One-shot meta-path finder that wraps the loader of ``compressai.zoo``."""

    def find_spec(self, fullname, path, target=None):
        if fullname != _TARGET:
            return None
        try:
            sys.meta_path.remove(self)
        except ValueError:
            pass
        try:
            spec = None
            for finder in sys.meta_path:
                find = getattr(finder, "find_spec", None)
                if find is None:
                    continue
                spec = find(fullname, path, target)
                if spec is not None:
                    break
            if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
                return spec
            original = spec.loader.exec_module

            def exec_module(module, _original=original):
                _original(module)
                try:
                    from compressai_vlic.plugins import register_entry_points

                    register_entry_points()
                except Exception as exc:  # never break CompressAI itself
                    import warnings

                    warnings.warn(
                        f"CompressAI plugin registration failed ({exc.__class__.__name__}: {exc}); "
                        "CompressAI works without plugins. Set COMPRESSAI_PLUGINS=0 to skip it.",
                        stacklevel=2,
                    )

            spec.loader.exec_module = exec_module
            return spec
        except Exception:
            return None


def install():
    """Install the finder unless disabled or CompressAI's zoo is already imported."""
    try:
        if os.environ.get("COMPRESSAI_PLUGINS", "1").strip().lower() in {"0", "off", "false", "no"}:
            return
        if _TARGET in sys.modules:
            from compressai_vlic.plugins import register_entry_points

            register_entry_points()
            return
        if not any(isinstance(f, _CompressAIPluginFinder) for f in sys.meta_path):
            sys.meta_path.insert(0, _CompressAIPluginFinder())
    except Exception:
        pass


install()
