"""``plan``: the dry run behind ``transform``; one row per conv, and the convs' dataflow graph.

    >>> p = dcspass.plan(torchvision.models.resnet18(), "downsample")
    >>> print(p)            # the table: index, name, kernel, stride, DCS?, k, Eq. 12 interval, admissible
    >>> p.graph             # networkx.DiGraph: conv -> conv through non-conv ops, plus "input"/"output"
    >>> p.draw("plan.png")  # the graph with the DCS layers highlighted

The command line prints the same table: ``python -m dcspass plan torchvision:resnet18 --policy downsample``.
"""

from __future__ import annotations

import itertools
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from torch import fx, nn

from . import bounds
from .errors import ConfigError
from .policies import ConvSite, PolicySpec
from .rewrite import dcs_kernel_size
from .text import plural
from .transformation import analyse, check_tap_counts, lone_conv_container
from .validation import check_k, check_model, check_n

if TYPE_CHECKING:
    import networkx as nx

__all__ = ["Plan", "PlanRow", "plan"]


def _digraph(**attrs: Any) -> nx.DiGraph:
    # networkx loads only when a plan is made, not with ``import dcspass``.
    import networkx as nx

    return nx.DiGraph(**attrs)


@dataclass(frozen=True)
class PlanRow:
    """One conv of the model and what ``transform`` would do with it.

    ``k``, ``interval`` and ``admissible`` describe the conv as a DCS layer with the plan's n (for
    every convertible conv, selected or not, so the table shows where Eq. 12 would allow DCS);
    they are None for non-convertible convs, and for an explicit k below the conv's own kernel.
    A row that is ``already_dcs`` (a DCS layer of a transformed model) has its own k, and keeps its
    index: rows are numbered as the original model's convs were.
    """

    index: int
    name: str
    kind: str
    kernel: tuple[int, int]
    stride: tuple[int, int]
    selected: bool
    k: int | None
    interval: tuple[float, float] | None
    admissible: bool | None
    convertible: bool
    reason: str = ""
    already_dcs: bool = False

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Plan:
    """The result of ``plan``: rows in execution order, the selection, and the dataflow graph.

    ``refusal`` is the ``ConfigError`` message ``transform`` would raise whatever ``check_bounds`` says
    (n above a selected layer's k*k taps), or ``""``.
    """

    rows: list[PlanRow]
    policy: str
    n: int
    eps_c: float
    eps_l: float
    traced: bool
    trace_error: str = ""
    graph: nx.DiGraph = field(default_factory=_digraph, repr=False)
    refusal: str = ""

    @property
    def selected(self) -> list[str]:
        """Qualified names of the convs ``transform`` would replace."""
        return [r.name for r in self.rows if r.selected]

    @property
    def admissible(self) -> bool:
        """Whether every selected conv passes the Eq. 12 check (``transform`` would not raise)."""
        return all(r.admissible for r in self.rows if r.selected)

    @property
    def verdict(self) -> str:
        """What ``transform`` with the plan's settings would do, and the way out when it would raise."""
        if self.refusal:
            return f"transform raises ConfigError, with or without check_bounds: {self.refusal}"
        if self.admissible:
            return "every selected layer is admissible"
        return (
            "some selected layer is outside its Eq. 12 interval: transform raises BoundError unless "
            "check_bounds=False"
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-able: the settings, the rows and the graph's edges."""
        return {
            "policy": self.policy,
            "n": self.n,
            "eps_c": self.eps_c,
            "eps_l": self.eps_l,
            "traced": self.traced,
            "trace_error": self.trace_error,
            "refusal": self.refusal,
            "rows": [r.to_dict() for r in self.rows],
            "edges": [list(e) for e in self.graph.edges],
        }

    def __str__(self) -> str:
        how = "traced with torch.fx" if self.traced else f"NOT traced ({self.trace_error}); module swap"
        header = (
            f"dcspass plan: policy={self.policy}, n={self.n}, eps_c={self.eps_c}, eps_l={self.eps_l} ({how})"
        )
        columns = ("index", "name", "kind", "kernel", "stride", "DCS", "k", "Eq.12 interval", "admissible")
        table = [columns]
        for r in self.rows:
            interval = "" if r.interval is None else _format_interval(r.interval)
            verdict = ("yes" if r.admissible else "no") if r.admissible is not None else ""
            if not r.convertible:
                verdict = r.reason if r.already_dcs else f"non-convertible: {r.reason}"
            table.append(
                (
                    str(r.index),
                    r.name,
                    r.kind,
                    f"{r.kernel[0]}x{r.kernel[1]}",
                    _format_pair(r.stride),
                    "DCS" if r.selected else "already" if r.already_dcs else "",
                    "" if r.k is None else str(r.k),
                    interval,
                    verdict,
                )
            )
        widths = [max(len(row[i]) for row in table) for i in range(len(columns) - 1)]
        lines = [header]
        for row in table:
            cells = [row[0].rjust(widths[0])]
            cells += [c.ljust(w) for c, w in zip(row[1:], widths[1:], strict=False)]
            lines.append("  ".join([*cells, row[-1]]).rstrip())
        already = sum(r.already_dcs for r in self.rows)
        counts = f"{len(self.selected)} of {len(self.rows)} convs selected" + (
            f" ({already} already DCS)" if already else ""
        )
        lines.append(f"{counts}; {self.verdict}.")
        return "\n".join(lines)

    def draw(self, path: str | None = None, ax: Any = None) -> Any:
        """Draw the dataflow graph, DCS layers highlighted; save to ``path`` if given. Returns the Figure.

        Convs are laid out left to right by depth (longest path from the input) and labelled with
        their execution index; the DCS layers are red and named.
        """
        import matplotlib
        import networkx as nx

        if ax is None:
            matplotlib.use("Agg", force=False)
        import matplotlib.pyplot as plt

        g = self.graph
        depth: dict[str, int] = {}
        for node in nx.topological_sort(g):
            depth[node] = max((depth[p] + 1 for p in g.predecessors(node)), default=0)
        for node in g.nodes:
            g.nodes[node]["depth"] = depth[node]
        pos = nx.multipartite_layout(g, subset_key="depth")
        if ax is None:
            width = min(max(6.0, 0.6 * (max(depth.values(), default=0) + 1)), 60.0)
            fig, ax = plt.subplots(figsize=(width, 4.5))
        else:
            fig = ax.figure
        dcs = set(self.selected) | {r.name for r in self.rows if r.already_dcs}
        colors = [
            "tab:red" if v in dcs else ("lightgray" if v in ("input", "output") else "tab:blue")
            for v in g.nodes
        ]
        nx.draw_networkx_edges(g, pos, ax=ax, arrowsize=6, width=0.6, edge_color="gray")
        nx.draw_networkx_nodes(g, pos, ax=ax, node_color=colors, node_size=120)
        index = {r.name: r.index for r in self.rows}
        nx.draw_networkx_labels(g, pos, {v: str(index.get(v, v)) for v in g.nodes}, ax=ax, font_size=5)
        for v in dcs:  # DCS layers are named beside their node, slanted so long names do not collide
            ax.annotate(
                v, pos[v], xytext=(4, 6), textcoords="offset points", rotation=30, fontsize=6, color="tab:red"
            )
        ax.set_title(f"{plural(len(dcs), 'DCS layer')} (red), policy={self.policy}, n={self.n}", fontsize=9)
        ax.set_axis_off()
        if path is not None:
            fig.savefig(path, dpi=150, bbox_inches="tight")
        return fig


def plan(
    model: nn.Module,
    policy: PolicySpec = "downsample",
    n: int = 2,
    k: int | None = None,
    eps_c: float = bounds.DEFAULT_EPS_C,
    eps_l: float = bounds.DEFAULT_EPS_L,
    example_inputs: Any = None,
) -> Plan:
    """What ``transform(model, policy, n, k, eps_c=eps_c, eps_l=eps_l)`` would do, without doing it.

    ``model`` is not modified (it is traced, or for an untraceable model run once in eval mode under
    no_grad to order its convs; ``example_inputs`` as in ``transform``). Raises ``ModelError`` for
    anything that is not an ``nn.Module``, ``PolicyError`` as ``transform`` does (bad spelling, missing
    index, nothing selected, a layer that is already DCS), and ``ConfigError`` for a bad n or k, or an
    explicit k below a selected conv's kernel. An inadmissible n, and an n above a selected layer's k*k
    taps, are reported in the rows and in ``refusal`` instead.
    """
    check_model(model, "dcspass.plan")
    check_n(n)
    check_k(k)
    analysis = analyse(lone_conv_container(model), policy, k, example_inputs)
    found = analysis.found
    chosen = {s.name for s in analysis.selected}
    try:
        check_tap_counts(analysis, n)
        refusal = ""
    except ConfigError as exc:
        refusal = str(exc)
    rows = []
    for site in found.sites:
        k_site = interval = admissible = None
        if site.already_dcs:
            k_site = site.kernel_size[0]
        elif site.convertible:
            try:
                k_site = dcs_kernel_size(site, k)
            except ConfigError:
                k_site = None
        if k_site is not None and site.convertible:
            s = bounds.effective_stride(site.stride)
            interval = bounds.interval(s, k_site, eps_c, eps_l)
            admissible = interval[0] <= n <= interval[1] and n <= k_site * k_site
        rows.append(
            PlanRow(
                index=site.index,
                name=site.name,
                kind=site.kind,
                kernel=site.kernel_size,
                stride=site.stride,
                selected=site.name in chosen,
                k=k_site,
                interval=interval,
                admissible=admissible,
                convertible=site.convertible,
                reason=site.reason,
                already_dcs=site.already_dcs,
            )
        )
    graph = _digraph(traced=found.traced)
    graph.add_node("input")
    for row in rows:
        graph.add_node(row.name, index=row.index, dcs=row.selected, kernel=row.kernel, stride=row.stride)
    graph.add_node("output")
    edges = _chain(found.sites) if found.graph is None else _dataflow_edges(found.graph, found.sites)
    graph.add_edges_from(edges)
    label = _policy_label(policy)
    return Plan(rows, label, n, eps_c, eps_l, found.traced, found.trace_error, graph, refusal)


def _dataflow_edges(gm: fx.GraphModule, sites: list[ConvSite]) -> list[tuple[str, str]]:
    """Edges ``a -> b``: conv b reads (through non-conv ops only) what conv a wrote.

    ``"input"`` and ``"output"`` stand for the model's inputs and outputs.
    """
    conv_of = {s.node: s.name for s in sites if s.node is not None}
    # A module called twice has one site but several call nodes: map every call to its name.
    modules = {s.name for s in sites if s.module is not None}
    sources: dict[fx.Node, frozenset[str]] = {}
    edges: set[tuple[str, str]] = set()
    for node in gm.graph.nodes:
        upstream = frozenset().union(*(sources.get(a, frozenset()) for a in node.all_input_nodes))
        if node.op == "placeholder":
            sources[node] = frozenset({"input"})
            continue
        name = conv_of.get(node)
        if name is None and node.op == "call_module" and node.target in modules:
            name = node.target
        if name is not None:
            edges.update((u, name) for u in upstream)
            sources[node] = frozenset({name})
        elif node.op == "output":
            edges.update((u, "output") for u in upstream)
        else:
            sources[node] = upstream
    return sorted(edges)


def _chain(sites: list[ConvSite]) -> list[tuple[str, str]]:
    """Without a graph, the best dataflow guess: input -> convs in execution order -> output."""
    names = ["input", *(s.name for s in sites), "output"]
    return list(itertools.pairwise(names))


def _policy_label(policy: PolicySpec) -> str:
    return policy if isinstance(policy, str) else getattr(policy, "__name__", repr(policy))


def _format_pair(p: tuple[int, int]) -> str:
    return str(p[0]) if p[0] == p[1] else f"{p[0]}x{p[1]}"


def _format_interval(interval: tuple[float, float]) -> str:
    lower, upper = interval
    return "empty" if lower > upper else f"[{lower:.3g}, {upper:.3g}]"
