#!/usr/bin/env python3
"""Lists pairs of modules in src/ that import each other (one file's `use crate::…`,
`super::…` or `self::…` paths naming the other). A module naming its own ancestor is not
counted: a parent declares its children. Exits 1 when there is a pair."""
import glob
import os
import re
import sys

SRC = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src")


def module_of(path):
    parts = os.path.relpath(path, SRC)[:-3].split(os.sep)
    if parts[-1] == "mod":
        parts = parts[:-1]
    return () if parts in (["lib"], ["main"]) else tuple(parts)


files = glob.glob(os.path.join(SRC, "**", "*.rs"), recursive=True)
modules = {module_of(f): f for f in files}
deps = {}
for module, path in modules.items():
    code = re.sub(r"//[^\n]*", "", open(path, encoding="utf-8").read())
    here = list(module) if path.endswith("mod.rs") else list(module[:-1])
    named = set()
    for use in re.findall(r"\b(?:crate|super|self)(?:::\w+)+", code):
        parts = use.split("::")
        if parts[0] == "crate":
            base, rest = [], parts[1:]
        elif parts[0] == "self":
            base, rest = list(module), parts[1:]
        else:
            base, rest = list(here), parts[1:]
            while rest and rest[0] == "super":
                base, rest = base[:-1], rest[1:]
        full = base + rest
        for k in range(len(full), 0, -1):
            target = tuple(full[:k])
            if target in modules:
                if target != module and module[: len(target)] != target:
                    named.add(target)
                break
    deps[module] = named

pairs = sorted(
    {tuple(sorted(("::".join(a), "::".join(b)))) for a, ds in deps.items() for b in ds if a in deps.get(b, ())}
)
for a, b in pairs:
    print(f"import cycle: {a} <-> {b}")
sys.exit(1 if pairs else 0)
