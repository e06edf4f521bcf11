"""The core never imports Jupyter: it must work in scripts, CI and `accelerate launch` workers."""

import subprocess
import sys

BLOCKER = """
import importlib.abc, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in ('ipywidgets', 'IPython'):
            raise ImportError('blocked ' + name)
sys.meta_path.insert(0, Block())
import pkgutil, importlib, nbft
core = [m.name for m in pkgutil.walk_packages(nbft.__path__, 'nbft.')
        if not (m.name.startswith('nbft.widgets') or m.name in ('nbft.magics', 'nbft.__main__'))]
for name in core:
    importlib.import_module(name)
print(len(core))
"""


def test_core_imports_without_ipywidgets_or_ipython():
    proc = subprocess.run([sys.executable, "-c", BLOCKER], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert int(proc.stdout.strip().splitlines()[-1]) >= 7


def test_every_public_name_resolves():
    import nbft

    for name in nbft.__all__:
        assert getattr(nbft, name) is not None, name
    assert sorted(nbft.__all__) == nbft.__all__ and len(nbft.__all__) <= 30  # a small, sorted public API
