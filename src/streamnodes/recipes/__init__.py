"""Packaged wiring: the LeRobot node graph, the IterableDataset bridge, and build_loader()."""

from streamnodes.recipes.bridge import NodeIterableDataset
from streamnodes.recipes.graph import GraphConfig, LeRobotGraph
from streamnodes.recipes.loader import StreamLoader, build_loader

__all__ = ["GraphConfig", "LeRobotGraph", "NodeIterableDataset", "StreamLoader", "build_loader"]
