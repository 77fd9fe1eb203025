"""The procedural drone-scene renderer behind ``dronseg-edge synth``.

``synthesize`` writes a data set in the Kaggle AeroScapes layout plus a flight video (writer.py).
Under it: worlds.py composes a scene from landscape.py (terrain, roads, buildings, trees) and
objects.py (people, cars, drones, ...); scene.py rasterises a view of it through a camera.py
camera into an image and an exactly matching class mask; geometry.py holds the polygon helpers.
"""

from dronseg_edge.data.synthetic.writer import SynthResult, synthesize

__all__ = ["SynthResult", "synthesize"]
