"""Settings use cases: read effective values (stored or default), change one with its check."""

from __future__ import annotations

from collections.abc import Callable, Iterable

from nexus.domain import SETTINGS, Invalid, Setting, SettingsStore, SettingValue, spec_for


class SettingsService:
    def __init__(self, repo: SettingsStore) -> None:
        self._repo = repo
        self._guards: dict[str, list[Callable[[str, SettingValue], None]]] = {}
        self._watchers: dict[str, list[Callable[[str, SettingValue], None]]] = {}

    def guard(self, keys: Iterable[str], check: Callable[[str, SettingValue], None]) -> None:
        """Have ``check(key, new value)`` run before any of ``keys`` changes; it raises to refuse the change."""
        for key in keys:
            self._guards.setdefault(key, []).append(check)

    def watch(self, keys: Iterable[str], changed: Callable[[str, SettingValue], None]) -> None:
        """Have ``changed(key, new value)`` run once any of ``keys`` has changed (after it is stored)."""
        for key in keys:
            self._watchers.setdefault(key, []).append(changed)

    def all(self) -> list[Setting]:
        stored = self._repo.stored()
        return [
            Setting(spec.key, stored.get(spec.key, spec.default), spec.default, spec.description)
            for spec in sorted(SETTINGS.values(), key=lambda s: s.key)
        ]

    def get(self, key: str) -> Setting:
        spec = spec_for(key)
        value = self._repo.stored().get(key, spec.default)
        return Setting(key, value, spec.default, spec.description)

    def set(self, key: str, value: object) -> Setting:
        spec = spec_for(key)
        checked = spec.check(value)
        changed = checked != self.get(key).value
        if changed:
            for check in self._guards.get(key, ()):
                check(key, checked)
        self._repo.put(key, checked)
        if changed:
            for watcher in self._watchers.get(key, ()):
                watcher(key, checked)
        return self.get(key)

    def str_value(self, key: str) -> str:
        value = self.get(key).value
        if not isinstance(value, str):
            raise Invalid(f"setting {key} holds {value!r}, not a string")
        return value

    def int_value(self, key: str) -> int:
        value = self.get(key).value
        if not isinstance(value, int) or isinstance(value, bool):
            raise Invalid(f"setting {key} holds {value!r}, not an integer")
        return value
