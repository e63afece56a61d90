"""CANN profiles: what each CANN line's atc accepts, as data (one JSON file per line, sources inside).

The one source of truth for CANN facts: `compile`'s opset and op pre-check, the `export --opset` default,
the `target-opset` pass default and every help text or error that says what atc accepts read a profile
from here. This module sits below frontends, passes and backends (it imports only `onnxforge.errors`),
so all of them can; `onnxforge.backends.cann` re-exports it under its older name.

A profile records only what its cited documentation says: the ai.onnx opset range, the opset exports
aim at (``default_opset``, with the reason in its notes), the ONNX op list where one was transcribed
(else the op pre-check is skipped), and the atc options that exist in that line. `select_profile` picks one from a version text (``8.0``, ``8.0.RC2``, ``8``), from the installed
toolkit (``ASCEND_TOOLKIT_HOME``'s ``*/ascend_toolkit_install.info`` ``version=`` line), or
`DEFAULT_CANN` (the line the seeds were compiled with).
"""

from __future__ import annotations

import json
import logging
import os
import re
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path

from onnxforge.errors import BackendError

log = logging.getLogger(__name__)

#: The profile used when no --cann is given and no installed CANN is found (the seeds used CANN 5.0.2).
DEFAULT_CANN = "5.0"

_VERSION = re.compile(r"^\s*(\d+)(?:\.(\d+))?(?:\.\S*)?\s*$")


@dataclass(frozen=True)
class CannProfile:
    """One CANN line: opset range, default opset, op list (None: not recorded), atc options, sources."""

    version: str
    line: str
    onnx_version: str
    min_opset: int
    max_opset: int
    default_opset: int
    ops: frozenset[str] | None
    atc_options: frozenset[str]
    sources: tuple[str, ...]
    notes: tuple[str, ...]

    def accepts_opset(self, opset: int) -> bool:
        """Whether this line's atc accepts ai.onnx `opset` (its documented range)."""
        return self.min_opset <= opset <= self.max_opset

    def describe_opsets(self) -> str:
        """``"CANN 5.0's atc accepts opset 9..13 (default 11)"``: the words help texts and errors use."""
        return f"CANN {self.line}'s atc accepts opset {self.min_opset}..{self.max_opset} (default {self.default_opset})"

    def has_option(self, flag: str) -> bool:
        """Whether atc ``--flag`` exists in this line (`flag` without dashes)."""
        return flag in self.atc_options


@lru_cache(maxsize=None)
def profiles() -> dict[str, CannProfile]:
    """Every shipped profile by its key (``"5.0"``, ``"8.0"``...)."""
    found: dict[str, CannProfile] = {}
    for entry in resources.files(__name__).iterdir():
        if not entry.name.endswith(".json"):
            continue
        raw = json.loads(entry.read_text(encoding="utf-8"))
        ops = raw.get("ops")
        found[raw["version"]] = CannProfile(
            version=raw["version"], line=raw["line"], onnx_version=raw["onnx_version"],
            min_opset=int(raw["min_opset"]), max_opset=int(raw["max_opset"]), default_opset=int(raw["default_opset"]),
            ops=frozenset(ops) if ops is not None else None, atc_options=frozenset(raw["atc_options"]),
            sources=tuple(raw.get("sources", ())), notes=tuple(raw.get("notes", ())))
    return dict(sorted(found.items(), key=lambda kv: tuple(int(p) for p in kv[0].split("."))))


def profile(version: str) -> CannProfile:
    """The profile for a CANN version text: ``8.0``, ``8.0.RC2``, ``8`` all select the 8.x line.

    Raises:
        BackendError: the text is not a version, or no profile covers it.
    """
    m = _VERSION.match(str(version))
    known = ", ".join(profiles())
    if not m:
        raise BackendError(f"CANN version '{version}' is not a version like 8.0 (profiles: {known})")
    for key, prof in profiles().items():
        if key.split(".")[0] == m.group(1):
            return prof
    raise BackendError(f"no CANN profile for version '{version}' (profiles: {known})")


def installed_version(env: dict[str, str] | None = None) -> str | None:
    """The installed CANN toolkit version from ``ASCEND_TOOLKIT_HOME`` (or ``ASCEND_HOME_PATH``), or None."""
    env = dict(os.environ) if env is None else env
    for var in ("ASCEND_TOOLKIT_HOME", "ASCEND_HOME_PATH"):
        home = env.get(var)
        if not home:
            continue
        root = Path(home)
        for info in [root / "ascend_toolkit_install.info", *sorted(root.glob("*/ascend_toolkit_install.info"))]:
            try:
                text = info.read_text(encoding="utf-8", errors="replace")
            except OSError:
                continue
            for line in text.splitlines():
                key, _, value = line.partition("=")
                if key.strip() == "version" and value.strip():
                    return value.strip().strip('"')
    return None


def select_profile(version: str | None = None, env: dict[str, str] | None = None) -> CannProfile:
    """`profile(version)`; without one the installed CANN's, else `DEFAULT_CANN`'s."""
    if version:
        return profile(version)
    found = installed_version(env)
    if found:
        try:
            return profile(found)
        except BackendError:
            log.warning("installed CANN %s has no profile; using %s", found, DEFAULT_CANN)
    return profile(DEFAULT_CANN)
