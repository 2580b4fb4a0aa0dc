"""The session's results: every case's entry, saved atomically after each case.

Why after each case: a nightly job killed halfway (a crashed engine, a timeout) keeps every case
it measured. Under xdist the workers keep their entries in memory and the controller writes the
session's one file (xdist.py).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from pytest_speedbench.errors import UsageError
from pytest_speedbench.results.document import Storage, commit_info, machine_info, results_document, write_atomic
from pytest_speedbench.settings.options import Settings


class ResultsBook:
    """Every case's entry, saved atomically after each case so nothing measured is lost."""

    def __init__(self, settings: Settings, rootdir: Path, section: dict[str, Any]) -> None:
        self.settings = settings
        self.section = section
        self.entries: dict[str, dict[str, Any]] = {}
        self.paths: list[Path] = []
        self._json_path = Path(settings.json) if settings.json else None
        storage_root = Path(settings.storage)
        if not storage_root.is_absolute():
            storage_root = rootdir / storage_root
        self.storage = Storage(storage_root)
        self._autosave_path: Path | None = None
        self.enabled = True  # False on xdist workers: the controller writes the one file
        self._machine: dict[str, Any] | None = None
        self._commit: dict[str, Any] | None = None

    def check_writable(self) -> None:
        """Fail early when a results folder cannot be created or written.

        Autosave is on by default, and the plugin is loaded by every pytest run in an
        environment that has it: unless asked for by name, the autosave folder is checked
        without creating it (nothing appears in a project that runs no benchmark).
        """
        folders = [self._json_path.parent] if self._json_path is not None else []
        if self.settings.autosave and "autosave" in self.settings.explicit:
            folders.append(self.storage.folder)
        elif self.settings.autosave and not _creatable(self.storage.folder):
            raise UsageError(f"cannot write results to {self.storage.folder} (autosave is on by default; "
                             "--speedbench-storage=DIR picks another folder, --speedbench-autosave=off none)")
        for folder in folders:
            try:
                folder.mkdir(parents=True, exist_ok=True)
                probe = folder / f".speedbench-write-check-{os.getpid()}"
                probe.write_bytes(b"")
                probe.unlink()
            except OSError as exc:
                raise UsageError(f"cannot write results to {folder}: {exc}") from None

    def add(self, entry: dict[str, Any]) -> None:
        self.entries[entry["fullname"]] = entry

    def machine_info(self, config: Any = None) -> dict[str, Any]:
        """The run's machine info (through the firstresult hook under pytest), gathered once."""
        if self._machine is None:
            self.document(config)
        return self._machine or {}

    def document(self, config: Any = None) -> dict[str, Any]:
        """The results document; under pytest (`config`) through the firstresult hooks, so a
        conftest can replace machine info, commit info or the document itself."""
        entries = list(self.entries.values())
        if config is None:
            if self._machine is None:
                self._machine, self._commit = machine_info(), commit_info()
            return results_document(entries, self.section, machine=self._machine, commit=self._commit)
        hook = config.hook
        if self._machine is None:
            self._machine = hook.pytest_speedbench_machine_info(config=config)
            self._commit = hook.pytest_speedbench_commit_info(config=config)
        return hook.pytest_speedbench_results_document(config=config, entries=entries, section=self.section,
                                                       machine_info=self._machine, commit_info=self._commit)

    def save(self, document: dict[str, Any], empty: bool = False) -> list[Path]:
        """Write the document (`empty`: even without entries, as an empty shard does)."""
        if not self.enabled or not (self.entries or empty):  # nothing measured (an xdist run of other tests)
            return []
        written = []
        if self._json_path is not None:
            written.append(write_atomic(self._json_path, document))
        if self.settings.autosave:
            if self._autosave_path is None:
                commit = (document.get("commit_info") or {}).get("id")
                self._autosave_path = self.storage.reserve(commit, name=self.settings.save)
            written.append(write_atomic(self._autosave_path, document))
        self.paths = written
        return written


def _creatable(folder: Path) -> bool:
    """Whether `folder` exists writable or could be made in its nearest existing parent."""
    for candidate in (folder, *folder.parents):
        if candidate.exists():
            return candidate.is_dir() and os.access(candidate, os.W_OK | os.X_OK)
    return False
