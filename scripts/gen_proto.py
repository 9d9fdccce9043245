#!/usr/bin/env python3
"""Generate Python code from proto/ into jobworkerd/gen/ (committed; never edited by hand).

    python scripts/gen_proto.py          regenerate
    python scripts/gen_proto.py --check  exit 1 if the committed code is stale (CI runs this)

The proto is compiled as if it sat at jobworkerd/gen/jobworker/v1/, so the generated modules import
each other as jobworkerd.gen.jobworker.v1.* and need no top-level 'jobworker' package.
"""

import filecmp
import os
import shutil
import sys
import tempfile

from grpc_tools import protoc
import grpc_tools

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROTO_DIR = os.path.join(ROOT, "proto")
PACKAGE = os.path.join("jobworkerd", "gen")
OUT = os.path.join(ROOT, PACKAGE)


def protos():
    for dirpath, _, files in os.walk(PROTO_DIR):
        for name in files:
            if name.endswith(".proto"):
                yield os.path.relpath(os.path.join(dirpath, name), PROTO_DIR)


def generate(out_root):
    with tempfile.TemporaryDirectory() as tmp:
        staged = os.path.join(tmp, PACKAGE)
        shutil.copytree(PROTO_DIR, staged)
        files = [os.path.join(PACKAGE, p) for p in protos()]
        wkt = os.path.join(os.path.dirname(grpc_tools.__file__), "_proto")
        args = ["protoc", f"-I{tmp}", f"-I{wkt}", f"--python_out={out_root}", f"--pyi_out={out_root}",
                f"--grpc_python_out={out_root}", *files]
        if protoc.main(args) != 0:
            sys.exit("protoc failed")
    for dirpath, _, _ in os.walk(os.path.join(out_root, PACKAGE)):
        init = os.path.join(dirpath, "__init__.py")
        if not os.path.exists(init):
            with open(init, "w") as handle:
                handle.write('"""Generated from proto/ by scripts/gen_proto.py. Do not edit."""\n' if dirpath.endswith("gen") else "")


def differences(a, b):
    cmp = filecmp.dircmp(a, b, ignore=["__pycache__"])
    out = cmp.left_only + cmp.right_only + [f for f in cmp.common_files if not filecmp.cmp(os.path.join(a, f), os.path.join(b, f), shallow=False)]
    for sub in cmp.common_dirs:
        out += [os.path.join(sub, d) for d in differences(os.path.join(a, sub), os.path.join(b, sub))]
    return out


def main():
    if "--check" in sys.argv:
        with tempfile.TemporaryDirectory() as tmp:
            generate(tmp)
            stale = differences(os.path.join(tmp, PACKAGE), OUT) if os.path.isdir(OUT) else ["(missing)"]
        if stale:
            print(f"generated code in {PACKAGE} is stale: {', '.join(stale)}; run python scripts/gen_proto.py")
            sys.exit(1)
        print("generated code is up to date")
        return
    shutil.rmtree(OUT, ignore_errors=True)
    generate(ROOT)
    print(f"generated {PACKAGE}")


if __name__ == "__main__":
    main()
