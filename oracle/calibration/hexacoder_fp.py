"""Estimates each analyzer's false-positive rate on the published HexaCoder training set:
its `text` is fixed code that CodeQL judged clean, so whatever an analyzer still flags there
is, by CodeQL's standard, a false positive.

Usage: python hexacoder_fp.py HEXACODER_TRAIN HEXACODER_TRAIN_JSONL [--analyzers ...]
       [scan options passed through]
(HEXACODER_TRAIN_JSONL is ../shared/bench/hexacoder/dataset/hexacoder_train.jsonl.)
Prints a Markdown table.
"""

import argparse
import collections
import json
import pathlib
import subprocess
import tempfile


def language_extension(text):
    # The set is Python and C; C files open with includes.
    return "c" if any(line.startswith("#include") for line in text.splitlines()[:40]) else "py"


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("binary")
    parser.add_argument("jsonl")
    parser.add_argument("--analyzers", default="embedded")
    args, passthrough = parser.parse_known_args()
    analyzers = args.analyzers.split(",")
    rows = [json.loads(line) for line in pathlib.Path(args.jsonl).read_text().splitlines() if line.strip()]
    with tempfile.TemporaryDirectory() as tmp:
        root = pathlib.Path(tmp)
        languages = {}
        for i, row in enumerate(rows):
            ext = language_extension(row["text"])
            languages[f"{i}.{ext}"] = ext
            (root / f"{i}.{ext}").write_text(row["text"])
        command = [args.binary, "scan", "--format", "json", "--analyzers", args.analyzers,
                   *passthrough, str(root)]
        out = subprocess.run(command, capture_output=True, text=True)
        if out.returncode not in (0, 1, 2) or not out.stdout.strip():
            raise SystemExit(out.stderr)
        outcome = json.loads(out.stdout)
    flagged = collections.defaultdict(set)
    cwes = collections.defaultdict(collections.Counter)
    for finding in outcome["findings"]:
        name = pathlib.Path(finding["path"]).name
        flagged[finding["analyzer"]].add(name)
        cwes[finding["analyzer"]][finding["cwe"]] += 1
    skipped = {run["analyzer"]: {pathlib.Path(s["path"]).name for s in run["skipped"]}
               for run in outcome["analyzers"]}
    states = {run["analyzer"]: run["status"]["state"] for run in outcome["analyzers"]}
    by_language = collections.Counter(languages.values())
    print(f"{len(rows)} files: {by_language['py']} Python, {by_language['c']} C.")
    print()
    print("| analyzer | files it read | flagged | flagged share | top CWEs flagged |")
    print("|---|---|---|---|---|")
    handles = {"bandit": {"py"}, "cppcheck": {"c"}, "flawfinder": {"c"}, "gcc": {"c"}}
    union = set()
    for analyzer in analyzers:
        if states.get(analyzer) != "ran":
            print(f"| {analyzer} | {states.get(analyzer)} | | | |")
            continue
        mine = {n for n, ext in languages.items() if ext in handles.get(analyzer, {"py", "c"})}
        read = mine - skipped.get(analyzer, set())
        hit = flagged[analyzer] & read
        union |= hit
        top = ", ".join(f"{c} ({k})" for c, k in cwes[analyzer].most_common(4))
        share = 100 * len(hit) / len(read) if read else 0
        print(f"| {analyzer} | {len(read)} | {len(hit)} | {share:.1f}% | {top} |")
    if len(analyzers) > 1:
        print(f"| any | {len(rows)} | {len(union)} | {100 * len(union) / len(rows):.1f}% | |")


if __name__ == "__main__":
    main()
