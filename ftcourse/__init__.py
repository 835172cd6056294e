"""ftcourse: the helper package of the fine-tuning course.

Everything two notebooks would otherwise both write lives here once: model loading, presets, tasks,
training, evaluation, the general-capability probe, plots and the graders.
"""

__version__ = "0.1.0"
