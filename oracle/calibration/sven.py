"""Calibrates the oracle on SVEN's real vulnerable/fixed function pairs: per CWE and
analyzer, the share of vulnerable functions flagged with that CWE (or a CWE of its family in
oracle/data/cwe-map.toml) and the share of fixed functions left clean of it, plus the union of
all analyzers.

Usage: python sven.py HEXACODER_TRAIN SVEN_DATA_DIR [--analyzers embedded,semgrep,...]
       [--misses CWE-078] [scan options passed through, e.g. --semgrep-rules DIR]
(--misses also lists that CWE's pairs whose vulnerable side no analyzer flagged, with the
fix's diff, which is how the misses in CALIBRATION.md were read; --flagged-fixes CWE lists
the fixed functions still flagged with that CWE, with each finding's rule and line.)
(SVEN_DATA_DIR is ../shared/bench/sven/data_train_val; train and val are pooled.)
Prints Markdown tables.
"""

import argparse
import collections
import difflib
import json
import pathlib
import subprocess
import tempfile
import tomllib

CWE_MAP = pathlib.Path(__file__).resolve().parent.parent / "data" / "cwe-map.toml"


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("binary")
    parser.add_argument("data")
    parser.add_argument("--analyzers", default="embedded")
    parser.add_argument("--misses", metavar="CWE", help="list this CWE's unflagged vulnerable functions")
    parser.add_argument("--flagged-fixes", metavar="CWE",
                        help="list this CWE's fixed functions still flagged with it, with the findings")
    args, passthrough = parser.parse_known_args()
    analyzers = args.analyzers.split(",")
    families = tomllib.loads(CWE_MAP.read_text()).get("families", {})

    def counts_for(found, target):
        return found == target or found in families.get(target, [])

    pairs = collections.defaultdict(list)
    names = collections.defaultdict(list)
    for path in sorted(pathlib.Path(args.data).glob("*/cwe-*.jsonl")):
        cwe = "CWE-" + path.stem.split("-")[1]
        for line in path.read_text().splitlines():
            row = json.loads(line)
            ext = row["file_name"].rsplit(".", 1)[-1].lower()
            pairs[cwe].append((ext, row["func_src_before"], row["func_src_after"]))
            names[cwe].append(f'{row["file_name"]} {row["func_name"]}')
    # (side, relative path) -> {analyzer: set of CWEs}; and what each analyzer skipped.
    found = collections.defaultdict(lambda: collections.defaultdict(set))
    details = collections.defaultdict(list)
    skipped = collections.defaultdict(set)
    status = {}
    with tempfile.TemporaryDirectory() as tmp:
        root = pathlib.Path(tmp)
        for cwe, rows in pairs.items():
            for i, (ext, before, after) in enumerate(rows):
                for side, text in (("vulnerable", before), ("fixed", after)):
                    folder = root / side / cwe
                    folder.mkdir(parents=True, exist_ok=True)
                    (folder / f"{i}.{ext}").write_text(text)
        for side in ("vulnerable", "fixed"):
            command = [args.binary, "scan", "--format", "json", "--analyzers", args.analyzers,
                       *passthrough, str(root / side)]
            out = subprocess.run(command, capture_output=True, text=True)
            if out.returncode not in (0, 1, 2) or not out.stdout.strip():
                raise SystemExit(out.stderr)
            outcome = json.loads(out.stdout)
            for finding in outcome["findings"]:
                path = str(pathlib.Path(finding["path"]).relative_to(root / side))
                found[(side, path)][finding["analyzer"]].add(finding["cwe"])
                details[(side, path)].append(finding)
            for run in outcome["analyzers"]:
                status[run["analyzer"]] = run["status"]["state"]
                for s in run["skipped"]:
                    skipped[run["analyzer"]].add((side, str(pathlib.Path(s["path"]).relative_to(root / side))))

    for analyzer in analyzers:
        if status.get(analyzer) not in ("ran", "not_applicable"):
            print(f"{analyzer}: {status.get(analyzer)}")
    columns = analyzers + (["any"] if len(analyzers) > 1 else [])
    print("Vulnerable functions flagged with their CWE (fixed functions left clean of it):")
    print()
    print("| CWE | pairs | " + " | ".join(columns) + " |")
    print("|---|---|" + "---|" * len(columns))
    totals = {c: [0, 0, 0] for c in columns}
    for cwe in sorted(pairs):
        cells = []
        files = [f"{cwe}/{i}.{ext}" for i, (ext, _, _) in enumerate(pairs[cwe])]
        for column in columns:
            members = analyzers if column == "any" else [column]

            def flagged(side, f):
                return any(counts_for(c, cwe) for a in members for c in found[(side, f)][a])

            hit = sum(flagged("vulnerable", f) for f in files)
            clean = sum(not flagged("fixed", f) for f in files)
            # Pairs an analyzer could not read (gcc on fragments) are not counted as clean.
            unread = sum(
                any(("vulnerable", f) in skipped[a] or ("fixed", f) in skipped[a] for a in members)
                for f in files
            ) if column != "any" else 0
            n = len(files)
            t = totals[column]
            t[0] += n
            t[1] += hit
            t[2] += clean
            cell = f"{100 * hit / n:.0f}% ({100 * clean / n:.0f}%)"
            if unread:
                cell += f" [{unread} unread]"
            cells.append(cell)
        print(f"| {cwe} | {len(files)} | " + " | ".join(cells) + " |")
    n = next(iter(totals.values()))[0]
    print(f"| all | {n} | " + " | ".join(
        f"{100 * t[1] / t[0]:.0f}% ({100 * t[2] / t[0]:.0f}%)" for t in totals.values()) + " |")
    if args.flagged_fixes:
        cwe = args.flagged_fixes
        print(f"\n{cwe}: fixed functions still flagged with it, with the findings:")
        for i, (ext, before, after) in enumerate(pairs.get(cwe, [])):
            f = f"{cwe}/{i}.{ext}"
            hits = [d for d in details[("fixed", f)]
                    if d["analyzer"] in analyzers and counts_for(d["cwe"], cwe)]
            if not hits:
                continue
            print(f"\n== {i}: {names[cwe][i]}")
            lines = after.splitlines()
            for d in hits:
                line = d["span"]["start_line"]
                text = lines[line - 1].strip() if 0 < line <= len(lines) else ""
                print(f'{d["analyzer"]} {d["rule_id"]} line {line}: {text[:110]}')
    if args.misses:
        cwe = args.misses
        print(f"\n{cwe}: vulnerable functions no analyzer flagged, with the fix's changed lines:")
        for i, (ext, before, after) in enumerate(pairs.get(cwe, [])):
            f = f"{cwe}/{i}.{ext}"
            if any(counts_for(c, cwe) for a in analyzers for c in found[("vulnerable", f)][a]):
                continue
            changed = [line for line in difflib.unified_diff(
                before.splitlines(), after.splitlines(), lineterm="", n=0)
                if line[:1] in "+-" and line[:3] not in ("+++", "---")]
            print(f"\n== {i}: {names[cwe][i]}")
            print("\n".join(line[:120] for line in changed[:8]))


if __name__ == "__main__":
    main()
