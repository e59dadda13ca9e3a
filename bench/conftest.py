"""`pytest bench/ --benchmark-only` ends with bench.summary's tables: per group, triton, torch and compile side by side.

pytest-benchmark's own tables (one per group, ~200 columns wide) are printed only with -v, or when the run saves,
compares or plots results (the options in RAW_TABLE_OPTIONS); otherwise this sets pytest-benchmark's own
--benchmark-quiet, which hides them and nothing else: --benchmark-json still writes every benchmark. Passing
--benchmark-quiet yourself hides the summary too.
"""

import pytest

from bench.summary import summary

RAW_TABLE_OPTIONS = ("benchmark_verbose", "benchmark_json", "benchmark_save", "benchmark_autosave",
                     "benchmark_compare", "benchmark_histogram", "benchmark_cprofile")
GROUPS = pytest.StashKey[list]()
QUIET = pytest.StashKey[bool]()  # --benchmark-quiet given on the command line


@pytest.hookimpl(tryfirst=True)  # before pytest-benchmark's pytest_configure reads the option
def pytest_configure(config):
    if not hasattr(config.option, "benchmark_quiet"):  # pytest-benchmark not loaded (-p no:benchmark)
        return
    config.stash[QUIET] = config.option.benchmark_quiet
    if config.getoption("verbose") <= 0 and not any(config.getoption(name) for name in RAW_TABLE_OPTIONS):
        config.option.benchmark_quiet = True


@pytest.hookimpl(wrapper=True, optionalhook=True)
def pytest_benchmark_group_stats(config, benchmarks, group_by):
    groups = list((yield))
    config.stash[GROUPS] = groups
    return groups


@pytest.hookimpl(trylast=True)  # after pytest-benchmark's own tables, when they are shown
def pytest_terminal_summary(terminalreporter, config):
    groups = config.stash.get(GROUPS, None)
    if not groups or config.stash.get(QUIET, False):
        return
    terminalreporter.section("Triton vs torch vs compile", sep="-")
    for line in summary(groups):
        terminalreporter.write_line(line)
