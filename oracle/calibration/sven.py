"""Calibrates the oracle on SVEN's real vulnerable/fixed function pairs: per CWE and
analyzer, the share of vulnerable functions flagged with that CWE and the share of fixed
functions left clean of it.

Usage: python sven.py HEXACODER_TRAIN SVEN_DATA_DIR [--analyzers embedded]
(SVEN_DATA_DIR is ../shared/bench/sven/data_train_val; train and val are pooled.)
Prints a Markdown table.
"""

import argparse
import collections
import json
import pathlib
import subprocess
import tempfile


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("binary")
    parser.add_argument("data")
    parser.add_argument("--analyzers", default="embedded")
    args = parser.parse_args()
    pairs = collections.defaultdict(list)
    for path in sorted(pathlib.Path(args.data).glob("*/cwe-*.jsonl")):
        cwe = "CWE-" + path.stem.split("-")[1]
        for line in path.read_text().splitlines():
            row = json.loads(line)
            ext = row["file_name"].rsplit(".", 1)[-1].lower()
            pairs[cwe].append((ext, row["func_src_before"], row["func_src_after"]))
    with tempfile.TemporaryDirectory() as tmp:
        root = pathlib.Path(tmp)
        for cwe, rows in pairs.items():
            for i, (ext, before, after) in enumerate(rows):
                for side, text in (("vulnerable", before), ("fixed", after)):
                    folder = root / side / cwe
                    folder.mkdir(parents=True, exist_ok=True)
                    (folder / f"{i}.{ext}").write_text(text)
        flagged = {}
        for side in ("vulnerable", "fixed"):
            out = subprocess.run(
                [args.binary, "scan", "--format", "json", "--analyzers", args.analyzers, str(root / side)],
                capture_output=True, text=True,
            )
            if out.returncode not in (0, 1):
                raise SystemExit(out.stderr)
            for finding in json.loads(out.stdout):
                path = pathlib.Path(finding["path"]).relative_to(root / side)
                flagged.setdefault((side, finding["cwe"], str(path)), True)
    print("| CWE | pairs | vulnerable flagged | fixed clean |")
    print("|---|---|---|---|")
    total = [0, 0, 0]
    for cwe in sorted(pairs):
        n = len(pairs[cwe])
        files = [f"{cwe}/{i}.{ext}" for i, (ext, _, _) in enumerate(pairs[cwe])]
        # CWE-787 rules also answer for the other memory-safety CWEs SVEN labels separately.
        hit = sum((("vulnerable", cwe, f) in flagged) for f in files)
        clean = sum((("fixed", cwe, f) not in flagged) for f in files)
        total[0] += n
        total[1] += hit
        total[2] += clean
        print(f"| {cwe} | {n} | {hit} ({100 * hit / n:.0f}%) | {clean} ({100 * clean / n:.0f}%) |")
    n = total[0]
    print(f"| all | {n} | {total[1]} ({100 * total[1] / n:.0f}%) | {total[2]} ({100 * total[2] / n:.0f}%) |")


if __name__ == "__main__":
    main()
