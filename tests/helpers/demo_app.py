"""What the API tests send to the launched demo app: its token and a two-model recipe."""

from app.demo import DEMO_TOKEN

TOKEN = DEMO_TOKEN
RECIPE = """\
merge_method: task_arithmetic
base_model: demo/tiny-base
models:
  - model: demo/tiny-math
    parameters: {weight: 1.0}
  - model: demo/tiny-animals
    parameters: {weight: 0.5}
"""
