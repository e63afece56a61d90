"""CANN profiles under their older import path: the data and loader live in `onnxforge.cann` (below the
frontends and passes, which read the same profile); `aipp` (static AIPP for atc) stays here."""

from __future__ import annotations

from onnxforge.cann import (  # noqa: F401  (re-exported)
    DEFAULT_CANN,
    CannProfile,
    installed_version,
    profile,
    profiles,
    select_profile,
)

__all__ = ["DEFAULT_CANN", "CannProfile", "installed_version", "profile", "profiles", "select_profile"]
