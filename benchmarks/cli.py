"""The ``bench`` command line: one subcommand per stage of the suite.

Each subcommand lives in ``benchmarks/commands/<name>.py`` and provides ``HELP`` (one line), ``DESCRIPTION``
(the ``--help`` text), ``add_arguments(parser)`` and ``run(args) -> int``. Building the parser imports every
command module (and with them torch), so this module imports what it needs at the top.
"""

from __future__ import annotations

import argparse
import importlib
import signal
import sys
import threading
from collections.abc import Callable, Sequence
from typing import Any

from benchmarks.failures import EXIT_INTERRUPTED, expected_failure
from pretrain.allocator import keep_freed_memory
from pretrain.preemption import EXIT_PREEMPTED, Preempted
from pretrain.runinfo import code_version

#: subcommand -> module, in the order ``bench --help`` lists them
COMMANDS: dict[str, str] = {
    "pretrain": "benchmarks.commands.pretrain",
    "export": "benchmarks.commands.export",
    "inpaint": "benchmarks.commands.inpaint",
    "inpaint-eval": "benchmarks.commands.inpaint_eval",
    "transfer": "benchmarks.commands.transfer",
    "table": "benchmarks.commands.table",
    "plot": "benchmarks.commands.plot",
    "reproduce": "benchmarks.commands.reproduce",
    "demo": "benchmarks.commands.demo",
    "speed": "benchmarks.commands.speed",
    "selftest": "benchmarks.commands.selftest",
}


class _CommandParser(argparse.ArgumentParser):
    """The parser of one subcommand. A command module with ``prepare_parser(parser, args)`` completes its parser
    from the command line before it is parsed (``bench transfer`` adds the options of its ``--task``)."""

    prepare: Callable[[argparse.ArgumentParser, list[str]], None] | None = None

    def parse_known_args(self, args: Any = None, namespace: Any = None) -> Any:
        if self.prepare is not None and args is not None:
            self.prepare(self, list(args))
        return super().parse_known_args(args, namespace)


class _VersionAction(argparse.Action):
    """``--version``: the suite's version and the git commit of the code (looked up only when asked)."""

    def __init__(self, option_strings: Sequence[str], dest: str = argparse.SUPPRESS, **kwargs: object) -> None:
        super().__init__(option_strings, dest=dest, nargs=0, default=argparse.SUPPRESS, help=kwargs.get("help"))  # type: ignore[arg-type]

    def __call__(self, parser: argparse.ArgumentParser, *_: object) -> None:
        info = code_version()
        if info["commit"] is None:
            commit = "commit unknown (not a git checkout)"
        else:
            commit = f"commit {info['commit']}" + (" (uncommitted changes)" if info["dirty"] else "")
        print(f"bench ({info['package']}) {info['version']}, {commit}")
        parser.exit()


class DefaultsHelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows an option's default where it says something: not for options without one (``None``, a flag's
    ``False``) and not where the help text already states its default in words."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if action.default is None or action.default is False or "default" in text.lower():
            return text
        return super()._get_help_string(action)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bench",
        description=(
            "Context Encoders (Pathak et al., CVPR 2016) benchmark suite: pretrain a context encoder and its "
            "baselines, transfer the AlexNet encoder to PASCAL VOC classification, Fast R-CNN detection and FCN "
            "segmentation, and regenerate the paper's comparison tables from run records."
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action=_VersionAction, help="print the version and git commit, then exit")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_CommandParser)
    for name, module_name in COMMANDS.items():
        module = importlib.import_module(module_name)
        p = sub.add_parser(
            name,
            help=module.HELP,
            description=getattr(module, "DESCRIPTION", module.HELP),
            formatter_class=DefaultsHelpFormatter,
        )
        module.add_arguments(p)
        p.prepare = getattr(module, "prepare_parser", None)
        p.set_defaults(_module=module)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    if argv is None:  # a `bench` process (not a call from Python code): keep freed memory for reuse
        keep_freed_memory()
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "_module", None) is None:
        parser.print_help()
        return 2
    return _run_command(args)


def _run_command(args: argparse.Namespace) -> int:
    """Run the subcommand; an expected failure (``benchmarks/failures.py``) or Ctrl-C ends in one line on stderr
    and a non-zero exit status instead of a traceback."""

    def stop(signum: int, frame: object) -> None:  # SIGTERM outside a training loop: end like Ctrl-C
        raise KeyboardInterrupt(signal.Signals(signum).name)

    previous = signal.signal(signal.SIGTERM, stop) if threading.current_thread() is threading.main_thread() else None
    try:
        return int(args._module.run(args) or 0)
    except KeyboardInterrupt:
        print(f"bench {args.command}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as exc:
        if isinstance(exc, Preempted):
            print(f"bench {args.command}: {exc}", file=sys.stderr)
            return EXIT_PREEMPTED
        message = expected_failure(exc)
        if message is None:
            raise
        print(f"bench {args.command}: error: {message}", file=sys.stderr)
        return 1
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(main())
