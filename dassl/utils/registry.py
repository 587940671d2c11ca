"""Name → class registries (trainers, datasets, evaluators, backbones)."""
from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional


class Registry:
    """A mapping from a class's ``__name__`` to the class.

    Registering a name twice raises ``KeyError`` unless ``force=True``. A failed ``get``
    names the registry, lists the registered names and suggests the closest one.
    """

    def __init__(self, name: str):
        self._name = name
        self._obj_map: Dict[str, Any] = {}

    def _do_register(self, name: str, obj: Any, force: bool = False) -> None:
        if name in self._obj_map and not force:
            raise KeyError(f'An object named "{name}" was already registered in "{self._name}" registry')
        self._obj_map[name] = obj

    def register(self, obj: Any = None, force: bool = False) -> Optional[Callable]:
        if obj is None:

            def wrapper(fn_or_class):
                self._do_register(fn_or_class.__name__, fn_or_class, force=force)
                return fn_or_class

            return wrapper
        self._do_register(obj.__name__, obj, force=force)
        return None

    def get(self, name: str) -> Any:
        if name not in self._obj_map:
            from .tools import get_most_similar_str_to_a_from_b

            names = self.registered_names()
            hint = f" (did you mean {get_most_similar_str_to_a_from_b(name, names)!r}?)" if names else ""
            raise KeyError(f'Object name "{name}" does not exist in "{self._name}" registry; registered: {names}{hint}')
        return self._obj_map[name]

    def registered_names(self) -> List[str]:
        return list(self._obj_map.keys())

    def __contains__(self, name: str) -> bool:
        return name in self._obj_map
