"""The trainer integrations are imported only when asked for, and a missing trainer library
is a clear error."""

from __future__ import annotations

import json
import subprocess
import sys

PROBE = """
import json, sys
import bnkit, bnkit.integrations
found = {"loaded": sorted(m for m in ("lightning", "pytorch_lightning", "transformers")
                          if m in sys.modules)}
for name in ("lightning", "pytorch_lightning", "transformers"):
    sys.modules[name] = None  # not installed
for module in ("bnkit.integrations.lightning", "bnkit.integrations.transformers"):
    try:
        __import__(module)
    except bnkit.errors.MissingDependencyError as err:
        found[module] = str(err)
print(json.dumps(found))
"""


def test_import_bnkit_loads_no_trainer_and_a_missing_one_is_named() -> None:
    out = subprocess.run(
        [sys.executable, "-c", PROBE], capture_output=True, text=True, check=True
    ).stdout
    found = json.loads(out)
    assert found["loaded"] == []
    assert "needs Lightning" in found["bnkit.integrations.lightning"]
    assert "pip install lightning" in found["bnkit.integrations.lightning"]
    assert "pip install transformers" in found["bnkit.integrations.transformers"]
