"""Record the golden reference on the code to be frozen (the code before a refactor), from the repository root:

    git worktree add /tmp/golden-ref <commit>
    PYTHONPATH=/tmp/golden-ref/src python tests/golden/record.py [--keep DIR]
    git worktree remove --force /tmp/golden-ref

It runs the commands of ``commands.py`` and writes ``reference/``: a copy of every PNG (pixels and text are
compared) and ``weights.json``, a fingerprint of every tensor of the weight files (``compare.fingerprint``).
``--keep DIR`` keeps all the outputs in DIR, to measure how far another run lies from them; running it again
with ``ONEDNN_MAX_CPU_ISA=AVX2`` (or ``SSE41``, with ``ATEN_CPU_CAPABILITY=default``) gives another CPU's rounding,
which the tolerances in ``compare.py`` must cover (tests/README.md has the numbers).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from commands import GROUPS, run_group  # noqa: E402
from compare import REFERENCE, fingerprint, reference_png  # noqa: E402


def record(root: Path) -> None:
    """Run every group under ``root``, then (all of them done) replace ``reference/`` with their outputs."""
    outputs = {group: run_group(group, root / group) for group in GROUPS}
    shutil.rmtree(REFERENCE, ignore_errors=True)
    weights = {}
    for group, files in outputs.items():
        for file in files:
            if file.endswith(".png"):
                reference_png(group, file).parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(root / group / file, reference_png(group, file))
            else:
                weights[f"{group}/{file}"] = fingerprint(root / group / file)
    write_weights(weights)


def write_weights(weights: dict[str, dict[str, dict]]) -> None:
    """``reference/weights.json``: {'group/file': {tensor: fingerprint}}, one tensor a line."""
    files = [
        f" {json.dumps(file)}: {{\n" + ",\n".join(f"  {json.dumps(n)}: {json.dumps(fp)}" for n, fp in sorted(t.items()))
        for file, t in sorted(weights.items())
    ]
    (REFERENCE / "weights.json").write_text("{\n" + "\n },\n".join(files) + "\n }\n}\n")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--keep", type=Path, help="keep the outputs in this folder")
    args = parser.parse_args()
    import diffusionlab

    print("recording the outputs of", Path(diffusionlab.__file__).parent, flush=True)
    if args.keep:
        record(args.keep)
    else:
        with tempfile.TemporaryDirectory() as tmp:
            record(Path(tmp))
    print(f"wrote {REFERENCE}")
