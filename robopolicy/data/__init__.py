"""Demonstration data: the demo store, training windows, normalization, loaders, importers.

Names are imported lazily, so tools that only touch the store (importers, `robopolicy info`, a
collecting writer) start without loading torch.
"""
import importlib

_EXPORTS = {"DemoStore": "store", "Field": "store", "Normalizer": "normalizer", "WindowSpec": "windows",
            "split_episodes": "windows", "window_index": "windows"}
__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"robopolicy.data.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'robopolicy.data' has no attribute {name!r}")
