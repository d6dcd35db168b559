"""`snakemake --lint`, with the lints this workflow keeps on purpose named and justified below:
exits non-zero on any other lint (or when Snakemake cannot read the workflow).

    uv run python .ci/lint_workflow.py
"""
import re
import subprocess
import sys

# Lints kept on purpose, each with why.
KEPT = {
    # The software of every rule is the project's own locked environment (pyproject.toml,
    # uv.lock: `uv run snakemake` syncs it); a conda file or container beside it would be a second
    # description of the same environment that nothing here can build or test (no conda, no
    # container runtime on the project's machines), and it would drift from uv.lock.
    "Specify a conda environment or container for each rule.",
}

LINT = re.compile(r"^\s+\* (?P<title>.+?):?$")


def main() -> int:
    result = subprocess.run([sys.executable, "-m", "snakemake", "--lint"], capture_output=True,
                            text=True, check=False)
    output = result.stdout + result.stderr
    if "Lints for" not in output and result.returncode != 0:
        print(output, file=sys.stderr)
        print("snakemake --lint failed before linting (see above)", file=sys.stderr)
        return 1
    titles = [match["title"] for line in output.splitlines() if (match := LINT.match(line))]
    unexpected = sorted({title for title in titles if title not in KEPT})
    for title in unexpected:
        print(f"snakemake --lint: {title}", file=sys.stderr)
    kept = len(titles) - sum(title in unexpected for title in titles)
    print(f"snakemake --lint: {kept} kept lint(s) ({', '.join(sorted(KEPT))}), "
          f"{len(unexpected)} new")
    return 1 if unexpected else 0


if __name__ == "__main__":
    sys.exit(main())
