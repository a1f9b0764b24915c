"""The write strategies: which user class writes through which writer."""

from __future__ import annotations

from locust import User

import users as user_package
from users.engineer import Engineer
from writers.base import Writer


def writer_classes(user_classes: list[type[User]]) -> list[type[Writer]]:
    """The write strategies of these user classes, each once."""
    found = {user.writer_class for user in user_classes if getattr(user, "writer_class", None) is not None}
    return sorted(found, key=lambda cls: cls.__name__)


def class_names(user_classes: list[type[User]]) -> dict[str, str]:
    """Writer class name -> the user class that writes through it (the name users pick and read)."""
    return {user.writer_class.__name__: user.__name__ for user in user_classes if hasattr(user, "writer_class")}


def available_strategies() -> dict[str, type[Engineer]]:
    """The concrete engineer classes of the `users` package, one per write strategy: the baseline first."""
    found = {
        name: value
        for name, value in vars(user_package).items()
        if isinstance(value, type) and issubclass(value, Engineer) and not value.abstract
    }
    return {name: found[name] for name in sorted(found, key=lambda name: (name != "NaiveEngineer", name))}


def resolve_strategies(names: list[str]) -> list[type[Engineer]]:
    """The engineer classes of these names; an unknown name is an error that lists the known ones."""
    known = available_strategies()
    if unknown := [name for name in names if name not in known]:
        raise ValueError(f"unknown strategies {', '.join(unknown)}: choose from {', '.join(sorted(known))}")
    return [known[name] for name in names]
