"""`import lancedb` without the cost of its REST-namespace client.

lancedb imports `lance_namespace`, which imports the data models of `lance_namespace_urllib3_client`;
that package's `__init__` also imports its whole generated REST API (about 0.8 s of a cold query's
1.3 s lancedb import), which a local index never calls.  The package is registered with its
`__path__` but its `__init__` deferred: its submodules (the models) import as usual, and the first
access to anything the `__init__` defines (a REST client) runs it then, so nothing is lost.  If
the package is missing or laid out otherwise, lancedb is imported the ordinary way.
"""

from __future__ import annotations

import importlib.util
import os
import sys

os.environ.setdefault("LANCE_LOG", "error")  # lance's Rust logger warns on every new dataset

REST_CLIENT = "lance_namespace_urllib3_client"


def defer_package_init(name: str) -> bool:
    """Register package `name` with its `__init__` not yet run (run on first use of a name it
    defines).  False when it is already imported or is not a package."""
    if name in sys.modules:
        return False
    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        return False
    if spec is None or spec.loader is None or not spec.submodule_search_locations:
        return False
    module = importlib.util.module_from_spec(spec)
    state = {"run": False}

    def run_init(attribute: str):
        if state["run"] or attribute.startswith("__"):
            raise AttributeError(f"module {name!r} has no attribute {attribute!r}")
        state["run"] = True
        spec.loader.exec_module(module)
        return getattr(module, attribute)

    module.__getattr__ = run_init
    sys.modules[name] = module
    return True


def import_lancedb():
    """The lancedb module, imported with its REST-namespace client deferred."""
    if "lancedb" not in sys.modules:
        deferred = defer_package_init(REST_CLIENT)
        try:
            import lancedb
        except Exception:
            if not deferred:
                raise
            for loaded in [key for key in sys.modules if key == REST_CLIENT or key.startswith(REST_CLIENT + ".")]:
                del sys.modules[loaded]
            for loaded in [key for key in sys.modules if key.split(".")[0] in ("lancedb", "lance_namespace")]:
                del sys.modules[loaded]
            import lancedb
        return lancedb
    return sys.modules["lancedb"]
