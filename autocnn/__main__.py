from autocnn.cli.app import app

app()
