"""`python -m stt_operator`: run the operator, or print the CRD.

    python -m stt_operator [run] [--namespaces ns1,ns2 ...]   serve SttPools (kopf)
    python -m stt_operator crd                                 print the CRD as YAML

The API server is found as kubectl finds it: in-cluster service account, else
$KUBECONFIG or ~/.kube/config.
"""

from __future__ import annotations

import argparse
import logging
import sys

from voxfleet import settings as settings_mod


def build_parser() -> argparse.ArgumentParser:
    from stt_operator.settings import ENV_PREFIX, OperatorSettings

    parser = argparse.ArgumentParser(prog="python -m stt_operator", description="The voxfleet SttPool operator.")
    sub = parser.add_subparsers(dest="command")
    run = sub.add_parser("run", help="serve SttPools (the default)")
    settings_mod.add_arguments(run, OperatorSettings, ENV_PREFIX)
    sub.add_parser("crd", help="print the SttPool CustomResourceDefinition (YAML)")
    return parser


def cmd_run(args: argparse.Namespace) -> int:
    import kopf

    from stt_operator import handlers
    from stt_operator.settings import ENV_PREFIX, OperatorSettings

    settings = settings_mod.load(OperatorSettings, ENV_PREFIX, args)
    logging.basicConfig(level=settings.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    registry = kopf.OperatorRegistry()
    handlers.register(registry, settings)
    namespaces = settings.namespace_list()
    kopf.run(registry=registry, standalone=settings.standalone, clusterwide=not namespaces,
             namespaces=namespaces, liveness_endpoint=settings.liveness or None)
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0].startswith("-"):
        argv = ["run", *argv]
    args = build_parser().parse_args(argv)
    if args.command == "crd":
        from stt_operator.crd import crd_yaml

        sys.stdout.write(crd_yaml())
        return 0
    try:
        return cmd_run(args)
    except ValueError as exc:  # bad settings from the environment
        print(f"stt_operator: {exc}", file=sys.stderr)
        return 2
