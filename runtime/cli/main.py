"""`factory`: run, submit and inspect experiments.

    factory run [RECIPE] [section.field=value ...]      run here (embedded Ray, or RAY_ADDRESS)
    factory submit [RECIPE] [overrides] [--address URL]  run as a Ray job on a cluster
    factory status|logs|stop JOB [--address URL]         follow a submitted job
    factory generate MODEL_OR_RECIPE "prompt"            quick look at any checkpoint
    factory config [RECIPE] [overrides]                  print the resolved config
    factory serve RUN_DIR|MODEL [--port P]               the playground over a run's versions
    factory trace RUN_DIR --step S                       the documents behind a step
    factory sandbox check TASKS.jsonl [--solutions S]     run solutions through the sandbox pool
    factory sandbox serve [overrides]                    a gRPC SandboxService on this host
    factory sandbox selftest [overrides]                 try to break out; say which guarantees hold here

Errors the user can fix print as one line and exit with status 2; anything else prints as one
line too and exits 1. `--debug` shows the traceback; `-v` also prints the resolved config.
"""

from __future__ import annotations

import argparse
import os
import sys

from runtime.core.errors import FactoryError, Interrupted


def main(argv: list[str] | None = None) -> int:
    p = parser()
    args, extra = p.parse_known_args(argv)
    if extra and (not hasattr(args, "overrides") or not all("=" in e and not e.startswith("-") for e in extra)):
        p.error(f"unrecognized arguments: {' '.join(extra)}")
    if extra:
        args.overrides = [*args.overrides, *extra]
    if args.verbose:
        os.environ["FACTORY_VERBOSE"] = "1"
    try:
        return args.func(args) or 0
    except KeyboardInterrupt:
        return 130
    except SystemExit:
        raise
    except BaseException as exc:  # the CLI's boundary: one line; the traceback only with --debug
        if args.debug:
            raise
        return _one_line(exc)


def _one_line(exc: BaseException) -> int:
    """Print `exc` as one line (a Ray task error as the error it carries) and return the exit status."""
    cause = _cause(exc)
    if isinstance(cause, Interrupted):
        print(f"factory: {cause}", file=sys.stderr)
        return 130
    if isinstance(cause, FactoryError):
        print(f"factory: error: {cause}", file=sys.stderr)
        return 2
    first = (str(cause).strip().splitlines() or [""])[0][:300]
    print(f"factory: error: {type(cause).__name__}: {first} (run with --debug for the traceback)", file=sys.stderr)
    return 1


def _cause(exc: BaseException) -> BaseException:
    """The error a Ray task error carries (through any depth of actor calls), else `exc`."""
    from runtime.core.calls import unwrap

    return unwrap(exc)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="factory", description="Model factory on Ray.")
    p.add_argument("--version", action="version", version=f"factory {_version()}")
    p.add_argument("--debug", action="store_true", help="show full tracebacks")
    p.add_argument("-v", "--verbose", action="store_true", help="print the resolved config and actor logs")
    sub = p.add_subparsers(required=True, metavar="COMMAND")
    run = _command(sub, "run", cmd_run, "run an experiment here (embedded Ray cluster, or RAY_ADDRESS)")
    _recipe_args(run)
    run.add_argument("--config-env", metavar="VAR", help="read the resolved config from this environment variable")
    run.add_argument("--resume", metavar="RUN_DIR", help="continue that run from its newest checkpoint "
                     "(its config.yaml, with any overrides on top)")
    submit = _command(sub, "submit", cmd_submit, "submit an experiment to a Ray cluster as a job")
    _recipe_args(submit)
    _address(submit)
    submit.add_argument("--wait", action="store_true", help="follow the logs until the job ends")
    submit.add_argument("--working-dir", metavar="DIR", help="upload this directory and run the job in it "
                        "(local code: a reward function, a task generator, your changes)")
    submit.add_argument("--runtime-env", metavar="YAML", help="a Ray runtime environment for the job, inline "
                        "(`{pip: [mylib]}`) or a YAML/JSON file")
    for name, fn, text in [("status", cmd_status, "a job's status, or a run directory's (running, finished, "
                                                   "failed, interrupted, lost; resumable or not)"), ("logs", cmd_logs, "a job's logs"),
                           ("stop", cmd_stop, "stop a job")]:
        job = _command(sub, name, fn, text)
        job.add_argument("job_id", metavar="JOB")
        _address(job)
        if name == "logs":
            job.add_argument("--follow", "-f", action="store_true", help="stream until the job ends")
    gen = _command(sub, "generate", cmd_generate, "generate from a model directory, a recipe's model, or "
                   "(--live) a running experiment's inference service")
    gen.add_argument("target", metavar="MODEL_OR_RECIPE|EXPERIMENT")
    gen.add_argument("prompt")
    gen.add_argument("overrides", nargs="*", metavar="section.field=value")
    gen.add_argument("--max-tokens", type=int, default=None)
    gen.add_argument("--temperature", type=float, default=None)
    gen.add_argument("-n", type=int, default=1, help="completions")
    gen.add_argument("--live", action="store_true", help="TARGET is a running experiment's name: ask its inference "
                     "service (the newest version, playground class) on RAY_ADDRESS or this machine's cluster")
    ev = _command(sub, "eval", cmd_eval, "run eval suites on a run's saved version or any HF model directory")
    ev.add_argument("target", metavar="RUN_DIR|MODEL")
    ev.add_argument("overrides", nargs="*", metavar="section.field=value")
    ev.add_argument("--suite", action="append", default=None, help="a suite of eval.suites (repeatable; default: all)")
    ev.add_argument("--version", type=int, default=None, help="the saved version N of a run (default: the newest)")
    cfg = _command(sub, "config", cmd_config, "print the resolved config")
    _recipe_args(cfg)
    srv = _command(sub, "serve", cmd_serve, "open the playground for a run directory or any HF checkpoint")
    srv.add_argument("target", metavar="RUN_DIR|MODEL")
    srv.add_argument("overrides", nargs="*", metavar="section.field=value")
    srv.add_argument("--port", type=int, default=None)
    srv.add_argument("--host", default=None)
    tr = _command(sub, "trace", cmd_trace, "list the documents behind a training step")
    tr.add_argument("run_dir", metavar="RUN_DIR")
    tr.add_argument("--step", type=int, required=True)
    tr.add_argument("--top", type=int, default=10, help="highest-loss samples to show")
    tr.add_argument("--json", action="store_true", help="print the trace as one JSON object instead of the table")
    sandbox = sub.add_parser("sandbox", help="sandboxed code execution").add_subparsers(required=True, metavar="ACTION")
    check = _command(sandbox, "check", cmd_sandbox_check, "run tasks' solutions through the sandbox pool")
    check.add_argument("tasks", metavar="TASKS.jsonl")
    check.add_argument("overrides", nargs="*", metavar="section.field=value")
    check.add_argument("--solutions", metavar="SOLUTIONS.jsonl", help="{task_id, completion} per line")
    check.add_argument("--recipe", default=None)
    serve = _command(sandbox, "serve", cmd_sandbox_serve, "serve a sandbox over gRPC on this host (no Ray)")
    serve.add_argument("overrides", nargs="*", metavar="section.field=value")
    serve.add_argument("--recipe", default=None)
    selftest = _command(sandbox, "selftest", cmd_sandbox_selftest,
                        "run the adversarial probes here and say which guarantees hold (no Ray)")
    selftest.add_argument("overrides", nargs="*", metavar="section.field=value")
    selftest.add_argument("--recipe", default=None)
    return p


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("model-factory")
    except PackageNotFoundError:
        return "unknown (not installed)"


def _command(sub, name, fn, text):
    p = sub.add_parser(name, help=text, description=text)
    p.set_defaults(func=fn)
    return p


def _recipe_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("recipe", nargs="?", default=None, help="recipe name or YAML path (default: default)")
    p.add_argument("overrides", nargs="*", metavar="section.field=value")


def _address(p: argparse.ArgumentParser) -> None:
    p.add_argument("--address", default=None, help="dashboard URL of the cluster (default: RAY_ADDRESS or local)")


def _load(args):
    from runtime.cli.client import FactoryClient

    recipe, overrides = args.recipe, list(args.overrides)
    if recipe is not None and "=" in recipe:
        recipe, overrides = None, [recipe, *overrides]
    return FactoryClient.load(recipe, overrides)


def cmd_run(args) -> int:
    from runtime.cli.client import FactoryClient, config_from_env

    if args.resume:
        overrides = [o for o in [args.recipe, *args.overrides] if o]
        if any("=" not in o for o in overrides):
            raise FactoryError("--resume RUN_DIR takes no recipe: the run's own config.yaml is used (overrides may follow)")
        FactoryClient.resume(args.resume, overrides)
        return 0
    cfg = config_from_env(args.config_env) if args.config_env else _load(args)
    FactoryClient.run(cfg)
    return 0


def cmd_submit(args) -> int:
    from runtime.cli.client import FactoryClient

    client = FactoryClient(args.address)
    job_id = client.submit(_load(args), working_dir=args.working_dir, runtime_env=_runtime_env(args.runtime_env))
    where = f" --address {args.address}" if args.address else ""
    print(f"submitted job {job_id}")
    print(f"follow it with: factory logs {job_id} --follow{where}   (or in the Ray dashboard, Jobs tab)")
    if args.wait:
        status = client.follow(job_id, write=lambda s: print(s, end="", flush=True))
        print(f"job {job_id}: {status}")
        return 0 if status == "SUCCEEDED" else 1
    return 0


def _runtime_env(text: str | None) -> dict | None:
    """--runtime-env: inline YAML/JSON or a file of it; one clear line when it is neither a mapping nor a file."""
    from pathlib import Path

    import yaml

    if text is None:
        return None
    source = Path(text).read_text() if Path(text).is_file() else text
    try:
        env = yaml.safe_load(source)
    except yaml.YAMLError as exc:
        raise FactoryError(f"--runtime-env: not valid YAML or JSON ({getattr(exc, 'problem', exc)})") from None
    if not isinstance(env, dict):
        raise FactoryError(f"--runtime-env: expected a mapping such as {{pip: [mylib]}} or a file of one, got {text!r}")
    return env


def cmd_status(args) -> int:
    from pathlib import Path

    from runtime.cli.client import FactoryClient

    if Path(args.job_id).is_dir():
        print(FactoryClient.run_status(args.job_id))
    else:
        print(FactoryClient(args.address).status(args.job_id))
    return 0


def cmd_logs(args) -> int:
    from runtime.cli.client import FactoryClient

    client = FactoryClient(args.address)
    if args.follow:
        client.follow(args.job_id, write=lambda s: print(s, end="", flush=True))
    else:
        print(client.logs(args.job_id), end="")
    return 0


def cmd_stop(args) -> int:
    from runtime.cli.client import FactoryClient

    stopped = FactoryClient(args.address).stop(args.job_id)
    print(f"job {args.job_id}: {'stop requested' if stopped else 'already finished'}")
    return 0


def cmd_generate(args) -> int:
    from pathlib import Path

    # stdout is the completions alone (pipeable): the engine's log lines go to stderr, warnings and up
    os.environ.setdefault("VLLM_LOGGING_STREAM", "ext://sys.stderr")
    if not args.verbose:
        os.environ.setdefault("VLLM_LOGGING_LEVEL", "ERROR")

    from runtime.core.config import load_config
    from runtime.jobs.quicklook import generate, generate_live

    if args.live:
        for text in generate_live(args.target, args.prompt, n=args.n, max_tokens=args.max_tokens,
                                  temperature=args.temperature):
            print(text)
        return 0
    as_model = Path(args.target).expanduser().is_dir() or ("/" in args.target and not args.target.endswith(".yaml"))
    cfg = load_config(None if as_model else args.target, ([f"model.path={args.target}"] if as_model else []) + args.overrides)
    for text in generate(cfg, args.prompt, n=args.n, max_tokens=args.max_tokens, temperature=args.temperature):
        print(text)
    return 0


def cmd_eval(args) -> int:
    import json

    from runtime.jobs.evaluation import evaluate

    rows = evaluate(args.target, args.suite, args.overrides, args.version)
    for row in rows:
        regression = f"; regression from {row['regression']['best']:.3f} on v{row['regression']['best_version']}" \
            if "regression" in row else ""
        print(f"{row['suite']}: {row['score']:.3f} on v{row['version']} ({row['tasks']} tasks x {row['samples']} samples, "
              f"{row['seconds']:.1f} s{regression})")
    print(json.dumps(rows))
    return 0


def cmd_sandbox_check(args) -> int:
    import json

    from runtime.core.config import load_config
    from runtime.jobs.sandbox_check import check

    summary = check(load_config(args.recipe, args.overrides), args.tasks, args.solutions)
    for status, count in sorted(summary["status"].items()):
        print(f"{status:>14}: {count}")
    for failed in summary["failed"]:
        print(f"  failed {failed['task_id']}: {failed['reason']}")
    print(f"passed {summary['passed']}/{summary['tasks']} (pass rate {summary['pass_rate']:.1%})")
    print(json.dumps(summary))
    return 0


def cmd_sandbox_serve(args) -> int:
    from runtime.core.config import load_config
    from runtime.jobs.sandbox_check import serve_forever

    serve_forever(load_config(args.recipe, args.overrides))
    return 0


def cmd_sandbox_selftest(args) -> int:
    from runtime.core.config import load_config
    from runtime.sandbox import make_backend
    from runtime.sandbox.selftest import run_all

    cfg = load_config(args.recipe, args.overrides).sandbox
    if cfg.backend != "bubblewrap":
        print(f"sandbox.backend={cfg.backend}: the probes attack the host they run on; they run only against the "
              "bubblewrap backend (for a grpc sandbox host, run the selftest on that host)", file=sys.stderr)
        return 2
    backend = make_backend(cfg, tag="selftest")
    try:
        backend.check()
        outcomes = run_all(backend)
    finally:
        backend.close()
    for probe, held, results in outcomes:
        detail = "" if held else f"  <- {results[-1].status.value}: {(results[-1].stdout or results[-1].stderr)[-120:]!r}"
        print(f"{'holds ' if held else 'BROKEN'}  {probe.name:<20} {probe.guarantee}{detail}")
    broken = sum(not held for _, held, _ in outcomes)
    print(f"{len(outcomes) - broken} of {len(outcomes)} guarantees hold on this machine ({backend.name} backend)")
    return 1 if broken else 0


def cmd_serve(args) -> int:
    from runtime.jobs.serving import serve_forever

    extra = [f"playground.port={args.port}"] * (args.port is not None) + [f"playground.host={args.host}"] * bool(args.host)
    serve_forever(args.target, [*args.overrides, *extra])
    return 0


def cmd_trace(args) -> int:
    import json

    from runtime.data.trace import render, trace

    result = trace(args.run_dir, args.step, args.top)
    print(json.dumps(result) if args.json else render(result))
    return 0


def cmd_config(args) -> int:
    print(_load(args).to_yaml(), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
