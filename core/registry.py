"""A small registry mapping short names to objects, with errors that list the valid choices."""

from typing import Dict, Generic, Iterable, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
  """Maps names to objects (builders, modules, classes) for one kind of thing.

  `kind` names the thing in error messages, e.g. "architecture" or "preprocessing op".
  """

  def __init__(self, kind: str):
    self.kind = kind
    self._items: Dict[str, T] = {}

  def register(self, name: str, item: T = None):
    """Registers `item` under `name`; without `item`, works as a decorator."""
    if item is None:
      def decorator(obj: T) -> T:
        self.register(name, obj)
        return obj
      return decorator
    if name in self._items:
      raise ValueError(f"{self.kind} {name!r} is registered twice")
    self._items[name] = item
    return item

  def get(self, name: str) -> T:
    try:
      return self._items[name]
    except KeyError:
      raise ValueError(
          f"unknown {self.kind} {name!r}; valid choices: {', '.join(self.names())}"
      ) from None

  def names(self) -> Iterable[str]:
    return sorted(self._items)

  def __contains__(self, name: str) -> bool:
    return name in self._items
