"""Backend tests do not depend on a CANN installed on the machine running them."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _no_installed_cann(monkeypatch):
    monkeypatch.delenv("ASCEND_TOOLKIT_HOME", raising=False)
    monkeypatch.delenv("ASCEND_HOME_PATH", raising=False)
