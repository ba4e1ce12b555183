"""``zthumb-operator``: run the LoRAFinetune operator (kopf) with its metrics and liveness endpoints.

Single replica: the Deployment in manifests/operator runs one replica with the
Recreate strategy, and kopf runs standalone (no peering objects). Two operators
watching the same namespaces would both act; Job creation is idempotent (409
adopts) and rollout locks are taken with conditional patches, so nothing is
duplicated, but events and status writes would be doubled, hence one replica.
"""

from __future__ import annotations

import argparse
import logging
import sys

import kopf

from zthumb_operator import metrics
from zthumb_operator.config import ConfigError, OperatorConfig, load_config


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="zthumb-operator",
        description="Run the LoRAFinetune operator. Configure it with ZTHUMB_OPERATOR_* env vars "
        "(see zthumb_operator/config.py); --check-config only validates them.",
    )
    parser.add_argument("--check-config", action="store_true", help="validate the configuration and exit")
    return parser.parse_args(argv)


def run(config: OperatorConfig) -> None:
    # Handlers register themselves with kopf's default registry on import.
    from zthumb_operator import handlers  # noqa: F401

    metrics.serve(config.metrics_port)
    kopf.run(
        standalone=True,
        clusterwide=config.clusterwide,
        namespaces=list(config.namespaces),
        liveness_endpoint=config.liveness_endpoint or None,
        memo=kopf.Memo(config=config),
    )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        config = load_config()
    except ConfigError as exc:
        print(f"zthumb-operator: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=config.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )
    if config.log_level != "DEBUG":
        # kopf logs every handler call at INFO; our own log lines say what matters.
        logging.getLogger("kopf.objects").setLevel(logging.WARNING)
    scope = "cluster-wide" if config.clusterwide else f"namespaces {', '.join(config.namespaces)}"
    if args.check_config:
        print(f"configuration OK ({scope})")
        return 0
    logging.getLogger("zthumb_operator").info("starting (%s)", scope)
    run(config)
    return 0


if __name__ == "__main__":
    sys.exit(main())
