from vocwatch.cli.main import entry

entry()
