"""The generic entry-point loader, in process: lazy proxies and idempotent registration."""

from __future__ import annotations

import collections
import sys
import warnings
from importlib.metadata import EntryPoint

import pytest

from compressai_vlic import plugins


def _ep(value: str, name: str = "x", group: str = plugins.ARCHITECTURE_GROUP) -> EntryPoint:
    return EntryPoint(name=name, value=value, group=group)


def test_architecture_proxy_gives_the_class_to_update_model_and_instances_otherwise():
    proxy = plugins.LazyArchitecture(_ep("collections:OrderedDict"))
    # update_model: `models[arch]()` on a non-class must return the class itself.
    assert proxy() is collections.OrderedDict
    assert isinstance(proxy([("a", 1)]), collections.OrderedDict)
    # eval_model: `architectures[arch].from_state_dict(...)` goes through attribute access.
    assert proxy.fromkeys(["a"]) == {"a": None}


def test_plain_proxy_constructs_with_no_arguments():
    # registry.MODELS / CRITERIONS entries are constructors: MODELS[name]() must build one.
    proxy = plugins.LazyEntryPoint(_ep("collections:OrderedDict"))
    assert isinstance(proxy(), collections.OrderedDict)


def test_proxy_loads_nothing_until_used(tmp_path, monkeypatch):
    (tmp_path / "vlic_lazy_probe.py").write_text("def factory(**kw):\n    return kw\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    proxy = plugins.LazyEntryPoint(_ep("vlic_lazy_probe:factory", group=plugins.ZOO_GROUP))
    assert "vlic_lazy_probe" not in sys.modules
    assert proxy(quality=3) == {"quality": 3}
    assert "vlic_lazy_probe" in sys.modules
    monkeypatch.delitem(sys.modules, "vlic_lazy_probe")


def test_broken_plugin_fails_on_use_with_a_clear_message():
    proxy = plugins.LazyEntryPoint(_ep("no_such_module_for_vlic_tests:thing", name="bogus"))
    with pytest.raises(ImportError, match=r"plugin 'bogus' .*failed to load.*no_such_module"):
        proxy(quality=1)


def test_private_attributes_do_not_trigger_loading():
    proxy = plugins.LazyEntryPoint(_ep("no_such_module_for_vlic_tests:thing"))
    assert not hasattr(proxy, "__wrapped__")
    assert proxy._target is None


def test_register_is_idempotent_and_fills_every_compressai_dict():
    import compressai.zoo as zoo
    import compressai.zoo.image as zoo_image
    from compressai import registry

    plugins.register_entry_points()  # the hook may have run it already
    assert plugins.register_entry_points() == {
        plugins.ZOO_GROUP: [],
        plugins.ARCHITECTURE_GROUP: [],
        plugins.CRITERION_GROUP: [],
    }
    assert isinstance(zoo.image_models["vlic"], plugins.LazyEntryPoint)
    assert isinstance(zoo_image.model_architectures["vlic"], plugins.LazyArchitecture)
    # The registry holds a constructor: a plain proxy, or the class once it is imported.
    assert not isinstance(registry.MODELS["vlic"], plugins.LazyArchitecture)
    assert "vlic_dpo" in registry.CRITERIONS
    # CompressAI's own models are untouched.
    assert not isinstance(zoo.image_models["mbt2018"], plugins.LazyEntryPoint)


def test_imported_classes_register_themselves_with_compressai_registry():
    from compressai import registry

    from compressai_vlic.losses import VLMRewardLoss
    from compressai_vlic.models.vlic import VLIC

    assert registry.MODELS["vlic"] is VLIC
    assert registry.CRITERIONS["vlic_dpo"] is VLMRewardLoss
    # The entry-point loader sees them as its own: no clash warning, nothing replaced.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        plugins.register_entry_points()
    assert registry.MODELS["vlic"] is VLIC


def test_clashing_plugin_is_skipped_with_a_warning(monkeypatch):
    import compressai.zoo as zoo

    original = zoo.image_models["mbt2018"]
    clash = _ep("no_such_module_for_vlic_tests:f", name="mbt2018", group=plugins.ZOO_GROUP)
    monkeypatch.setattr(
        plugins, "_entries", lambda group: [clash] if group == plugins.ZOO_GROUP else []
    )
    with pytest.warns(UserWarning, match="'mbt2018'.*clashes"):
        added = plugins.register_entry_points()
    assert added[plugins.ZOO_GROUP] == []
    assert zoo.image_models["mbt2018"] is original
