"""What a finished study gives a user: a finalized model, predictions and the HTML report.

Imports every stage below it (search, tracking, training, models, data, spec).
"""
