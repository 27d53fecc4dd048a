#!/usr/bin/env python3
"""Fails when the top-level modules of a crate import each other in a cycle.

For each crate under crates/, each top-level module (a file or folder of src/) depends on the
modules its non-test code names as `crate::<module>`; a cycle in that graph is printed and the
exit code is 1. A cheap stand-in for `cargo modules dependencies --acyclic`, whose current
release also counts every type and its own methods as a cycle.

    scripts/module-cycles.py
"""

import glob
import os
import re
import sys


def cycles(src):
    modules = {}
    for path in glob.glob(os.path.join(src, "**", "*.rs"), recursive=True):
        name = os.path.relpath(path, src)[:-3].replace("/mod", "").replace("/", "::")
        if name in ("lib", "main"):
            continue
        top = name.split("::")[0]
        with open(path, encoding="utf-8") as file:
            text = file.read()
        tests = text.find("#[cfg(test)]")
        if tests >= 0:
            text = text[:tests]
        used = set(re.findall(r"crate::([a-z_][a-z0-9_]*)", text))
        modules.setdefault(top, set()).update(used - {top})
    edges = {module: {d for d in deps if d in modules} for module, deps in modules.items()}
    found, state = [], {}

    def visit(module, path):
        state[module] = "open"
        for dep in sorted(edges[module]):
            if state.get(dep) == "open":
                found.append(path[path.index(dep):] + [dep])
            elif dep not in state:
                visit(dep, path + [dep])
        state[module] = "done"

    for module in sorted(edges):
        if module not in state:
            visit(module, [module])
    return found


def main():
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    failed = False
    for src in sorted(glob.glob(os.path.join(root, "crates", "*", "src"))):
        crate = os.path.basename(os.path.dirname(src))
        for cycle in cycles(src):
            failed = True
            print(f"{crate}: module cycle {' -> '.join(cycle)}")
    if not failed:
        print("module graphs: acyclic")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
