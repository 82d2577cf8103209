"""Child process that measures one peer on a list of cases, away from Numba's thread pool.

Peers with their own thread pools (PyTorch, JAX, scikit-learn) are measured here, in a process where
no fastloss parallel kernel has run (see ``Provider.isolate``). Inputs are regenerated from the same
seed, so they equal the parent's. The result is checked against the naive NumPy implementation (itself
tested against fastloss) rather than fastloss, whose first parallel call would start the thread pool we
keep away from. Protocol: a JSON job on stdin; JSON lines on stdout (``step``, ``result``, ``skip``).
"""

from __future__ import annotations

import json
import sys

#: Above this many elements the naive reference is not computed (it would cost more than the timing).
CHECK_LIMIT = 20_000_000


def _emit(obj: dict) -> None:
    print(json.dumps(obj), flush=True)


def main() -> int:
    job = json.loads(sys.stdin.read())
    from .. import get
    from . import peers
    from .cases import Size, make_case
    from .runner import compare
    from .timing import measure

    peers.THREADS = job["threads"]
    provider = peers.PROVIDERS[job["provider"]]
    naive = peers.PROVIDERS["numpy"]
    for index, item in enumerate(job["cases"]):
        case = make_case(get(item["loss"]).spec, Size(tuple(item["shape"])), item["dtype"])
        _emit({"event": "step", "index": index, "text": f"{case.loss} {case.size.label} {case.dtype.name} "
               f"{provider.name}"})
        if not provider.supports(case):
            _emit({"event": "skip", "index": index})
            continue
        prepared = provider.prepare(case, job["device"])
        timing, first = measure(prepared.run, prepared.sync, repeats=job["repeats"], max_time=job["max_time"])
        host = prepared.to_host(first)
        del first, prepared
        check = "-"
        if naive.supports(case) and case.elements <= CHECK_LIMIT:
            ref = naive.prepare(case, "cpu")
            check = compare(host, ref.to_host(ref.run()), case.dtype)
        _emit({"event": "result", "index": index, "first": timing.first, "samples": timing.samples,
               "number": timing.number, "min_bytes": case.min_bytes, "check": check})
    return 0


if __name__ == "__main__":
    sys.exit(main())
