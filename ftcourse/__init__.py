"""ftcourse: the helper package of the fine-tuning course.

Everything two notebooks would otherwise both write lives here once: model loading, presets, tasks,
training, evaluation, the general-capability probe, plots and the graders.
"""

from importlib import resources as _resources
from pathlib import Path as _Path

__version__ = "0.1.0"
# The course's shipped data (the probe, the general text, 02's dump): package data, read through importlib.resources.
DATA_DIR = _Path(str(_resources.files(__name__).joinpath("data")))
