"""Print the requirements of pyproject.toml's dependencies plus the named extras, one a line.

The Dockerfiles install these before copying the code, so that a code change rebuilds only the last layer
(the project itself, seconds) instead of every dependency (a minute or more).
    python requirements.py pyproject.toml serve,api,monitoring > requirements.txt
"""

import sys

import tomllib


def requirements(pyproject: str, extras: str) -> list[str]:
    with open(pyproject, "rb") as f:
        project = tomllib.load(f)["project"]
    optional = project.get("optional-dependencies", {})
    names = [e.strip() for e in extras.split(",") if e.strip()]
    unknown = [e for e in names if e not in optional]
    if unknown:
        raise SystemExit(f"error: {pyproject} has no extra {', '.join(unknown)} (it has: {', '.join(optional)})")
    return list(dict.fromkeys(project.get("dependencies", []) + [r for e in names for r in optional[e]]))


if __name__ == "__main__":
    print("\n".join(requirements(sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else "")))
