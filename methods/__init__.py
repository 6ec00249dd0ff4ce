"""Pretext tasks: one module per method, each exposing the contract of methods/base.py.

`--task` picks a module through TASKS; adding a method is one file plus one line here.
"""

from core.registry import Registry
from methods import barlow_twins
from methods import byol
from methods import colorization
from methods import dino
from methods import exemplar
from methods import inpainting
from methods import jigsaw
from methods import mae
from methods import moco
from methods import relative_patch_location
from methods import rotation
from methods import simclr
from methods import supervised
from methods import swav

TASKS = Registry("task")
TASKS.register("rotation", rotation)
TASKS.register("supervised", supervised)
TASKS.register("jigsaw", jigsaw)
TASKS.register("relative_patch_location", relative_patch_location)
TASKS.register("exemplar", exemplar)
TASKS.register("simclr", simclr)
TASKS.register("barlow_twins", barlow_twins)
TASKS.register("byol", byol)
TASKS.register("moco", moco)
TASKS.register("swav", swav)
TASKS.register("dino", dino)
TASKS.register("mae", mae)
TASKS.register("colorization", colorization)
TASKS.register("inpainting", inpainting)


def get_method(task: str):
  """The method module for `task`; ValueError listing the valid tasks otherwise."""
  return TASKS.get(task)
