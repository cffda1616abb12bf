#!/usr/bin/env python3
"""`helm template` and `helm lint` without the helm binary, through helm-python-sdk (PyPI: Helm
4's own Go SDK as a library, driven from Python). `cargo xtask manifest` renders
deploy/kubernetes/daemonset.yaml with it and tests/tests/helm.rs checks the chart with it; where
Helm 4 is installed, `helm template` and `helm lint` give the same documents and verdicts.

  helm-sdk.py template RELEASE CHART [-n NAMESPACE] [-f VALUES]... [--set K=V]...
  helm-sdk.py lint CHART [-n NAMESPACE] [-f VALUES]... [--set K=V]... [--strict]
                   [--kube-version V]

`template` writes what `helm template` writes: every rendered object as its own document,
headed by `# Source: TEMPLATE`, in the order Helm installs them. `lint` prints Helm's findings
and fails on an error (with --strict, on a warning too).
"""

import argparse
import re
import sys

import helm_python as helm

# Helm's install order (pkg/release/util/kind_sorter.go); other kinds follow, by kind and name.
INSTALL_ORDER = """PriorityClass Namespace NetworkPolicy ResourceQuota LimitRange PodSecurityPolicy
PodDisruptionBudget ServiceAccount Secret SecretList ConfigMap StorageClass PersistentVolume
PersistentVolumeClaim CustomResourceDefinition ClusterRole ClusterRoleList ClusterRoleBinding
ClusterRoleBindingList Role RoleList RoleBinding RoleBindingList Service DaemonSet Pod
ReplicationController ReplicaSet Deployment HorizontalPodAutoscaler StatefulSet Job CronJob
IngressClass Ingress APIService MutatingWebhookConfiguration
ValidatingWebhookConfiguration""".split()

SEVERITIES = {0: "UNKNOWN", 1: "INFO", 2: "WARNING", 3: "ERROR"}


def merge(base, override):
    """Helm's coalescing of values files: maps merge key by key, anything else is replaced."""
    if isinstance(base, dict) and isinstance(override, dict):
        merged = dict(base)
        for key, value in override.items():
            merged[key] = merge(base.get(key), value)
        return merged
    return override


def values(args):
    """The values of every -f file, then every --set, the later winning, as helm merges them."""
    merged = {}
    for path in args.values:
        with open(path, encoding="utf-8") as f:
            merged = merge(merged, helm.values_from_yaml(f.read()) or {})
    for expression in args.set:
        merged = merge(merged, helm.parse_set_string(expression))
    return merged


def template(args):
    with helm.Chart.load(args.chart) as chart:
        rendered = chart.render(
            values(args), name=args.release, namespace=args.namespace, is_install=True
        )
    documents = []
    for source, text in rendered.items():
        if source.endswith("NOTES.txt"):
            continue
        for document in re.split(r"(?m)^---[ \t]*$", text):
            if not document.strip():
                continue
            head = helm.values_from_yaml(document) or {}
            kind = head.get("kind", "")
            name = (head.get("metadata") or {}).get("name", "")
            order = INSTALL_ORDER.index(kind) if kind in INSTALL_ORDER else len(INSTALL_ORDER)
            documents.append(((order, kind, name), source, document.strip("\n")))
    for _, source, document in sorted(documents, key=lambda d: d[0]):
        sys.stdout.write(f"---\n# Source: {source}\n{document}\n")


def lint(args):
    report = helm.lint(
        args.chart,
        values(args),
        strict=args.strict,
        namespace=args.namespace,
        kube_version=args.kube_version,
    )
    worst = 0
    for message in report["messages"]:
        severity = message["severity"]
        worst = max(worst, severity)
        print(f"[{SEVERITIES.get(severity, severity)}] {message['path']}: {message['error']}")
    for error in report["errors"]:
        print(f"error: {error}")
    failed = report["errors"] or worst >= 3 or (args.strict and worst >= 2)
    print(f"{report['total_charts_linted']} chart(s) linted, {'failed' if failed else 'passed'}")
    return 1 if failed else 0


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    for name in ("template", "lint"):
        command = commands.add_parser(name)
        if name == "template":
            command.add_argument("release")
        command.add_argument("chart")
        command.add_argument("-n", "--namespace", default="default")
        command.add_argument("-f", "--values", action="append", default=[])
        command.add_argument("--set", action="append", default=[])
        if name == "lint":
            command.add_argument("--strict", action="store_true")
            command.add_argument("--kube-version")
    args = parser.parse_args()
    try:
        if args.command == "template":
            template(args)
            return 0
        return lint(args)
    except helm.HelmError as e:
        print(f"Error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
