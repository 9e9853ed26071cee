"""Node descriptions as plain data.

Each node module describes its inputs here instead of subclassing ComfyUI's `io.ComfyNode` directly, so
the nodes import and run without ComfyUI (tests, CI); `comfy_adapter.v3_node` turns a spec into a V3 node.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable


@dataclass(frozen=True)
class Input:
    name: str
    kind: str  # "combo" | "int" | "float" | "boolean" | "string" | "image" | a custom wire type such as "INF_DIT"
    tooltip: str
    default: Any = None
    options: tuple = ()  # combo only
    min: float | None = None
    max: float | None = None
    step: float | None = None
    optional: bool = False
    control_after_generate: bool = False
    display_name: str | None = None

    @property
    def is_widget(self) -> bool:
        """Widgets hold a value in the node; the other kinds are sockets wired from another node."""
        return self.kind in ("combo", "int", "float", "boolean", "string")


@dataclass(frozen=True)
class Output:
    kind: str  # "image" or a custom wire type
    name: str
    tooltip: str


@dataclass(frozen=True)
class NodeSpec:
    node_id: str  # never changes: saved workflows refer to it
    display_name: str
    description: str
    inputs: tuple[Input, ...]
    outputs: tuple[Output, ...]
    run: Callable  # run(**inputs, node_id=...) -> NodeResult
    category: str = "image/upscaling/Inf-DiT"
    is_output_node: bool = False

    def input(self, name: str) -> Input:
        for item in self.inputs:
            if item.name == name:
                return item
        raise KeyError(f"{self.node_id} has no input {name!r}")


@dataclass
class NodeResult:
    outputs: tuple
    ui: dict | None = None  # shown on the node by the frontend (e.g. {"text": [...]})
    extra: dict = field(default_factory=dict)  # for tests and logs, never sent anywhere
