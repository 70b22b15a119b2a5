from vocwatch.cli import entry

entry()
