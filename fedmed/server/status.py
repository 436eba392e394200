"""The status page at ``GET /``: what a server holds and does, never a data value.

Plain HTML with inline CSS (no CDN: it must work offline in a hospital
network). Jinja escapes every field.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from flask import render_template_string

if TYPE_CHECKING:
    from .core import Server

TEMPLATE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>FedMed server</title>
<style>
body{font:15px/1.45 system-ui,-apple-system,Segoe UI,sans-serif;margin:0;background:#f6f7f9;color:#1d2330}
header{background:#1f3a5f;color:#fff;padding:14px 28px}header h1{margin:0;font-size:20px}
header p{margin:4px 0 0;opacity:.85;font-size:13px}main{max-width:1100px;margin:0 auto;padding:18px 28px}
section{background:#fff;border:1px solid #dde1e7;border-radius:8px;padding:14px 18px;margin:0 0 16px}
h2{font-size:16px;margin:0 0 10px}table{border-collapse:collapse;width:100%}
th,td{text-align:left;padding:5px 8px;border-bottom:1px solid #eceef2;vertical-align:top}
th{font-weight:600;color:#4a5568;font-size:13px}code{font:12.5px ui-monospace,Menlo,Consolas,monospace}
.tag{display:inline-block;background:#edf2f7;border-radius:4px;padding:1px 6px;margin:2px;font:12px ui-monospace,monospace}
.grid{display:grid;grid-template-columns:repeat(auto-fit,minmax(160px,1fr));gap:12px}
.stat{font-size:22px;font-weight:600}.muted{color:#718096;font-size:13px}
</style></head><body>
<header><h1>FedMed server</h1><p>protocol v{{ protocol }} · fedmed {{ version }} · config {{ origin }}</p></header>
<main>
<section class="grid" id="summary">
 <div><div class="stat">{{ fragments|length }}</div><div class="muted">fragments</div></div>
 <div><div class="stat">{{ traffic.requests }}</div><div class="muted">requests</div></div>
 <div><div class="stat">{{ uptime }}</div><div class="muted">uptime</div></div>
 <div><div class="stat">{{ "on" if auth else "off" }}</div><div class="muted">authentication</div></div>
</section>
<section id="fragments"><h2>Fragments</h2>
{% if fragments %}<table><tr><th>name</th><th>rows</th><th>version</th><th>privacy rules count</th><th>columns</th></tr>
{% for f in fragments %}<tr><td><code>{{ f.name }}</code></td><td>{{ f.rows }}</td><td>{{ f.version }}</td>
<td class="counting">{{ f.counting }}</td>
<td>{% for c, t in f.columns %}<span class="tag">{{ c }}: {{ t }}</span>{% endfor %}</td></tr>{% endfor %}</table>
{% else %}<p class="muted">No fragments yet.</p>{% endif %}</section>
<section id="policies"><h2>Privacy policies</h2>
{% if policies %}<table><tr><th>policy</th><th>scope</th><th>applied</th></tr>
{% for p in policies %}<tr><td><code>{{ p.name }}</code></td><td>{{ p.scope }}</td><td>{{ p.applied }}</td></tr>{% endfor %}</table>
{% else %}<p class="muted">None: results are exact. Use this only for synthetic data.</p>{% endif %}</section>
<section id="operations"><h2>Operations</h2>
<p><b>Aggregates</b> {% for o in aggregates %}<span class="tag">{{ o }}</span>{% endfor %}</p>
<p><b>Elementwise</b> {% for o in elementwise %}<span class="tag">{{ o }}</span>{% endfor %}</p></section>
<section id="recent"><h2>Recent queries</h2>
{% if hidden %}<p class="muted">Shown to the server's admins only (<code>auth: admins</code> in its config).</p>
{% elif recent %}<table><tr><th>time</th><th>client</th><th>status</th><th>tasks</th></tr>
{% for r in recent %}<tr><td>{{ r.time }}</td><td>{{ r.client }}</td><td>{{ r.status }}</td>
<td>{% for s in r.signatures %}<code>{{ s }}</code><br>{% endfor %}</td></tr>{% endfor %}</table>
{% else %}<p class="muted">No queries yet.</p>{% endif %}</section>
</main></body></html>"""


def render_status(server: "Server", recent: bool = True) -> str:
    """The status page of ``server`` as HTML; ``recent=False`` leaves out who asked what."""
    from .. import __version__, wire

    fragments = []
    for name in server:
        fragment, version = server._fragments[name]
        fragments.append({"name": name, "rows": fragment.rows, "version": version, "counting": server.counting(name),
                          "columns": _columns(fragment)})
    return render_template_string(
        TEMPLATE,
        protocol=wire.PROTOCOL,
        version=__version__,
        origin=server.config.origin,
        fragments=fragments,
        traffic=server.traffic,
        uptime=_duration(time.time() - server.started),
        auth=server.config.auth is not None,
        policies=[
            {"name": p.describe(), "scope": _scope(p), "applied": p.applied} for p in server.config.privacy
        ],
        aggregates=sorted(server.config.aggregates),
        elementwise=sorted(server.config.elementwise),
        hidden=not recent,
        recent=[
            {**r, "time": time.strftime("%H:%M:%S", time.localtime(r["time"]))} for r in reversed(server.recent)
        ] if recent else [],
    )


def _columns(fragment: Any) -> list[tuple[str, str]]:
    dtypes = getattr(fragment, "dtypes", None)  # out-of-core fragments know their schema
    if isinstance(dtypes, dict):
        return [(str(c), str(t)) for c, t in dtypes.items()]
    data = getattr(fragment, "data", None)
    if hasattr(data, "dtypes") and hasattr(data, "columns"):
        return [(str(c), str(t)) for c, t in data.dtypes.items()]
    if hasattr(data, "dtype"):
        return [("(values)", str(data.dtype))]
    if isinstance(data, dict):
        return [(str(k), "nested") for k in data]
    return []


def _scope(policy: Any) -> str:
    parts = [f"only {', '.join(policy.filter)}" if policy.filter else "", f"not {', '.join(policy.reject)}" if policy.reject else ""]
    return "; ".join(p for p in parts if p) or "all tasks"


def _duration(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h {minutes:02d}m" if hours else f"{minutes}m {secs:02d}s"
