"""Packaged wiring: the stream config, the LeRobot node graph, the IterableDataset bridge, build_loader()."""

from streamnodes.recipes.bridge import NodeIterableDataset
from streamnodes.recipes.config import StreamConfig
from streamnodes.recipes.graph import BuiltGraph, GraphConfig, LeRobotGraph
from streamnodes.recipes.loader import StreamLoader, build_loader

__all__ = ["BuiltGraph", "GraphConfig", "LeRobotGraph", "NodeIterableDataset", "StreamConfig", "StreamLoader", "build_loader"]
