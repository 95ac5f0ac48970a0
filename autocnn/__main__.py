from autocnn.cli import app

app()
