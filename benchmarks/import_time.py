"""What ``import dcspass`` adds to ``import torch``, measured in fresh interpreters.

Each round starts one interpreter per Python given (``--python``, default: this one), in rotating
order, which times ``import torch`` and then ``import dcspass`` with ``time.perf_counter``. Prints, per
interpreter, the median, min and max over rounds of both. Interpreters run from a temporary folder, so
the ``dcspass`` each one imports is the one installed in its environment (an editable install points
at its checkout), never one found in the current directory.

    .venv/bin/python benchmarks/import_time.py --rounds 9
    .venv/bin/python benchmarks/import_time.py --python ../main/.venv/bin/python --python .venv/bin/python

For the breakdown by module: ``.venv/bin/python -X importtime -c "import dcspass" 2> importtime.txt``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile

PROBE = """
import json, time
start = time.perf_counter()
import torch
after_torch = time.perf_counter()
import dcspass
end = time.perf_counter()
print(json.dumps({"torch": after_torch - start, "dcspass": end - after_torch, "file": dcspass.__file__}))
"""


def measure(python: str, cwd: str) -> dict:
    out = subprocess.run([python, "-c", PROBE], capture_output=True, text=True, cwd=cwd, check=True)
    return json.loads(out.stdout)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--python", action="append", help="an interpreter to measure (repeatable)")
    args = parser.parse_args(argv)
    pythons = args.python or [sys.executable]
    runs: dict[str, list[dict]] = {p: [] for p in pythons}
    with tempfile.TemporaryDirectory() as cwd:
        for python in pythons:  # warm the file cache once, untimed
            measure(python, cwd)
        for r in range(args.rounds):
            for python in pythons[r % len(pythons) :] + pythons[: r % len(pythons)]:
                runs[python].append(measure(python, cwd))
    for python, samples in runs.items():
        print(f"{python} (dcspass from {samples[0]['file']}), {len(samples)} rounds:")
        for key, label in (("torch", "import torch"), ("dcspass", "import dcspass after torch")):
            values = [s[key] for s in samples]
            print(
                f"  {label:28s} median {statistics.median(values):6.2f} s  "
                f"min {min(values):6.2f} s  max {max(values):6.2f} s"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
