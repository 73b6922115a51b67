"""Release stage: package a bundle with a hashed manifest and model card, and verify it."""

from __future__ import annotations

from edgeft.release.bundle import PackageResult, package, render_model_card
from edgeft.release.verify import VerifyResult, verify

__all__ = ["PackageResult", "VerifyResult", "package", "render_model_card", "verify"]
