"""Reads Grafana dashboards with grafana-foundation-sdk, the types Grafana generates from its own
dashboard schema (PyPI; `cargo xtask test` installs it and puts it on PYTHONPATH), and prints
as JSON what tests/src/grafana.rs checks: every variable, every panel with its type and data
source, every query. Also what the schema does not know: the keys the SDK drops when it writes
a dashboard it read back out (a misspelled key is dropped), panel types no plugin of Grafana's
registers, and queries it cannot read as Prometheus queries.

usage: python3 dashboards.py DASHBOARD.json...
"""

import json
import sys

from grafana_foundation_sdk.cog import runtime
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.cog.plugins import register_default_plugins
from grafana_foundation_sdk.models import dashboard, prometheus


def dropped_keys(original, written, path=""):
    """Paths of the keys of `original` that `written` (the SDK's output) lacks."""
    if isinstance(original, dict) and isinstance(written, dict):
        out = []
        for key, value in original.items():
            if key in written:
                out += dropped_keys(value, written[key], f"{path}.{key}")
            else:
                out.append(f"{path}.{key}")
        return out
    if isinstance(original, list) and isinstance(written, list):
        out = []
        for i, (a, b) in enumerate(zip(original, written)):
            out += dropped_keys(a, b, f"{path}[{i}]")
        return out
    return []


def datasource(ref):
    return None if ref is None else {"type": ref.type_val, "uid": ref.uid}


def query_text(query):
    # Grafana 10+ writes a Prometheus variable's query as {"query": "...", "qryType": ...}.
    return query.get("query") if isinstance(query, dict) else query


def target(t):
    if not isinstance(t, prometheus.Dataquery):
        return {"kind": "unknown", "json": t.to_json()}
    return {
        "kind": "prometheus",
        "ref_id": t.ref_id,
        "expr": t.expr,
        "instant": bool(t.instant),
        "range": bool(t.range_val),
        "format": t.format_val,
        "hide": bool(t.hide),
        "datasource": datasource(t.datasource),
    }


def panel(p):
    grid = p.grid_pos
    return {
        "id": p.id_val,
        "title": p.title,
        "type": p.type_val,
        "known_type": p.type_val == "row" or runtime.panelcfg_config(p.type_val) is not None,
        "datasource": datasource(p.datasource),
        "grid": None if grid is None else {"x": grid.x, "y": grid.y, "w": grid.w, "h": grid.h},
        "targets": [target(t) for t in (getattr(p, "targets", None) or [])],
    }


def read(path):
    with open(path) as f:
        raw = json.load(f)
    board = dashboard.Dashboard.from_json(raw)
    written = json.loads(JSONEncoder().encode(board))
    panels = []
    for p in board.panels or []:
        panels.append(panel(p))
        if isinstance(p, dashboard.RowPanel):
            panels += [panel(inner) for inner in p.panels]
    return {
        "file": path,
        "uid": board.uid,
        "title": board.title,
        "schema_version": board.schema_version,
        "tags": board.tags or [],
        "dropped": dropped_keys(raw, written),
        "variables": [
            {
                "name": v.name,
                "type": v.type_val,
                "query": query_text(v.query),
                "datasource": datasource(v.datasource),
                "include_all": bool(v.include_all),
                "all_value": v.all_value,
                "multi": bool(v.multi),
            }
            for v in board.templating.list_val or []
        ],
        "panels": panels,
    }


if __name__ == "__main__":
    register_default_plugins()
    json.dump([read(path) for path in sys.argv[1:]], sys.stdout, indent=1)
