"""One registry helper for everything defectkit finds by name: tasks, dataset formats,
anomaly methods and backbone weights. A dict (look-ups and listing as usual) that refuses a
second entry under one name and, asked for an unknown name, lists the known ones."""

from __future__ import annotations

from typing import TypeVar

T = TypeVar("T")


class Registry(dict[str, T]):
    def __init__(self, kind: str):
        super().__init__()
        self.kind = kind  # what an entry is, for messages: "task", "dataset format", ...

    def add(self, name: str, value: T) -> T:
        if name in self:
            raise ValueError(f"{self.kind} {name!r} is already registered")
        self[name] = value
        return value

    def lookup(self, name: str) -> T:
        if name not in self:
            raise ValueError(f"unknown {self.kind} {name!r}; registered: {', '.join(sorted(self))}")
        return self[name]
