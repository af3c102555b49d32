"""Print the installed distributions whose version differs from requirements.lock (make test-latest's header)."""

from __future__ import annotations

import re
import sys
from importlib import metadata
from pathlib import Path

from packaging.utils import canonicalize_name


def locked_versions(lock: Path) -> dict[str, str]:
    """Normalised name -> version of every ``name==version`` line of a pip-compile lock file."""
    pins = re.findall(r"^([A-Za-z0-9._-]+)==([^ \\\n]+)", lock.read_text(), flags=re.M)
    return {canonicalize_name(name): version for name, version in pins}


def main(lock: str) -> None:
    locked = locked_versions(Path(lock))
    changed = []
    for dist in metadata.distributions():
        name = canonicalize_name(dist.metadata["Name"])
        if name in locked and dist.version != locked[name]:
            changed.append(f"{name} {dist.version} (lock {locked[name]})")
    print(f"test-latest: {len(changed)} package(s) differ from {lock}" + "".join(f"\n  {c}" for c in sorted(changed)))


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "requirements.lock")
