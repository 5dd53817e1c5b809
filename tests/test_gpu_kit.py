"""The offline GPU kit's own checks (benchmarks/gpu/kit.py). Preparing and installing the real parts
needs PyPI and a Python 3.12 stand-in of the GPU machine: CI does that in .ci/gpu_kit_check.sh."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys

from .helpers import REPO

KIT = REPO / "benchmarks" / "gpu" / "kit.py"


def kit(*arguments: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(KIT), *arguments], capture_output=True, text=True, timeout=120)


def parts_folder(tmp_path, content: bytes = b"part"):
    parts = tmp_path / "parts"
    parts.mkdir()
    (parts / "kit-part1.tar").write_bytes(content)
    manifest = {"parts": {"kit-part1.tar": {"bytes": 4, "sha256": hashlib.sha256(b"part").hexdigest()}}}
    (parts / "MANIFEST.json").write_text(json.dumps(manifest))
    return parts


def test_install_refuses_a_part_that_differs_from_the_manifest_before_installing_anything(tmp_path):
    parts = parts_folder(tmp_path, b"tart")  # the same size, another checksum: a damaged copy
    completed = kit("install", "--parts", str(parts), "--target", str(tmp_path / "site"))
    assert completed.returncode != 0 and "kit-part1.tar differs from MANIFEST.json" in completed.stderr
    assert not (tmp_path / "site").exists()
    (parts / "kit-part1.tar").unlink()
    completed = kit("install", "--parts", str(parts), "--target", str(tmp_path / "site"))
    assert "is missing; copy every part of MANIFEST.json" in completed.stderr


def test_check_fails_on_a_skipped_step_or_a_part_over_the_limit(tmp_path):
    parts = parts_folder(tmp_path)
    validation = tmp_path / "validation.json"
    steps = {name: {"status": "ok", "seconds": 1.0} for name in ("axolotl", "trl_qlora", "grid_slice")}
    validation.write_text(json.dumps({"steps": steps}))
    assert kit("check", "--parts", str(parts), "--validation", str(validation)).returncode == 0
    steps["axolotl"]["status"] = "skipped"
    validation.write_text(json.dumps({"steps": steps}))
    completed = kit("check", "--parts", str(parts), "--validation", str(validation))
    assert completed.returncode != 0 and "step axolotl: skipped" in completed.stderr
    steps["axolotl"]["status"] = "ok"
    validation.write_text(json.dumps({"steps": steps}))
    manifest = json.loads((parts / "MANIFEST.json").read_text())
    manifest["parts"]["kit-part1.tar"]["bytes"] = 61 * 2**20
    (parts / "MANIFEST.json").write_text(json.dumps(manifest))
    completed = kit("check", "--parts", str(parts), "--validation", str(validation))
    assert completed.returncode != 0 and f"over {60 * 2**20}" in completed.stderr


def test_env_puts_the_kit_before_the_checkout(tmp_path):
    line = kit("env", "--target", str(tmp_path / "site")).stdout.strip()
    assert line.startswith(f"export PYTHONPATH={tmp_path / 'site'}:{tmp_path / 'site-extra'}:{REPO}")
