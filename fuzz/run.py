"""Run the fuzz targets: `python -m fuzz.run TARGET --seconds N`, or every target in turn with `--all`.

Seeds are read from fuzz/corpus/<target>/ (committed). What the fuzzer adds goes to
fuzz/work/<target>/ and crash inputs to fuzz/artifacts/<target>/, both kept out of git.
Extra arguments are passed to libFuzzer as they are (e.g. `-runs=100`); when one of them is a
file or directory, the default corpus directories are left out, so
`python -m fuzz.run slash -minimize_crash=1 -runs=20000 fuzz/artifacts/slash/crash-…` works.
Exit status: 0 when every target ran its budget without an unexpected exception, else non-zero.
"""

from __future__ import annotations

import argparse
import importlib
import re
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent
REPO = ROOT.parent
CORPUS, WORK, ARTIFACTS, DICTS = ROOT / "corpus", ROOT / "work", ROOT / "artifacts", ROOT / "dicts"
TIMEOUT_SECONDS = 10  # one input taking longer than this is a finding too (a hang, a ReDoS)


@dataclass(frozen=True)
class Target:
    instrument: tuple[str, ...]  # top-level packages atheris instruments for coverage
    max_len: int


TARGETS = {
    "signature": Target(("bot", "slack_sdk"), 4096),
    "payload": Target(("bot", "handlers", "slack_bolt"), 8192),
    "slash": Target(("bot",), 1024),
    "amount": Target(("bot", "handlers"), 8192),
    "url": Target(("bot",), 2048),
}


def fuzz(name: str, seconds: int | None, passthrough: list[str]) -> None:
    """Fuzz one target in this process; libFuzzer exits the process when it is done."""
    import atheris  # type: ignore[import-untyped]

    target = TARGETS[name]
    # The target module itself too: its checks of the input's shape are what lead the fuzzer deeper.
    with atheris.instrument_imports(include=["fuzz", *target.instrument]):
        module = importlib.import_module(f"fuzz.{name}")
    (WORK / name).mkdir(parents=True, exist_ok=True)
    (ARTIFACTS / name).mkdir(parents=True, exist_ok=True)
    # libFuzzer runs argv[0] again for -merge and -fork: make it a command that does.
    launcher = WORK / f"{name}.sh"
    launcher.write_text(
        f"#!/bin/sh\nPYTHONPATH={shlex.quote(str(REPO))} exec {shlex.quote(sys.executable)} -m fuzz.run {name}"
        ' "$@"\n'
    )
    launcher.chmod(0o755)
    argv = [
        str(launcher),
        f"-timeout={TIMEOUT_SECONDS}",
        f"-max_len={target.max_len}",
        f"-artifact_prefix={ARTIFACTS / name}/",
        "-print_final_stats=1",
        "-rss_limit_mb=1536",
    ]
    if (DICTS / f"{name}.dict").exists():
        argv.append(f"-dict={DICTS / f'{name}.dict'}")
    if seconds is not None:
        argv.append(f"-max_total_time={seconds}")
    argv += passthrough
    if not any(not arg.startswith("-") for arg in passthrough):
        argv += [str(WORK / name), str(CORPUS / name)]
    atheris.Setup(argv, module.one_input)
    atheris.Fuzz()


@dataclass(frozen=True)
class Outcome:
    name: str
    exit_code: int
    runs: int | None
    seconds: float

    @property
    def ok(self) -> bool:
        return self.exit_code == 0


def fuzz_in_child(name: str, seconds: int, passthrough: list[str]) -> Outcome:
    """One target in a fresh interpreter (libFuzzer owns its process), its output streamed through."""
    started = time.monotonic()
    command = [sys.executable, "-m", "fuzz.run", name, "--seconds", str(seconds), *passthrough]
    runs = None
    with subprocess.Popen(command, cwd=REPO, stderr=subprocess.PIPE, text=True, errors="replace") as child:  # noqa: S603
        assert child.stderr is not None
        for line in child.stderr:
            sys.stderr.write(line)
            found = re.match(r"stat::number_of_executed_units: (\d+)", line)
            if found:
                runs = int(found[1])
    return Outcome(name, child.returncode, runs, time.monotonic() - started)


def main(args: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fuzz.run", description=__doc__.splitlines()[0])
    parser.add_argument("target", nargs="?", choices=sorted(TARGETS))
    parser.add_argument("--all", action="store_true", help="run every target, one after another")
    parser.add_argument("--seconds", type=int, default=None, help="time budget per target")
    options, passthrough = parser.parse_known_args(args)
    if options.all == (options.target is not None):
        parser.error("name one TARGET or give --all")
    if options.target is not None:
        fuzz(options.target, options.seconds, passthrough)
        return 0  # not reached: libFuzzer exits
    outcomes = [fuzz_in_child(name, options.seconds or 20, passthrough) for name in TARGETS]
    print(f"{'target':<10} {'result':<10} {'executions':>12} {'seconds':>8}")
    for outcome in outcomes:
        result = "ok" if outcome.ok else f"FAILED({outcome.exit_code})"
        runs = "?" if outcome.runs is None else str(outcome.runs)
        print(f"{outcome.name:<10} {result:<10} {runs:>12} {outcome.seconds:>8.0f}")
    return 0 if all(outcome.ok for outcome in outcomes) else 1


if __name__ == "__main__":
    sys.exit(main())
