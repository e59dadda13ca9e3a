"""The tables `pytest bench/ --benchmark-only` ends with (bench/conftest.py prints them): one row per benchmark group.

    group              triton ms  speed-up  torch ms  compile ms  speed-up
    pool5 fwd float32    94.72 *   0.0836x     7.914      0.2198      36.0x

A row is one pytest-benchmark group (a layer, pass and dtype), with its backends side by side: the time per call
and the speed-up = torch's time / that backend's time (above 1: faster than torch). The time is the median: of
the device times (do_bench, L2 flushed) where a GPU run recorded them for every row, else of pytest-benchmark's
rounds (wall clock). Interpreted Triton times are marked: they say the kernel runs, not how fast; so are device
times of a host-bound call (bench.common.time_ms: it takes as long to return as the device to run it). Groups with
no backend (the data pipeline, the towers) get a second table, one row per benchmark, with img/s.

`groups` is what pytest-benchmark's pytest_benchmark_group_stats hook returns: [(group, [benchmark dicts])],
each dict flat (its stats beside its group, name, param and extra_info); rows compared from a saved run
(--benchmark-compare) have a `path` and are left out.
"""

BACKENDS = ("triton", "torch", "compile")
MARK = "*"
FOOTNOTE = f"{MARK} triton (interpreted): Triton's CPU interpreter, for correctness, not speed"
HOST_MARK = "!"
HOST_FOOTNOTE = f"{HOST_MARK} host-bound: the call takes as long to return as to run (graph_ms: device alone)"


def current(benchmarks: list) -> list:
    """The benchmarks of this run (not those loaded by --benchmark-compare)."""
    return [bench for bench in benchmarks if not bench.get("path")]


def on_device(groups: list) -> bool:
    """Every backend row recorded a device time (a GPU run): the tables use those, else the wall-clock medians."""
    rows = [bench for _, benchmarks in groups for bench in current(benchmarks) if "backend" in bench["extra_info"]]
    return bool(rows) and all("device_ms" in bench["extra_info"] for bench in rows)


def ms(bench: dict, device: bool) -> float:
    return bench["extra_info"]["device_ms"] if device else bench["median"] * 1e3


def interpreted(bench: dict) -> bool:
    return bench["extra_info"].get("backend") == "triton" and bool(bench["extra_info"].get("triton_interpreted"))


def host_bound(bench: dict) -> bool:
    return bool(bench["extra_info"].get("host_bound"))


def ms_cell(value: float) -> str:
    return f"{value:.4g}" if value < 1e4 else f"{value:.0f}"


def backend_row(group: str, benchmarks: list, device: bool) -> list:
    """[group, then per backend its ms (marked when interpreted) and, but for torch, its speed-up over torch]."""
    by_backend = {bench["extra_info"]["backend"]: bench for bench in benchmarks}
    torch = by_backend.get("torch")
    row = [group]
    for backend in BACKENDS:
        bench = by_backend.get(backend)
        time = ms(bench, device) if bench else None
        row.append("-" if bench is None else ms_cell(time) + (f" {MARK}" if interpreted(bench) else "")
                   + (f" {HOST_MARK}" if device and host_bound(bench) else ""))
        if backend != "torch":
            row.append(f"{ms(torch, device) / time:#.3g}x" if bench and torch and time > 0 else "-")
    return row


def other_rows(group: str, benchmarks: list) -> list:
    """[group, case, median ms, img/s] for each benchmark of a group with no backend."""
    rows = []
    for bench in benchmarks:
        img_per_s = bench["extra_info"].get("img_per_s")
        rows.append([group, bench.get("param") or bench["name"].removeprefix("test_"),
                     ms_cell(bench["median"] * 1e3), f"{img_per_s:.1f}" if img_per_s else "-"])
    return rows


def render(cells: list, left: int = 1) -> list:
    """Lines of `cells` (header first): the first `left` columns left-aligned, the others right-aligned."""
    widths = [max(len(row[i]) for row in cells) for i in range(len(cells[0]))]
    return ["  ".join(cell.ljust(w) if i < left else cell.rjust(w) for i, (cell, w) in enumerate(zip(row, widths)))
            .rstrip() for row in cells]


def summary(groups: list) -> list:
    """The lines to print: the backend table with its legend, then the table of the other groups."""
    device = on_device(groups)
    backend, other = [], []
    for group, benchmarks in groups:
        benchmarks = current(benchmarks)
        with_backend = [bench for bench in benchmarks if "backend" in bench["extra_info"]]
        if with_backend:
            backend.append(backend_row(group or "(no group)", with_backend, device))
        other += other_rows(group or "(no group)", [b for b in benchmarks if "backend" not in b["extra_info"]])
    lines = []
    if backend:
        clock = "device time: do_bench, L2 flushed" if device else "wall clock: pytest-benchmark's rounds"
        lines += render([["group", "triton ms", "speed-up", "torch ms", "compile ms", "speed-up"]] + backend)
        lines += [f"ms: median per call ({clock})",
                  "speed-up: torch ms / that backend's ms (above 1: faster than torch)"]
        lines += [FOOTNOTE] * any(MARK in row[1] for row in backend)
        lines += [HOST_FOOTNOTE] * any(cell.endswith(HOST_MARK) for row in backend for cell in row[1:])
    if other:
        lines += [""] * bool(lines) + render([["group", "case", "ms (median)", "img/s"]] + other, left=2)
    return lines
