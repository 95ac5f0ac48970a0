"""The study spec: the YAML contract (fields, schema, loading) and the objectives it names.

Imports only errors and files from autocnn; every other stage may import it.
"""
