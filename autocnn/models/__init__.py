"""Models: the custom CNN, timm backbones and their weights, and a model's ONNX form.

Imports spec, data and the ground modules; never training, search, tracking or outputs.
"""
