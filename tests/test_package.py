"""The ``scripts`` package (bundle/scripts/__init__.py): configs reach every module as ``scripts.<module>``."""

import importlib

from conftest import BUNDLE

import scripts


def test_every_module_is_reachable_from_a_config_expression():
    modules = sorted(path.stem for path in (BUNDLE / "scripts").glob("*.py") if path.stem != "__init__")
    assert sorted(scripts.MODULES) == modules
    for name in modules:
        assert getattr(scripts, name) is importlib.import_module(f"scripts.{name}")
