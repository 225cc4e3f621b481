"""Copy the published run's tables from ``benchmarks/RESULTS.md`` into the README.

The README shows some of the report's tables (the headline one, say). Each sits under a
marker line ``<!-- results: <section title> -->``; ``sync`` replaces the table that follows
the marker with the table under ``## <section title>`` in RESULTS.md, and leaves everything
else alone. Copying by hand once put the accuracy table's rows into the throughput tables;
tests/test_benchmarks.py checks that the README equals ``sync`` of itself.

    python -m benchmarks.readme_tables      # after python -m benchmarks --publish
"""
import os
import re

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = os.path.join(ROOT, "README.md")
RESULTS = os.path.join(ROOT, "benchmarks", "RESULTS.md")
MARKER = re.compile(r"^<!-- results: (.+?) -->$")


def _table_at(lines, start):
    """(first, end): the table (consecutive lines starting with '|') at or after ``start``."""
    first = start
    while first < len(lines) and not lines[first].startswith("|"):
        if lines[first].strip():
            raise ValueError(f"expected a table after line {start}, found {lines[first]!r}")
        first += 1
    end = first
    while end < len(lines) and lines[end].startswith("|"):
        end += 1
    return first, end


def report_tables(results_md):
    """{section title: table lines} for every ``## title`` section of the report."""
    lines = results_md.splitlines()
    out = {}
    for i, line in enumerate(lines):
        if line.startswith("## "):
            try:
                first, end = _table_at(lines, i + 1)
            except ValueError:
                continue  # a section that opens with prose has no table to copy
            if end > first:
                out[line[3:].strip()] = lines[first:end]
    return out


def sync(readme, results_md):
    """The README text with every marked table replaced by the report's table of that title."""
    tables = report_tables(results_md)
    lines = readme.splitlines()
    out, i = [], 0
    while i < len(lines):
        out.append(lines[i])
        m = MARKER.match(lines[i])
        i += 1
        if not m:
            continue
        title = m.group(1)
        if title not in tables:
            raise KeyError(f"README marks a table '{title}' that RESULTS.md does not have")
        first, end = _table_at(lines, i)
        out += lines[i:first] + tables[title]
        i = end
    return "\n".join(out) + ("\n" if readme.endswith("\n") else "")


def main():
    with open(README, encoding="utf-8") as f:
        readme = f.read()
    with open(RESULTS, encoding="utf-8") as f:
        results_md = f.read()
    new = sync(readme, results_md)
    if new != readme:
        with open(README, "w", encoding="utf-8") as f:
            f.write(new)
    print("README tables " + ("updated" if new != readme else "already current"))


if __name__ == "__main__":
    main()
