"""Images in: folders and named datasets found, decoded into cached uint8 arrays, checked.

Imports spec (the data part of it) and autocnn's ground modules, nothing of models or training.
"""
