"""rerun layouts (blueprints) for genctl's recordings, built from what the recording holds.

Without one the viewer opens on a default grid: a text document takes a column, the candidate-action cloud
is buried in the streams tree. Each recording gets a designed layout instead: one tab per episode (the tab bar
is the episode selector; every tab has the same layout and the same ``step`` timeline, so switching tabs
compares episodes at the same step) plus an overview tab with every episode's return and, in mazes, every
path on one map. Within an episode: the camera and the 2-D scene on the left, the action space in the middle
(the policy's candidate actions coloured by Q, blue = low, yellow = high, the executed one large and red), and
stacked time series on the right (actions per dimension, reward and return, Q and V, joints).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class RolloutLayout:
    """What a closed-loop recording holds; each flag adds its view."""

    episodes: list[tuple[int, int]]  # (episode index, eval seed) of the recorded episodes
    action_dim: int
    camera: bool = False  # ep_XXX/camera frames
    maze: bool = False  # maze/walls, maze/ep_XXX/{path,position,goal}
    trace: bool = False  # scene/ep_XXX/{trace,position}: torso (side view) or gripper (top view), non-maze envs
    cloud: bool = False  # ep_XXX/action_space/{candidates,executed}
    critic: bool = False  # ep_XXX/critic/{q,v}
    joints: bool = False  # ep_XXX/joints/{qpos,qvel}
    chunks: bool = False  # ep_XXX/action/predicted_chunk
    action_box: tuple[list[float], list[float]] | None = None  # (low, high): the 2-D cloud view's fixed bounds
    title: str = "genctl"


@dataclass
class StoreLayout:
    """What a store recording (``genctl view``) holds."""

    episodes: list[int]
    images: list[str] = field(default_factory=list)  # ep_XXX/image/<cam>
    render: bool = False  # ep_XXX/render (re-rendered from the simulator state)
    maze: bool = False
    series: list[str] = field(default_factory=list)  # per-episode numeric keys, e.g. action, obs, reward
    title: str = "genctl view"


def _ep(i: int) -> str:
    return f"ep_{i:03d}"


def _series(rrb: Any, p: str, lay: RolloutLayout) -> Any:
    views = [rrb.TimeSeriesView(origin=f"/{p}/action/executed", name="executed action (per dimension)"),
             rrb.TimeSeriesView(origin=f"/{p}", contents=[f"/{p}/reward", f"/{p}/return"], name="reward, return")]
    if lay.critic:
        views.append(rrb.TimeSeriesView(origin=f"/{p}/critic", name="Q(s, a) and V(s)"))
    if lay.joints:
        views.append(rrb.TimeSeriesView(origin=f"/{p}/joints/qpos", name="joint positions"))
    return rrb.Vertical(*views)


def _scene(rrb: Any, p: str, lay: RolloutLayout) -> list[Any]:
    out = []
    if lay.camera:
        out.append(rrb.Spatial2DView(origin=f"/{p}/camera", name="camera"))
    if lay.maze:
        out.append(rrb.Spatial2DView(origin="/maze", contents=["/maze/walls", f"/maze/{p}/**"],
                                     name="maze: path, position, goal"))
    if lay.trace:
        out.append(rrb.Spatial2DView(origin="/scene", contents=[f"/scene/{p}/**"], name="trace: where the robot went"))
    return out


def _action_space(rrb: Any, p: str, lay: RolloutLayout) -> Any:
    contents = [f"/{p}/action_space/**"] + ([f"/{p}/action/predicted_chunk/**"] if lay.chunks else [])
    dims = "first 3 dims" if lay.action_dim > 3 else f"{lay.action_dim}-D"
    name = f"action space ({dims}): candidates by Q, executed"
    if lay.action_dim >= 3:
        return rrb.Spatial3DView(origin=f"/{p}", contents=contents, name=name)
    bounds = None
    if lay.action_box is not None:  # the whole action box, fixed: the cloud moving inside it is the signal
        low, high = lay.action_box
        x = (float(low[0]), float(high[0]))
        y = (float(low[1]), float(high[1])) if lay.action_dim >= 2 else (-1.0, 1.0)  # 1-D actions sit at y = 0
        px, py = 0.05 * (x[1] - x[0]), 0.05 * (y[1] - y[0])
        # the cloud is drawn y-up (a mirror on the entity, rollout_log.y_up): the view sees y as -y
        bounds = rrb.VisualBounds2D(x_range=[x[0] - px, x[1] + px], y_range=[-y[1] - py, -y[0] + py])
    return rrb.Spatial2DView(origin=f"/{p}", contents=contents, name=name, visual_bounds=bounds)


def rollout_blueprint(lay: RolloutLayout) -> Any:
    import rerun.blueprint as rrb

    tabs = []
    for idx, seed in lay.episodes:
        p = _ep(idx)
        left = _scene(rrb, p, lay)
        middle = [_action_space(rrb, p, lay)] if lay.cloud or lay.chunks else []
        cols = ([rrb.Vertical(*left)] if left else []) + middle + [_series(rrb, p, lay)]
        tabs.append(rrb.Horizontal(*cols, name=f"episode {idx} (seed {seed})"))
    overview = [rrb.TimeSeriesView(origin="/", contents=[f"/{_ep(i)}/return" for i, _ in lay.episodes],
                                   name="return, every recorded episode")]
    if lay.trace:
        overview.insert(0, rrb.Spatial2DView(origin="/scene", contents=[f"/scene/{_ep(i)}/trace" for i, _ in lay.episodes],
                                             name="every episode's trace"))
    if lay.maze:
        paths = [f"/maze/{_ep(i)}/{k}" for i, _ in lay.episodes for k in ("path", "goal")]
        overview.insert(0, rrb.Spatial2DView(origin="/maze", contents=["/maze/walls", *paths], name="maze: every path"))
    tabs.append(rrb.Horizontal(*overview, name="all episodes"))
    return rrb.Blueprint(rrb.Tabs(*tabs, active_tab=0), rrb.TimePanel(state="expanded"), collapse_panels=True)


def store_blueprint(lay: StoreLayout) -> Any:
    import rerun.blueprint as rrb

    tabs = []
    for i in lay.episodes:
        p = _ep(i)
        pics = [rrb.Spatial2DView(origin=f"/{p}/image/{cam}", name=f"camera {cam}") for cam in lay.images]
        if lay.render:
            pics.append(rrb.Spatial2DView(origin=f"/{p}/render", name="re-rendered from state/qpos"))
        if lay.maze:
            pics.append(rrb.Spatial2DView(origin="/maze", contents=["/maze/walls", f"/maze/{p}/**"], name="maze path"))
        series = [rrb.TimeSeriesView(origin=f"/{p}/{k}", name=k) for k in lay.series]
        series.append(rrb.TimeSeriesView(origin=f"/{p}/return", name="return"))
        cols = ([rrb.Vertical(*pics)] if pics else []) + [rrb.Vertical(*series)]
        tabs.append(rrb.Horizontal(*cols, name=f"episode {i}"))
    tabs.append(rrb.Horizontal(rrb.TextDocumentView(origin="/store", name="store"),
                               rrb.TimeSeriesView(origin="/", contents=[f"/{_ep(i)}/return" for i in lay.episodes],
                                                  name="return, every episode"), name="store"))
    return rrb.Blueprint(rrb.Tabs(*tabs, active_tab=0), rrb.TimePanel(state="expanded"), collapse_panels=True)


def rrd_blueprint(path: str) -> dict[str, Any]:
    """Read a recording's blueprint back with rerun's own reader: {"tabs": [names], "views": [{"kind",
    "name", "origin", "contents"}]} (for tests and checks)."""
    from rerun.chunk import RrdReader

    reader = RrdReader(str(path))
    stores = reader.blueprints()
    if not stores:
        return {"tabs": [], "views": []}
    views: dict[str, dict[str, Any]] = {}
    tabs: list[str] = []
    for chunk in reader.store(store=stores[-1]).stream().to_chunks():
        rb = chunk.to_record_batch()
        cols = {n.split(":")[-1]: rb.column(n).to_pylist() for n in rb.schema.names if ":" in n}
        ent = chunk.entity_path
        if ent.startswith("/view/") and ent.count("/") == 2:
            v = views.setdefault(ent, {})
            for key, name in (("class_identifier", "kind"), ("display_name", "name"), ("space_origin", "origin")):
                if cols.get(key) and cols[key][-1]:
                    v[name] = cols[key][-1][0]
        elif ent.startswith("/view/") and ent.endswith("/ViewContents") and cols.get("query"):
            views.setdefault(ent.rsplit("/", 1)[0], {})["contents"] = list(cols["query"][-1])
        elif ent.startswith("/container/") and cols.get("display_name") and cols["display_name"][-1]:
            tabs.append(cols["display_name"][-1][0])
    return {"tabs": tabs, "views": list(views.values())}
