"""Convert a ComfyUI UI (graph, version 0.4) workflow into the API prompt that `POST /prompt` accepts.

The server has no such converter: the browser does it (`app.graphToPrompt()`), so the tests carry this copy of the
frontend's rules. They were read from the bundled frontends of the two testbeds (comfyui-frontend-package 1.35.9
for ComfyUI 0.8.0, 1.49.6 for 0.33.0) and are checked against them in a real browser
(tests/test_comfyui_browser.py). The frontend converts in three steps, and so does this module:

1. Build a node's widgets from its definition (`GET /object_info`), in `input_order` (required, then optional;
   `advanced` inputs are widgets like any other, only drawn folded away):
   - INT, FLOAT, STRING, BOOLEAN and combo inputs are widgets unless `forceInput`;
   - an INT input with `control_after_generate` (or, when that option is absent, named seed / noise_seed) is
     followed by a control widget ("fixed", "randomize", ...); a combo with `control_after_generate` by a control
     and a filter-list widget; an `image_upload` / `video_upload` combo by the upload button (value "image");
   - a V3 DynamicCombo (`COMFY_DYNAMICCOMBO_V3`) is a combo whose chosen option's own inputs follow it as widgets
     named `<combo>.<input>` (required, then optional; nested DynamicCombos the same way, depth first);
     choosing another option removes them and inserts the new option's, with their defaults;
   - frontend extensions add widgets the server does not list: `PreviewAny` gets preview widgets
     (see `_EXTENSION_WIDGETS`).
2. Restore `widgets_values` (LiteGraph's `LGraphNode.configure`): the values are taken in order by the widgets
   that are saved (`widget.serialize !== false`), skipping the others; values left over are ignored, widgets
   left over keep their defaults. A DynamicCombo's sub-widgets appear as soon as its value is set, so the next
   values go to them. Saving writes each saved widget's value at its widget index, so a widget that is not saved
   leaves a null hole: 1.35.9 saves PreviewAny as `[null, null, false]` and, reading it back, gives `previewMode`
   the first null. (Before restoring, both frontends drop values that a legacy save kept for `forceInput`
   inputs: `_drop_legacy_force_input_values`.)
3. graphToPrompt: every widget that is sent (`widget.options.serialize !== false`: not the control, filter-list
   or upload widgets) becomes an input, `{"__value__": list}` for a list value; then each linked input becomes
   `[source_id, output_slot]`. Muted (mode 2) and bypassed (mode 4) nodes are left out; a bypassed node's
   consumer is wired to its input of the same type (same slot first, then the first match); a Reroute is
   followed to its source; Note, MarkdownNote and PrimitiveNode are frontend-only (a PrimitiveNode's value
   already sits in its target's widgets_values, so links from it are ignored). A node's title is its `title`,
   else the definition's display name.

Subgraphs, group nodes, Autogrow inputs and the audio/3D upload widgets are not modelled, and raise.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

MODE_ALWAYS, MODE_NEVER, MODE_BYPASS = 0, 2, 4
NOTE_TYPES = {"Note", "MarkdownNote"}
REROUTE = "Reroute"
PRIMITIVE = "PrimitiveNode"
SCALAR_WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN"}
SCALAR_DEFAULTS = {"INT": 0, "FLOAT": 0, "STRING": "", "BOOLEAN": False}
COMBO = "COMBO"
DYNAMIC_COMBO = "COMFY_DYNAMICCOMBO_V3"
AUTOGROW = "COMFY_AUTOGROW_V3"
SEED_NAMES = ("seed", "noise_seed")
UPLOAD_BUTTON_FLAGS = ("image_upload", "video_upload")  # one button widget, value "image" for both
UNMODELLED_UPLOAD_FLAGS = ("audio_upload", "file_upload", "animated_image_upload")

# The frontends whose rules this module follows; a version between them gets the older one's extension widgets
# (the release that changed PreviewAny between 1.35.9 and 1.49.6 was not located).
FRONTEND_1_35 = (1, 35, 9)
FRONTEND_1_49 = (1, 49, 6)


class WorkflowError(ValueError):
    """A workflow that cannot be converted; the message names the node and what is wrong."""


@dataclass
class Widget:
    """One widget of a node as the frontend holds it after loading a workflow."""

    name: str
    value: Any
    saved: bool = True  # LiteGraph `widget.serialize !== false`: has a slot in widgets_values
    sent: bool = True  # `widget.options.serialize !== false`: graphToPrompt sends it to the server
    option_inputs: dict[str, dict] | None = field(default=None, repr=False)  # DynamicCombo: option key -> inputs


# frontend version (oldest first) -> widgets a core frontend extension appends to a node type, as
# (name, value, saved, sent); read from the bundles (1.35.9 `Comfy.PreviewAny`, 1.49.6 `WidgetTextPreview`)
_EXTENSION_WIDGETS = {
    "PreviewAny": [
        (FRONTEND_1_35, [("preview", "", False, True), ("preview", "", False, True),
                         ("previewMode", False, True, True)]),
        (FRONTEND_1_49, [("preview_text", "", False, False), ("preview_mode", False, False, False)]),
    ],
}


def parse_frontend_version(version: str) -> tuple[int, ...]:
    """'1.35.9' -> (1, 35, 9), the form every `frontend` argument here takes."""
    try:
        return tuple(int(part) for part in version.split("."))
    except ValueError:
        raise WorkflowError(f"frontend version {version!r} is not of the form 1.35.9") from None


def _extension_widgets(node_type: str, frontend: tuple[int, ...]) -> list[Widget]:
    chosen = []
    for since, widgets in _EXTENSION_WIDGETS.get(node_type, []):
        if frontend >= since or not chosen:
            chosen = widgets
    return [Widget(name, value, saved, sent) for name, value, saved, sent in chosen]


def _spec_parts(spec: list) -> tuple[Any, dict]:
    return spec[0], (spec[1] if len(spec) > 1 and spec[1] else {})


def _input_widgets(node_type: str, name: str, spec: list) -> list[Widget]:
    """The widgets the frontend creates for one input of a node definition (none for a socket)."""
    kind, options = _spec_parts(spec)
    if options.get("forceInput"):
        return []
    if kind == DYNAMIC_COMBO:
        choices = {option["key"]: option["inputs"] for option in options["options"]}
        combo = Widget(name, options.get("default", next(iter(choices), None)), option_inputs=choices)
        return [combo, *_option_widgets(node_type, combo)]
    if kind == AUTOGROW:
        raise WorkflowError(f"{node_type}.{name}: Autogrow inputs are not modelled by this converter")
    is_combo = isinstance(kind, list) or kind == COMBO
    if not is_combo and kind not in SCALAR_WIDGET_TYPES:
        return []  # a socket
    if unmodelled := [flag for flag in UNMODELLED_UPLOAD_FLAGS if options.get(flag)]:
        raise WorkflowError(f"{node_type}.{name}: the {unmodelled[0]} widgets are not modelled by this converter")
    if is_combo:
        choices = kind if isinstance(kind, list) else options.get("options", [])
        default = options.get("default", choices[0] if choices else None)
    else:
        default = options.get("default", SCALAR_DEFAULTS[kind])
    widgets = [Widget(name, default)]
    control = options.get("control_after_generate")
    if (kind == "INT" and (control if control is not None else name in SEED_NAMES)) or (is_combo and control):
        widgets.append(Widget("control_after_generate", control if isinstance(control, str) else "randomize",
                              sent=False))
        if is_combo:
            widgets.append(Widget("control_filter_list", "", sent=False))
    if any(options.get(flag) for flag in UPLOAD_BUTTON_FLAGS):
        widgets.append(Widget("upload", "image", sent=False))
    return widgets


def _option_widgets(node_type: str, combo: Widget) -> list[Widget]:
    """The widgets of a DynamicCombo's chosen option, named `<combo>.<input>`; none for an unknown option."""
    inputs = combo.option_inputs.get(combo.value) or {}
    widgets = []
    for section in ("required", "optional"):
        for name, spec in (inputs.get(section) or {}).items():
            widgets += _input_widgets(node_type, f"{combo.name}.{name}", spec)
    return widgets


def _definition_inputs(node_def: dict) -> list[tuple[str, list]]:
    inputs = node_def["input"]
    sections = ("required", "optional")
    order = node_def.get("input_order") or {section: list(inputs.get(section) or {}) for section in sections}
    return [(name, inputs[section][name]) for section in sections for name in order.get(section, [])]


def build_widgets(node_type: str, node_def: dict, frontend: tuple[int, ...]) -> list[Widget]:
    """The widgets of a freshly created node, with their defaults (step 1)."""
    widgets = []
    for name, spec in _definition_inputs(node_def):
        widgets += _input_widgets(node_type, name, spec)
    return widgets + _extension_widgets(node_type, frontend)


def _drop_legacy_force_input_values(node_def: dict, widgets: list[Widget], values: list,
                                    frontend: tuple[int, ...]) -> list:
    """The frontend's `migrateWidgetsValues`: a workflow saved when forceInput inputs still had a widgets_values
    slot has exactly one value per (widget or forceInput) input, two for a seed; those slots are dropped."""
    names = {widget.name for widget in widgets}
    inputs = [(name, _spec_parts(spec)[1]) for name, spec in _definition_inputs(node_def)
              if name in names or _spec_parts(spec)[1].get("forceInput")]
    if frontend >= FRONTEND_1_49:
        slots = [flag for _, options in inputs for flag in
                 ([bool(options.get("forceInput")), False] if options.get("control_after_generate")
                  else [bool(options.get("forceInput"))])]
        return [value for value, forced in zip(values, slots) if not forced] if len(slots) == len(values) else values
    slot_count = sum(2 if options.get("control_after_generate") or name in SEED_NAMES else 1
                     for name, options in inputs)
    if slot_count != len(values):
        return values
    # 1.35.9 pairs the values with the inputs one to one (a seed's control value pairs with the next input)
    return [value for index, value in enumerate(values)
            if index >= len(inputs) or not inputs[index][1].get("forceInput")]


def restore_widgets(node: dict, node_def: dict, frontend: tuple[int, ...]) -> list[Widget]:
    """A node's widgets after the frontend loads it from a workflow (steps 1 and 2)."""
    widgets = build_widgets(node["type"], node_def, frontend)
    values = node.get("widgets_values")
    if values is None:
        return widgets
    if isinstance(values, dict):  # some custom nodes store {name: value} and restore it in their own JS
        for widget in widgets:
            if widget.name in values:
                widget.value = values[widget.name]
        return widgets
    values = _drop_legacy_force_input_values(node_def, widgets, values, frontend)
    position, index = 0, 0
    while index < len(widgets):  # the list grows while it is walked: a DynamicCombo inserts its option's widgets
        widget = widgets[index]
        if widget.saved:
            if position >= len(values):
                break
            widget.value = values[position]
            position += 1
            if widget.option_inputs is not None:
                _select_option(node["type"], widgets, index)
        index += 1
    return widgets


def _select_option(node_type: str, widgets: list[Widget], index: int) -> None:
    combo = widgets[index]
    prefix = combo.name + "."
    end = index + 1
    while end < len(widgets) and widgets[end].name.startswith(prefix):
        end += 1
    widgets[index + 1:end] = _option_widgets(node_type, combo)


def _links_by_id(workflow: dict) -> dict[int, tuple[int, int, int, int, str]]:
    """links as {id: (from_node, from_slot, to_node, to_slot, type)}; accepts the list and the dict forms."""
    links = {}
    for link in workflow.get("links", []):
        if isinstance(link, dict):
            links[link["id"]] = (link["origin_id"], link["origin_slot"], link["target_id"], link["target_slot"],
                                 link["type"])
        else:
            link_id, from_node, from_slot, to_node, to_slot, link_type = link
            links[link_id] = (from_node, from_slot, to_node, to_slot, link_type)
    return links


class _Graph:
    def __init__(self, workflow: dict):
        if workflow.get("definitions", {}).get("subgraphs") or workflow.get("extra", {}).get("groupNodes"):
            raise WorkflowError("subgraphs and group nodes are not supported by this converter")
        self.nodes = {node["id"]: node for node in workflow["nodes"]}
        self.links = _links_by_id(workflow)

    def input_link(self, node: dict, slot: int) -> int | None:
        inputs = node.get("inputs") or []
        return inputs[slot].get("link") if slot < len(inputs) else None

    def source(self, link_id: int | None) -> tuple[int, int] | None:
        """The executed (node id, output slot) feeding a link, through reroutes and bypassed nodes; None if nothing."""
        if link_id is None:
            return None
        if link_id not in self.links:
            raise WorkflowError(f"link {link_id} is referenced by a node but missing from 'links'")
        from_id, from_slot, _, _, link_type = self.links[link_id]
        node = self.nodes[from_id]
        if node["type"] == REROUTE:
            return self.source(self.input_link(node, 0))
        if node["type"] == PRIMITIVE:
            return None
        mode = node.get("mode", MODE_ALWAYS)
        if mode == MODE_NEVER:
            return None
        if mode == MODE_BYPASS:
            return self.source(self._bypass_input(node, from_slot, link_type))
        return from_id, from_slot

    def _bypass_input(self, node: dict, slot: int, link_type: str) -> int | None:
        inputs = node.get("inputs") or []
        if slot < len(inputs) and inputs[slot].get("type") == link_type and inputs[slot].get("link") is not None:
            return inputs[slot]["link"]
        for candidate in inputs:
            if candidate.get("type") == link_type and candidate.get("link") is not None:
                return candidate["link"]
        return None


def _prompt_value(value: Any) -> Any:
    return {"__value__": value} if isinstance(value, list) else value


def ui_to_api(workflow: dict, node_defs: dict, frontend: tuple[int, ...] = FRONTEND_1_49) -> dict[str, dict]:
    """UI workflow -> API prompt {node_id: {inputs, class_type, _meta}}, as graphToPrompt of that frontend version
    (`parse_frontend_version(...)`) gives it; `node_defs` is `GET /object_info`."""
    graph = _Graph(workflow)
    prompt = {}
    for node_id, node in sorted(graph.nodes.items()):
        node_type = node["type"]
        if node_type in NOTE_TYPES or node_type in (REROUTE, PRIMITIVE):
            continue
        if node.get("mode", MODE_ALWAYS) in (MODE_NEVER, MODE_BYPASS):
            continue
        if node_type not in node_defs:
            raise WorkflowError(f"node {node_id}: type '{node_type}' is not among the server's nodes "
                                f"(a custom node pack missing or failed to import?)")
        node_def = node_defs[node_type]
        inputs = {}
        for widget in restore_widgets(node, node_def, frontend):
            if widget.sent and widget.name:
                inputs[widget.name] = _prompt_value(widget.value)
        for socket in node.get("inputs") or []:
            source = graph.source(socket.get("link"))
            if source is not None:  # a link from a PrimitiveNode leaves the widget value in place
                inputs[socket["name"]] = [str(source[0]), source[1]]
        title = node.get("title") or node_def.get("display_name") or node_def.get("name") or node_type
        prompt[str(node_id)] = {"inputs": inputs, "class_type": node_type, "_meta": {"title": title}}
    return prompt
