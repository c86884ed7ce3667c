"""Record the golden hashes (run once, on the code before a refactor): python tests/golden/record.py."""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from commands import GROUPS, run_group  # noqa: E402

if __name__ == "__main__":
    hashes = {}
    with tempfile.TemporaryDirectory() as tmp:
        for group in GROUPS:
            hashes[group] = run_group(group, Path(tmp) / group)
            print(group, "done", flush=True)
    out = Path(__file__).parent / "hashes.json"
    out.write_text(json.dumps(hashes, indent=2, sort_keys=True) + "\n")
    print(f"wrote {out}")
