"""Convert a ComfyUI UI (graph, version 0.4) workflow into the API prompt that `POST /prompt` accepts.

The server has no such converter (the frontend does it in `graphToPrompt`), so the workflow tests carry this one.
It needs the node definitions (`GET /object_info`) to know which inputs are widgets and in what order the
frontend stored their values in `widgets_values`. It follows the frontend's rules:

- widget values are assigned in the definition's input order (`input_order`: required, then optional);
  a seed-like INT widget (`control_after_generate`, or named seed / noise_seed) is followed by a frontend-only
  control value ("fixed", "randomize", ...), and an upload combo (`image_upload`, ...) by the upload button's
  value; both are skipped;
- a linked input becomes `[source_id, output_slot]`, also when it is a widget converted to an input;
- muted nodes (mode 2) are dropped with their outgoing links; bypassed nodes (mode 4) are dropped and each
  consumer is wired to the bypassed node's input of the same type (same slot first, then the first match);
- frontend-only nodes are dropped: Note and MarkdownNote; Reroute is followed to its source; a PrimitiveNode's
  value already sits in its target's widgets_values, so links from it are ignored.

Subgraphs and group nodes are not supported and raise.
"""

from __future__ import annotations

from typing import Any

MODE_ALWAYS, MODE_NEVER, MODE_BYPASS = 0, 2, 4
NOTE_TYPES = {"Note", "MarkdownNote"}
REROUTE = "Reroute"
PRIMITIVE = "PrimitiveNode"
WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}
SEED_NAMES = {"seed", "noise_seed"}
CONTROL_VALUES = {"fixed", "increment", "decrement", "randomize"}
UPLOAD_FLAGS = ("image_upload", "video_upload", "audio_upload", "animated_image_upload")


class WorkflowError(ValueError):
    """A workflow that cannot be converted; the message names the node and what is wrong."""


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


def widget_names(node_def: dict) -> list[tuple[str, dict]]:
    """The widget inputs of a node definition, in the order the frontend stores their values, with their options."""
    inputs = node_def["input"]
    order = node_def.get("input_order") or {section: list(inputs.get(section, {})) for section in ("required", "optional")}
    widgets = []
    for section in ("required", "optional"):
        for name in order.get(section, []):
            spec = inputs[section][name]
            kind, options = spec[0], (spec[1] if len(spec) > 1 else {})
            is_widget = isinstance(kind, list) or kind in WIDGET_TYPES
            if is_widget and not options.get("forceInput", False):
                widgets.append((name, options))
    return widgets


def _has_control_value(name: str, options: dict) -> bool:
    return bool(options.get("control_after_generate")) or name in SEED_NAMES


def _widget_inputs(node: dict, node_def: dict) -> dict[str, Any]:
    values = node.get("widgets_values")
    widgets = widget_names(node_def)
    if values is None:
        values = []
    if isinstance(values, dict):  # some nodes store {name: value}
        return {name: values[name] for name, _ in widgets if name in values}
    out, position = {}, 0
    for name, options in widgets:
        if position >= len(values):
            raise WorkflowError(f"node {node['id']} ({node['type']}): widgets_values {values} has no value for "
                                f"widget '{name}'; re-save the workflow with this ComfyUI version")
        out[name] = values[position]
        position += 1
        if _has_control_value(name, options) and position < len(values) and values[position] in CONTROL_VALUES:
            position += 1
        if any(options.get(flag) for flag in UPLOAD_FLAGS) and position < len(values):
            position += 1  # the upload button's own value
    if position != len(values):
        raise WorkflowError(f"node {node['id']} ({node['type']}): widgets_values {values} has {len(values) - position} "
                            f"value(s) more than its widgets {[name for name, _ in widgets]}")
    return out


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


def ui_to_api(workflow: dict, node_defs: dict) -> dict[str, dict]:
    """UI workflow -> API prompt {node_id: {class_type, inputs, _meta}}; `node_defs` is `GET /object_info`."""
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
        inputs = _widget_inputs(node, node_defs[node_type])
        for socket in node.get("inputs") or []:
            source = graph.source(socket.get("link"))
            if source is not None:  # a link from a PrimitiveNode leaves the widget value in place
                inputs[socket["name"]] = [str(source[0]), source[1]]
        prompt[str(node_id)] = {"class_type": node_type, "inputs": inputs,
                                "_meta": {"title": node.get("title", node_type)}}
    return prompt
