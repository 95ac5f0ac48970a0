"""The `autocnn` command: a thin typer layer over the public API, with rich output and `init`.

May import every other stage; nothing imports it.
"""
